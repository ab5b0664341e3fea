"""A candidate model tried on a few live frames in place of the running model.

Why: on a CPU box every extra model run is in the line's way. A smoke-check run queued
between two batches must fit the gap before the next frame or make that frame wait, and on
a 2-core box at 30 fps it mostly does not fit (gaps of 6-16 ms, runs of 15-30 ms): the worst
frame of a swap was 1.8-2.7x the median with one infer worker (``benchmarks/ota_swap.py``).
A trial instead lets the candidate process the next few one-frame batches *instead of* the
running model. The line does no more model work than it always does, so its latency only
changes if the candidate is itself slower, which is what the check is there to find.

Nothing a candidate gets wrong reaches the line: its output for a frame is used only if the
run succeeds, the output is finite, and it decodes. Otherwise the trial fails and the running
model processes that same frame, so the frame is delayed, never lost or reported twice. A
run longer than ``run_limit_s`` is cancelled the same way: a model far too slow for the box
holds up one frame by at most that limit.
"""

from __future__ import annotations

import threading
import time

from edge_agent.errors import InferenceError
from edge_agent.frame_path import ActiveModel

# A claimed run ends within its run limit; this only guards against a worker that died.
IN_FLIGHT_GRACE_S = 30.0


class TrialFailedError(InferenceError):
    """The candidate failed on a live frame (that frame went to the running model)."""


class LiveTrial:
    """Hands out ``frames`` one-frame batches to a candidate and collects its run times.

    Infer workers :meth:`claim` a frame, then report :meth:`succeeded` or :meth:`failed`;
    the OTA thread :meth:`wait` s for the outcome. Thread-safe: with several workers, frames
    are claimed concurrently."""

    def __init__(self, candidate: ActiveModel, frames: int, run_limit_s: float | None) -> None:
        if frames < 1:
            raise ValueError("a trial needs at least one frame")
        self.candidate = candidate
        self.frames = frames
        self.run_limit_s = run_limit_s
        self._lock = threading.Condition()
        self._claimed = 0
        self._in_flight = 0
        self._timings: list[float] = []
        self._failure: str | None = None
        self._closed = False

    def claim(self) -> bool:
        """True if the caller should run its batch on the candidate."""
        with self._lock:
            if self._closed or self._failure is not None or self._claimed >= self.frames:
                return False
            self._claimed += 1
            self._in_flight += 1
            return True

    def succeeded(self, infer_s: float) -> None:
        with self._lock:
            self._timings.append(infer_s)
            self._in_flight -= 1
            self._lock.notify_all()

    def failed(self, reason: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
            self._in_flight -= 1
            self._lock.notify_all()

    def wait(self, timeout_s: float) -> list[float]:
        """The candidate's run times once every frame ran (fewer if the line brought fewer
        frames within ``timeout_s``); raises :class:`TrialFailedError` if a frame failed.
        Returns only when no worker still runs the candidate: it may be closed afterwards."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._failure is None and len(self._timings) < self.frames:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            self._closed = True  # no more claims; let claimed runs end (each is bounded)
            settle_by = time.monotonic() + IN_FLIGHT_GRACE_S
            while self._in_flight and time.monotonic() < settle_by:
                self._lock.wait(0.1)
            if self._failure is not None:
                raise TrialFailedError(self._failure)
            return list(self._timings)
