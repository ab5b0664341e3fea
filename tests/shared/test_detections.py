from __future__ import annotations

import numpy as np
import pytest

from shared.detections import Detections, box_iou
from shared.errors import DetectionsError


def sample() -> Detections:
    return Detections([[10, 20, 50, 60], [0, 0, 5, 5]], [0.9, 0.3], [1, 4])


def test_coerces_dtypes_and_shapes() -> None:
    det = sample()
    assert det.xyxy.dtype == np.float32 and det.xyxy.shape == (2, 4)
    assert det.confidence.dtype == np.float32
    assert det.class_id.dtype == np.int32
    assert len(det) == 2
    assert len(Detections.empty()) == 0


@pytest.mark.parametrize(
    ("boxes", "scores", "ids", "message"),
    [
        ([[1, 2, 3]], [0.5], [0], "shape"),
        ([[0, 0, 1, 1]], [0.5, 0.6], [0], "lengths differ"),
        ([[0, 0, float("nan"), 1]], [0.5], [0], "NaN"),
        ([[0, 0, 1, 1]], [float("inf")], [0], "NaN"),
        ([[5, 0, 1, 1]], [0.5], [0], "x2 >= x1"),
        ([[0, 0, 1, 1]], [1.5], [0], r"\[0, 1\]"),
        ([[0, 0, 1, 1]], [0.5], [-1], ">= 0"),
        ([[0, 0, 1, 1]], [0.5], [1.5], "whole numbers"),
    ],
)
def test_rejects_invalid_arrays(boxes: object, scores: object, ids: object, message: str) -> None:
    with pytest.raises(DetectionsError, match=message):
        Detections(boxes, scores, ids)  # type: ignore[arg-type]


def test_indexing_and_filtering() -> None:
    det = sample()
    assert det[0].class_id.tolist() == [1]
    assert det.with_min_confidence(0.5).class_id.tolist() == [1]
    assert det[np.array([False, True])].class_id.tolist() == [4]
    np.testing.assert_allclose(det.area, [1600, 25])


def test_records_round_trip_with_names() -> None:
    det = sample()
    records = det.to_records(["a", "b", "c", "d", "e"])
    assert records[0]["class_name"] == "b"
    back = Detections.from_records(records)
    np.testing.assert_allclose(back.xyxy, det.xyxy)
    assert back.class_id.tolist() == det.class_id.tolist()
    assert len(Detections.from_records([])) == 0


def test_records_malformed() -> None:
    with pytest.raises(DetectionsError, match="malformed"):
        Detections.from_records([{"xyxy": [0, 0, 1, 1]}])


def test_yolo_lines_clip_boxes_to_the_image() -> None:
    det = Detections([[-10, -5, 50, 40], [90, 70, 130, 95]], [0.9, 0.8], [0, 1])
    back = Detections.from_yolo_lines(det.to_yolo_lines(100, 80), 100, 80)
    np.testing.assert_allclose(back.xyxy, [[0, 0, 50, 40], [90, 70, 100, 80]], atol=1e-3)


def test_yolo_round_trip() -> None:
    det = sample()
    lines = det.to_yolo_lines(100, 80)
    assert lines[0].startswith("1 0.300000 0.500000 0.400000 0.500000")
    back = Detections.from_yolo_lines(lines, 100, 80, num_classes=5)
    np.testing.assert_allclose(back.xyxy, det.xyxy, atol=1e-3)
    assert back.confidence.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 0.5 0.5 0.1", "expected 5 fields"),
        ("x 0.5 0.5 0.1 0.1", "not numbers"),
        ("9 0.5 0.5 0.1 0.1", "class id 9 outside"),
        ("1 1.5 0.5 0.1 0.1", r"\[0, 1\]"),
        ("1 0.5 0.5 0 0.1", "zero width"),
        ("1 0.95 0.5 0.4 0.1", "outside the image"),
        ("1 nan 0.5 0.1 0.1", r"\[0, 1\]"),
    ],
)
def test_yolo_rejects_bad_rows(line: str, message: str) -> None:
    with pytest.raises(DetectionsError, match=message):
        Detections.from_yolo_lines([line], 100, 100, num_classes=5)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0]], rtol=1e-5)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_from_ultralytics_duck_typed() -> None:
    class Boxes:
        xyxy = np.array([[1, 2, 3, 4]], np.float32)
        conf = np.array([0.7], np.float32)
        cls = np.array([2.0], np.float32)

    class Result:
        boxes = Boxes()

    det = Detections.from_ultralytics(Result())
    assert det.class_id.tolist() == [2]


def test_count_matches_is_one_to_one_and_class_aware() -> None:
    from shared.detections import count_matches

    a = Detections([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 0, 1])
    b = Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.9], [0, 2])
    assert count_matches(a, b, 0.5) == 1, "one box of b cannot match two of a; classes must agree"
    assert count_matches(a, Detections.empty(), 0.5) == 0
