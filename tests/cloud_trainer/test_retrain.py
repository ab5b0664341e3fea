"""``cloud-trainer retrain`` end to end against a real S3 server, with real (tiny) training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_trainer.cli import main
from cloud_trainer.config import load_trainer_config
from cloud_trainer.release.model_registry import ModelRegistry
from cloud_trainer.retrain import Retrainer, RunReport, report_key
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.finetune import LocalTrainer, TrainResult, TrainSpec, load_spec
from shared.manifest import ModelManifest
from shared.signing import SigningKey, Verifier
from shared.synth import write_yolo_dataset
from testing.local_services import MotoS3Process
from testing.synthetic_examples import upload_examples
from tests.cloud_trainer.conftest import config_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_TRAINING = {"epochs": 2, "batch": 8, "device": "cpu", "close_mosaic": 1, "workers": 0}


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def trainer_setup(
    s3_server: MotoS3Process,
    bucket: str,
    store: ObjectStore,
    signing_key: tuple[SigningKey, Path],
    bootstrap_model: tuple[Path, Path],
    fleet_name: str,
    tmp_path: Path,
) -> tuple[Path, dict[str, Any]]:
    """A bucket with the bootstrap registered (and its data frozen) plus drifted hard examples."""
    weights, onnx = bootstrap_model
    data = config_data(s3_server, bucket, tmp_path / "work", signing_key[1]) | {
        "model_line": {"name": "line-a", "fleet": fleet_name, "imgsz": 320},
        "labeling": {"source": "synthetic"},
        "dataset": {"min_train_images": 4, "min_holdout_images": 3, "replay_max_train_images": 16},
        "training": FAST_TRAINING,
        "gate": {"map50_tolerance": 1.0, "map50_95_tolerance": 1.0, "class_recall_tolerance": 1.0},
        # Two epochs on a few images: any variant of such a model is published, so the test
        # sees the whole path (test_variants.py holds the tolerances themselves).
        "export": {"variant_map50_tolerance": 1.0, "variant_class_recall_tolerance": 1.0},
    }
    config = write_config(tmp_path / "trainer.yaml", data)
    folder = tmp_path / "bootstrap-data"
    write_yolo_dataset(folder, train=24, val=6, seed=3)
    args = ["models", "register", "--config", str(config), "--onnx", str(onnx)]
    args += ["--weights", str(weights), "--dataset-folder", str(folder)]
    assert main(args) == 0
    upload_examples(store, fleet=fleet_name, count=30, drift="lighting")
    return config, data


def test_retrain_publishes_a_signed_gated_model_with_its_report(
    trainer_setup: tuple[Path, dict[str, Any]],
    store: ObjectStore,
    signing_key: tuple[SigningKey, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path, _ = trainer_setup
    assert main(["retrain", "--config", str(config_path)]) == 0
    out = capsys.readouterr()
    report = RunReport.model_validate_json(out.out)
    assert "epoch   2/2" in out.err and "[train]" in out.err  # progress on the terminal
    assert report.status == "published" and report.published_version == 2
    assert set(report.stage_seconds) == {
        "production model",
        "select",
        "build",
        "train",
        "inspector",
        "export",
        "evaluate",
        "variants",
        "publish",
    }
    # The line's defective parts taught the part inspector, fused into the export.
    assert report.inspector is not None and report.inspector.with_attribute >= 10
    assert report.dataset_counts["train"]["images"] > 16  # new examples + replayed bootstrap data
    # What the run cost in labels, apart from the replayed data it already had.
    assert report.dataset_sources["synthetic"] == 30 and report.dataset_sources["replay"] >= 16
    assert report.training is not None and report.training.epochs_done == 2
    assert report.parity_max_abs_diff is not None and report.parity_max_abs_diff < 0.05
    assert report.gate is not None and report.gate.candidate.images >= 3
    stored = RunReport.model_validate_json(store.get(report_key(report.run_id))[0])
    assert stored.status == "published"
    # The published manifest verifies, carries lineage/cost/metrics, and the agent can run it.
    key = signing_key[0]
    registry = ModelRegistry(
        store, "line-a", verifier=Verifier({key.key_id: key.private_key.public_key()})
    )
    manifest: ModelManifest = registry.manifest(2)
    assert manifest.lineage.parent_version == 1
    assert manifest.lineage.training_run == report.run_id
    assert manifest.lineage.dataset_version == report.dataset_version
    assert manifest.metrics == report.gate.candidate
    assert manifest.weights is not None
    # Its INT8 and fp16 variants, each measured on the same held-out set, signed with it.
    assert [v.precision for v in report.variants if v.published] == ["int8", "fp16"]
    assert manifest.schema_version == 2
    assert {v.precision: v.accelerator for v in manifest.variants} == {"int8": "cpu", "fp16": "gpu"}
    for variant in manifest.variants:
        assert variant.metrics.images == report.gate.candidate.images
        assert variant.runtimes[0] == "onnxruntime"
        assert store.exists(variant.artifact.key)
        assert variant.artifact.key == f"models/line-a/2/model.{variant.precision}.onnx"
    assert store.exists(f"runs/{report.run_id}/checkpoints/last.pt")
    assert main(["models", "list", "--config", str(config_path)]) == 0
    listing = capsys.readouterr().out
    assert "v1" in listing and "v2" in listing and "published" in listing
    assert main(["models", "show", "--config", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2


def test_an_interrupted_training_resumes_from_the_bucket(
    trainer_setup: tuple[Path, dict[str, Any]], store: ObjectStore, tmp_path: Path
) -> None:
    """Kill the training process after its first checkpoint (a spot preemption), run it again:
    it resumes from runs/{id}/checkpoints/last.pt instead of starting over."""
    config_path, data = trainer_setup
    data["training"] = FAST_TRAINING | {"epochs": 3}
    write_config(config_path, data)
    config = load_trainer_config(config_path)
    retrainer = Retrainer(config, store)
    # Build the dataset and spec through the normal path, then train out of process.
    spec = _spec_for(retrainer, "run-preempted")
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "cloud_trainer.cli", "train-run", "--config", str(config_path)]
    process = subprocess.Popen([*command, "--run-id", spec.run_id], env=env)
    deadline = time.monotonic() + 240
    while not store.exists(f"runs/{spec.run_id}/progress.json"):
        assert process.poll() is None, "training exited before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.kill()
    process.wait()
    done = subprocess.run(
        [*command, "--run-id", spec.run_id], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = TrainResult.model_validate_json(done.stdout)
    assert result.resumes == 1
    assert result.epochs_done == 3
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    # Finished runs are not trained again.
    again = LocalTrainer(store, tmp_path / "elsewhere").run(load_spec(store, spec.run_id))
    assert again == result


def _spec_for(retrainer: Retrainer, run_id: str) -> TrainSpec:
    """Stop a retrain right after it stored its spec (as the skypilot backend would)."""

    class StopAfterSpecError(Exception):
        pass

    def stop(spec: TrainSpec) -> TrainResult:
        raise StopAfterSpecError

    retrainer._train = stop  # type: ignore[method-assign]
    with pytest.raises(StopAfterSpecError):
        retrainer.run(run_id)
    return load_spec(retrainer.store, run_id)


def test_missing_requirements_fail_before_any_training(
    trainer_setup: tuple[Path, dict[str, Any]],
    store: ObjectStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path, data = trainer_setup
    write_config(
        config_path, data | {"training": FAST_TRAINING | {"require_gpu": True, "device": "auto"}}
    )
    assert main(["retrain", "--config", str(config_path), "--run-id", "no-gpu"]) == 1
    report = RunReport.model_validate_json(capsys.readouterr().out)
    assert report.status == "failed" and "GpuRequiredError" in report.reason
    assert report.stage_seconds == {}
    write_config(config_path, data | {"signing": {"key_id": "trainer-test"}})
    assert main(["retrain", "--config", str(config_path), "--run-id", "no-key"]) == 1
    assert "no signing key" in RunReport.model_validate_json(capsys.readouterr().out).reason
    write_config(config_path, data | {"model_line": data["model_line"] | {"name": "other-line"}})
    assert main(["retrain", "--config", str(config_path), "--run-id", "no-model"]) == 1
    assert "register a bootstrap model first" in capsys.readouterr().out
    assert [e.version for e in ModelRegistry(store, "line-a").read_index()[0].entries] == [1]


def test_nothing_new_to_train_on_ends_as_a_reported_skipped_run(
    trainer_setup: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, data = trainer_setup
    data["model_line"]["fleet"] = "empty-fleet"
    data["dataset"]["replay_previous"] = False
    write_config(config_path, data)
    assert main(["retrain", "--config", str(config_path)]) == 4
    report = RunReport.model_validate_json(capsys.readouterr().out)
    assert report.status == "skipped" and "0 training" in report.reason
