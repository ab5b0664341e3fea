"""The fine-tuning recipe's settings, as ultralytics receives them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud_trainer.config import TrainingSection
from cloud_trainer.training.finetune import TrainSpec, recipe_arguments
from tests.cloud_trainer.training.test_skypilot import SPEC


def test_a_spec_without_a_recipe_adds_nothing_so_ultralytics_picks_as_before() -> None:
    assert recipe_arguments(SPEC) == {}


def test_the_default_recipe_is_the_one_the_learning_loop_benchmark_chose() -> None:
    training = TrainingSection()
    assert (training.epochs, training.lr0, training.optimizer, training.freeze) == (
        40,
        3e-4,
        "auto",
        0,
    )


def test_a_learning_rate_alone_means_adamw_at_that_rate() -> None:
    """ultralytics drops lr0 under optimizer "auto": asking for a rate must not be ignored."""
    spec = SPEC.model_copy(update={"lr0": 0.0003, "freeze": 10})
    no_bias_kick = {"warmup_bias_lr": 0.0}  # as under "auto": no lr 0.1 on the biases
    assert recipe_arguments(spec) == {
        "lr0": 0.0003,
        "optimizer": "AdamW",
        "freeze": 10,
        **no_bias_kick,
    }
    sgd = SPEC.model_copy(update={"lr0": 0.01, "optimizer": "SGD"})
    assert recipe_arguments(sgd) == {"lr0": 0.01, "optimizer": "SGD", **no_bias_kick}


def test_recipe_settings_are_checked_and_old_specs_still_parse() -> None:
    with pytest.raises(ValidationError):
        TrainingSection(freeze=-1)
    with pytest.raises(ValidationError):
        TrainingSection(optimizer="Lion")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TrainingSection(lr0=0.0)
    stored = SPEC.model_dump(exclude={"freeze", "optimizer", "lr0"})  # a spec from before
    assert TrainSpec.model_validate(stored).optimizer == "auto"
