from __future__ import annotations

from cloud_trainer.config import GateSection
from cloud_trainer.release.gate import judge, recall_fall_bound
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


def test_a_fall_of_a_few_boxes_is_noise_and_passes_with_a_note() -> None:
    """learning_loop: nut 0.429 -> 0.343 on 35 held-out boxes (three boxes) had refused an
    update that recovered 0.96 of mAP50."""
    verdict = judge(
        metrics(0.60, 0.40, nut=0.343, bolt=0.9),
        metrics(0.05, 0.02, nut=0.429, bolt=0.9),
        GateSection(),
        support={"nut": 35, "bolt": 40},
    )
    assert verdict.passed
    assert len(verdict.within_noise) == 1
    assert "'nut' fell from 0.429 to 0.343: within noise (on 35 boxes" in verdict.within_noise[0]


def test_a_large_fall_rejects_even_on_few_boxes() -> None:
    verdict = judge(
        metrics(0.9, 0.7, bolt=0.34),
        metrics(0.7, 0.5, bolt=0.85),
        GateSection(),
        support={"bolt": 10},
    )
    assert not verdict.passed
    assert (
        "'bolt' fell from 0.850 to 0.340 (on 10 boxes; at 0.95 the fall is +0."
        in verdict.reasons[0]
    )


def test_a_modest_fall_on_many_boxes_rejects() -> None:
    verdict = judge(
        metrics(0.9, 0.7, bolt=0.8),
        metrics(0.7, 0.5, bolt=0.9),
        GateSection(),
        support={"bolt": 100},
    )
    assert not verdict.passed
    assert verdict.within_noise == []


def test_without_the_boxes_or_at_confidence_zero_any_fall_beyond_the_tolerance_rejects() -> None:
    candidate, production = metrics(0.6, 0.4, nut=0.343), metrics(0.05, 0.02, nut=0.429)
    assert not judge(candidate, production, GateSection(), support={"bolt": 35}).passed
    strict = GateSection(class_recall_confidence=0.0)
    assert not judge(candidate, production, strict, support={"nut": 35}).passed


def test_the_bound_grows_with_the_boxes_and_with_the_fall() -> None:
    assert recall_fall_bound(0.9, 0.8, 300, 0.95) > recall_fall_bound(0.9, 0.8, 100, 0.95)
    assert recall_fall_bound(0.9, 0.5, 50, 0.95) > recall_fall_bound(0.9, 0.8, 50, 0.95)
    assert recall_fall_bound(0.9, 0.8, 100, 0.99) < recall_fall_bound(0.9, 0.8, 100, 0.95)
    assert recall_fall_bound(0.5, 0.5, 0, 0.95) == 0.0
