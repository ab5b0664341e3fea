"""The hard-example policy: a pipeline sink that mines off the frame path.

The sink only puts (frame, detections) on a small bounded queue; a mining thread runs the
samplers, suppresses near-duplicates, applies each sampler's rate limits, encodes the JPEG
and writes the spool. If mining falls behind, frames are skipped for mining (counted), never
delayed on the line.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field

import cv2

from edge_agent.frame_path import DetectionResult
from edge_agent.sinks.mining.dedup import NearDuplicateFilter
from edge_agent.sinks.mining.line_stats import LineStats
from edge_agent.sinks.mining.samplers import DriftSampler, MiningInput, Sampler
from edge_agent.upload.spool import Spool, SpoolError
from shared.hard_examples import HardExampleSidecar
from shared.messages import DetectionRecord
from shared.object_keys import hard_example_keys

log = logging.getLogger(__name__)


@dataclass
class MiningStats:
    seen: int = 0
    queue_skipped: int = 0
    triggered: Counter[str] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    accepted: int = 0
    rejected: int = 0
    evicted: int = 0
    errors: int = 0


class HardExamplePolicy:
    def __init__(
        self,
        samplers: list[Sampler],
        spool: Spool,
        stop: threading.Event,
        *,
        fleet: str,
        device_id: str,
        dedup: NearDuplicateFilter | None = None,
        queue_size: int = 16,
        jpeg_quality: int = 90,
        line_stats: LineStats | None = None,
    ) -> None:
        self.samplers = samplers
        self.spool = spool
        self.stop_event = stop
        self.fleet = fleet
        self.device_id = device_id
        self.dedup = dedup or NearDuplicateFilter()
        self.jpeg_quality = jpeg_quality
        # Counts the examples kept, per camera, into the heartbeat's line window.
        self.line_stats = line_stats
        self.stats = MiningStats()
        self._queue: queue.Queue[MiningInput] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="mining", daemon=True)

    # ----------------------------------------------------------------- sink side (frame path)
    def __call__(self, result: DetectionResult) -> None:
        item = MiningInput(
            result.frame,
            result.detections,
            result.model.name,
            result.model.version,
            result.model.class_names,
        )
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats.queue_skipped += 1

    def start(self) -> None:
        self._thread.start()

    def drifting_cameras(self) -> set[str]:
        """Cameras whose line has changed under the model, by the drift sampler."""
        out: set[str] = set()
        for sampler in self.samplers:
            if isinstance(sampler, DriftSampler):
                out.update(c for c in list(sampler.cameras()) if sampler.drifting(c))
        return out

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self.process(item)
            except SpoolError as exc:
                self.stats.errors += 1
                log.error("spool write failed", extra={"error": str(exc)})
            except Exception:
                self.stats.errors += 1
                log.exception("mining failed on a frame")

    # ----------------------------------------------------------------- mining thread
    def process(self, item: MiningInput) -> str | None:
        """Run the samplers on one frame; returns the spooled key base, if any."""
        self.stats.seen += 1
        flagged: dict[int, tuple[MiningInput, list[Sampler]]] = {}
        for sampler in self.samplers:
            candidate = sampler.observe(item)
            if candidate is None:
                continue
            self.stats.triggered[sampler.tag] += 1
            # Several samplers may flag the same frame: one example with all their tags.
            flagged.setdefault(id(candidate.frame), (candidate, []))[1].append(sampler)
        accepted_key: str | None = None
        for candidate, samplers in flagged.values():
            accepted_key = self._keep(candidate, samplers) or accepted_key
        return accepted_key

    def _keep(self, item: MiningInput, samplers: list[Sampler]) -> str | None:
        if self.dedup.is_duplicate(item.frame.camera_id, item.frame.image):
            self.stats.duplicates += 1
            return None
        allowed = []
        for sampler in samplers:
            if sampler.limiter.allow(item.frame.camera_id):
                allowed.append(sampler)
            else:
                self.stats.rate_limited[sampler.tag] += 1
        if not allowed:
            return None
        ok, jpeg = cv2.imencode(
            ".jpg", item.frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        )
        if not ok:
            self.stats.errors += 1
            return None
        frame = item.frame
        height, width = frame.size
        keys = hard_example_keys(self.fleet, self.device_id, frame.captured_at, frame.frame_id)
        key_base = keys.image.removesuffix(".jpg")
        names = item.class_names
        sidecar = HardExampleSidecar(
            fleet=self.fleet,
            device_id=self.device_id,
            camera_id=frame.camera_id,
            frame_id=frame.frame_id,
            captured_at=frame.captured_at,
            captured_monotonic_s=frame.captured_mono,
            image_width=width,
            image_height=height,
            model_name=item.model_name,
            model_version=item.model_version,
            reasons=[s.tag for s in allowed],
            priority=max(s.priority for s in allowed),
            predictions=[DetectionRecord(**r) for r in item.detections.to_records(names)],
            synthetic_truth=None
            if frame.truth is None
            else [DetectionRecord(**r) for r in frame.truth.to_records(names)],
        )
        prelabel = "\n".join(item.detections.to_yolo_lines(width, height))
        result = self.spool.accept(
            key_base,
            jpeg=jpeg.tobytes(),
            sidecar=sidecar.model_dump_json(),
            prelabel=prelabel + ("\n" if prelabel else ""),
            priority=sidecar.priority,
        )
        self.stats.evicted += result.evicted
        if not result.accepted:
            self.stats.rejected += 1
            return None
        self.stats.accepted += 1
        if self.line_stats is not None:
            self.line_stats.hard_example(frame.camera_id)
        return key_base
