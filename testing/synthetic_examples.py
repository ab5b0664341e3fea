"""Synthetic hard examples written to a bucket exactly as agents upload them (image, sidecar
with the line's exact truth). For tests and benchmarks of the trainer without running agents."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cv2

from cloud_trainer.store import ObjectStore
from shared.detections import Detections
from shared.hard_examples import HardExampleSidecar
from shared.messages import DetectionRecord
from shared.object_keys import HardExampleKeys, hard_example_keys
from shared.synth import CLASS_NAMES, SyntheticLine


@dataclass(frozen=True)
class Uploaded:
    keys: HardExampleKeys
    truth: Detections


def records(detections: Detections) -> list[DetectionRecord]:
    return [DetectionRecord(**r) for r in detections.to_records(CLASS_NAMES)]


def upload_examples(
    store: ObjectStore,
    *,
    fleet: str,
    device: str = "dev-1",
    count: int,
    drift: str = "none",
    seed: int = 7,
    start: int = 0,
    with_truth: bool = True,
    captured_at: datetime | None = None,
    reasons: tuple[str, ...] = ("confidence_band",),
    with_predictions: bool = False,
    priority: float = 1.0,
    model: tuple[str, int] | None = None,
) -> list[Uploaded]:
    """``with_predictions``: the sidecar carries the truth as the model's boxes too;
    ``model``: the (name, version) the sidecar says detected them."""
    line = SyntheticLine(seed=seed, drift=drift)
    when = captured_at or datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    out = []
    for index in range(start, start + count):
        frame = line.random_scene(index)
        frame_id = f"{device}-{drift}-{index:05d}"
        keys = hard_example_keys(fleet, device, when, frame_id)
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError("JPEG encoding failed")
        height, width = frame.image.shape[:2]
        sidecar = HardExampleSidecar(
            fleet=fleet,
            device_id=device,
            camera_id="cam0",
            frame_id=frame_id,
            captured_at=when + timedelta(seconds=index),
            captured_monotonic_s=float(index),
            image_width=width,
            image_height=height,
            reasons=list(reasons),
            priority=priority,
            model_name=model[0] if model else None,
            model_version=model[1] if model else None,
            predictions=records(frame.truth) if with_predictions else [],
            synthetic_truth=records(frame.truth) if with_truth else None,
        )
        store.put(keys.image, jpeg.tobytes(), content_type="image/jpeg")
        store.put(keys.sidecar, sidecar.model_dump_json().encode(), content_type="application/json")
        out.append(Uploaded(keys, frame.truth))
    return out
