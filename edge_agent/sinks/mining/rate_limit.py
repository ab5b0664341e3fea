"""Per-minute, per-hour and per-day caps, each a sliding window over monotonic time."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOWS = (("minute", 60.0), ("hour", 3600.0), ("day", 86400.0))


class RateLimiter:
    def __init__(
        self,
        per_minute: int | None = None,
        per_hour: int | None = None,
        per_day: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = {"minute": per_minute, "hour": per_hour, "day": per_day}
        self._limits = [(span, limits[name]) for name, span in WINDOWS if limits[name] is not None]
        self._clock = clock
        longest = max((span for span, _ in self._limits), default=0.0)
        self._longest = longest
        self._events: deque[float] = deque()

    def allow(self) -> bool:
        """True (and counted) if one more event fits every window."""
        now = self._clock()
        while self._events and now - self._events[0] >= self._longest:
            self._events.popleft()
        for span, limit in self._limits:
            assert limit is not None
            recent = sum(1 for t in reversed(self._events) if now - t < span) if limit else 0
            if recent >= limit:
                return False
        self._events.append(now)
        return True
