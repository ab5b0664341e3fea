"""A bandwidth cap for the agent's traffic to the object store (uploads and model downloads):
on a plant network the cameras, the sorter and the agent share links that a burst at full
speed would fill."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """A bytes-per-second cap (0 = unlimited), shared by the threads that consume from it."""

    def __init__(self, rate_bytes_s: float, burst_bytes: float | None = None) -> None:
        self.rate = rate_bytes_s
        self.capacity = burst_bytes or max(rate_bytes_s, 1.0)
        self._tokens = self.capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, amount: int, stop: threading.Event) -> bool:
        """Wait until ``amount`` bytes may go over the link; False if stopped meanwhile."""
        if self.rate <= 0:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount  # may go negative: the debt is paid by waiting
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        return not (wait > 0 and stop.wait(wait))
