"""Label Studio's task and annotation JSON, converted to and from the project's own types.

Pure functions, no I/O. Everything read from Label Studio is parsed through pydantic models
that ignore fields we do not use: tasks and annotations are edited by people and can hold
anything, and a malformed one becomes a typed :class:`AnnotationRejected` with its reason.

Label Studio draws rectangles in percent of the image (``x``, ``y`` the top-left corner,
``width``, ``height``); YOLO labels are normalised centres and sizes, so no image size is
needed to convert, only to show pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.detections import Detections, box_iou
from shared.hard_examples import HardExampleSidecar
from shared.validation import describe_validation_error

FROM_NAME = "label"
TO_NAME = "image"
RECTANGLE = "rectanglelabels"
# Label Studio rounds percents; a box may end a hair past the border and is clipped.
EDGE_TOLERANCE_PERCENT = 0.5
# A pre-label whose box people left within this IoU counts as kept, not moved.
KEPT_IOU = 0.95
# Pre-label and final box are the same object when they overlap this much.
MATCH_IOU = 0.5


class AnnotationRejected(Exception):  # noqa: N818 - a recorded outcome, not a crash
    """The annotation cannot become a label; the message says why (recorded, shown)."""


def label_config(classes: Sequence[str]) -> str:
    """The labeling interface of a model line: one rectangle tool with its classes, and a
    caption naming the device, camera, sampler tags and the model that pre-labelled."""
    labels = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in classes)
    return (
        "<View>\n"
        '  <Header value="$caption"/>\n'
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        "  </RectangleLabels>\n"
        "</View>"
    )


def model_tag(name: str | None, version: int | None) -> str:
    """How a model version is named in Label Studio's ``model_version`` fields."""
    return f"{name}@{version}" if name and version else "unknown"


def parse_model_tag(tag: str | None) -> tuple[str | None, int | None]:
    if not tag or "@" not in tag:
        return None, None
    name, _, version = tag.rpartition("@")
    return (name, int(version)) if version.isdigit() and name else (None, None)


def rectangles_result(
    detections: Detections, classes: Sequence[str], width: int, height: int
) -> list[dict[str, Any]]:
    """Pixel boxes as the ``result`` of a Label Studio prediction or annotation."""
    results: list[dict[str, Any]] = []
    for index in range(len(detections)):
        class_id = int(detections.class_id[index])
        if class_id >= len(classes):
            continue  # a class the model line no longer has: nothing to pre-label with
        x1, y1, x2, y2 = (float(v) for v in detections.xyxy[index])
        results.append(
            {
                "id": f"p{index}",
                "from_name": FROM_NAME,
                "to_name": TO_NAME,
                "type": RECTANGLE,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": float(detections.confidence[index]),
                "value": {
                    "x": 100.0 * x1 / width,
                    "y": 100.0 * y1 / height,
                    "width": 100.0 * (x2 - x1) / width,
                    "height": 100.0 * (y2 - y1) / height,
                    "rotation": 0,
                    RECTANGLE: [classes[class_id]],
                },
            }
        )
    return results


def task_for_example(
    sidecar: HardExampleSidecar, *, example_key: str, image_uri: str, classes: Sequence[str]
) -> dict[str, Any]:
    """One Label Studio task: the image by URI (the store serves it, nothing is copied), the
    agent's detections as a pre-annotation, and what the annotator should know."""
    tag = model_tag(sidecar.model_name, sidecar.model_version)
    predictions = Detections.from_records(p.model_dump() for p in sidecar.predictions)
    reasons = ", ".join(sidecar.reasons)
    caption = (
        f"{sidecar.device_id} / {sidecar.camera_id} / {reasons} / model {tag} / "
        f"{sidecar.captured_at.isoformat(timespec='seconds')}"
    )
    task: dict[str, Any] = {
        "data": {
            "image": image_uri,
            "example_key": example_key,
            "caption": caption,
            "device": sidecar.device_id,
            "camera": sidecar.camera_id,
            "reasons": reasons,
            "priority": sidecar.priority,
            "captured_at": sidecar.captured_at.isoformat(),
        }
    }
    boxes = rectangles_result(predictions, classes, sidecar.image_width, sidecar.image_height)
    score = float(np.mean(predictions.confidence)) if len(predictions) else 0.0
    task["predictions"] = [{"model_version": tag, "score": score, "result": boxes}]
    return task


