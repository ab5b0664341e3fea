"""The evaluation gate: a candidate publishes only if it is not worse than production beyond
configured tolerances, overall and on every class. Pure logic, so every rule is unit-tested.

A class's recall is a proportion of that class's boxes in the held-out set, and a fine-tune on
a hundred new labels is gated on a few dozen images: 10-30 boxes a class, where one box moves
recall by 0.03-0.10. Read strictly, "fell by more than 0.05" then rejects a model for one box.
Given the number of boxes (``support``), a fall rejects when it exceeds the tolerance *and*
the boxes make it evidence of a fall: the lower one-sided bound of the Agresti-Caffo interval
for the difference of the two recalls (each with one found and one missed box added, which
keeps the interval honest at 0 and 1) at ``class_recall_confidence`` is above zero. A fall the
boxes cannot tell from noise is reported in ``within_noise``. mAP50 and mAP50-95 are held to
their tolerances as before. At 0.95: 0.90 -> 0.80 on 100 boxes rejects, 0.85 -> 0.34 on 10
rejects, 0.43 -> 0.34 on 35 (three boxes) passes, 1.00 -> 0.89 on 27 passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.config import GateSection
from shared.manifest import EvalMetrics


class GateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    passed: bool
    reasons: list[str]
    candidate: EvalMetrics
    production: EvalMetrics
    delta_map50: float
    delta_map50_95: float
    delta_class_recall: dict[str, float]
    # Falls beyond the tolerance that the held-out boxes cannot tell from noise.
    within_noise: list[str] = Field(default_factory=list)


def recall_fall_bound(before: float, after: float, boxes: int, confidence: float) -> float:
    """The lower bound of the fall of recall (before - after) that the ``boxes`` of one class
    support at ``confidence``, one-sided (above zero: evidence of a fall): Agresti-Caffo's
    adjusted Wald bound on the difference of two proportions measured on the same boxes. It
    is not paired: when both models miss the same boxes, a paired test (McNemar's) would
    need fewer boxes to call a fall, so this bound lets somewhat more small falls through."""
    if boxes <= 0:
        return 0.0
    found_before, found_after = round(before * boxes), round(after * boxes)
    p_before = (found_before + 1) / (boxes + 2)
    p_after = (found_after + 1) / (boxes + 2)
    spread = math.sqrt((p_before * (1 - p_before) + p_after * (1 - p_after)) / (boxes + 2))
    z = NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0
    return (p_before - p_after) - z * spread


def judge(
    candidate: EvalMetrics,
    production: EvalMetrics,
    config: GateSection,
    *,
    reference_name: str = "production",
    support: Mapping[str, int] | None = None,
) -> GateVerdict:
    """``reference_name``: what ``production`` is, in the reasons (a variant is judged
    against its own fp32 model). ``support``: boxes per class in the set both were scored on;
    without it (or with ``class_recall_confidence`` 0) any fall beyond the tolerance rejects."""
    reasons: list[str] = []
    delta50 = candidate.map50 - production.map50
    delta5095 = candidate.map50_95 - production.map50_95
    if delta50 < -config.map50_tolerance:
        reasons.append(
            f"mAP50 {candidate.map50:.3f} is {-delta50:.3f} below {reference_name}'s "
            f"{production.map50:.3f} (tolerance {config.map50_tolerance})"
        )
    if delta5095 < -config.map50_95_tolerance:
        reasons.append(
            f"mAP50-95 {candidate.map50_95:.3f} is {-delta5095:.3f} below {reference_name}'s "
            f"{production.map50_95:.3f} (tolerance {config.map50_95_tolerance})"
        )
    deltas: dict[str, float] = {}
    within_noise: list[str] = []
    tolerance = config.class_recall_tolerance
    for name, before in production.per_class_recall.items():
        after = candidate.per_class_recall.get(name, 0.0)
        deltas[name] = round(after - before, 4)
        if after - before >= -tolerance:
            continue
        fell = f"recall of class {name!r} fell from {before:.3f} to {after:.3f}"
        boxes = None if support is None else support.get(name)
        if boxes is None or config.class_recall_confidence == 0.0:
            reasons.append(f"{fell} (tolerance {tolerance})")
            continue
        bound = recall_fall_bound(before, after, boxes, config.class_recall_confidence)
        confidence = config.class_recall_confidence
        evidence = f"on {boxes} boxes; at {confidence} the fall is {bound:+.3f} or more"
        if bound > 0.0:
            reasons.append(f"{fell} ({evidence}; tolerance {tolerance})")
        else:
            within_noise.append(f"{fell}: within noise ({evidence}; tolerance {tolerance})")
    for name, after in candidate.per_class_recall.items():
        deltas.setdefault(name, round(after, 4))
    return GateVerdict(
        passed=not reasons,
        reasons=reasons or [f"not worse than {reference_name} within the tolerances"],
        candidate=candidate,
        production=production,
        delta_map50=round(delta50, 4),
        delta_map50_95=round(delta5095, 4),
        delta_class_recall=deltas,
        within_noise=within_noise,
    )
