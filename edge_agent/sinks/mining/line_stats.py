"""What the model reports, per camera, between two heartbeats: detections per minute and
mean confidence per class, the share of frames with an uncertain detection, and the hard
examples kept. The control plane keeps these windows as each device's history and draws
them: drift an operator can see, against the device's own past.

A pipeline sink (every finished frame, with or without mining: a box without storage still
shows its line), with the hard examples counted by mining; taken, and restarted, by the
heartbeat. Sums only, a few microseconds a frame on the finish path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_agent.frame_path import DetectionResult
from edge_agent.sinks.mining.samplers import in_band
from shared.detections import Detections
from shared.messages import LineWindow


@dataclass
class _Sums:
    started: float
    frames: int = 0
    band_frames: int = 0
    hard_examples: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)


class LineStats:
    def __init__(
        self, band: tuple[float, float], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.low, self.high = band
        self._clock = clock
        self._sums: dict[str, _Sums] = {}
        self._lock = threading.Lock()

    def _window(self, camera_id: str) -> _Sums:
        sums = self._sums.get(camera_id)
        if sums is None:
            sums = self._sums[camera_id] = _Sums(self._clock())
        return sums

    def __call__(self, result: DetectionResult) -> None:
        self.observe(result.frame.camera_id, result.detections, result.model.class_names)

    def observe(self, camera_id: str, detections: Detections, class_names: Sequence[str]) -> None:
        conf = detections.confidence
        with self._lock:
            sums = self._window(camera_id)
            sums.frames += 1
            if in_band(conf, self.low, self.high):
                sums.band_frames += 1
            for class_id, score in zip(detections.class_id, conf, strict=True):
                name = class_names[class_id] if 0 <= class_id < len(class_names) else None
                if name is None:
                    continue
                sums.counts[name] = sums.counts.get(name, 0) + 1
                sums.confidence[name] = sums.confidence.get(name, 0.0) + float(score)

    def hard_example(self, camera_id: str) -> None:
        with self._lock:
            self._window(camera_id).hard_examples += 1

    def take(self) -> dict[str, LineWindow]:
        """Each camera's window since the last call; the next windows start now."""
        now = self._clock()
        with self._lock:
            taken, self._sums = self._sums, {}
        out: dict[str, LineWindow] = {}
        for camera_id, sums in taken.items():
            seconds = max(now - sums.started, 1e-3)
            per_min = 60.0 / seconds
            out[camera_id] = LineWindow(
                seconds=round(seconds, 3),
                frames=sums.frames,
                detections_per_min={n: round(c * per_min, 3) for n, c in sums.counts.items()},
                mean_confidence={
                    n: round(sums.confidence[n] / c, 4) for n, c in sums.counts.items() if c
                },
                band_share=round(sums.band_frames / sums.frames, 4) if sums.frames else 0.0,
                hard_examples_per_min=round(sums.hard_examples * per_min, 3),
            )
        return out