# ----------------------------------------------------------------------------- reading back
class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RectangleValue(_Loose):
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    rectanglelabels: list[str] = Field(min_length=1)


class ResultItem(_Loose):
    type: str
    from_name: str | None = None
    value: dict[str, Any]


class Annotation(_Loose):
    id: int
    result: list[dict[str, Any]] = Field(default_factory=list, max_length=5000)
    was_cancelled: bool = False
    ground_truth: bool = False
    updated_at: datetime | None = None
    created_at: datetime | None = None


class Prediction(_Loose):
    model_version: str | None = None
    result: list[dict[str, Any]] = Field(default_factory=list, max_length=5000)


class Task(_Loose):
    id: int
    data: dict[str, Any]
    annotations: list[Annotation] = Field(default_factory=list, max_length=1000)
    predictions: list[Prediction] = Field(default_factory=list, max_length=100)

    @property
    def example_key(self) -> str | None:
        key = self.data.get("example_key")
        return key if isinstance(key, str) else None


def parse_task(raw: object) -> Task:
    """A task of Label Studio's task listing; :class:`AnnotationRejected` if malformed."""
    try:
        return Task.model_validate(raw)
    except ValidationError as exc:
        raise AnnotationRejected(
            f"malformed task: {describe_validation_error(exc, limit=1)}"
        ) from exc


@dataclass(frozen=True)
class Choice:
    """The annotation a task's label comes from, or why there is none yet."""

    annotation: Annotation | None
    outcome: str  # "labeled", "skipped", "pending"
    reason: str = ""


def choose_annotation(annotations: Sequence[Annotation], *, require_review: bool) -> Choice:
    """The written rule for a task with several annotations.

    1. Skipped ("cancelled") annotations never become labels.
    2. With ``require_review``, only annotations a reviewer accepted (marked ground truth)
       count; others wait for review.
    3. Of those left, one marked ground truth wins; otherwise the most recently updated one
       (a later correction supersedes an earlier pass).
    4. A task whose annotations were all skipped is recorded as skipped.
    """
    submitted = [a for a in annotations if not a.was_cancelled]
    if not annotations:
        return Choice(None, "pending", "no annotation yet")
    if not submitted:
        return Choice(None, "skipped", f"annotator skipped the task ({len(annotations)}x)")
    if require_review:
        submitted = [a for a in submitted if a.ground_truth]
        if not submitted:
            return Choice(None, "pending", "waiting for review (no annotation marked accepted)")

    def recency(annotation: Annotation) -> tuple[bool, float, int]:
        stamp = annotation.updated_at or annotation.created_at
        return (annotation.ground_truth, stamp.timestamp() if stamp else 0.0, annotation.id)

    return Choice(max(submitted, key=recency), "labeled")


def boxes_from_result(
    result: Sequence[dict[str, Any]], classes: Sequence[str], *, from_name: str | None = FROM_NAME
) -> Detections:
    """The rectangles of an annotation (or prediction) as normalised ``xyxy`` in [0, 1].

    Rejected, with the reason: an unknown label, a rotated box, several labels on one box,
    a box of zero size or outside the image. Items of other tools are ignored.
    """
    index = {name: i for i, name in enumerate(classes)}
    boxes: list[tuple[float, float, float, float]] = []
    ids: list[int] = []
    for position, raw in enumerate(result):
        try:
            item = ResultItem.model_validate(raw)
        except ValidationError as exc:
            raise AnnotationRejected(
                f"result {position}: {describe_validation_error(exc, limit=1)}"
            ) from exc
        if item.type != RECTANGLE:
            continue  # another tool's result (a note, a choice): not a box
        if from_name is not None and item.from_name != from_name:
            raise AnnotationRejected(
                f"box {position} comes from tool {item.from_name!r}, not {from_name!r}: was "
                "the project's labeling interface changed?"
            )
        try:
            value = RectangleValue.model_validate(item.value)
        except ValidationError as exc:
            raise AnnotationRejected(
                f"box {position}: {describe_validation_error(exc, limit=1)}"
            ) from exc
        if len(value.rectanglelabels) != 1:
            raise AnnotationRejected(f"box {position} has {len(value.rectanglelabels)} labels")
        name = value.rectanglelabels[0]
        if name not in index:
            raise AnnotationRejected(f"box {position}: unknown label {name!r}")
        if abs(value.rotation) > 1e-6:
            raise AnnotationRejected(f"box {position} is rotated; draw it axis-aligned")
        boxes.append(_clipped_box(value, position))
        ids.append(index[name])
    if not boxes:
        return Detections.empty()
    return Detections(np.asarray(boxes), np.ones(len(boxes)), np.asarray(ids))


