from __future__ import annotations

import pytest

from cloud_trainer.errors import DatasetError
from cloud_trainer.release.evaluate import MetricsAccumulator, match_detections
from shared.detections import Detections

NAMES = ["a", "b"]


def dets(
    boxes: list[list[float]], classes: list[int], conf: list[float] | None = None
) -> Detections:
    return Detections(boxes, conf or [0.9] * len(boxes), classes)


TRUTH = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])


def test_perfect_predictions_score_one(offline_ultralytics: object) -> None:
    acc = MetricsAccumulator(NAMES)
    acc.add(TRUTH, TRUTH)
    m = acc.metrics()
    assert m.map50 == pytest.approx(1.0, abs=0.01)
    assert m.map50_95 == pytest.approx(1.0, abs=0.01)
    assert m.per_class_recall == {"a": 1.0, "b": 1.0}


def test_wrong_class_or_no_prediction_scores_zero(offline_ultralytics: object) -> None:
    acc = MetricsAccumulator(NAMES)
    acc.add(TRUTH, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 0]))
    acc.add(TRUTH, Detections.empty())
    m = acc.metrics()
    assert m.map50 == 0.0 and m.per_class_recall == {"a": 0.0, "b": 0.0}


def test_a_box_half_off_counts_at_iou_50_but_not_at_95() -> None:
    shifted = dets([[2, 0, 12, 10]], [0])  # IoU 8/12 = 0.67
    flags = match_detections(dets([[0, 0, 10, 10]], [0]), shifted)
    assert flags[0, 0] and flags[0, 3] and not flags[0, 4]


def test_each_truth_matches_one_prediction_only() -> None:
    twice = dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])
    flags = match_detections(dets([[0, 0, 10, 10]], [0]), twice)
    assert flags[:, 0].tolist() == [True, False]


def test_recall_uses_the_operating_confidence(offline_ultralytics: object) -> None:
    acc = MetricsAccumulator(NAMES, operating_confidence=0.5)
    acc.add(TRUTH, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1], [0.9, 0.3]))
    m = acc.metrics()
    assert m.per_class_recall == {"a": 1.0, "b": 0.0}
    assert m.map50 > 0.9  # AP still sees the low-confidence hit


def test_no_images_or_no_objects_is_an_error() -> None:
    with pytest.raises(DatasetError, match="no image"):
        MetricsAccumulator(NAMES).metrics()
    acc = MetricsAccumulator(NAMES)
    acc.add(Detections.empty(), Detections.empty())
    with pytest.raises(DatasetError, match="no labelled object"):
        acc.metrics()


def test_precision_counts_what_the_line_is_told_at_the_operating_confidence() -> None:
    acc = MetricsAccumulator(NAMES, operating_confidence=0.5)
    # class a: one hit and one false alarm above the threshold; class b: only below it.
    predicted = dets(
        [[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], [0, 0, 1], [0.9, 0.8, 0.3]
    )
    acc.add(TRUTH, predicted)
    assert acc.precision_at_operating_point() == {"a": 0.5}
