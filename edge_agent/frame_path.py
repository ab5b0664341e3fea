"""The frame path's vocabulary: the model the pipeline runs, what it hands its sinks, model
work for an infer worker, and the counters every part reads.

Kept apart from the engine (:mod:`edge_agent.pipeline`) so that the parts around it (the OTA
controller, the smoke check, the sinks, the local API) depend on these types and not on the
engine itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from edge_agent.camera import Frame
from edge_agent.inference import CancelToken, InferenceRunner
from edge_agent.inference.selection import RuntimeChoice
from shared.detections import Detections


@dataclass(frozen=True)
class ActiveModel:
    runner: InferenceRunner
    name: str
    version: int | None
    # The artifact's digest from its manifest: a version is identified by it, not by its
    # number alone (None for a model configured without a manifest).
    sha256: str | None = None
    # How this model's runtime and model file were chosen (None: configured, no choice).
    runtime_choice: RuntimeChoice | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.runner.info.class_names

    @property
    def precision(self) -> str:
        """Of the model file running: fp32 (the reference) or the variant chosen."""
        return "fp32" if self.runtime_choice is None else self.runtime_choice.precision


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


# Model work: gets a token the pipeline cancels when a live frame needs the worker; it must
# pass it to every model run (``runner.run(blob, cancel=token)``) and may be run again.
ModelWork = Callable[[CancelToken], T]


@dataclass
class PipelineStats:
    """Counters and recent latencies for /status, heartbeats and health checks."""

    processed: int = 0
    batches: int = 0
    trial_frames: int = 0  # processed by an OTA candidate on trial (in ``processed`` too)
    inference_errors: int = 0
    sink_errors: int = 0
    _recent_infer: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    _recent_single: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    _recent_done: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    # Per camera: how old each frame was when the pipeline took it (camera read -> pickup).
    _frame_ages: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_frame_age(self, camera_id: str, age_s: float) -> None:
        with self._lock:
            ages = self._frame_ages.get(camera_id)
            if ages is None:
                ages = self._frame_ages[camera_id] = deque(maxlen=256)
            ages.append(age_s)

    def frame_age_ms(self, camera_id: str, quantile: float) -> float:
        """A quantile of the recent frames' age at pickup, in ms (0 before any frame)."""
        with self._lock:
            values = list(self._frame_ages.get(camera_id, ()))
        if not values:
            return 0.0
        return float(np.quantile(np.asarray(values), quantile) * 1000.0)

    def record_errors(self, frames: int) -> None:
        with self._lock:
            self.inference_errors += frames

    def record_sink_error(self) -> None:
        with self._lock:
            self.sink_errors += 1

    def record(self, infer_s: float, frames: int, *, on_trial: bool = False) -> None:
        """``on_trial``: a candidate's batch. It counts as processed, but its time stays out
        of the running model's latency figures (the next smoke check and probation use them)."""
        now = time.monotonic()
        with self._lock:
            self.batches += 1
            self.processed += frames
            if on_trial:
                self.trial_frames += frames
            else:
                self._recent_infer.append(infer_s)
                if frames == 1:
                    self._recent_single.append(infer_s)
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

    def single_frame_infer_s(self, min_samples: int = 8) -> float | None:
        """Median model time of the recent one-frame batches, or None with too few: the
        running model's latency on the line, measured without running it again."""
        with self._lock:
            values = list(self._recent_single)
        return float(np.median(values)) if len(values) >= min_samples else None

    def latency_ms(self, quantile: float) -> float:
        with self._lock:
            values = list(self._recent_infer)
        if not values:
            return 0.0
        return float(np.quantile(np.asarray(values), quantile) * 1000.0)
