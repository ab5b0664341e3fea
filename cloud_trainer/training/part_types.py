"""The detector's labels when a part inspector owns the attribute class: every box of that class
(a defective part) is relabelled as its part type, told by a crop classifier trained on this
run's own clean parts.

Why typed at all: the detector cannot tell a defective bolt from a clean one (that is the
inspector's job), so labels that call some bolts ``defect`` teach it that bolts are uncertain.
In the learning-loop benchmark the fine-tuned detector's clean-bolt scores fell to 0.05-0.5,
bolt recall 0.85 -> 0.34, and the gate refused the update (README, "Defects").

Why a classifier of this run's parts and not the parent model: the parent was trained on the
line as it was, and after a drift it names the new parts wrongly or not at all. With a quarter
of 110 frames' clean parts relabelled ``defect`` (so their type is known), the bootstrap named
98% of them right on the undrifted line but 28% after the new supplier's parts came, 5% under
the failed lamp and 13% with both (it saw no part at 25%, 94% and 75% of them); the
classifier named 100% right in all four. Left ``defect``, those boxes taught the detector the
confusion above. The labelled clean parts of the run show every type as the line looks now, and
a 0.2 M-parameter classifier on their crops (the inspector's network) learns them in seconds.
The dataset in the bucket is not changed; the detector trains on a copy of its labels
beside the run (the images are linked, not copied).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cloud_trainer.data.dataset import write_data_yaml
from cloud_trainer.errors import TrainingError
from cloud_trainer.training.inspector import (
    fit_crop_classifier,
    image_crops,
    jittered_crops,
    predict_crops,
    read_image,
)
from shared.detections import Detections

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The type classifier: the inspector's crop size and a few more epochs (four classes, not two).
TYPE_CROP = 32
TYPE_EPOCHS = 30
# Fewer clean parts than this (or fewer than two types) and the attribute boxes stay as they are.
MIN_TYPED_PARTS = 20


@dataclass(frozen=True)
class TypedLabels:
    data_yaml: Path
    relabelled: int  # attribute boxes given their part type
    kept: int  # attribute boxes left as they were (too few clean parts to learn types)


def _attribute_rows(lines: list[str], attribute: int) -> list[int]:
    """Indexes of the well-formed YOLO lines of the attribute class."""
    rows = []
    for row, line in enumerate(lines):
        fields = line.split()
        if len(fields) == 5 and fields[0].lstrip("-").isdigit() and int(fields[0]) == attribute:
            rows.append(row)
    return rows


def _retyped(lines: list[str], rows: list[int], types: list[int]) -> list[str]:
    """``lines`` with each of ``rows`` given the class of ``types`` at the same position."""
    out = list(lines)
    for row, type_id in zip(rows, types, strict=True):
        out[row] = " ".join([str(type_id), *lines[row].split()[1:]])
    return out


@dataclass(frozen=True)
class _PartCrops:
    """One read of a dataset's train and val images: what typing their labels needs."""

    crops: torch.Tensor  # every box, jittered: the classifier's training data
    class_ids: torch.Tensor
    attribute_crops: dict[Path, torch.Tensor]  # label file -> its attribute rows, as labelled


def _part_crops(root: Path, attribute: int, imgsz: int) -> _PartCrops:
    """Each ``.jpg`` of train and val decoded once, for both the classifier's crops and the
    crops of the boxes it will type."""
    import torch  # noqa: PLC0415 - trainer only

    crops: list[torch.Tensor] = []
    class_ids: list[torch.Tensor] = []
    attribute_crops: dict[Path, torch.Tensor] = {}
    generator = np.random.default_rng(0)
    for split in ("train", "val"):
        for image_path in sorted((root / "images" / split).glob("*.jpg")):
            label = root / "labels" / split / f"{image_path.stem}.txt"
            lines = label.read_text().splitlines()
            image = read_image(image_path)
            height, width = image.shape[:2]
            truth = Detections.from_yolo_lines(lines, width, height)
            if len(truth) == 0:
                continue
            crops.append(jittered_crops(image, truth, generator, imgsz, TYPE_CROP))
            class_ids.append(torch.from_numpy(truth.class_id.astype(np.int64)))
            rows = _attribute_rows(lines, attribute)
            if rows:
                boxes = Detections.from_yolo_lines([lines[row] for row in rows], width, height)
                attribute_crops[label] = image_crops(image, boxes.xyxy, imgsz, TYPE_CROP)
    if not crops:
        empty = torch.zeros((0, 3, TYPE_CROP, TYPE_CROP))
        return _PartCrops(empty, torch.zeros((0,), dtype=torch.int64), {})
    return _PartCrops(torch.cat(crops), torch.cat(class_ids), attribute_crops)


def typed_labels(
    root: Path,
    class_names: list[str],
    attribute_class: str,
    out: Path,
    *,
    imgsz: int,
    seed: int = 0,
) -> TypedLabels:
    """A copy of dataset ``root`` (train and val) at ``out`` for the detector to train on."""
    if attribute_class not in class_names:
        raise TrainingError(f"attribute class {attribute_class!r} is not one of {class_names}")
    attribute = class_names.index(attribute_class)
    parts = _part_crops(root, attribute, imgsz)
    clean = parts.class_ids != attribute
    types = sorted({int(c) for c in parts.class_ids[clean]})
    network = None
    if len(types) >= 2 and int(clean.sum()) >= MIN_TYPED_PARTS:
        import torch  # noqa: PLC0415 - trainer only

        labels = torch.from_numpy(np.searchsorted(types, parts.class_ids[clean].numpy()))
        network = fit_crop_classifier(
            parts.crops[clean], labels, len(types), epochs=TYPE_EPOCHS, seed=seed
        )
    else:
        log.info(
            "detector labels: %d clean part(s) of %d type(s) cannot teach the types; %s boxes kept",
            int(clean.sum()),
            len(types),
            attribute_class,
        )
    relabelled = kept = 0
    for split in ("train", "val", "holdout"):  # the holdout's labels as they are
        images, labels_dir = root / "images" / split, root / "labels" / split
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
        for label in sorted(labels_dir.glob("*.txt")):
            lines = label.read_text().splitlines()
            rows = _attribute_rows(lines, attribute) if split != "holdout" else []
            if rows and network is not None:
                crops = parts.attribute_crops.get(label)
                if crops is None:
                    raise TrainingError(f"no .jpg image for label file {label}")
                found = [types[int(i)] for i in predict_crops(network, crops)]
                lines = _retyped(lines, rows, found)
                relabelled += len(rows)
            else:
                kept += len(rows)
            (typed / label.name).write_text("\n".join(lines) + ("\n" if lines else ""))
    log.info(
        "detector labels: %d %s box(es) given their part type, %d left",
        relabelled,
        attribute_class,
        kept,
    )
    return TypedLabels(write_data_yaml(out, class_names), relabelled, kept)
