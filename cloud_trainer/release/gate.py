"""The evaluation gate: a candidate publishes only if it is not worse than production beyond
configured tolerances, overall and on every class. Pure logic, so every rule is unit-tested."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

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


def judge(
    candidate: EvalMetrics,
    production: EvalMetrics,
    config: GateSection,
    *,
    reference_name: str = "production",
) -> GateVerdict:
    """``reference_name``: what ``production`` is, in the reasons (a variant is judged
    against its own fp32 model)."""
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
    for name, before in production.per_class_recall.items():
        after = candidate.per_class_recall.get(name, 0.0)
        deltas[name] = round(after - before, 4)
        if after - before < -config.class_recall_tolerance:
            reasons.append(
                f"recall of class {name!r} fell from {before:.3f} to {after:.3f} "
                f"(tolerance {config.class_recall_tolerance})"
            )
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
    )
