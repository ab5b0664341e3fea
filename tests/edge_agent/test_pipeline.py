from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.camera import CameraWorker, Frame, FrameHub, SyntheticSource
from edge_agent.errors import InferenceError, RunCancelledError
from edge_agent.frame_path import ActiveModel, DetectionResult, ModelSlot, PipelineStats
from edge_agent.inference import CancelToken, InferenceRunner, RunnerOptions
from edge_agent.live_trial import TrialFailedError
from edge_agent.pipeline import JOB_PATIENCE_S, Pipeline
from shared.synth import LineConfig
from tests.edge_agent.onnx_models import brightness_detector
from tests.edge_agent.run_watch import RunWatcher
from tests.waiting import wait_for as _wait_for


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return brightness_detector(tmp_path / "m.onnx", size=64, dynamic_batch=True)


wait_for = functools.partial(_wait_for, timeout=10.0)


def make_model(path: Path, version: int) -> ActiveModel:
    return ActiveModel(InferenceRunner(path), "det", version)


class Recorder:
    def __init__(self) -> None:
        self.results: list[DetectionResult] = []
        self.lock = threading.Lock()

    def __call__(self, result: DetectionResult) -> None:
        with self.lock:
            self.results.append(result)


def start_line(
    cameras: int, stop: threading.Event, hub: FrameHub, fps: float | None = 60.0
) -> list[CameraWorker]:
    workers = []
    for i in range(cameras):
        source = SyntheticSource(LineConfig(width=320, height=320, part_size=(28, 52), seed=i))
        worker = CameraWorker(f"cam{i}", source, hub, stop, fps_limit=fps)
        worker.start()
        workers.append(worker)
    return workers


@dataclass
class RunningLine:
    """A started pipeline on one synthetic camera, already past its first frames."""

    stop: threading.Event
    hub: FrameHub
    recorder: Recorder
    pipeline: Pipeline
    cameras: list[CameraWorker]

    def close(self) -> None:
        self.stop.set()
        for camera in self.cameras:
            camera.join(2)
        self.pipeline.join()


def running_line(model: ActiveModel, *, fps: float | None, **options: Any) -> RunningLine:
    """``model`` on a one-camera line at ``fps`` (None: saturated), once 5 frames are out;
    ``options`` go to :class:`Pipeline`."""
    stop, hub, recorder = threading.Event(), FrameHub(), Recorder()
    pipeline = Pipeline(hub, ModelSlot(model), stop, sinks=[recorder], **options)
    pipeline.start()
    cameras = start_line(1, stop, hub, fps=fps)
    assert wait_for(lambda: len(recorder.results) >= 5)
    return RunningLine(stop, hub, recorder, pipeline, cameras)


@pytest.mark.parametrize("infer_workers", [1, 2])
def test_frames_flow_through_once_each_in_order(model_path: Path, infer_workers: int) -> None:
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()
    pipeline = Pipeline(
        hub,
        ModelSlot(make_model(model_path, 1)),
        stop,
        sinks=[recorder],
        max_batch=2,
        infer_workers=infer_workers,
    )
    pipeline.start()
    start_line(2, stop, hub)
    assert wait_for(lambda: len(recorder.results) >= 40)
    stop.set()
    pipeline.join()
    keys = [(r.frame.camera_id, r.frame.sequence) for r in recorder.results]
    assert len(keys) == len(set(keys)), "no frame processed twice"
    for cam in ("cam0", "cam1"):
        seqs = [s for c, s in keys if c == cam]
        assert seqs == sorted(seqs) and len(seqs) > 5
    result = recorder.results[-1]
    assert set(result.latency_s) == {"prepare", "infer", "finish", "total"}
    assert pipeline.stats.processed >= len(recorder.results)


