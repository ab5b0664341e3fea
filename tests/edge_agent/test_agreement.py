"""The rule a candidate (another runtime, or a variant) is held to against onnxruntime fp32 on
the probe frames: every box the line would act on is matched by the other side, at an IoU
that depends on what the candidate is, by a partner that may score a little under the
threshold."""

from __future__ import annotations

import numpy as np

from edge_agent.inference.selection import AgreementRule
from shared.detections import Detections

CONF = 0.25


def boxes(*rows: tuple[float, float, float, float, float, int]) -> Detections:
    """(x1, y1, x2, y2, score, class) rows."""
    if not rows:
        return Detections.empty()
    array = np.asarray(rows, dtype=np.float32)
    return Detections(array[:, :4], array[:, 4], array[:, 5].astype(np.int32))


def agree(candidate: Detections, reference: Detections, precision: str = "int8") -> float:
    return AgreementRule().agreement(
        [candidate], [reference], precision=precision, conf_threshold=CONF
    )


def test_the_same_object_scored_either_side_of_the_threshold_agrees() -> None:
    reference = boxes((10, 10, 50, 50, 0.27, 1))
    assert agree(boxes((10, 10, 50, 50, 0.20, 1)), reference) == 1.0  # decoded at 0.10
    assert agree(boxes((10, 10, 50, 50, 0.30, 1)), boxes((10, 10, 50, 50, 0.12, 1))) == 1.0


def test_a_box_the_line_acts_on_that_the_other_side_lacks_disagrees() -> None:
    reference = boxes((10, 10, 50, 50, 0.9, 1), (100, 100, 140, 140, 0.27, 2))
    assert agree(boxes((10, 10, 50, 50, 0.9, 1)), reference) == 2 / 3
    # The candidate's extra box counts too, and so does another class on the same spot.
    assert agree(boxes((10, 10, 50, 50, 0.9, 1), (200, 200, 240, 240, 0.5, 0)), boxes()) == 0.0
    assert agree(boxes((10, 10, 50, 50, 0.9, 3)), boxes((10, 10, 50, 50, 0.9, 1))) == 0.0


def test_a_variant_is_matched_at_the_gates_iou_and_a_runtime_at_its_own() -> None:
    reference = boxes((10, 10, 50, 50, 0.9, 1))
    shifted = boxes((13, 12, 53, 52, 0.88, 1))  # IoU 0.82: two or three pixels off
    assert agree(shifted, reference, precision="int8") == 1.0
    assert agree(shifted, reference, precision="fp32") == 0.0
    smaller = boxes((20, 20, 40, 40, 0.9, 1))  # IoU 0.25: other boxes, not the same ones
    assert agree(smaller, reference, precision="int8") == 0.0


def test_frames_without_boxes_agree_and_sub_threshold_boxes_do_not_count() -> None:
    assert agree(boxes(), boxes()) == 1.0
    assert agree(boxes((10, 10, 50, 50, 0.2, 1)), boxes()) == 1.0


def test_the_probe_decodes_partners_down_to_the_margin() -> None:
    assert AgreementRule(score_margin=0.15).probe_threshold(0.25) == 0.1
    assert AgreementRule(score_margin=0.5).probe_threshold(0.25) == 0.01
