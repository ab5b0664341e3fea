"""The per-camera line window behind the console's drift charts (pure logic)."""

from __future__ import annotations

from edge_agent.sinks.mining.line_stats import LineStats
from shared.detections import Detections

NAMES = ("bolt", "nut")


def test_windows_per_camera_rates_and_restart() -> None:
    now = [100.0]
    stats = LineStats((0.25, 0.5), clock=lambda: now[0])
    sure = Detections([[0, 0, 1, 1], [1, 1, 2, 2]], [0.9, 0.7], [0, 1])
    unsure = Detections([[0, 0, 1, 1], [0, 0, 1, 1]], [0.3, 0.5], [0, 7])  # 7: unknown class
    stats.observe("cam0", sure, NAMES)
    stats.observe("cam0", unsure, NAMES)
    stats.observe("cam1", Detections.empty(), NAMES)
    stats.hard_example("cam0")
    now[0] = 130.0
    windows = stats.take()
    cam0, cam1 = windows["cam0"], windows["cam1"]
    assert (cam0.seconds, cam0.frames) == (30.0, 2)
    assert cam0.detections_per_min == {"bolt": 4.0, "nut": 2.0}
    assert cam0.mean_confidence == {"bolt": 0.6, "nut": 0.7}
    assert cam0.band_share == 0.5  # the unsure frame
    assert cam0.hard_examples_per_min == 2.0
    assert (cam1.frames, cam1.detections_per_min, cam1.band_share) == (1, {}, 0.0)
    assert stats.take() == {}  # restarted: nothing seen since
