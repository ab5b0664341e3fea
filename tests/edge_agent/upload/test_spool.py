from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.upload.spool import Spool

JPEG = b"\xff\xd8" + b"x" * 10_000 + b"\xff\xd9"


def put(spool: Spool, name: str, priority: float = 1.0, size: int = 10_000):  # type: ignore[no-untyped-def]
    return spool.accept(
        f"hard-examples/f/d/2026/01/01/{name}",
        jpeg=b"j" * size,
        sidecar="{}",
        prelabel="",
        priority=priority,
    )


def test_accept_lease_complete(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    assert put(spool, "a").accepted
    assert not put(spool, "a").accepted, "same key twice is one example"
    item = spool.lease()
    assert item is not None and item.key_base.endswith("/a")
    assert spool.lease() is None, "a leased item is not handed out twice"
    spool.complete(item.id)
    stats = spool.stats()
    assert (stats.depth, stats.bytes, stats.accepted, stats.uploaded) == (0, 0, 1, 1)


def test_priority_order_and_retry_schedule(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    put(spool, "low", priority=1)
    put(spool, "high", priority=5)
    first = spool.lease()
    assert first is not None and first.key_base.endswith("high")
    spool.fail(first.id, "server: 500", retry_in_s=0.3)
    second = spool.lease()
    assert second is not None and second.key_base.endswith("low")
    assert spool.lease() is None, "the failed one waits for its retry time"
    again = spool.lease(wait_s=2.0)
    assert again is not None and again.key_base.endswith("high") and again.attempts == 1
    assert "500" in spool.last_error() and spool.stats().failures == 1


def test_within_a_priority_the_newest_goes_first(tmp_path: Path) -> None:
    """A backlog is the line as it was: the line as it is now reaches the trainer first."""
    spool = Spool(tmp_path, min_free_bytes=0)
    for name in ("before-drift", "during-drift", "now"):
        put(spool, name, priority=3)
    put(spool, "control", priority=0.5)
    order = []
    while (item := spool.lease()) is not None:
        order.append(item.key_base.rsplit("/", 1)[1])
    assert order == ["now", "during-drift", "before-drift", "control"]


def test_quota_evicts_lowest_priority_then_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, quota_bytes=35_000, min_free_bytes=0)
    assert put(spool, "p1-old", 1).accepted
    assert put(spool, "p1-new", 1).accepted
    assert put(spool, "p3", 3).accepted
    result = put(spool, "p2", 2)
    assert result.accepted and result.evicted == 1
    names = set()
    while (item := spool.lease()) is not None:
        names.add(item.key_base.rsplit("/", 1)[1])
    assert names == {"p1-new", "p3", "p2"}
    stats = spool.stats()
    assert stats.evicted == 1 and stats.bytes <= 35_000


def test_quota_never_evicts_more_important_examples(tmp_path: Path) -> None:
    spool = Spool(tmp_path, quota_bytes=25_000, min_free_bytes=0)
    put(spool, "a", 5)
    put(spool, "b", 5)
    result = put(spool, "c", 1)
    assert not result.accepted and "higher-priority" in result.reason
    assert spool.stats().rejected == 1 and spool.stats().depth == 2


def test_disk_floor_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=10**18)
    result = put(spool, "a")
    assert not result.accepted and "free" in result.reason


def test_survives_reopen_and_expired_leases(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=0)
    put(spool, "a")
    assert spool.lease(lease_s=0.2) is not None
    spool.close()
    reopened = Spool(tmp_path, min_free_bytes=0)
    assert reopened.stats().depth == 1
    time.sleep(0.25)
    assert reopened.lease() is not None, "a lease from a dead process expires"


CHILD = """
import sys
from pathlib import Path
from edge_agent.upload.spool import Spool
spool = Spool(Path(sys.argv[1]), min_free_bytes=0)
i = 0
while True:
    spool.accept(f"hard-examples/f/d/2026/01/01/k{i:06d}", jpeg=b"j" * 50_000, sidecar="{}",
                 prelabel="", priority=1.0)
    print(i, flush=True)  # acknowledged only after accept returned
    i += 1
"""


def test_sigkill_loses_nothing_that_was_accepted(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )
    assert process.stdout is not None
    acknowledged = []
    for line in process.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 200:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)
    acknowledged.extend(int(line) for line in process.stdout.read().split())
    spool = Spool(tmp_path, min_free_bytes=0)
    keys = set()
    while (item := spool.lease()) is not None:
        keys.add(int(item.key_base[-6:]))
    assert set(acknowledged) <= keys, "every acknowledged example survived the kill"
    assert spool.stats().depth == len(keys)


@pytest.mark.parametrize("quota", [10])
def test_example_larger_than_quota(tmp_path: Path, quota: int) -> None:
    spool = Spool(tmp_path, quota_bytes=1024 * 1024, min_free_bytes=0)
    result = put(spool, "huge", size=2 * 1024 * 1024)
    assert not result.accepted and "whole quota" in result.reason