def _clipped_box(value: RectangleValue, position: int) -> tuple[float, float, float, float]:
    x1, y1 = value.x, value.y
    x2, y2 = value.x + value.width, value.y + value.height
    numbers = (x1, y1, x2, y2)
    if not all(np.isfinite(numbers)):
        raise AnnotationRejected(f"box {position} has non-finite coordinates")
    low, high = -EDGE_TOLERANCE_PERCENT, 100.0 + EDGE_TOLERANCE_PERCENT
    if min(numbers) < low or max(numbers) > high:
        raise AnnotationRejected(f"box {position} lies outside the image")
    x1, y1, x2, y2 = (min(max(v, 0.0), 100.0) / 100.0 for v in numbers)
    if x2 - x1 <= 0.0 or y2 - y1 <= 0.0:
        raise AnnotationRejected(f"box {position} has zero size")
    return (x1, y1, x2, y2)


def yolo_lines(boxes: Detections) -> list[str]:
    """YOLO ``class cx cy w h`` lines of normalised boxes."""
    return boxes.to_yolo_lines(1, 1)


@dataclass
class ClassCorrections:
    """How people changed one class's pre-labels on one example (or summed over many)."""

    prelabeled: int = 0
    labeled: int = 0
    kept: int = 0
    moved: int = 0
    relabeled: int = 0
    added: int = 0
    removed: int = 0


@dataclass
class Corrections:
    by_class: dict[str, ClassCorrections] = field(default_factory=dict)

    def of(self, name: str) -> ClassCorrections:
        return self.by_class.setdefault(name, ClassCorrections())


def corrections(prelabels: Detections, final: Detections, classes: Sequence[str]) -> Corrections:
    """Compare the model's pre-labels with the boxes people submitted, per class.

    Boxes are paired greedily by IoU (>= 0.5, any class). A pair of the same class is
    *kept* (IoU >= 0.95) or *moved*; a pair of different classes is *relabeled* (counted
    under the model's class). A final box without a pre-label was *added* (the model missed
    it: counted under the person's class); a pre-label without a final box was *removed*
    (a false detection: counted under the model's class).
    """
    out = Corrections()
    for class_id in prelabels.class_id:
        out.of(classes[int(class_id)]).prelabeled += 1
    for class_id in final.class_id:
        out.of(classes[int(class_id)]).labeled += 1
    matched_pre: set[int] = set()
    matched_final: set[int] = set()
    if len(prelabels) and len(final):
        iou = box_iou(prelabels.xyxy, final.xyxy)
        for flat in np.argsort(-iou, axis=None):
            i, j = np.unravel_index(flat, iou.shape)
            if iou[i, j] < MATCH_IOU:
                break
            if i in matched_pre or j in matched_final:
                continue
            matched_pre.add(int(i))
            matched_final.add(int(j))
            counts = out.of(classes[int(prelabels.class_id[i])])
            if prelabels.class_id[i] != final.class_id[j]:
                counts.relabeled += 1
            elif iou[i, j] >= KEPT_IOU:
                counts.kept += 1
            else:
                counts.moved += 1
    for i in range(len(prelabels)):
        if i not in matched_pre:
            out.of(classes[int(prelabels.class_id[i])]).removed += 1
    for j in range(len(final)):
        if j not in matched_final:
            out.of(classes[int(final.class_id[j])]).added += 1
    return out
