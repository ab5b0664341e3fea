"""The trainer's commands as the README shows them, against real mosquitto and S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_trainer.cli import main
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.finetune import TrainSpec, save_spec
from shared.signing import SigningKey, Verifier
from shared.topics import Topics
from testing.fleet_simulator import DeviceBehaviour, SimulatedDevice, SimulatedFleet
from testing.local_services import MosquittoProcess, MotoS3Process, NanioS3Process, free_port
from testing.synthetic_examples import upload_examples
from tests.cloud_trainer.conftest import config_data
from tests.cloud_trainer.fleet.test_rollout import KEY, MODEL, publish_versions

pytestmark = pytest.mark.integration


@pytest.fixture
def config_file(
    s3_server: MotoS3Process,
    bucket: str,
    mosquitto: MosquittoProcess,
    fleet_name: str,
    tmp_path: Path,
) -> Path:
    key_file = tmp_path / "cp-test.key"
    key_file.write_bytes(KEY.private_pem())
    data: dict[str, Any] = config_data(s3_server, bucket, tmp_path / "work", key_file)
    data["signing"]["key_id"] = KEY.key_id
    data |= {
        "model_line": {"name": MODEL, "fleet": fleet_name},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "fleet": {"tick_interval_s": 0.05, "settle_s": 0.3},
    }
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rollout_start_wait_and_status(
    config_file: Path,
    store: ObjectStore,
    mosquitto: MosquittoProcess,
    fleet_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish_versions(store, tmp_path, 2)
    devices = [SimulatedDevice(f"d{i}", "line-1", 1, DeviceBehaviour()) for i in range(4)]
    verifier = Verifier({KEY.key_id: KEY.private_key.public_key()})
    fleet = SimulatedFleet(
        mosquitto.host, mosquitto.port, Topics(fleet_name), devices, verifier=verifier
    )
    fleet.start()
    try:
        args = ["rollout", "start", "--config", str(config_file), "--version", "2"]
        args += ["--waves", "0.25,1", "--soak-s", "0.2", "--rollout-id", "cli-1", "--wait"]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "started cli-1" in out and "succeeded" in out
        assert main(["rollout", "status", "--config", str(config_file)]) == 0
        assert "cli-1: line-detector v2 succeeded" in capsys.readouterr().out
        assert all(d.running_version == 2 for d in devices)
        assert main(["rollout", "rollback", "--config", str(config_file), "cli-1"]) == 0
        assert "rolled_back" in capsys.readouterr().out
    finally:
        fleet.stop()


def test_rollout_of_a_missing_version_is_an_error(
    config_file: Path, store: ObjectStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_versions(store, tmp_path, 1)
    args = ["rollout", "start", "--config", str(config_file), "--version", "9", "--devices", "d1"]
    assert main(args) == 1
    assert "no published version 9" in capsys.readouterr().err


def test_skypilot_task_command_prints_a_validated_task(
    config_file: Path, store: ObjectStore, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = TrainSpec(
        run_id="run-1",
        model_name=MODEL,
        dataset_name=MODEL,
        dataset_version="v1",
        parent_version=1,
        parent_weights_key="models/line-detector/1/model.pt",
        parent_weights_sha256="0" * 64,
        imgsz=320,
        epochs=1,
        batch=8,
        seed=0,
        device="auto",
        require_gpu=True,
        workers=0,
        patience=0,
        close_mosaic=0,
        warmup_epochs=0.0,
    )
    save_spec(store, spec)
    assert main(["skypilot-task", "--config", str(config_file), "--run-id", "run-1"]) == 0
    task = yaml.safe_load(capsys.readouterr().out)
    assert task["run"] == "cloud-trainer train-run --run-id run-1"
    assert task["resources"]["use_spot"] is True


def test_labels_import_command(
    config_file: Path,
    store: ObjectStore,
    fleet_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uploaded = upload_examples(store, fleet=fleet_name, count=2, with_truth=False)
    export = tmp_path / "export"
    export.mkdir()
    frame_id = uploaded[0].keys.image.rsplit("/", 1)[1].removesuffix(".jpg")
    (export / f"{frame_id}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (export / "stray.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert main(["labels", "import", "--config", str(config_file), "--from", str(export)]) == 0
    out = capsys.readouterr().out
    assert "imported 1 label file(s)" in out and "stray.txt" in out
    assert main(["models", "list", "--config", str(config_file)]) == 0
    assert "no version registered" in capsys.readouterr().out


def test_keys_are_never_printed(
    config_file: Path, capsys: pytest.CaptureFixture[str], store: ObjectStore
) -> None:
    SigningKey.generate("unused")
    main(["models", "show", "--config", str(config_file)])
    captured = capsys.readouterr()
    assert "PRIVATE KEY" not in captured.out + captured.err


def test_serve_runs_triggers_and_controller_and_stops_on_sigterm(
    config_file: Path, store: ObjectStore, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys
    import time

    data = yaml.safe_load(config_file.read_text())
    data["schedule"] = {"min_new_examples": 1000, "check_interval_s": 1}
    config_file.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "cloud_trainer.cli", "serve", "--config", str(config_file)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # connected, retained state taken in, threshold checked once
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        err = process.stderr.read() if process.stderr else ""
        assert "retrain triggers: ['threshold']" in err
        assert "rollout controller running" in err
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("fault", ["endpoint_down", "missing_bucket", "wrong_credentials"])
def test_retrain_blames_the_step_that_failed_first(
    fault: str,
    s3_server: MotoS3Process,
    nanio: NanioS3Process,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bucket is unusable: the report used to blame writing report.json, hiding the
    step that failed first. Now it names that step; the report stays in the work dir."""
    key_file = tmp_path / "trainer.key"
    key_file.write_bytes(KEY.private_pem())
    storage: dict[str, Any] = {
        "bucket": "never-created",
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    if fault == "endpoint_down":
        storage["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    elif fault == "missing_bucket":
        storage["endpoint_url"] = s3_server.endpoint_url
    else:
        storage |= {"endpoint_url": nanio.endpoint_url, "access_key_id": nanio.access_key}
        storage["secret_access_key"] = "not-the-secret"
    config = tmp_path / "trainer.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": storage,
                "signing": {"key_id": KEY.key_id, "key_file": str(key_file)},
                "work_dir": str(tmp_path / "work"),
            }
        )
    )
    assert main(["retrain", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["status"] == "failed" and report["failed_stage"] == "production model"
    assert report["reason"].startswith("[production model] ")
    assert "report.json" not in report["reason"]
    expected = {
        "endpoint_down": "Could not connect",
        "missing_bucket": "bucket 'never-created' does not exist",
        "wrong_credentials": "denied",
    }[fault]
    assert expected.lower() in report["reason"].lower(), report["reason"]
    kept = tmp_path / "work" / "runs" / report["run_id"] / "report.json"
    assert kept.is_file() and f"report kept in {kept}" in err
