"""The smoke check a candidate passes before the swap: its outputs are finite and decode,
and it is not much slower than the running model, on real frames from this line.

It tries the candidate on live frames in place of the running model
(:meth:`~edge_agent.pipeline.Pipeline.trial_on_live_frames`), so the line does no extra
model run, and takes the running model's latency from the line's own statistics. Only when
the line brings no frames (stalled cameras, no running model) does it run the models on
recent frames, as model work in the line's gaps.

Those two figures come from different moments. A candidate that looks too slow is timed
again beside the running model, alternately on the same recent frames, before it is refused:
a spike of the box's load (a second agent swapping on the same two cores, a trainer
finishing) then slows both. CI saw the demo refuse a good model at 40.3 ms against the
line's 14.5 ms while the box's other agent was swapping.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from edge_agent.camera import Frame
from edge_agent.config import DEFAULT_LATENCY_FACTOR
from edge_agent.frame_path import ActiveModel, DetectionResult, ModelWork, PipelineStats
from edge_agent.inference import CancelToken, letterbox
from edge_agent.ota.verify import OtaRejectedError

T = TypeVar("T")
# Runs model work where it does not compete with the live model (the pipeline's
# ``call_between_batches``, which may cancel and rerun it); the default runs it in place.
ModelWorkRunner = Callable[[ModelWork[T]], T]

MIN_LATENCY_MARGIN_S = 0.005
# A single trial frame this many times over the latency limit is stopped at once: the model is
# refused, and the frame waits at most that long before the running model processes it.
TRIAL_RUN_LIMIT_FACTOR = 3.0


def run_in_place(work: ModelWork[T]) -> T:
    return work(CancelToken())


class LineTrial(Protocol):
    """Tries a candidate on live frames in place of the running model and returns its run
    times (the pipeline's ``trial_on_live_frames``); raises if it failed a frame."""

    def __call__(
        self, candidate: ActiveModel, frames: int, *, run_limit_s: float | None
    ) -> list[float]: ...


def no_line(candidate: ActiveModel, frames: int, *, run_limit_s: float | None) -> list[float]:
    """No live line to try a candidate on: the smoke check runs on recent frames instead."""
    return []


@dataclass(frozen=True)
class LatencyComparison:
    """What the smoke check measured: the candidate's and the running model's median
    one-frame latency, and whether they were timed side by side (the first figures made the
    candidate look too slow). Reported, so an operator sees what an update costs each box."""

    candidate_s: float
    running_s: float
    limit_factor: float
    side_by_side: bool = False

    @property
    def ratio(self) -> float:
        return self.candidate_s / self.running_s if self.running_s > 0 else float("inf")

    @property
    def too_slow(self) -> bool:
        return self.candidate_s > latency_limit_s(self.running_s, self.limit_factor)

    def log_fields(self) -> dict[str, object]:
        """The same figures as structured log fields (no infinite ratio: JSON has none)."""
        return {
            "candidate_ms": round(self.candidate_s * 1000, 2),
            "running_ms": round(self.running_s * 1000, 2),
            "ratio": round(self.ratio, 3) if math.isfinite(self.ratio) else None,
            "limit_factor": self.limit_factor,
            "side_by_side": self.side_by_side,
        }

    def summary(self) -> str:
        timed = ", timed side by side" if self.side_by_side else ""
        return (
            f"latency {self.candidate_s * 1000:.1f} ms vs {self.running_s * 1000:.1f} ms of "
            f"the running model ({self.ratio:.2f}x, limit {self.limit_factor:g}x{timed})"
        )


def latency_limit_s(old_s: float, factor: float) -> float:
    """The slowest a candidate may run: ``factor`` times the running model, and never less
    than an absolute margin above it (tiny models jitter by whole multiples)."""
    return max(factor * old_s, old_s + MIN_LATENCY_MARGIN_S)


class RecentFrames:
    """A pipeline sink keeping the last few frames: the fallback smoke runs use real input."""

    def __init__(self, size: int = 8) -> None:
        self._frames: deque[Frame] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __call__(self, result: DetectionResult) -> None:
        with self._lock:
            self._frames.append(result.frame)

    def images(self) -> list[Any]:
        with self._lock:
            return [f.image for f in self._frames]


def run_times(
    model: ActiveModel, images: list[Any], run_model_work: ModelWorkRunner[Any]
) -> list[float]:
    """Inference times on ``images``, each run one piece of model work. Only ``run`` is
    timed: decoding real detections is cold the first time (a good model once measured
    5.7 ms vs 0.7 ms with decoding on the clock and was refused). A run a live frame
    cancels is run again, and not timed."""
    info = model.runner.info
    blobs = [
        letterbox([image], info.input_height, info.input_width, dtype=info.input_dtype)[0]
        for image in images
    ]

    def timed_run(blob: Any, cancel: CancelToken) -> float:
        started = time.perf_counter()
        output = model.runner.run(blob, cancel=cancel)  # raises on NaN/inf
        elapsed = time.perf_counter() - started
        model.runner.decode(output)  # must decode, off the clock
        return elapsed

    return [run_model_work(functools.partial(timed_run, blob)) for blob in blobs]


def _median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2])