@pytest.mark.parametrize("infer_workers", [1, 2])
def test_swap_between_frames_loses_and_repeats_nothing(
    model_path: Path, tmp_path: Path, infer_workers: int
) -> None:
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()
    slot = ModelSlot(make_model(model_path, 1))
    pipeline = Pipeline(hub, slot, stop, sinks=[recorder], max_batch=1, infer_workers=infer_workers)
    pipeline.start()
    workers = start_line(1, stop, hub, fps=120.0)
    assert wait_for(lambda: len(recorder.results) >= 20)
    # A new model with a different input size: batches prepared for the old one are redone.
    new = ActiveModel(InferenceRunner(brightness_detector(tmp_path / "v2.onnx", size=96)), "det", 2)
    old = slot.swap(new)
    assert old is not None and old.version == 1
    assert wait_for(lambda: sum(r.model.version == 2 for r in recorder.results) >= 20)
    for worker in workers:
        stop.set()
        worker.join(2)
    pipeline.join()
    time.sleep(0.1)
    seqs = [r.frame.sequence for r in recorder.results]
    assert len(seqs) == len(set(seqs)), "no frame processed twice"
    delivered = hub.delivered["cam0"]
    assert len(seqs) >= delivered - 6, "at most the frames in flight at stop are unreported"
    versions = [r.model.version for r in recorder.results]
    switch = versions.index(2)
    assert set(versions[:switch]) == {1}
    # One clean switch; with W workers a frame already running on the old model may be
    # reported after a later frame that started on the new one (at most W - 1 of them).
    assert versions[switch:].count(1) <= infer_workers - 1
    assert set(versions[switch + infer_workers :]) == {2}


@pytest.mark.parametrize("infer_workers", [1, 2])
def test_inference_errors_are_counted_and_the_line_keeps_going(
    tmp_path: Path, infer_workers: int
) -> None:
    path = brightness_detector(tmp_path / "nan.onnx", nan_when_bright=True)
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()
    pipeline = Pipeline(
        hub, ModelSlot(make_model(path, 1)), stop, sinks=[recorder], infer_workers=infer_workers
    )
    hub.register("cam")
    pipeline.start()
    now = datetime.now(UTC)
    dark, bright = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)
    for seq, image in enumerate([dark, bright, dark]):
        hub.put(Frame("cam", seq, image, now, time.monotonic()))
        assert wait_for(
            lambda s=seq: pipeline.stats.processed + pipeline.stats.inference_errors > s
        )
    stop.set()
    pipeline.join()
    assert pipeline.stats.inference_errors == 1
    assert [r.frame.sequence for r in recorder.results] == [0, 2]


def test_a_failing_sink_does_not_stop_the_others(model_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()

    def broken(_result: DetectionResult) -> None:
        raise RuntimeError("sink bug")

    pipeline = Pipeline(hub, ModelSlot(make_model(model_path, 1)), stop, sinks=[broken, recorder])
    pipeline.start()
    start_line(1, stop, hub)
    assert wait_for(lambda: len(recorder.results) >= 5)
    stop.set()
    pipeline.join()
    assert pipeline.stats.sink_errors >= 5
    assert pipeline.alive is False


def test_no_model_means_no_processing_but_no_crash() -> None:
    stop, hub = threading.Event(), FrameHub()
    pipeline = Pipeline(hub, ModelSlot(), stop)
    pipeline.start()
    start_line(1, stop, hub)
    time.sleep(0.3)
    assert pipeline.stats.processed == 0 and pipeline.alive
    stop.set()
    pipeline.join()


def test_latest_frame_policy_under_a_slow_model(model_path: Path) -> None:
    """Cameras faster than the model: stale frames are dropped, nothing queues up."""
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()
    pipeline = Pipeline(hub, ModelSlot(make_model(model_path, 1)), stop, sinks=[recorder])
    slow = threading.Event()

    def slow_sink(_r: DetectionResult) -> None:
        slow.wait(0.02)

    pipeline.add_sink(slow_sink)
    pipeline.start()
    start_line(1, stop, hub, fps=None)  # as fast as the generator goes
    assert wait_for(lambda: len(recorder.results) >= 20)
    stop.set()
    pipeline.join()
    assert hub.dropped["cam0"] > 0
    lags = Counter(r.frame.sequence for r in recorder.results)
    assert max(lags.values()) == 1
    assert max(r.latency_s["total"] for r in recorder.results[5:]) < 1.0, "no backlog builds up"


def test_model_work_runs_on_the_infer_thread_between_live_batches(
    model_path: Path, tmp_path: Path
) -> None:
    live = make_model(model_path, 1)
    candidate = make_model(brightness_detector(tmp_path / "c.onnx", size=64), 2)
    live_watch = RunWatcher(live.runner, hold_s=0.002)
    line = running_line(live, fps=None, max_batch=1)  # saturated: a frame is always waiting
    threads: list[str] = []
    blob = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)

    def candidate_run(cancel: CancelToken) -> int:
        threads.append(threading.current_thread().name)
        with live_watch.lock:  # the live model is not running while the candidate does
            assert live_watch.active == 0
        return int(candidate.runner.run(blob, cancel=cancel).shape[0])

    started = time.monotonic()
    results = [line.pipeline.call_between_batches(candidate_run) for _ in range(3)]
    elapsed = time.monotonic() - started
    line.close()
    assert results == [1, 1, 1]
    # A live frame may cancel an attempt, which then runs again: 3 or more, all on "infer".
    assert len(threads) >= 3 and set(threads) == {"infer"}
    assert live_watch.overlaps == 0, "one worker: the candidate never runs beside the live model"
    # A line that never pauses still gives queued work a turn after 2 x JOB_PATIENCE_S.
    assert elapsed < 3 * (2 * JOB_PATIENCE_S + 1.0)


