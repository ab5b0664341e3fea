from __future__ import annotations

from cloud_trainer.config import GateSection
from cloud_trainer.release.gate import judge
from shared.manifest import EvalMetrics


def metrics(map50: float, map50_95: float, **recall: float) -> EvalMetrics:
    return EvalMetrics(map50=map50, map50_95=map50_95, per_class_recall=recall, images=10)


def test_a_better_candidate_passes() -> None:
    verdict = judge(metrics(0.8, 0.6, bolt=0.9), metrics(0.7, 0.5, bolt=0.8), GateSection())
    assert verdict.passed
    assert verdict.delta_map50 == 0.1
    assert verdict.delta_class_recall == {"bolt": 0.1}


def test_worse_overall_beyond_tolerance_is_rejected_with_the_numbers() -> None:
    verdict = judge(metrics(0.68, 0.5), metrics(0.7, 0.5), GateSection(map50_tolerance=0.01))
    assert not verdict.passed
    assert "mAP50 0.680 is 0.020 below production's 0.700" in verdict.reasons[0]


def test_worse_within_tolerance_passes() -> None:
    assert judge(metrics(0.695, 0.49), metrics(0.7, 0.5), GateSection()).passed


def test_one_class_regressing_rejects_even_when_overall_improves() -> None:
    verdict = judge(
        metrics(0.9, 0.7, bolt=1.0, defect=0.5),
        metrics(0.7, 0.5, bolt=0.5, defect=0.8),
        GateSection(class_recall_tolerance=0.05),
    )
    assert not verdict.passed
    assert any("'defect' fell from 0.800 to 0.500" in r for r in verdict.reasons)


def test_a_class_the_candidate_lost_entirely_counts_as_zero_recall() -> None:
    verdict = judge(metrics(0.9, 0.7), metrics(0.7, 0.5, nut=0.6), GateSection())
    assert not verdict.passed
    assert verdict.delta_class_recall["nut"] == -0.6
