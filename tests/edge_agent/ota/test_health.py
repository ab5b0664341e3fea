"""The lifetime health watch (pure logic)."""

from __future__ import annotations

from edge_agent.ota.health import HealthPolicy, LifetimeWatch


def test_a_window_over_the_error_limit_is_reported_once_full() -> None:
    watch = LifetimeWatch(HealthPolicy(interval_s=10, max_error_rate=0.05, min_frames=50))
    assert watch.check(0, 0, now=0.0) is None  # the window opens
    assert watch.check(80, 20, now=5.0) is None  # not full yet
    reason = watch.check(90, 22, now=10.0)
    assert reason is not None and "22/112" in reason and "20%" in reason
    assert watch.check(200, 22, now=20.0) is None  # the next window is clean


def test_small_windows_and_healthy_ones_say_nothing() -> None:
    watch = LifetimeWatch(HealthPolicy(interval_s=1, max_error_rate=0.05, min_frames=50))
    watch.check(0, 0, now=0.0)
    assert watch.check(10, 5, now=1.0) is None  # 15 attempts: too few to judge
    assert watch.check(1010, 55, now=2.0) is None  # 50/1050 < 5%
    watch.reset()
    assert watch.check(5000, 500, now=3.0) is None  # a swap restarts the window


def test_interval_zero_turns_it_off() -> None:
    watch = LifetimeWatch(HealthPolicy(interval_s=0))
    assert watch.check(0, 0, 0.0) is None and watch.check(10, 10_000, 1e9) is None
