"""Per-minute, per-hour and per-day caps, each a sliding window over monotonic time, and a
minimum spacing between two picks of the same camera.

Why the spacing: a sliding window of 30 a minute admits 30 consecutive frames at once. On a
belt those show the same parts, so a label budget spent on such a burst buys one scene 30
times (``benchmarks/learning_loop.py``: the samplers lost to random picks spread over the
stream). Spaced picks see the line move on between them."""

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
        min_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        limits = {"minute": per_minute, "hour": per_hour, "day": per_day}
        self._limits = [(span, limits[name]) for name, span in WINDOWS if limits[name] is not None]
        self._clock = clock
        longest = max((span for span, _ in self._limits), default=0.0)
        self._longest = longest
        self._events: deque[float] = deque()
        self._min_interval_s = min_interval_s
        self._last_by_source: dict[str, float] = {}

    def allow(self, source: str = "") -> bool:
        """True (and counted) if one more event fits every window and comes at least
        ``min_interval_s`` after the last one allowed for ``source`` (a camera)."""
        now = self._clock()
        last = self._last_by_source.get(source)
        if last is not None and now - last < self._min_interval_s:
            return False
        while self._events and now - self._events[0] >= self._longest:
            self._events.popleft()
        for span, limit in self._limits:
            assert limit is not None
            recent = sum(1 for t in reversed(self._events) if now - t < span) if limit else 0
            if recent >= limit:
                return False
        self._events.append(now)
        if self._min_interval_s > 0:
            self._last_by_source[source] = now
        return True
