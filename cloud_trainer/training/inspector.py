"""The part inspector: a small classifier that looks at each part's crop and says whether it
carries the line's attribute class (``defect``), trained beside the detector and fused into
its export (:mod:`cloud_trainer.release.inspected`).

Why a second look instead of a better detector: fine-tuned on 150 labelled frames of the
synthetic line, the detector's ``defect`` recall stayed at 0.04-0.13 (AP50 0.09-0.14) whatever
the recipe (augmentation scale 0.1, no mosaic, class-loss gain 1.5, 416 input, 40 epochs,
AdamW at 1e-3), because its head must split a class it was taught to call ``bolt`` on a mark
a few pixels wide, with a handful of examples. This classifier, on the same frames' part crops
taken from the same 320 input, told defective parts apart at recall 1.0 and precision 1.0 on
669 held-out parts after 14 s of CPU training (README, "Defects"). It is the detect-then-
classify pattern of inspection lines, kept inside one ONNX file so the agent, the gate,
the variants and OTA see one model as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from cloud_trainer.errors import TrainingError

if TYPE_CHECKING:
    import torch

    from cloud_trainer.config import InspectorSection
    from cloud_trainer.release.evaluate import LabelledImage
    from shared.detections import Detections

log = logging.getLogger(__name__)

# Context around a part: its crop reaches this share of the box's size beyond each side.
CROP_MARGIN = 0.1
# Training boxes are shifted and scaled by up to this share of their size, as the detector's
# boxes differ from the truth.
BOX_JITTER = 0.05


def build_network(crop: int, classes: int = 2) -> torch.nn.Module:
    """About 0.2 M parameters: four stride-2 stages (32 px crop -> 2x2) and ``classes`` logits
    (the inspector's two: without, with the attribute)."""
    from torch import nn  # noqa: PLC0415 - trainer extra

    def stage(inputs: int, outputs: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, 2, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.SiLU(),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.SiLU(),
        )

    if crop < 16:
        raise TrainingError(f"inspector crop {crop} px is too small (16 at least)")
    return nn.Sequential(
        stage(3, 16),
        stage(16, 32),
        stage(32, 64),
        stage(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, classes),
    )


def crop_boxes(
    images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, crop: int
) -> torch.Tensor:
    """(M, 3, crop, crop) crops of ``boxes`` (M, 4) xyxy in input pixels, each widened by
    :data:`CROP_MARGIN`, from ``images`` (B, 3, H, W); one function for training and for the
    exported graph (ONNX ``RoiAlign``), so both see the same pixels."""
    import torch  # noqa: PLC0415
    from torchvision.ops import roi_align  # noqa: PLC0415

    size = boxes[:, 2:] - boxes[:, :2]
    wide = torch.cat([boxes[:, :2] - CROP_MARGIN * size, boxes[:, 2:] + CROP_MARGIN * size], 1)
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], wide], 1)
    return roi_align(images, rois, output_size=crop, spatial_scale=1.0, sampling_ratio=2)


class InspectorReport(BaseModel):
    """What the inspector learned from: part crops, those with the attribute."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute_class: str
    crops: int
    with_attribute: int
    epochs: int
    seconds: float
    train_accuracy: float


@dataclass(frozen=True)
class TrainedInspector:
    network: torch.nn.Module
    attribute_class_id: int
    crop: int
    top_k: int
    report: InspectorReport


def image_crops(
    image: NDArray[np.uint8], boxes: NDArray[np.float32], imgsz: int, crop: int
) -> torch.Tensor:
    """Crops of ``boxes`` (xyxy in ``image`` pixels) as the detector sees them: from the
    agent's letterbox of ``image`` at ``imgsz``."""
    import torch  # noqa: PLC0415

    from edge_agent.inference import letterbox  # noqa: PLC0415

    blob, (mapping,) = letterbox([image], imgsz, imgsz)
    boxes = boxes.astype(np.float32).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]] * mapping.scale_x + mapping.pad_x
    boxes[:, [1, 3]] = boxes[:, [1, 3]] * mapping.scale_y + mapping.pad_y
    tensor = torch.from_numpy(boxes)
    return crop_boxes(torch.from_numpy(blob), tensor, torch.zeros(len(tensor)), crop).detach()


def read_image(path: Path) -> NDArray[np.uint8]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise TrainingError(f"training image {path} is unreadable")
    return np.asarray(image, np.uint8)