def test_live_frames_cancel_model_work_that_does_not_fit_a_gap(
    model_path: Path, tmp_path: Path
) -> None:
    # A candidate run (~40 ms) never fits between two frames at 60 fps: each live frame
    # cancels it at once instead of waiting for it; past JOB_PATIENCE_S it runs to the end.
    line = running_line(make_model(model_path, 1), fps=60.0)
    slow = InferenceRunner(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300))
    blob = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)
    attempts: list[str] = []

    def candidate_run(cancel: CancelToken) -> tuple[int, ...]:
        try:
            shape = tuple(slow.run(blob, cancel=cancel).shape)
        except RunCancelledError:
            attempts.append("cancelled")
            raise
        attempts.append("done")
        return shape

    assert line.pipeline.call_between_batches(candidate_run) == (1, 9, 16)
    line.close()
    assert attempts[-1] == "done" and attempts.count("done") == 1
    assert attempts.count("cancelled") >= 1, "live frames made the job give way"
    seqs = [r.frame.sequence for r in line.recorder.results]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


def test_pipeline_measures_the_live_models_single_frame_latency() -> None:
    stats = PipelineStats()
    for _ in range(7):
        stats.record(0.010, 1)
    stats.record(0.040, 4)  # a multi-camera batch says nothing about one frame
    assert stats.single_frame_infer_s() is None, "too few one-frame batches yet"
    stats.record(0.030, 1)
    assert stats.single_frame_infer_s() == pytest.approx(0.010)


