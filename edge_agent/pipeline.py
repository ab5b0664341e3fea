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
by the new one. Before a swap, an OTA candidate is tried on a few live one-frame batches in
place of the running model (:meth:`Pipeline.trial_on_live_frames`, see
:mod:`edge_agent.live_trial`): the smoke check costs the line no extra model run, and a frame
the candidate fails is run again on the running model. Other model work (a GPU candidate's
warm-up, smoke runs on recent frames when the line brings none) runs on an infer worker
between two batches (:meth:`Pipeline.call_between_batches`). It runs in the line's gaps and
gives way: a frame that arrives while no worker is free cancels it (:class:`CancelToken`,
~1 ms) and it is tried again in a later gap. Only a job that has waited past
``JOB_PATIENCE_S`` (a line whose gaps are shorter than the job) runs whole and makes a frame
wait for it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_agent.camera import Frame, FrameHub
from edge_agent.errors import InferenceError, RunCancelledError
from edge_agent.frame_path import (
    ActiveModel,
    DetectionResult,
    ModelSlot,
    ModelWork,
    PipelineStats,
    Sink,
)
from edge_agent.inference import (
    CancelToken,
    Letterbox,
    blob_from_canvases,
    letterbox_i420,
    letterbox_image,
)
from edge_agent.live_trial import LiveTrial
from shared.detections import Detections

log = logging.getLogger(__name__)

T = TypeVar("T")
Q = TypeVar("Q")

STAGES = ("prepare", "infer", "finish", "total")
# How long a trial waits for live frames before the caller falls back to model work.
TRIAL_TIMEOUT_S = 3.0
# Queued model work runs in the line's gaps. For its first JOB_PATIENCE_S a frame that needs
# the worker cancels it; after that it runs to the end once it starts (in a gap: a frame then
# waits for the rest of one job, not all of it), and after twice that, if the line never
# pauses, it runs at once (one frame waits one job). The work always gets done.
JOB_PATIENCE_S = 1.0


class _Job:
    """Model work queued for an infer worker; the caller waits for its result."""

    def __init__(self, work: ModelWork[Any]) -> None:
        self.work = work
        self.queued_at = time.monotonic()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self, token: CancelToken) -> bool:
        """Run once; False if a live frame cancelled it (queue it again), True when done."""
        try:
            self.result = self.work(token)
        except RunCancelledError:
            return False
        except BaseException as exc:  # noqa: BLE001 - handed back to the waiting caller
            self.error = exc
        self.done.set()
        return True

    @property
    def waited_s(self) -> float:
        return time.monotonic() - self.queued_at


@dataclass
class _Batch:
    frames: list[Frame]
    blob: NDArray[np.floating]
    letterboxes: list[Letterbox]
    model: ActiveModel
    timings: list[dict[str, float]]
    order: int = 0  # prepare's sequence: finish emits batches in this order
    raw: NDArray[np.floating] | None = None  # None after a failed inference
    decoded: list[Detections] | None = None  # already decoded (a candidate's, on trial)