@dataclass(frozen=True)
class SmokeCheck:
    stats: PipelineStats
    recent: RecentFrames
    frames: int = 3
    latency_factor: float = DEFAULT_LATENCY_FACTOR
    try_on_line: LineTrial = no_line
    run_model_work: ModelWorkRunner[Any] = run_in_place
    # Rounds over the recent frames when a slow-looking candidate is timed beside the
    # running model (each round runs both once per frame, alternately).
    confirm_rounds: int = 2

    def __call__(
        self,
        candidate: ActiveModel,
        previous: ActiveModel | None,
        *,
        proven_latency_s: float | None = None,
    ) -> LatencyComparison | None:
        """Raises :class:`~edge_agent.errors.EdgeAgentError` (a failed run) or
        :class:`OtaRejectedError` (too slow) if ``candidate`` must not replace ``previous``;
        else the latencies compared (None when there was nothing to compare with).

        ``proven_latency_s``: the candidate's own one-frame latency when it last ran well on
        this line (a signed rollback to it). It is then held to its own past, not to the model
        it replaces: a broken model may be the fast one."""
        # The running model's one-frame latency, read before any candidate frame is counted.
        old_s = self.stats.single_frame_infer_s() if previous is not None else None
        if proven_latency_s is not None and previous is not None:
            old_s = proven_latency_s
        timings: list[float] = []
        if previous is not None:  # no running model: no line to try it on
            run_limit = (
                None
                if old_s is None
                else latency_limit_s(old_s, self.latency_factor) * TRIAL_RUN_LIMIT_FACTOR
            )
            timings = self.try_on_line(candidate, self.frames, run_limit_s=run_limit)
        images = self.recent.images()[-self.frames :]
        if len(timings) < self.frames and images:
            timings += run_times(candidate, images[len(timings) :], self.run_model_work)
        if not timings or previous is None:
            # No frames yet (agent just started), or nothing to compare with: the runs
            # above still refused a failing model, and probation guards the swap.
            return None
        new_s = _median(timings)
        if old_s is None:  # too few one-frame batches on the line yet
            if not images:
                return None
            old_s = _median(run_times(previous, images, self.run_model_work))
        measured = LatencyComparison(new_s, old_s, self.latency_factor)
        # A rollback (proven_latency_s) is held to its own past, not timed beside the model.
        if measured.too_slow and images and proven_latency_s is None:
            measured = LatencyComparison(
                *self._timed_side_by_side(candidate, previous, images),
                self.latency_factor,
                side_by_side=True,
            )
        if measured.too_slow:
            raise OtaRejectedError(measured.summary())
        return measured

    def _timed_side_by_side(
        self, candidate: ActiveModel, previous: ActiveModel, images: list[Any]
    ) -> tuple[float, float]:
        """Median latencies of the candidate and the running model, run alternately on the
        same frames, so both see the same load."""
        new: list[float] = []
        old: list[float] = []
        for _ in range(self.confirm_rounds):
            for image in images:
                old += run_times(previous, [image], self.run_model_work)
                new += run_times(candidate, [image], self.run_model_work)
        return _median(new), _median(old)
