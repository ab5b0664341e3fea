"""Frames to detections in overlapping stages, so the model never waits for Python.

    FrameHub ──▶ [prepare] ──q(W)──▶ [infer x W] ──q(2W)──▶ [finish: decode, NMS, sinks]

``prepare`` letterboxes the newest frames of up to ``max_batch`` cameras while ``infer`` runs
the previous batch (onnxruntime releases the GIL), and ``finish`` decodes and fans out to the
sinks while the next batch runs. Queues are bounded: a slow stage pushes back to the hub,
whose latest-frame policy drops stale frames instead of building a backlog.

``W`` infer workers (``infer_workers``) run that many batches at once. One worker gives each
frame every core (lowest latency). On a CPU box whose cameras outpace the model, W
single-threaded workers finish more frames: onnxruntime's parallel sections lose ~13% at 2
threads, and the decode/letterbox work of the next frame fits beside a single-threaded run,
not beside one that holds every core. ``finish`` emits results in the order ``prepare`` made
the batches, so each camera's frames and events stay in order whatever W is.

The model is read from a :class:`ModelSlot` once per batch in ``infer``. A swap therefore
takes effect between two batches: every frame is processed exactly once, by the old model or
by the new one. Other model work (an OTA candidate's warm-up and smoke check) runs on an
infer worker between two batches (:meth:`Pipeline.call_between_batches`): the candidate never
adds model runs beyond the W the line already has.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_agent.camera import Frame, FrameHub
from edge_agent.errors import InferenceError
from edge_agent.inference import InferenceRunner, Letterbox, letterbox
from shared.detections import Detections

log = logging.getLogger(__name__)

STAGES = ("prepare", "infer", "finish", "total")
# How long queued model work yields to a line that never pauses before it takes a turn.
JOB_PATIENCE_S = 0.5


@dataclass(frozen=True)
class ActiveModel:
    runner: InferenceRunner
    name: str
    version: int | None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runner.info.class_names


class ModelSlot:
    """The model the pipeline runs; replaced atomically by OTA, read once per batch."""

    def __init__(self, model: ActiveModel | None = None) -> None:
        self._lock = threading.Lock()
        self._model = model

    @property
    def current(self) -> ActiveModel | None:
        with self._lock:
            return self._model

    def swap(self, model: ActiveModel) -> ActiveModel | None:
        """Install ``model``; returns the previous one (the caller frees it when done)."""
        with self._lock:
            previous, self._model = self._model, model
        return previous


@dataclass(frozen=True)
class DetectionResult:
    frame: Frame
    detections: Detections  # source pixels
    model: ActiveModel
    latency_s: dict[str, float]


Sink = Callable[[DetectionResult], None]
T = TypeVar("T")
Q = TypeVar("Q")


class _Job:
    """Model work queued for an infer worker; the caller waits for its result."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.queued_at = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the waiting caller
            self.error = exc
        finally:
            self.done.set()


@dataclass
class _Batch:
    frames: list[Frame]
    blob: NDArray[np.floating]
    letterboxes: list[Letterbox]
    model: ActiveModel
    timings: list[dict[str, float]]
    order: int = 0  # prepare's sequence: finish emits batches in this order
    raw: NDArray[np.floating] | None = None  # None after a failed inference


