"""Score an ONNX model on labelled images through the agent's own inference code.

What is gated is what runs: the candidate and production ONNX files go through
:class:`edge_agent.inference.InferenceRunner` (same letterbox, decode and NMS as on the line).
Matching follows ultralytics' validator and AP comes from its ``ap_per_class``, so figures are
comparable with ``yolo val``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from cloud_trainer.errors import DatasetError

# The agent's own inference path: what the gate measures is exactly what runs on the box.
from edge_agent.inference import InferenceRunner, RunnerOptions, Runtime
from shared.detections import Detections, box_iou
from shared.manifest import EvalMetrics

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
# Low threshold for AP (the whole precision-recall curve), as ultralytics val does.
EVAL_CONFIDENCE = 0.001


@dataclass(frozen=True)
class LabelledImage:
    image_path: Path
    truth: Detections


def match_detections(truth: Detections, predicted: Detections) -> NDArray[np.bool_]:
    """(n_pred, 10) true-positive flags at IoU 0.50:0.95, one truth per prediction, class-aware."""
    correct = np.zeros((len(predicted), len(IOU_THRESHOLDS)), dtype=bool)
    if len(truth) == 0 or len(predicted) == 0:
        return correct
    iou = box_iou(truth.xyxy, predicted.xyxy)
    iou = iou * (truth.class_id[:, None] == predicted.class_id[None, :])
    for i, threshold in enumerate(IOU_THRESHOLDS):
        matches = np.argwhere(iou >= threshold)  # (truth index, prediction index)
        if len(matches) == 0:
            continue
        if len(matches) > 1:
            matches = matches[iou[matches[:, 0], matches[:, 1]].argsort()[::-1]]
            matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
            matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1], i] = True
    return correct


class MetricsAccumulator:
    """Collects per-image matches; :meth:`metrics` turns them into mAP and per-class recall."""

    def __init__(self, class_names: Sequence[str], operating_confidence: float = 0.25) -> None:
        self.class_names = list(class_names)
        self.operating_confidence = operating_confidence
        self._tp: list[NDArray[np.bool_]] = []
        self._conf: list[NDArray[np.float32]] = []
        self._pred_cls: list[NDArray[np.int64]] = []
        self._target_cls: list[NDArray[np.int64]] = []
        self.images = 0

    def add(self, truth: Detections, predicted: Detections) -> None:
        self._tp.append(match_detections(truth, predicted))
        self._conf.append(predicted.confidence.astype(np.float32))
        self._pred_cls.append(predicted.class_id.astype(np.int64))
        self._target_cls.append(truth.class_id.astype(np.int64))
        self.images += 1

    def metrics(self) -> EvalMetrics:
        from ultralytics.utils.metrics import ap_per_class  # noqa: PLC0415 - trainer only

        if self.images == 0:
            raise DatasetError("no image to evaluate on")
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, 10), bool)
        conf = np.concatenate(self._conf)
        pred_cls = np.concatenate(self._pred_cls)
        target_cls = np.concatenate(self._target_cls)
        if len(target_cls) == 0:
            raise DatasetError("the evaluation images hold no labelled object")
        recall = self._recall_at_operating_point(tp, conf, pred_cls, target_cls)
        if len(tp) == 0:
            return EvalMetrics(map50=0.0, map50_95=0.0, per_class_recall=recall, images=self.images)
        names = dict(enumerate(self.class_names))
        ap = ap_per_class(tp, conf, pred_cls, target_cls, plot=False, names=names)[5]
        return EvalMetrics(
            map50=float(np.clip(ap[:, 0].mean(), 0.0, 1.0)),
            map50_95=float(np.clip(ap.mean(), 0.0, 1.0)),
            per_class_recall=recall,
            images=self.images,
        )

    def precision_at_operating_point(self) -> dict[str, float]:
        """Per-class precision at IoU 0.5 and the agent's confidence threshold: the share of
        what the line is told that is right (a recall gain must not be bought with it)."""
        if not self._tp:
            return {}
        tp = np.concatenate(self._tp)
        kept = np.concatenate(self._conf) >= self.operating_confidence
        pred_cls = np.concatenate(self._pred_cls)
        precision: dict[str, float] = {}
        for cid, name in enumerate(self.class_names):
            said = kept & (pred_cls == cid)
            if said.any():
                precision[name] = round(float(tp[said, 0].mean()), 4)
        return precision

    def _recall_at_operating_point(
        self,
        tp: NDArray[np.bool_],
        conf: NDArray[np.float32],
        pred_cls: NDArray[np.int64],
        target_cls: NDArray[np.int64],
    ) -> dict[str, float]:
        """Recall at IoU 0.5 and the agent's confidence threshold: what the line sees."""
        kept = conf >= self.operating_confidence
        recall: dict[str, float] = {}
        for cid in np.unique(target_cls):
            if not 0 <= cid < len(self.class_names):
                continue
            truths = int((target_cls == cid).sum())
            found = int((tp[kept & (pred_cls == cid), 0]).sum()) if len(tp) else 0
            recall[self.class_names[int(cid)]] = round(found / truths, 4)
        return recall


def evaluate_onnx(
    model: Path,
    images: Iterable[LabelledImage],
    class_names: Sequence[str],
    *,
    operating_confidence: float = 0.25,
    intra_op_threads: int = 0,
    runtime: Runtime = "onnxruntime",
) -> EvalMetrics:
    """mAP50, mAP50-95 and per-class recall of ``model`` on ``images``, run by ``runtime``."""
    runner = InferenceRunner(
        model,
        RunnerOptions(
            conf_threshold=EVAL_CONFIDENCE,
            max_detections=300,
            warmup_runs=1,
            intra_op_threads=intra_op_threads,
            thread_spinning=True,  # runs back to back: nothing else wants the cores
            runtime=runtime,
        ),
        class_names=tuple(class_names),
    )
    accumulator = MetricsAccumulator(class_names, operating_confidence)
    try:
        for item in images:
            image = cv2.imread(str(item.image_path), cv2.IMREAD_COLOR)
            if image is None:
                raise DatasetError(f"cannot decode evaluation image {item.image_path}")
            accumulator.add(item.truth, runner.detect([np.asarray(image, np.uint8)])[0])
    finally:
        runner.close()
    return accumulator.metrics()
