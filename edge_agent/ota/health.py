"""The running model's health for its whole life, not only during probation.

A model whose failures start after probation (the line changed: a lamp failed, a new part
arrived) ran on with 12% inference errors. The lifetime watch counts frames and inference
errors in fixed windows, cheaply (two counters read every window), and says when a window's
error rate is over the limit; the controller then reports or rolls back, by policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HealthAction = Literal["report", "rollback"]


@dataclass(frozen=True)
class HealthPolicy:
    interval_s: float = 60.0  # one window; 0 turns the lifetime watch off
    max_error_rate: float = 0.05
    min_frames: int = 100  # a window with fewer attempts says nothing
    action: HealthAction = "rollback"


class LifetimeWatch:
    """Error rate per window of the model that runs; :meth:`reset` at every swap."""

    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        self._window: tuple[float, int, int] | None = None  # start, processed, errors

    def reset(self) -> None:
        self._window = None

    def check(self, processed: int, errors: int, now: float) -> str | None:
        """The reason the last full window was unhealthy, or None (also while it fills)."""
        if self.policy.interval_s <= 0:
            return None
        if self._window is None:
            self._window = (now, processed, errors)
            return None
        started, start_processed, start_errors = self._window
        if now - started < self.policy.interval_s:
            return None
        self._window = (now, processed, errors)
        failed = errors - start_errors
        attempts = processed - start_processed + failed
        if attempts < self.policy.min_frames or failed <= attempts * self.policy.max_error_rate:
            return None
        return (
            f"inference errors {failed}/{attempts} ({failed / attempts:.0%}) over "
            f"{now - started:.0f} s, above {self.policy.max_error_rate:.0%}"
        )
