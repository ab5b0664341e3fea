"""Thread priorities: background work yields the cores to the live line.

On a small box every core is busy with inference. Work that can wait (staging an OTA
candidate: hashing, graph optimisation, warm-up, smoke check) runs at a lower priority so the
scheduler hands the cores back to the pipeline the moment it has a frame; the work still
finishes, in the pipeline's idle time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 19


def lower_current_thread_priority(increment: int = BACKGROUND_NICE) -> bool:
    """Raise this thread's nice value by ``increment`` (Linux: per thread). Threads it starts
    later inherit it. Returns False where that is not possible (other systems, seccomp)."""
    if sys.platform != "linux":
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:
        log.info("thread priority unchanged", extra={"reason": str(exc)})
        return False
    return True