def letterbox_frame(frame: Frame, height: int, width: int) -> tuple[NDArray[np.uint8], Letterbox]:
    """The model's canvas for a frame. A decoded camera picture is letterboxed from its YUV
    planes and never converted at full size unless a sink asks for the image
    (:func:`~edge_agent.inference.letterbox_i420`); anything else from its BGR image."""
    planes = frame.i420()
    if planes is not None:
        fitted = letterbox_i420(planes, height, width)
        if fitted is not None:
            return fitted
    return letterbox_image(frame.image, height, width)


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
        # Which workers wait for a batch, and the tokens of running jobs: a batch that finds
        # no worker waiting cancels the jobs (see ``_make_way``).
        self._workers_lock = threading.Lock()
        self._waiting_workers = 0
        self._job_tokens: set[CancelToken] = set()
        self._trial: LiveTrial | None = None  # a candidate on trial, read once per batch
        self._trial_lock = threading.Lock()
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

    def call_between_batches(self, work: ModelWork[T], timeout_s: float = 60.0) -> T:
        """Run ``work`` (model work: warm-up, smoke check) on an infer worker between two
        batches and return its result, or raise its exception. ``work`` gets a token that is
        cancelled when a live frame needs the worker, and then runs again in a later gap.
        Runs in the caller's thread when the pipeline is not running (nothing to share the
        cores with)."""
        if not self._workers_running() or threading.current_thread() in self._infer_threads:
            return work(CancelToken())
        job = _Job(work)
        self._jobs.put(job)
        deadline = time.monotonic() + timeout_s
        while not job.done.wait(0.1):
            if not self._workers_running():
                raise InferenceError("the pipeline stopped before it ran the job")
            if time.monotonic() >= deadline:
                raise InferenceError(f"the pipeline did not run the job within {timeout_s:.0f} s")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def trial_on_live_frames(
        self,
        candidate: ActiveModel,
        frames: int,
        *,
        run_limit_s: float | None = None,
        timeout_s: float = TRIAL_TIMEOUT_S,
    ) -> list[float]:
        """Run ``candidate`` instead of the running model on the next ``frames`` one-frame
        batches and return its run times: fewer (none if the pipeline is not running) if the
        line brings fewer frames within ``timeout_s``. Raises
        :class:`~edge_agent.live_trial.TrialFailedError` if it failed a frame or ran past
        ``run_limit_s``; that frame was then processed by the running model."""
        if frames < 1 or not self._workers_running():
            return []
        trial = LiveTrial(candidate, frames, run_limit_s)
        with self._trial_lock:
            if self._trial is not None:
                raise InferenceError("another model is already on trial")
            self._trial = trial
        try:
            return trial.wait(timeout_s)
        finally:
            with self._trial_lock:
                self._trial = None

    def _workers_running(self) -> bool:
        return any(t.is_alive() for t in self._infer_threads)

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

    def _next_batch(self) -> _Batch | None:
        with self._workers_lock:
            self._waiting_workers += 1
        try:
            return self._get(self._prepared)
        finally:
            with self._workers_lock:
                self._waiting_workers -= 1

    def _make_way(self) -> None:
        """A frame is coming and no worker waits for it: cancel the model work in its way."""
        with self._workers_lock:
            if self._waiting_workers == 0:
                for token in self._job_tokens:
                    token.cancel()

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
            taken = time.monotonic()
            for frame in frames:
                self.stats.record_frame_age(frame.camera_id, taken - frame.captured_mono)
            self._make_way()  # early: the letterbox then runs beside no model work
            started = time.monotonic()
            batch = self._letterbox(frames, model)
            prepare_s = time.monotonic() - started
            for timing in batch.timings:
                timing["prepare"] = prepare_s
            batch.order = order
            order += 1
            self._put(self._prepared, batch)
            self._make_way()  # again: a job may have started while this batch was made

    def _letterbox(self, frames: list[Frame], model: ActiveModel) -> _Batch:
        info = model.runner.info
        canvases, boxes = [], []
        for frame in frames:
            canvas, mapping = letterbox_frame(frame, info.input_height, info.input_width)
            canvases.append(canvas)
            boxes.append(mapping)
        blob = blob_from_canvases(canvases, dtype=info.input_dtype)
        return _Batch(frames, blob, boxes, model, [{} for _ in frames])

    def _after_batch(self) -> None:
        """Right after a live batch: run one queued job if nothing is prepared and no frame
        waits (a gap), or if it has waited so long that the line evidently has no gaps."""
        try:
            oldest = self._jobs.queue[0]  # a peek; another worker may take it first
        except IndexError:
            return
        gap = self._prepared.empty() and self.hub.pending() == 0
        if gap or oldest.waited_s >= 2 * JOB_PATIENCE_S:
            self._run_one_job()

    def _when_idle(self) -> None:
        """No live batch for a while (no cameras, or all stalled): run the jobs now."""
        while self._prepared.empty() and self._run_one_job():
            pass

    def _run_one_job(self) -> bool:
        """Run the oldest job; False if there was none or a live frame cancelled it."""
        try:
            job = self._jobs.get_nowait()
        except queue.Empty:
            return False
        token = CancelToken()
        cancellable = job.waited_s < JOB_PATIENCE_S
        if cancellable:
            with self._workers_lock:
                self._job_tokens.add(token)
        try:
            finished = job.run(token)
        finally:
            with self._workers_lock:
                self._job_tokens.discard(token)
        if not finished:
            self._jobs.put(job)  # one caller waits on one job at a time: order is kept
        return finished

    def _infer_loop(self) -> None:
        while not self.stop_event.is_set():
            batch = self._next_batch()
            if batch is None:
                self._when_idle()
                continue
            model = self.models.current
            if model is not None and model is not batch.model:
                # The model changed after this batch was prepared: prepare it for the new one,
                # so the frame is processed once, by the model that is now active.
                batch = self._for_model(batch, model)
            if not self._run_on_trial(batch):
                self._run_live(batch)
            self._after_batch()

    def _for_model(self, batch: _Batch, model: ActiveModel) -> _Batch:
        """``batch`` for ``model``: letterboxed again if its input differs (a new copy, the
        original stays usable for the model it was made for)."""
        info, made_for = model.runner.info, batch.model.runner.info
        if (info.input_height, info.input_width, info.input_dtype) == (
            made_for.input_height,
            made_for.input_width,
            made_for.input_dtype,
        ):
            return dataclasses.replace(batch, model=model)
        redone = self._letterbox(batch.frames, model)
        redone.order, redone.timings = batch.order, batch.timings
        return redone

    def _run_live(self, batch: _Batch) -> None:
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
            return
        self._emit(batch, time.monotonic() - started, on_trial=False)

    def _run_on_trial(self, batch: _Batch) -> bool:
        """Run a one-frame batch on the candidate on trial, if there is one and it wants the
        frame. False if not, or if the candidate failed it: the running model runs it then."""
        trial = self._trial
        if trial is None or len(batch.frames) != 1 or not trial.claim():
            return False
        runner = trial.candidate.runner
        token = CancelToken()
        limit = trial.run_limit_s
        timer = threading.Timer(limit, token.cancel) if limit is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        started = time.monotonic()
        try:
            attempt = self._for_model(batch, trial.candidate)
            attempt.raw = runner.run(attempt.blob, cancel=token)
            infer_s = time.monotonic() - started
            attempt.decoded = runner.decode(attempt.raw)  # here, so a failure can fall back
        except RunCancelledError:  # only the run limit cancels a trial run
            trial.failed(f"latency over {(limit or 0) * 1000:.1f} ms on a live frame: stopped")
            return False
        except Exception as exc:  # noqa: BLE001 - untrusted model: any failure refuses it
            trial.failed(str(exc) if isinstance(exc, InferenceError) else repr(exc))
            return False
        finally:
            if timer is not None:
                timer.cancel()
        trial.succeeded(infer_s)
        self._emit(attempt, infer_s, on_trial=True)
        return True

    def _emit(self, batch: _Batch, infer_s: float, *, on_trial: bool) -> None:
        self.stats.record(infer_s, len(batch.frames), on_trial=on_trial)
        self._observe("infer", infer_s)
        for timing in batch.timings:
            timing["infer"] = infer_s
        self._put(self._inferred, batch)

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
        decoded = batch.decoded
        if decoded is None:
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