def part_crops(
    labelled: Sequence[LabelledImage], imgsz: int, crop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every labelled box of every image, cropped by :func:`jittered_crops`; with its class id."""
    import torch  # noqa: PLC0415

    crops: list[torch.Tensor] = []
    class_ids: list[torch.Tensor] = []
    generator = np.random.default_rng(0)
    for item in labelled:
        if len(item.truth) == 0:
            continue
        image = read_image(item.image_path)
        crops.append(jittered_crops(image, item.truth, generator, imgsz, crop))
        class_ids.append(torch.from_numpy(item.truth.class_id.astype(np.int64)))
    if not crops:
        return torch.zeros((0, 3, crop, crop)), torch.zeros((0,), dtype=torch.int64)
    return torch.cat(crops), torch.cat(class_ids)


def jittered_crops(
    image: NDArray[np.uint8],
    truth: Detections,
    generator: np.random.Generator,
    imgsz: int,
    crop: int,
) -> torch.Tensor:
    """The boxes of ``truth`` on ``image``, each shifted and scaled by up to
    :data:`BOX_JITTER` of its size (a detector's boxes are never exact), cropped as the
    detector sees them."""
    boxes = truth.xyxy.astype(np.float32)
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)  # w, h, w, h
    jitter = generator.uniform(-BOX_JITTER, BOX_JITTER, boxes.shape).astype(np.float32)
    return image_crops(image, boxes + jitter * size, imgsz, crop)


def fit_crop_classifier(
    images: torch.Tensor, labels: torch.Tensor, classes: int, *, epochs: int, seed: int
) -> torch.nn.Module:
    """A :func:`build_network` trained on ``images`` (N, 3, crop, crop) for ``labels``
    (0..classes-1); each class weighs as much as the most frequent one (a quarter of the
    parts carry a defect on the synthetic line, far fewer on a good one). Flips, quarter
    turns and brightness are augmented: a part lies any way up under any lamp."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    torch.manual_seed(seed)
    network = build_network(images.shape[-1], classes)
    batch = 64
    steps = epochs * ((len(labels) + batch - 1) // batch)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).to(torch.float32)
    weight = counts.max() / counts
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch):
            index = order[start : start + batch]
            x = images[index]
            if torch.rand(1).item() < 0.5:
                x = x.flip(3)
            x = torch.rot90(x, int(torch.randint(0, 4, (1,)).item()), (2, 3))
            x = (x * (0.7 + 0.6 * torch.rand(len(x), 1, 1, 1))).clamp(0.0, 1.0)
            loss = nn.functional.cross_entropy(network(x), labels[index], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()
    return network


def predict_crops(network: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The class :func:`fit_crop_classifier`'s network gives each crop."""
    import torch  # noqa: PLC0415

    with torch.no_grad():
        return torch.cat(
            [network(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)]
            or [torch.zeros(0, dtype=torch.int64)]
        )


def train_inspector(
    labelled: Sequence[LabelledImage],
    class_names: Sequence[str],
    settings: InspectorSection,
    *,
    imgsz: int,
    seed: int,
) -> TrainedInspector | None:
    """The inspector for ``settings.attribute_class``, or None when the line has no such class
    or the data too few boxes with or without it to learn from (the export is then the
    detector alone, as before)."""
    if settings.attribute_class is None or settings.attribute_class not in class_names:
        return None
    attribute_id = list(class_names).index(settings.attribute_class)
    started = time.monotonic()
    images, class_ids = part_crops(labelled, imgsz, settings.crop)
    labels = (class_ids == attribute_id).to(class_ids.dtype)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if min(positives, negatives) < settings.min_examples:
        log.info(
            "inspector skipped: %d part(s) with %s, %d without (%d of each needed)",
            positives,
            settings.attribute_class,
            negatives,
            settings.min_examples,
        )
        return None
    network = fit_crop_classifier(images, labels, 2, epochs=settings.epochs, seed=seed)
    predicted = predict_crops(network, images)
    report = InspectorReport(
        attribute_class=settings.attribute_class,
        crops=len(labels),
        with_attribute=positives,
        epochs=settings.epochs,
        seconds=round(time.monotonic() - started, 1),
        train_accuracy=round(float((predicted == labels).float().mean()), 4),
    )
    return TrainedInspector(network, attribute_id, settings.crop, settings.top_k, report)
