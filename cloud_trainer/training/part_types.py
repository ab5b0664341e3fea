"""The detector's labels when a part inspector owns the attribute class: every box of that class
(a defective part) is relabelled as the part type the parent model sees there.

Why: the detector cannot tell a defective bolt from a clean one (that is the inspector's
job), so labels that call some bolts ``defect`` teach it that bolts are uncertain. In the
learning-loop benchmark the fine-tuned detector's clean-bolt scores fell to 0.05-0.5, bolt
recall 0.85 -> 0.34, and the gate refused the update (README, "Defects"). The parent model
knows the types: the bootstrap calls a defective part by its type, and so does every
detector trained on these labels. The dataset in the bucket is not changed; the detector
trains on a copy of its labels beside the run (the images are linked, not copied).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.data.dataset import write_data_yaml
from cloud_trainer.errors import TrainingError

log = logging.getLogger(__name__)

# A label box takes the type of the parent's prediction it overlaps at least this much.
SAME_PART_IOU = 0.5
# The parent's predictions considered (low: a defective part may look unusual to it).
PREDICTION_CONFIDENCE = 0.05


@dataclass(frozen=True)
class TypedLabels:
    data_yaml: Path
    relabelled: int  # attribute boxes given the parent's type
    kept: int  # attribute boxes the parent saw no part at (left as they were)


def _iou(box: NDArray[np.float32], boxes: NDArray[np.float32]) -> NDArray[np.float32]:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=1)
    area = (box[2:] - box[:2]).prod() + (boxes[:, 2:] - boxes[:, :2]).prod(axis=1) - inter
    return np.asarray(inter / np.maximum(area, 1e-9), dtype=np.float32)


def _typed_lines(
    lines: list[str], predicted: tuple[NDArray[np.float32], NDArray[np.int64]], attribute: int
) -> tuple[list[str], int, int]:
    """``lines`` (YOLO, normalised xywh) with each attribute box given the type of the
    predicted box (normalised xyxy, class) it overlaps most."""
    boxes, classes = predicted
    is_type = classes != attribute
    boxes, classes = boxes[is_type], classes[is_type]
    out: list[str] = []
    relabelled = kept = 0
    for line in lines:
        fields = line.split()
        if len(fields) != 5 or int(float(fields[0])) != attribute:
            out.append(line)
            continue
        x, y, w, h = (float(v) for v in fields[1:])
        box = np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2], dtype=np.float32)
        overlap = _iou(box, boxes) if len(boxes) else np.zeros(0, np.float32)
        if len(overlap) and overlap.max() >= SAME_PART_IOU:
            out.append(" ".join([str(int(classes[int(overlap.argmax())])), *fields[1:]]))
            relabelled += 1
        else:
            out.append(line)
            kept += 1
    return out, relabelled, kept


def typed_labels(
    root: Path,
    class_names: list[str],
    attribute_class: str,
    parent: Path,
    out: Path,
    *,
    imgsz: int,
    device: str,
) -> TypedLabels:
    """A copy of dataset ``root`` (train and val) at ``out`` for the detector to train on."""
    from ultralytics import YOLO  # noqa: PLC0415 - trainer only

    if attribute_class not in class_names:
        raise TrainingError(f"attribute class {attribute_class!r} is not one of {class_names}")
    attribute = class_names.index(attribute_class)
    model: Any = YOLO(str(parent))
    relabelled = kept = 0
    for split in ("train", "val", "holdout"):  # the holdout's labels as they are
        images, labels = root / "images" / split, root / "labels" / split
        if not images.is_dir():
            continue
        # Each image linked, not the folder: ultralytics resolves the folder's path and
        # would read the labels beside the real one.
        linked = out / "images" / split
        linked.mkdir(parents=True, exist_ok=True)
        for image in images.iterdir():
            link = linked / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
        typed = out / "labels" / split
        typed.mkdir(parents=True, exist_ok=True)
        for label in sorted(labels.glob("*.txt")):
            lines = label.read_text().splitlines()
            if split != "holdout" and any(line.split()[:1] == [str(attribute)] for line in lines):
                labelled = next(iter(sorted(images.glob(f"{label.stem}.*"))), None)
                if labelled is None:
                    raise TrainingError(f"no image for label file {label}")
                result = model.predict(
                    str(labelled),
                    imgsz=imgsz,
                    conf=PREDICTION_CONFIDENCE,
                    device=device,
                    verbose=False,
                )[0]
                predicted = (
                    result.boxes.xyxyn.cpu().numpy().astype(np.float32),
                    result.boxes.cls.cpu().numpy().astype(np.int64),
                )
                lines, done, left = _typed_lines(lines, predicted, attribute)
                relabelled, kept = relabelled + done, kept + left
            (typed / label.name).write_text("\n".join(lines) + ("\n" if lines else ""))
    log.info(
        "detector labels: %d %s box(es) given the parent's part type, %d left",
        relabelled,
        attribute_class,
        kept,
    )
    return TypedLabels(write_data_yaml(out, class_names), relabelled, kept)
