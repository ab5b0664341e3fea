"""Pure conversions between Label Studio's JSON and the project's types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from cloud_trainer.labelstudio.tasks import (
    Annotation,
    AnnotationRejected,
    boxes_from_result,
    choose_annotation,
    corrections,
    label_config,
    parse_model_tag,
    parse_task,
    rectangles_result,
    yolo_lines,
)
from shared.detections import Detections

CLASSES = ["bolt", "nut", "defect"]


def box(x: float, y: float, w: float, h: float, label: str, **extra: Any) -> dict[str, Any]:
    value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}
    value.update(extra)
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": value}


def test_label_config_escapes_class_names() -> None:
    config = label_config(["bolt", 'odd "name" <&>'])
    assert '<Label value="bolt"/>' in config
    assert "&lt;&amp;&gt;" in config and "<&>" not in config


def test_rectangles_round_trip_through_percent() -> None:
    pixels = Detections([[64, 32, 128, 96]], [0.8], [1])
    result = rectangles_result(pixels, CLASSES, 640, 320)
    assert result[0]["value"]["rectanglelabels"] == ["nut"]
    back = boxes_from_result(result, CLASSES)
    np.testing.assert_allclose(back.xyxy[0], [0.1, 0.1, 0.2, 0.3], atol=1e-6)
    assert yolo_lines(back) == ["1 0.150000 0.200000 0.100000 0.200000"]


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (box(10, 10, 5, 5, "screw"), "unknown label 'screw'"),
        (box(110, 10, 5, 5, "bolt"), "outside the image"),
        (box(-5, 10, 5, 5, "bolt"), "outside the image"),
        (box(10, 10, 0, 5, "bolt"), "zero size"),
        (box(10, 10, 5, 5, "bolt", rotation=30), "rotated"),
        (box(10, 10, float("nan"), 5, "bolt"), "non-finite"),
        (box(10, 10, 5, 5, "bolt", rectanglelabels=["bolt", "nut"]), "2 labels"),
        ({"type": "rectanglelabels", "from_name": "label", "value": {"x": 1}}, "box 0"),
        ({"type": "rectanglelabels", "from_name": "other", "value": {}}, "tool 'other'"),
        ({"value": {}}, "result 0"),
    ],
)
def test_bad_boxes_are_rejected_with_the_reason(item: dict[str, Any], why: str) -> None:
    with pytest.raises(AnnotationRejected, match=why):
        boxes_from_result([item], CLASSES)


def test_a_hair_past_the_border_is_clipped_and_other_tools_ignored() -> None:
    note = {"type": "textarea", "from_name": "note", "value": {"text": ["ok"]}}
    boxes = boxes_from_result([box(95, 95, 5.3, 5.2, "defect"), note], CLASSES)
    assert len(boxes) == 1
    assert boxes.xyxy[0].max() == pytest.approx(1.0)


def annotation(id_: int, minute: int, **extra: Any) -> Annotation:
    stamp = datetime(2026, 12, 1, 10, minute, tzinfo=UTC)
    return Annotation.model_validate({"id": id_, "updated_at": stamp, **extra})


def test_annotation_rule() -> None:
    older, newer = annotation(1, 0), annotation(2, 5)
    assert choose_annotation([older, newer], require_review=False).annotation is newer
    starred = annotation(3, 1, ground_truth=True)
    assert choose_annotation([newer, starred], require_review=False).annotation is starred
    cancelled = annotation(4, 9, was_cancelled=True)
    assert choose_annotation([older, cancelled], require_review=False).annotation is older
    skipped = choose_annotation([cancelled], require_review=False)
    assert (skipped.annotation, skipped.outcome) == (None, "skipped")
    assert choose_annotation([], require_review=False).outcome == "pending"
    waiting = choose_annotation([older, newer], require_review=True)
    assert (waiting.outcome, waiting.annotation) == ("pending", None)
    assert choose_annotation([older, starred], require_review=True).annotation is starred


def test_corrections_per_class() -> None:
    pre = Detections(
        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
        [0.9, 0.8, 0.7, 0.6],
        [0, 0, 1, 2],
    )
    final = Detections(
        [[0, 0, 10, 10], [21, 21, 31, 31], [40, 40, 50, 50], [80, 80, 90, 90]],
        [1, 1, 1, 1],
        [0, 0, 2, 1],
    )
    fixes = corrections(pre, final, CLASSES).by_class
    assert (fixes["bolt"].kept, fixes["bolt"].moved) == (1, 1)
    assert fixes["nut"].relabeled == 1  # the model said nut, people said defect
    assert fixes["defect"].removed == 1  # a false defect
    assert fixes["nut"].added == 1  # a nut the model missed
    assert (fixes["bolt"].prelabeled, fixes["defect"].labeled) == (2, 1)


def test_tasks_and_model_tags_from_outside_are_validated() -> None:
    assert parse_model_tag("bolts@3") == ("bolts", 3)
    assert parse_model_tag("bolts@x") == (None, None)
    assert parse_model_tag(None) == (None, None)
    with pytest.raises(AnnotationRejected, match="malformed task"):
        parse_task({"id": "seven", "data": {}})
    with pytest.raises(AnnotationRejected):
        parse_task({"id": 1, "data": {}, "annotations": [{"id": 1, "result": "nope"}]})
    assert parse_task({"id": 1, "data": {"example_key": 5}}).example_key is None
