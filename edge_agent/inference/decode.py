"""Decode ultralytics YOLO outputs into :class:`Detections`, with vectorised class-aware NMS.

Two layouts: the raw head ``[B, 4+nc, N]`` (cx, cy, w, h in input pixels, then per-class
scores, no objectness) as exported by YOLOv8/YOLO11, and NMS-in-graph ``[B, K, 6]``
(x1, y1, x2, y2, score, class). Thresholds and the class-offset trick follow ultralytics'
``non_max_suppression`` so the boxes agree with its ``predict()``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from shared.detections import Detections

# Boxes of different classes are shifted this far apart so one NMS pass is class-aware.
CLASS_OFFSET = 7680.0
MAX_NMS_CANDIDATES = 30000


def nms(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], iou_threshold: float
) -> NDArray[np.intp]:
    """Greedy NMS; returns kept indices in descending score order."""
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    alive = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.nonzero(alive[i + 1 :])[0] + i + 1
        if rest.size == 0:
            break
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        alive[rest[iou > iou_threshold]] = False
    return order[np.array(keep, dtype=np.intp)] if keep else np.zeros(0, dtype=np.intp)


def decode_yolo_raw(
    output: NDArray[np.floating],
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_detections: int = 300,
) -> list[Detections]:
    """``[B, 4+nc, N]`` -> one :class:`Detections` per image, in model-input pixels."""
    if output.ndim != 3 or output.shape[1] < 5:
        raise ValueError(f"expected a [B, 4+nc, N] raw YOLO output, got shape {output.shape}")
    results = []
    for pred in output:
        scores_all = pred[4:]
        class_id = scores_all.argmax(axis=0)
        confidence = scores_all.max(axis=0)
        candidates = np.nonzero(confidence > conf_threshold)[0]
        if candidates.size == 0:
            results.append(Detections.empty())
            continue
        if candidates.size > MAX_NMS_CANDIDATES:
            top = np.argsort(-confidence[candidates])[:MAX_NMS_CANDIDATES]
            candidates = candidates[top]
        cx, cy, w, h = (pred[i, candidates] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(
            np.float32
        )
        conf = confidence[candidates].astype(np.float32)
        cls = class_id[candidates]
        keep = nms(boxes + (cls[:, None] * CLASS_OFFSET).astype(np.float32), conf, iou_threshold)
        keep = keep[:max_detections]
        results.append(Detections(boxes[keep], np.clip(conf[keep], 0.0, 1.0), cls[keep]))
    return results


def decode_nms_in_graph(
    output: NDArray[np.floating], *, conf_threshold: float = 0.25, max_detections: int = 300
) -> list[Detections]:
    """``[B, K, 6]`` (x1, y1, x2, y2, score, class; zero-padded) -> Detections per image."""
    if output.ndim != 3 or output.shape[2] != 6:
        raise ValueError(f"expected a [B, K, 6] NMS output, got shape {output.shape}")
    results = []
    for table in output:
        rows = table[table[:, 4] > conf_threshold][:max_detections]
        boxes = rows[:, :4].astype(np.float32)
        boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0])
        boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1])
        results.append(
            Detections(boxes, np.clip(rows[:, 4], 0.0, 1.0), np.rint(rows[:, 5]).astype(np.int32))
        )
    return results