def test_model_work_errors_reach_the_caller_and_the_line_keeps_going(model_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    recorder = Recorder()
    pipeline = Pipeline(hub, ModelSlot(make_model(model_path, 1)), stop, sinks=[recorder])
    pipeline.start()
    start_line(1, stop, hub, fps=30.0)

    def broken(_cancel: CancelToken) -> None:
        raise InferenceError("model output contains NaN or infinity")

    with pytest.raises(InferenceError, match="NaN"):
        pipeline.call_between_batches(broken)
    seen = len(recorder.results)
    assert wait_for(lambda: len(recorder.results) > seen + 3)
    stop.set()
    pipeline.join()


def test_model_work_runs_in_place_when_the_pipeline_is_not_running(model_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    pipeline = Pipeline(hub, ModelSlot(make_model(model_path, 1)), stop)
    assert pipeline.call_between_batches(lambda _: threading.current_thread()) is (
        threading.current_thread()
    )
    pipeline.start()
    stop.set()
    pipeline.join()
    # Stopped: in place again, never a wait for a thread that is gone.
    assert pipeline.call_between_batches(lambda _: 7) == 7


def test_two_workers_run_two_frames_at_once_and_report_them_in_order(model_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    live = make_model(model_path, 1)
    watch = RunWatcher(live.runner, hold_s=0.002)
    recorder = Recorder()
    pipeline = Pipeline(hub, ModelSlot(live), stop, sinks=[recorder], infer_workers=2)
    pipeline.start()
    start_line(1, stop, hub, fps=None)  # saturated: both workers always have a frame
    assert wait_for(lambda: len(recorder.results) >= 60)
    names: list[str] = []
    pipeline.call_between_batches(lambda _: names.append(threading.current_thread().name))
    stop.set()
    pipeline.join()
    assert watch.overlaps > 0, "two inferences in flight at once"
    seqs = [r.frame.sequence for r in recorder.results]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert names and names[0].startswith("infer-")


def test_infer_workers_must_be_positive(model_path: Path) -> None:
    with pytest.raises(ValueError, match="infer_workers"):
        Pipeline(FrameHub(), ModelSlot(), threading.Event(), infer_workers=0)


@pytest.mark.parametrize("infer_workers", [1, 2])
def test_a_candidate_on_trial_runs_live_frames_instead_of_the_running_model(
    model_path: Path, tmp_path: Path, infer_workers: int
) -> None:
    live = make_model(model_path, 1)
    # A different input size: the trial frames are letterboxed again for the candidate.
    candidate = make_model(brightness_detector(tmp_path / "c.onnx", size=96), 2)
    live_runs, candidate_runs = RunWatcher(live.runner), RunWatcher(candidate.runner)
    line = running_line(live, fps=60.0, infer_workers=infer_workers)
    pipeline, recorder = line.pipeline, line.recorder
    timings = pipeline.trial_on_live_frames(candidate, 3)
    assert wait_for(lambda: len(recorder.results) >= 20)
    line.close()
    assert len(timings) == 3 and all(t > 0 for t in timings)
    assert pipeline.models.current is live, "a trial is not a swap"
    versions = [r.model.version for r in recorder.results]
    assert versions.count(2) == 3 and pipeline.stats.trial_frames == 3
    seqs = [r.frame.sequence for r in recorder.results]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    # No extra model work: every model run that finished is a frame the line reported.
    assert live_runs.done + candidate_runs.done == len(recorder.results)
    trial_result = next(r for r in recorder.results if r.model.version == 2)
    assert trial_result.latency_s["infer"] > 0


def test_a_candidate_that_fails_a_live_frame_never_reaches_the_line(
    model_path: Path, tmp_path: Path
) -> None:
    stop, hub = threading.Event(), FrameHub()
    live = make_model(model_path, 1)
    live_runs = RunWatcher(live.runner)
    recorder = Recorder()
    pipeline = Pipeline(hub, ModelSlot(live), stop, sinks=[recorder])
    hub.register("cam")
    pipeline.start()
    nan_path = brightness_detector(tmp_path / "nan.onnx", size=64, poison_nan=True)
    nan = ActiveModel(InferenceRunner(nan_path, RunnerOptions(warm_up_at_load=False)), "det", 2)
    nan_runs = RunWatcher(nan.runner)
    outcome: list[BaseException] = []

    def trial() -> None:
        try:
            pipeline.trial_on_live_frames(nan, 3)
        except TrialFailedError as exc:
            outcome.append(exc)

    trying = threading.Thread(target=trial)
    trying.start()
    assert wait_for(lambda: pipeline._trial is not None)
    image = np.full((64, 64, 3), 128, np.uint8)
    for seq in range(3):  # one at a time: the first goes to the candidate, which fails it
        hub.put(Frame("cam", seq, image, datetime.now(UTC), time.monotonic()))
        assert wait_for(lambda s=seq: len(recorder.results) > s)
    trying.join(5)
    stop.set()
    pipeline.join()
    assert outcome and "NaN" in str(outcome[0])
    assert nan_runs.done == 0, "its one run raised: the output never left the worker"
    # The frame it failed was run again by the running model: every frame once, from v1.
    assert [r.frame.sequence for r in recorder.results] == [0, 1, 2]
    assert {r.model.version for r in recorder.results} == {1} and live_runs.done == 3
    assert pipeline.stats.inference_errors == 0, "the running model did not fail"


def test_a_candidate_far_over_the_run_limit_is_stopped_mid_run(
    model_path: Path, tmp_path: Path
) -> None:
    line = running_line(make_model(model_path, 1), fps=30.0)
    slow = make_model(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300), 2)
    slow_runs = RunWatcher(slow.runner)
    with pytest.raises(TrialFailedError, match=r"latency over 5\.0 ms"):
        line.pipeline.trial_on_live_frames(slow, 3, run_limit_s=0.005)
    line.close()
    assert slow_runs.cancelled == 1 and slow_runs.done == 0
    assert {r.model.version for r in line.recorder.results} == {1}


def test_a_trial_without_live_frames_returns_none(model_path: Path, tmp_path: Path) -> None:
    stop, hub = threading.Event(), FrameHub()
    pipeline = Pipeline(hub, ModelSlot(make_model(model_path, 1)), stop)
    candidate = make_model(brightness_detector(tmp_path / "c.onnx", size=64), 2)
    assert pipeline.trial_on_live_frames(candidate, 3) == [], "not running: at once"
    pipeline.start()
    # Running, but no camera brings a frame: the caller gets nothing after the timeout.
    assert pipeline.trial_on_live_frames(candidate, 3, timeout_s=0.2) == []
    stop.set()
    pipeline.join()


def test_trial_frames_stay_out_of_the_running_models_latency() -> None:
    stats = PipelineStats()
    for _ in range(8):
        stats.record(0.010, 1)
    stats.record(0.500, 1, on_trial=True)
    assert stats.single_frame_infer_s() == pytest.approx(0.010)
    assert stats.latency_ms(1.0) == pytest.approx(10.0)
    assert stats.processed == 9 and stats.trial_frames == 1
