"""The smoke check with real (tiny) ONNX models: on live frames, and on recent frames when
the line brings none."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_agent.camera import CameraWorker, Frame, FrameHub, SyntheticSource
from edge_agent.errors import InferenceError
from edge_agent.frame_path import ActiveModel, DetectionResult, ModelSlot, PipelineStats
from edge_agent.inference import InferenceRunner, RunnerOptions
from edge_agent.ota.smoke import LatencyComparison, RecentFrames, SmokeCheck
from edge_agent.ota.verify import OtaRejectedError
from edge_agent.pipeline import Pipeline
from shared.detections import Detections
from shared.synth import LineConfig
from tests.edge_agent.onnx_models import brightness_detector
from tests.edge_agent.run_watch import RunWatcher
from tests.waiting import wait_for


class CountingModel:
    """An ActiveModel whose runner counts its completed runs."""

    def __init__(self, path: Path, version: int) -> None:
        # As OTA loads candidates: no warm-up at load (the check is what runs them first).
        runner = InferenceRunner(path, RunnerOptions(warm_up_at_load=False))
        self.model = ActiveModel(runner, "det", version)
        self._watch = RunWatcher(runner)

    @property
    def runs(self) -> int:
        return self._watch.done


def recent_frames(count: int) -> RecentFrames:
    recent = RecentFrames()
    image = np.full((120, 160, 3), 128, np.uint8)
    for seq in range(count):
        frame = Frame("cam", seq, image, datetime.now(UTC), time.monotonic())
        recent(DetectionResult(frame, Detections.empty(), None, {}))  # type: ignore[arg-type]
    return recent


def fast_line_stats(seconds: float = 0.0002) -> PipelineStats:
    """Statistics as the line leaves them after 8 one-frame batches of the running model."""
    stats = PipelineStats()
    for _ in range(8):
        stats.record(seconds, 1)
    return stats


def test_on_a_running_line_the_candidate_only_runs_live_frames(tmp_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    live = ActiveModel(InferenceRunner(brightness_detector(tmp_path / "v1.onnx")), "det", 1)
    pipeline = Pipeline(hub, ModelSlot(live), stop)
    recent = recent_frames(3)
    pipeline.start()
    source = SyntheticSource(LineConfig(width=320, height=320, part_size=(28, 52), seed=0))
    CameraWorker("cam0", source, hub, stop, fps_limit=60.0).start()
    assert wait_for(lambda: pipeline.stats.single_frame_infer_s() is not None, timeout=10.0)
    candidate = CountingModel(brightness_detector(tmp_path / "v2.onnx"), 2)
    check = SmokeCheck(
        pipeline.stats,
        recent,
        try_on_line=pipeline.trial_on_live_frames,
        run_model_work=pipeline.call_between_batches,
    )
    measured = check(candidate.model, live)
    stop.set()
    pipeline.join()
    assert pipeline.stats.trial_frames == 3 and candidate.runs == 3, "no run beside the line"
    # Same detector both sides: timed on the line, not side by side, and well within the limit.
    assert measured is not None and not measured.side_by_side and not measured.too_slow
    assert measured.candidate_s > 0 and measured.running_s > 0


def test_without_live_frames_it_runs_on_recent_frames_and_refuses_a_slow_model(
    tmp_path: Path,
) -> None:
    previous = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    slow = CountingModel(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300), 2)
    check = SmokeCheck(fast_line_stats(), recent_frames(5))
    with pytest.raises(OtaRejectedError, match="latency"):
        check(slow.model, previous.model)
    # The last 3 recent frames, then 2 rounds beside the running model before refusing.
    assert slow.runs == 3 + 6
    assert previous.runs == 6, "timed only to confirm; its latency came from the line"


def test_a_load_spike_during_the_trial_does_not_refuse_a_good_model(tmp_path: Path) -> None:
    """The live trial ran while the box was busy (the demo's other agent swapping): timed
    again beside the running model on the same frames, the candidate is as fast."""
    previous = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    candidate = CountingModel(brightness_detector(tmp_path / "v2.onnx"), 2)

    def busy_line(model: ActiveModel, frames: int, *, run_limit_s: float | None) -> list[float]:
        return [0.050] * frames  # 50 ms against the line's 0.2 ms

    check = SmokeCheck(fast_line_stats(), recent_frames(3), try_on_line=busy_line)
    measured = check(candidate.model, previous.model)
    assert candidate.runs == 6 and previous.runs == 6
    # What is reported is the side-by-side figure, not the spike.
    assert measured is not None and measured.side_by_side and measured.candidate_s < 0.050
    assert "timed side by side" in measured.summary()


def test_a_trial_that_brings_too_few_frames_is_topped_up_from_recent_frames(
    tmp_path: Path,
) -> None:
    previous = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    candidate = CountingModel(brightness_detector(tmp_path / "v2.onnx"), 2)
    asked: list[tuple[int, float | None]] = []

    def one_frame_line(
        model: ActiveModel, frames: int, *, run_limit_s: float | None
    ) -> list[float]:
        asked.append((frames, run_limit_s))
        return [0.0002]

    check = SmokeCheck(fast_line_stats(), recent_frames(3), try_on_line=one_frame_line)
    check(candidate.model, previous.model)
    assert candidate.runs == 2 and previous.runs == 0
    # The run limit: 3 x the latency limit, max(2 x 0.2 ms, 0.2 ms + 5 ms).
    assert len(asked) == 1 and asked[0][0] == 3
    assert asked[0][1] == pytest.approx(3 * 0.0052)


def test_a_candidate_with_nan_output_is_refused(tmp_path: Path) -> None:
    previous = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    nan = CountingModel(brightness_detector(tmp_path / "nan.onnx", poison_nan=True), 2)
    with pytest.raises(InferenceError, match="NaN"):
        SmokeCheck(fast_line_stats(), recent_frames(3))(nan.model, previous.model)


def test_with_too_few_line_samples_the_running_model_is_timed_too(tmp_path: Path) -> None:
    previous = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    slow = CountingModel(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300), 2)
    with pytest.raises(OtaRejectedError, match="latency"):
        SmokeCheck(PipelineStats(), recent_frames(3))(slow.model, previous.model)
    assert previous.runs == 3 + 6 and slow.runs == 3 + 6


def test_a_first_model_with_no_frames_yet_passes_without_a_run(tmp_path: Path) -> None:
    candidate = CountingModel(brightness_detector(tmp_path / "v1.onnx"), 1)
    assert SmokeCheck(PipelineStats(), RecentFrames())(candidate.model, None) is None
    assert candidate.runs == 0


def test_the_latency_comparison_reads_as_an_operator_needs_it() -> None:
    fused = LatencyComparison(candidate_s=0.0165, running_s=0.0140, limit_factor=3.0)
    assert fused.summary() == "latency 16.5 ms vs 14.0 ms of the running model (1.18x, limit 3x)"
    assert not fused.too_slow
    # Over 3x, and under the absolute margin for a tiny model: the margin wins.
    assert LatencyComparison(0.0430, 0.0140, 3.0).too_slow
    assert not LatencyComparison(0.0009, 0.0002, 3.0).too_slow
    assert LatencyComparison(0.001, 0.0, 3.0).ratio == float("inf")
    assert LatencyComparison(0.001, 0.0, 3.0).log_fields()["ratio"] is None
