"""Samplers: named predicates over a frame's detections that flag hard examples.

Each sampler has a tag recorded with the example, a priority (what the spool keeps when it
is full), and its own rate limits. ``observe`` is called for every frame of every camera and
returns the input to keep, which is not always the current one: flicker is only known one
frame later.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edge_agent.camera import Frame
from edge_agent.inference import InferenceRunner
from edge_agent.sinks.mining.rate_limit import RateLimiter
from shared.detections import Detections, box_iou, count_matches


@dataclass(frozen=True)
class MiningInput:
    frame: Frame
    detections: Detections
    model_name: str
    model_version: int | None
    class_names: tuple[str, ...]


def match_ratio(a: Detections, b: Detections, iou_threshold: float) -> float:
    """Share of boxes (over the larger set) matched one-to-one by class and IoU."""
    larger = max(len(a), len(b))
    return 1.0 if larger == 0 else count_matches(a, b, iou_threshold) / larger


@dataclass
class Sampler:
    tag: str
    priority: float = 1.0
    limiter: RateLimiter = field(default_factory=RateLimiter)

    def observe(self, item: MiningInput) -> MiningInput | None:
        raise NotImplementedError


def in_band(confidence: NDArray[np.float32], low: float, high: float) -> bool:
    """Whether a frame holds an uncertain detection: ``low <= confidence < high``."""
    return bool(np.any((confidence >= low) & (confidence < high)))


@dataclass
class ConfidenceBandSampler(Sampler):
    """Uncertain frames: at least one detection with ``low <= confidence < high``."""

    low: float = 0.25
    high: float = 0.5

    def observe(self, item: MiningInput) -> MiningInput | None:
        return item if in_band(item.detections.confidence, self.low, self.high) else None


@dataclass
class ClassSampler(Sampler):
    """Rare or chosen classes: any detection whose class name is in ``classes``."""

    classes: frozenset[str] = frozenset()

    def observe(self, item: MiningInput) -> MiningInput | None:
        names = item.class_names
        for cid in item.detections.class_id:
            if 0 <= cid < len(names) and names[cid] in self.classes:
                return item
        return None


@dataclass
class CountAnomalySampler(Sampler):
    """Too many or too few objects against a per-camera running baseline (EWMA)."""

    z: float = 3.0
    min_delta: float = 2.0
    alpha: float = 0.05
    warmup_frames: int = 30
    _state: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def observe(self, item: MiningInput) -> MiningInput | None:
        count = float(len(item.detections))
        mean, var, seen = self._state.get(item.frame.camera_id, (count, 0.0, 0))
        anomalous = seen >= self.warmup_frames and abs(count - mean) > max(
            self.z * var**0.5, self.min_delta
        )
        # An outlier barely moves the baseline (else one burst would blind it to the next),
        # but a lasting change is still adopted, slowly.
        alpha = self.alpha * (0.1 if anomalous else 1.0)
        delta = count - mean
        mean += alpha * delta
        var = (1 - alpha) * (var + alpha * delta * delta)
        self._state[item.frame.camera_id] = (mean, var, seen + 1)
        return item if anomalous else None


@dataclass
class FlickerSampler(Sampler):
    """An object seen in frames t-1 and t+1 but not in t: frame t is returned at t+1.

    Boxes are tracked by IoU; on a moving belt the threshold must allow for the motion
    between two frames at the camera's rate.
    """

    iou_threshold: float = 0.3
    _history: dict[str, deque[MiningInput]] = field(default_factory=dict)

    def observe(self, item: MiningInput) -> MiningInput | None:
        history = self._history.setdefault(item.frame.camera_id, deque(maxlen=2))
        flagged = None
        if len(history) == 2:
            before, middle = history
            flagged = middle if self._flickered(before, middle, item) else None
        history.append(item)
        return flagged

    def _flickered(self, before: MiningInput, middle: MiningInput, after: MiningInput) -> bool:
        a, m, c = before.detections, middle.detections, after.detections
        if len(a) == 0 or len(c) == 0:
            return False
        iou_ac = box_iou(a.xyxy, c.xyxy)
        iou_ac[a.class_id[:, None] != c.class_id[None, :]] = 0.0
        persistent = np.nonzero(iou_ac.max(axis=1) >= self.iou_threshold)[0]
        if persistent.size == 0:
            return False
        if len(m) == 0:
            return True
        iou_am = box_iou(a.xyxy[persistent], m.xyxy)
        iou_am[a.class_id[persistent][:, None] != m.class_id[None, :]] = 0.0
        return bool(np.any(iou_am.max(axis=1) < self.iou_threshold))


@dataclass
class DisagreementSampler(Sampler):
    """The active model and a shadow (e.g. the previous) model disagree on a frame.

    The shadow runs on every ``every_n``-th frame per camera, in the mining thread, never on
    the frame path. Without a shadow model it flags nothing.
    """

    every_n: int = 10
    iou_threshold: float = 0.5
    max_agreement: float = 0.7
    shadow: InferenceRunner | None = None
    _counts: dict[str, int] = field(default_factory=dict)

    def observe(self, item: MiningInput) -> MiningInput | None:
        if self.shadow is None:
            return None
        n = self._counts.get(item.frame.camera_id, 0)
        self._counts[item.frame.camera_id] = n + 1
        if n % self.every_n:
            return None
        (shadow,) = self.shadow.detect([item.frame.image])
        return (
            item
            if match_ratio(item.detections, shadow, self.iou_threshold) < self.max_agreement
            else None
        )


@dataclass
class _DriftState:
    fast: NDArray[np.float64]  # per-class detections per frame, followed over seconds
    slow: NDArray[np.float64]  # the same over about an hour: the camera's baseline
    first: float
    last: float
    model: tuple[str, int | None]  # whose reports these are: a new model starts a new baseline


@dataclass
class DriftSampler(Sampler):
    """The line changed: a uniform sample of the new condition while it lasts.

    Uncertainty samplers say little about a changed line: the bootstrap model puts a
    detection in the confidence band on 79% of the frames of the steady line and on as many
    after a lamp fails, and nothing at all about the parts it no longer sees (measured in
    benchmarks/learning_loop.py). What does change is what the model reports: per camera,
    the detections per frame and their class mix are followed fast (seconds) and slow (an
    hour); while the mix has moved by ``shift`` (L1 distance of the class shares, 0-2) or the
    count by ``count_change`` (relative), frames are flagged with ``probability``, which
    spreads the picks over the changed line like a random sample of it.

    The baseline is the camera's under the model now running: an update (another model or
    version) starts a new one with its own warm-up. The update exists to change what the model
    reports, so measuring it against the old model's baseline would call its own fix a drift.
    """

    shift: float = 0.5
    count_change: float = 0.5
    probability: float = 0.1
    # Time constants in camera seconds (frame timestamps), whatever the frame rate.
    fast_s: float = 30.0
    slow_s: float = 3600.0
    warmup_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random)
    _state: dict[str, _DriftState] = field(default_factory=dict)

    def cameras(self) -> list[str]:
        return list(self._state)

    def drifting(self, camera_id: str) -> bool:
        state = self._state.get(camera_id)
        if state is None or state.last - state.first < self.warmup_s:
            return False
        fast_count, slow_count = float(state.fast.sum()), float(state.slow.sum())
        if abs(fast_count - slow_count) > self.count_change * max(slow_count, 1.0):
            return True
        if fast_count <= 0.0 or slow_count <= 0.0:
            return False
        mix = np.abs(state.fast / fast_count - state.slow / slow_count).sum()
        return bool(mix > self.shift)

    def observe(self, item: MiningInput) -> MiningInput | None:
        camera, now = item.frame.camera_id, item.frame.captured_mono
        classes = item.detections.class_id
        counts = np.bincount(
            classes[(classes >= 0) & (classes < len(item.class_names))],
            minlength=len(item.class_names),
        ).astype(np.float64)
        model = (item.model_name, item.model_version)
        state = self._state.get(camera)
        if state is None or state.model != model or state.fast.shape != counts.shape:
            state = _DriftState(counts.copy(), counts.copy(), now, now, model)
            self._state[camera] = state
        dt = max(0.0, now - state.last)
        state.fast += (counts - state.fast) * (1.0 - math.exp(-dt / self.fast_s))
        # The baseline is the plain mean of the warm-up (parts come and go: a few seconds
        # say little about the mix), then learns slowly: a lasting change becomes the new
        # normal only after about an hour (a retrain's time).
        age = now - state.first
        tau = max(age, dt, 1e-6) if age < self.warmup_s else self.slow_s
        state.slow += (counts - state.slow) * (1.0 - math.exp(-dt / tau))
        state.last = now
        if self.drifting(camera) and self.rng.random() < self.probability:
            return item
        return None


@dataclass
class RandomSampler(Sampler):
    """Plain random frames: the unbiased control set."""

    probability: float = 0.01
    rng: random.Random = field(default_factory=random.Random)

    def observe(self, item: MiningInput) -> MiningInput | None:
        return item if self.rng.random() < self.probability else None