@dataclass
class PipelineStats:
    """Counters and recent latencies for /status, heartbeats and health checks."""

    processed: int = 0
    batches: int = 0
    inference_errors: int = 0
    sink_errors: int = 0
    _recent_infer: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    _recent_done: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_errors(self, frames: int) -> None:
        with self._lock:
            self.inference_errors += frames

    def record_sink_error(self) -> None:
        with self._lock:
            self.sink_errors += 1

    def record(self, infer_s: float, frames: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.processed += frames
            self._recent_infer.append(infer_s)
            for _ in range(frames):
                self._recent_done.append(now)

    def fps(self, window_s: float = 5.0) -> float:
        """Frames finished per second over the last ``window_s`` (0 when idle)."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._recent_done if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        return len(recent) / max(now - recent[0], 1e-6)

    def latency_ms(self, quantile: float) -> float:
        with self._lock:
            values = list(self._recent_infer)
        if not values:
            return 0.0
        return float(np.quantile(np.asarray(values), quantile) * 1000.0)


class Pipeline:
    def __init__(
        self,
        hub: FrameHub,
        models: ModelSlot,
        stop: threading.Event,
        *,
        sinks: list[Sink] | None = None,
        max_batch: int = 1,
        infer_workers: int = 1,
        observe_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        if infer_workers < 1:
            raise ValueError("infer_workers must be at least 1")
        self.hub = hub
        self.models = models
        self.stop_event = stop
        self.sinks: list[Sink] = list(sinks or [])
        self.max_batch = max_batch
        self.stats = PipelineStats()
        self._observe = observe_latency or (lambda _stage, _s: None)
        # One batch waiting per worker is enough to keep the model busy; more would only add
        # latency (and, with live cameras, staleness).
        self._prepared: queue.Queue[_Batch] = queue.Queue(maxsize=infer_workers)
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._inferred: queue.Queue[_Batch] = queue.Queue(maxsize=2 * infer_workers)
        self._infer_threads = [
            threading.Thread(
                target=self._guard,
                args=(self._infer_loop,),
                name="infer" if infer_workers == 1 else f"infer-{i}",
                daemon=True,
            )
            for i in range(infer_workers)
        ]
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._prepare_loop,), name="prepare", daemon=True
            ),
            *self._infer_threads,
            threading.Thread(
                target=self._guard, args=(self._finish_loop,), name="finish", daemon=True
            ),
        ]

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self.hub.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def _guard(self, loop: Callable[[], None]) -> None:
        """A stage that dies would stall the line silently: log loudly and stop the agent."""
        try:
            loop()
        except Exception:
            log.exception("pipeline stage crashed; stopping the agent")
            self.stop_event.set()

    def call_between_batches(self, work: Callable[[], T], timeout_s: float = 60.0) -> T:
        """Run ``work`` (model work: warm-up, smoke check) on an infer worker between two
        batches and return its result, or raise its exception. Runs in the caller's thread
        when the pipeline is not running (nothing to share the cores with)."""
        running = any(t.is_alive() for t in self._infer_threads)
        if not running or threading.current_thread() in self._infer_threads:
            return work()
        job = _Job(work)
        self._jobs.put(job)
        deadline = time.monotonic() + timeout_s
        while not job.done.wait(0.1):
            if not any(t.is_alive() for t in self._infer_threads):
                raise InferenceError("the pipeline stopped before it ran the job")
            if time.monotonic() >= deadline:
                raise InferenceError(f"the pipeline did not run the job within {timeout_s:.0f} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _put(self, target: queue.Queue[Q], item: Q) -> bool:
        while not self.stop_event.is_set():
            try:
                target.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, source: queue.Queue[Q]) -> Q | None:
        try:
            return source.get(timeout=0.1)
        except queue.Empty:
            return None

    # ----------------------------------------------------------------- stages
    def _prepare_loop(self) -> None:
        order = 0
        while not self.stop_event.is_set():
            model = self.models.current
            if model is None:
                self.stop_event.wait(0.05)
                continue
            batch_size = self.max_batch if model.runner.info.batch != 1 else 1
            frames = self.hub.take(batch_size, timeout=0.1)
            if not frames:
                continue
            started = time.monotonic()
            batch = self._letterbox(frames, model)
            prepare_s = time.monotonic() - started
            for timing in batch.timings:
                timing["prepare"] = prepare_s
            batch.order = order
            order += 1
            self._put(self._prepared, batch)

    def _letterbox(self, frames: list[Frame], model: ActiveModel) -> _Batch:
        info = model.runner.info
        blob, boxes = letterbox(
            [f.image for f in frames], info.input_height, info.input_width, dtype=info.input_dtype
        )
        return _Batch(frames, blob, boxes, model, [{} for _ in frames])

    def _after_batch(self) -> None:
        """Run one queued job now, right after a live batch, if it can go unnoticed: nothing
        prepared and no frame waiting, so the job uses the gap before the next frame. On a
        saturated line (a frame always waiting) a job that has waited ``JOB_PATIENCE_S``
        runs anyway: it then delays one frame by one job, the least a busy box can do."""
        try:
            oldest = self._jobs.queue[0]  # a peek; another worker may take it first
        except IndexError:
            return
        quiet = self._prepared.empty() and self.hub.pending() == 0
        if quiet or time.monotonic() - oldest.queued_at >= JOB_PATIENCE_S:
            self._run_one_job()

    def _when_idle(self) -> None:
        """No live batch for a while (no cameras, or all stalled): run the jobs now."""
        while self._prepared.empty() and self._run_one_job():
            pass

    def _run_one_job(self) -> bool:
        try:
            job = self._jobs.get_nowait()
        except queue.Empty:
            return False
        job.run()
        return True

    def _infer_loop(self) -> None:
        while not self.stop_event.is_set():
            batch = self._get(self._prepared)
            if batch is None:
                self._when_idle()
                continue
            model = self.models.current
            if model is not None and model is not batch.model:
                # The model changed after this batch was prepared: prepare it for the new one,
                # so the frame is processed once, by the model that is now active.
                info = model.runner.info
                if (info.input_height, info.input_width) != (
                    batch.model.runner.info.input_height,
                    batch.model.runner.info.input_width,
                ) or info.input_dtype != batch.model.runner.info.input_dtype:
                    redone = self._letterbox(batch.frames, model)
                    redone.order, redone.timings = batch.order, batch.timings
                    batch = redone
                else:
                    batch.model = model
            started = time.monotonic()
            try:
                batch.raw = batch.model.runner.run(batch.blob)
            except InferenceError as exc:
                self.stats.record_errors(len(batch.frames))
                log.warning(
                    "inference failed",
                    extra={"error": str(exc), "model_version": batch.model.version},
                )
                self._put(self._inferred, batch)  # raw None: finish skips it, keeps the order
                continue
            infer_s = time.monotonic() - started
            self.stats.record(infer_s, len(batch.frames))
            self._observe("infer", infer_s)
            for timing in batch.timings:
                timing["infer"] = infer_s
            self._put(self._inferred, batch)
            self._after_batch()

    def _finish_loop(self) -> None:
        # Workers finish out of order; emit in prepare's order. At most 3W batches are in
        # flight, so the buffer stays small, and every batch comes back (failed ones too).
        waiting: dict[int, _Batch] = {}
        next_order = 0
        while not self.stop_event.is_set():
            batch = self._get(self._inferred)
            if batch is None:
                continue
            waiting[batch.order] = batch
            while next_order in waiting:
                self._finish(waiting.pop(next_order))
                next_order += 1

    def _finish(self, batch: _Batch) -> None:
        if batch.raw is None:
            return  # inference failed: counted and logged by the worker
        started = time.monotonic()
        decoded = batch.model.runner.decode(batch.raw)
        for frame, mapping, det, timing in zip(
            batch.frames, batch.letterboxes, decoded, batch.timings, strict=True
        ):
            detections = mapping.to_source(det)
            timing["finish"] = time.monotonic() - started
            timing["total"] = time.monotonic() - frame.captured_mono
            result = DetectionResult(frame, detections, batch.model, timing)
            for sink in self.sinks:
                try:
                    sink(result)
                except Exception:
                    self.stats.record_sink_error()
                    log.exception("sink failed", extra={"sink": getattr(sink, "__name__", "")})
            self._observe("prepare", timing.get("prepare", 0.0))
            self._observe("finish", timing["finish"])
            self._observe("total", timing["total"])
