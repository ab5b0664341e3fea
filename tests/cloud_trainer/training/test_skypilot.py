"""The generated SkyPilot task, validated with SkyPilot's own loader (launching needs a cloud
account and is not tested)."""

from __future__ import annotations

import pytest

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import TrainerConfigError
from cloud_trainer.training.finetune import TrainSpec
from cloud_trainer.training.skypilot import SECRET_ENV, load_task, render_task, task_yaml

SPEC = TrainSpec(
    run_id="line-a-20261123T000000Z-abcd",
    model_name="line-a",
    dataset_name="line-a",
    dataset_version="20261123T000000Z-12345678",
    parent_version=1,
    parent_weights_key="models/line-a/1/model.pt",
    parent_weights_sha256="0" * 64,
    imgsz=640,
    epochs=50,
    batch=32,
    seed=0,
    device="auto",
    require_gpu=True,
    workers=4,
    patience=0,
    close_mosaic=10,
    warmup_epochs=1.0,
)


def config(**skypilot: object) -> TrainerConfig:
    return TrainerConfig(
        storage={"bucket": "plant-a", "access_key_id": "AKIA123", "secret_access_key": "s3cr3t"},  # type: ignore[arg-type]
        skypilot=skypilot,  # type: ignore[arg-type]
    )


def test_the_task_loads_in_skypilot_with_spot_recovery_and_autostop() -> None:
    task_config = render_task(config(), SPEC)
    task = load_task(task_config, {SECRET_ENV: "s3cr3t"})
    resources = list(task.resources)
    assert {str(r.accelerators) for r in resources} == {"{'T4': 1}", "{'L4': 1}"}
    assert all(r.use_spot for r in resources)
    assert all(r.autostop_config.idle_minutes == 10 and r.autostop_config.down for r in resources)
    assert task.run == f"cloud-trainer train-run --run-id {SPEC.run_id}"
    assert task.envs["LINEFLEET_TRAINER_STORAGE__BUCKET"] == "plant-a"
    # The secret travels as a SkyPilot secret, never in the YAML or the env section.
    text = task_yaml(task_config)
    assert "s3cr3t" not in text
    assert SECRET_ENV not in task.envs


def test_the_price_cap_drops_expensive_gpus_and_refuses_when_none_fit() -> None:
    capped = render_task(config(max_price_per_hour_usd=0.5), SPEC)
    assert capped["resources"]["any_of"] == [{"accelerators": "T4:1"}]
    with pytest.raises(TrainerConfigError, match="no accelerator fits"):
        render_task(config(max_price_per_hour_usd=0.1), SPEC)


def test_skypilot_rejects_a_broken_task() -> None:
    task_config = render_task(config(), SPEC)
    task_config["resources"]["use_spotty"] = True
    with pytest.raises(TrainerConfigError, match="SkyPilot rejected"):
        load_task(task_config)
