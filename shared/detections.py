"""One validated array type for detections, with converters to and from the wire formats.

Everything between the ONNX decoder and the sinks (events, hard-example mining, evaluation)
speaks :class:`Detections`, so shape and dtype mistakes are caught once, at construction.
Boxes are ``xyxy`` in pixels of the original image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from shared.errors import DetectionsError

FloatArray = NDArray[np.float32]
IntArray = NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class Detections:
    """``N`` boxes: ``xyxy`` (N, 4) float32, ``confidence`` (N,) float32, ``class_id`` (N,) int32.

    Validated on construction: shapes agree, values are finite, boxes are ordered, scores
    lie in [0, 1] and class ids are non-negative whole numbers.
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray

    def __init__(self, xyxy: ArrayLike, confidence: ArrayLike, class_id: ArrayLike) -> None:
        boxes = np.asarray(xyxy, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        scores = np.asarray(confidence, dtype=np.float32).reshape(-1)
        raw_ids = np.asarray(class_id)
        if raw_ids.size and not np.all(np.isfinite(raw_ids.astype(np.float64))):
            raise DetectionsError("class_id contains non-finite values")
        if raw_ids.size and np.any(
            raw_ids.astype(np.float64) != np.round(raw_ids.astype(np.float64))
        ):
            raise DetectionsError("class_id must be whole numbers")
        ids = raw_ids.astype(np.int32).reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DetectionsError(f"xyxy must have shape (N, 4), got {boxes.shape}")
        n = boxes.shape[0]
        if scores.shape != (n,) or ids.shape != (n,):
            raise DetectionsError(
                f"lengths differ: {n} boxes, {scores.shape[0]} confidences, "
                f"{ids.shape[0]} class ids"
            )
        if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
            raise DetectionsError("boxes or confidences contain NaN or infinity")
        if n and (np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1])):
            raise DetectionsError("boxes must satisfy x2 >= x1 and y2 >= y1")
        if n and (np.any(scores < 0.0) or np.any(scores > 1.0)):
            raise DetectionsError("confidences must lie in [0, 1]")
        if n and np.any(ids < 0):
            raise DetectionsError("class ids must be >= 0")
        object.__setattr__(self, "xyxy", boxes)
        object.__setattr__(self, "confidence", scores)
        object.__setattr__(self, "class_id", ids)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __getitem__(self, index: int | slice | NDArray[Any] | Sequence[int]) -> Detections:
        """Select by integer array, boolean mask or slice; always returns a Detections."""
        if isinstance(index, int):
            index = [index]
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index])

    def with_min_confidence(self, threshold: float) -> Detections:
        return self[self.confidence >= threshold]

    @property
    def area(self) -> FloatArray:
        return ((self.xyxy[:, 2] - self.xyxy[:, 0]) * (self.xyxy[:, 3] - self.xyxy[:, 1])).astype(
            np.float32
        )

    # ----------------------------------------------------------------- JSON
    def to_records(self, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Plain dicts for JSON payloads; boxes rounded to 0.01 px to keep messages small."""
        records: list[dict[str, Any]] = []
        for box, score, cid in zip(self.xyxy, self.confidence, self.class_id, strict=True):
            record: dict[str, Any] = {
                "class_id": int(cid),
                "confidence": round(float(score), 4),
                "xyxy": [round(float(v), 2) for v in box],
            }
            if class_names is not None and 0 <= cid < len(class_names):
                record["class_name"] = class_names[int(cid)]
            records.append(record)
        return records

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> Detections:
        rows = list(records)
        if not rows:
            return cls.empty()
        try:
            return cls(
                [r["xyxy"] for r in rows],
                [r["confidence"] for r in rows],
                [r["class_id"] for r in rows],
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DetectionsError):
                raise
            raise DetectionsError(f"malformed detection record: {exc}") from exc

    # ----------------------------------------------------------------- YOLO labels
    def to_yolo_lines(self, width: int, height: int) -> list[str]:
        """YOLO txt lines ``class cx cy w h`` normalised to the image size, boxes clipped."""
        if width <= 0 or height <= 0:
            raise DetectionsError(f"image size must be positive, got {width}x{height}")
        b = self.xyxy.copy()
        # Assign, not clip(out=...): b[:, [0, 2]] is a copy (fancy indexing).
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
        cx = (b[:, 0] + b[:, 2]) / 2 / width
        cy = (b[:, 1] + b[:, 3]) / 2 / height
        w = (b[:, 2] - b[:, 0]) / width
        h = (b[:, 3] - b[:, 1]) / height
        return [
            f"{int(c)} {x:.6f} {y:.6f} {ww:.6f} {hh:.6f}"
            for c, x, y, ww, hh in zip(self.class_id, cx, cy, w, h, strict=True)
        ]

    @classmethod
    def from_yolo_lines(
        cls, lines: Iterable[str], width: int, height: int, *, num_classes: int | None = None
    ) -> Detections:
        """Parse YOLO txt lines; raises :class:`DetectionsError` on malformed or out-of-range rows.

        This is the gate for labels from outside (labeling tools, teachers).
        """
        boxes: list[list[float]] = []
        ids: list[int] = []
        for lineno, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                raise DetectionsError(f"line {lineno}: expected 5 fields, got {len(fields)}")
            try:
                cid = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:])
            except ValueError as exc:
                raise DetectionsError(f"line {lineno}: not numbers: {line.strip()!r}") from exc
            if num_classes is not None and not 0 <= cid < num_classes:
                raise DetectionsError(f"line {lineno}: class id {cid} outside 0..{num_classes - 1}")
            values = np.array([cx, cy, w, h])
            if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
                raise DetectionsError(f"line {lineno}: box values must lie in [0, 1]")
            if w <= 0 or h <= 0:
                raise DetectionsError(f"line {lineno}: box has zero width or height")
            x1, y1 = (cx - w / 2) * width, (cy - h / 2) * height
            x2, y2 = (cx + w / 2) * width, (cy + h / 2) * height
            if x1 < -0.5 or y1 < -0.5 or x2 > width + 0.5 or y2 > height + 0.5:
                raise DetectionsError(f"line {lineno}: box extends outside the image")
            boxes.append([max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)])
            ids.append(cid)
        if not boxes:
            return cls.empty()
        return cls(boxes, np.ones(len(boxes), np.float32), ids)

    # ----------------------------------------------------------------- ultralytics
    @classmethod
    def from_ultralytics(cls, result: Any) -> Detections:
        """From one ``ultralytics.engine.results.Results`` (duck-typed: no import needed)."""
        boxes = result.boxes
        return cls(
            _to_numpy(boxes.xyxy), _to_numpy(boxes.conf), _to_numpy(boxes.cls).astype(np.int32)
        )


def _to_numpy(value: Any) -> NDArray[Any]:
    if hasattr(value, "cpu"):
        value = value.cpu().numpy()
    return np.asarray(value)


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU of two ``(N, 4)`` and ``(M, 4)`` xyxy arrays -> ``(N, M)``."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def matched_masks(
    a: Detections, b: Detections, iou_threshold: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Which boxes of ``a`` and of ``b`` are matched one-to-one to a box of the other of the
    same class with IoU at or above ``iou_threshold`` (greedy, best overlaps first)."""
    in_a = np.zeros(len(a), dtype=bool)
    in_b = np.zeros(len(b), dtype=bool)
    if len(a) == 0 or len(b) == 0:
        return in_a, in_b
    iou = box_iou(a.xyxy, b.xyxy)
    iou[a.class_id[:, None] != b.class_id[None, :]] = 0.0
    for i in np.argsort(-iou.max(axis=1)):
        j = int(np.argmax(iou[i]))
        if iou[i, j] >= iou_threshold and not in_b[j]:
            in_b[j] = True
            in_a[i] = True
    return in_a, in_b


def count_matches(a: Detections, b: Detections, iou_threshold: float) -> int:
    """Boxes of ``a`` matched one-to-one to boxes of ``b`` (see :func:`matched_masks`)."""
    return int(matched_masks(a, b, iou_threshold)[0].sum())
