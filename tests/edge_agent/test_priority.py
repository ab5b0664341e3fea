from __future__ import annotations

import os
import sys
import threading

import pytest

from edge_agent.priority import BACKGROUND_NICE, lower_current_thread_priority


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_lowering_priority_affects_only_the_calling_thread() -> None:
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, int] = {}

    def background() -> None:
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["lowered"] = lower_current_thread_priority()
        seen["before"] = before
        seen["after"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = threading.Thread(target=background)
    worker.start()
    worker.join()
    assert seen["lowered"]
    assert seen["after"] == min(19, seen["before"] + BACKGROUND_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_before
