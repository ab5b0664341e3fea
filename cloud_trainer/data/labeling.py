"""Labeling sources behind one interface: people's YOLO files, a teacher model, or the
synthetic line's exact truth (the demo's and tests' labeler).

A source returns the labels of one hard example or raises :class:`LabelMissing` (nobody has
labelled it yet: the example is skipped and counted) or :class:`LabelInvalid` (the label file
is malformed: skipped with the reason). Neither stops a dataset build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from cloud_trainer.errors import LabelError, ObjectNotFoundError
from cloud_trainer.store import ObjectStore
from shared.detections import Detections
from shared.errors import DetectionsError
from shared.hard_examples import HardExampleSidecar
from shared.object_keys import label_key

MAX_LABEL_BYTES = 256 * 1024


class LabelMissing(Exception):  # noqa: N818 - a normal outcome, not an error
    """No label exists for this example (yet)."""


class LabelInvalid(Exception):  # noqa: N818 - a reported skip, not an error
    """The label exists but cannot be used."""


@dataclass(frozen=True)
class ExampleForLabeling:
    day: str  # yyyy/mm/dd, from the key
    sidecar: HardExampleSidecar
    image: NDArray[np.uint8]  # decoded BGR


class LabelSource(Protocol):
    name: str

    def label(self, example: ExampleForLabeling) -> Detections: ...


def _check_classes(labels: Detections, num_classes: int) -> Detections:
    if len(labels) and (labels.class_id.min() < 0 or labels.class_id.max() >= num_classes):
        raise LabelInvalid(f"class id outside 0..{num_classes - 1}")
    return labels


class SyntheticOracle:
    """Exact truth the synthetic line attached to its frames (stands in for people)."""

    name = "synthetic"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def label(self, example: ExampleForLabeling) -> Detections:
        truth = example.sidecar.synthetic_truth
        if truth is None:
            raise LabelMissing("frame carries no synthetic truth (not from the synthetic line)")
        try:
            labels = Detections.from_records(r.model_dump() for r in truth)
        except DetectionsError as exc:
            raise LabelInvalid(str(exc)) from exc
        return _check_classes(labels, self.num_classes)


class YoloLabelFiles:
    """``labels/{fleet}/{device}/{yyyy}/{mm}/{dd}/{frame_id}.txt`` in YOLO format, as labeling
    tools export them (imported there with ``cloud-trainer labels import``)."""

    name = "yolo_import"

    def __init__(self, store: ObjectStore, num_classes: int) -> None:
        self.store = store
        self.num_classes = num_classes

    def label(self, example: ExampleForLabeling) -> Detections:
        sidecar = example.sidecar
        key = label_key(sidecar.fleet, sidecar.device_id, example.day, sidecar.frame_id)
        try:
            body, _ = self.store.get(key, max_bytes=MAX_LABEL_BYTES)
        except ObjectNotFoundError as exc:
            raise LabelMissing(f"no label at {key}") from exc
        try:
            text = body.decode("utf-8")
            height, width = example.image.shape[:2]
            return Detections.from_yolo_lines(
                text.splitlines(), width, height, num_classes=self.num_classes
            )
        except (UnicodeDecodeError, DetectionsError) as exc:
            raise LabelInvalid(f"{key}: {exc}") from exc


class TeacherModel:
    """Pseudo-labels from a larger model (ONNX through the agent's runner, or an ultralytics
    ``.pt``), kept above a confidence threshold."""

    name = "teacher"

    def __init__(self, model: Path, class_names: Sequence[str], confidence: float) -> None:
        if not model.is_file():
            raise LabelError(f"teacher model {model} does not exist")
        self.confidence = confidence
        if model.suffix == ".onnx":
            names, self._predict = _onnx_teacher(model, confidence)
        elif model.suffix == ".pt":
            names, self._predict = _ultralytics_teacher(model, confidence)
        else:
            raise LabelError(f"teacher model must be .onnx or .pt, got {model.name}")
        if names != tuple(class_names):
            raise LabelError(
                f"teacher classes {list(names)} differ from the model line's {list(class_names)}"
            )

    def label(self, example: ExampleForLabeling) -> Detections:
        return self._predict(example.image).with_min_confidence(self.confidence)


Predict = Callable[[NDArray[np.uint8]], Detections]


def _onnx_teacher(model: Path, confidence: float) -> tuple[tuple[str, ...], Predict]:
    # The agent's own inference path, so a teacher's labels match what the box would see.
    from edge_agent.inference import InferenceRunner, RunnerOptions  # noqa: PLC0415

    options = RunnerOptions(conf_threshold=confidence, warmup_runs=1, thread_spinning=True)
    runner = InferenceRunner(model, options)  # spinning: images run back to back
    return runner.info.class_names, lambda image: runner.detect([image])[0]


def _ultralytics_teacher(model: Path, confidence: float) -> tuple[tuple[str, ...], Predict]:
    from ultralytics import YOLO  # noqa: PLC0415 - trainer only

    yolo = YOLO(str(model))
    names = tuple(str(yolo.names[i]) for i in sorted(yolo.names))

    def predict(image: NDArray[np.uint8]) -> Detections:
        results = yolo.predict(image, conf=confidence, verbose=False)
        return Detections.from_ultralytics(results[0])

    return names, predict


def make_label_source(
    kind: str,
    *,
    store: ObjectStore,
    class_names: Sequence[str],
    teacher_model: Path | None = None,
    teacher_confidence: float = 0.5,
) -> LabelSource:
    if kind == "synthetic":
        return SyntheticOracle(len(class_names))
    if kind == "yolo_import":
        return YoloLabelFiles(store, len(class_names))
    if kind == "teacher":
        if teacher_model is None:
            raise LabelError("the teacher source needs a model file")
        return TeacherModel(teacher_model, class_names, teacher_confidence)
    raise LabelError(f"unknown labeling source {kind!r}")
