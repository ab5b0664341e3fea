"""The agent mines hard examples from the synthetic line into a real S3 server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from shared.hard_examples import HardExampleSidecar
from shared.object_keys import parse_hard_example_key
from shared.synth import CLASS_NAMES
from testing.local_services import NanioS3Process
from tests.edge_agent.onnx_models import brightness_detector

pytestmark = pytest.mark.integration
BUCKET = "mined-examples"


def config_file(tmp_path: Path, storage: str, spool: str = "{}") -> Path:
    model = brightness_detector(tmp_path / "model.onnx", names=list(CLASS_NAMES))
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""
device: {{id: edge-mine, fleet: plant1}}
cameras: [{{kind: synthetic, id: cam0, width: 320, height: 320, fps: 30}}]
model: {{path: {model}}}
mqtt: {{enabled: false}}
api: {{enabled: false}}
state_dir: {tmp_path / "state"}
storage: {storage}
spool: {spool}
mining:
  spool_without_storage: true
  random: {{probability: 0.5, per_minute: 1000, min_interval_s: 0}}
  confidence_band: {{enabled: false}}
  count_anomaly: {{enabled: false}}
  flicker: {{enabled: false}}
  classes: {{enabled: false}}
  disagreement: {{enabled: false}}
"""
    )
    return path


def test_examples_reach_the_bucket_complete_and_parseable(
    tmp_path: Path, nanio: NanioS3Process, nanio_client: Any
) -> None:
    nanio_client.create_bucket(Bucket=BUCKET)
    storage = (
        f"{{enabled: true, bucket: {BUCKET}, endpoint_url: '{nanio.endpoint_url}', "
        f"access_key_id: {nanio.access_key}, secret_access_key: {nanio.secret_key}}}"
    )
    agent = Agent(load_config(config_file(tmp_path, storage)))
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = agent.status().model_dump(mode="json")
            if status["uploader"]["uploaded"] >= 5:
                break
            time.sleep(0.1)
        status = agent.status().model_dump(mode="json")
    finally:
        agent.stop()
    assert status["uploader"]["uploaded"] >= 5
    assert status["mining"]["triggered"]["random"] >= 5
    assert nanio.secret_key not in str(status)
    keys = [o["Key"] for o in nanio_client.list_objects_v2(Bucket=BUCKET)["Contents"]]
    sidecars = [k for k in keys if k.endswith(".json")]
    assert sidecars
    for key in sidecars:
        parsed = parse_hard_example_key(key)
        assert (parsed.fleet, parsed.device) == ("plant1", "edge-mine")
        base = key.removesuffix(".json")
        assert f"{base}.jpg" in keys and f"{base}.txt" in keys, "complete before the sidecar"
    body = nanio_client.get_object(Bucket=BUCKET, Key=sidecars[0])["Body"].read()
    sidecar = HardExampleSidecar.model_validate_json(body)
    assert sidecar.reasons == ["random"] and sidecar.camera_id == "cam0"
    assert sidecar.synthetic_truth is not None and (sidecar.image_width, sidecar.image_height) == (
        320,
        320,
    )
    jpeg = nanio_client.get_object(Bucket=BUCKET, Key=sidecars[0].replace(".json", ".jpg"))[
        "Body"
    ].read()
    assert jpeg[:2] == b"\xff\xd8"


def test_quota_reached_agent_stays_healthy(tmp_path: Path) -> None:
    agent = Agent(
        load_config(
            config_file(tmp_path, "{enabled: false}", "{quota_bytes: 1048576, min_free_bytes: 0}")
        )
    )
    agent.start()
    try:
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and agent.status().model_dump(mode="json")["spool"]["evicted"] < 3
        ):
            time.sleep(0.1)
        status = agent.status().model_dump(mode="json")
        assert status["spool"]["evicted"] >= 3, "old examples evicted to make room"
        assert status["spool"]["bytes"] <= 1048576
        assert agent.alive() and status["pipeline"]["processed"] > 0
        metrics = agent.metrics_text().decode()
        assert "linefleet_spool_evicted_total" in metrics
    finally:
        agent.stop()


def test_upload_errors_show_in_status_and_metrics(
    tmp_path: Path, nanio: NanioS3Process, nanio_client: Any
) -> None:
    nanio_client.create_bucket(Bucket=BUCKET)
    storage = (
        f"{{enabled: true, bucket: {BUCKET}, endpoint_url: '{nanio.endpoint_url}', "
        f"access_key_id: {nanio.access_key}, secret_access_key: not-the-secret, "
        "backoff_initial_s: 0.2, backoff_max_s: 0.5}"
    )
    agent = Agent(load_config(config_file(tmp_path, storage)))
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and not agent.status().model_dump(mode="json")["uploader"]["errors_by_kind"]
        ):
            time.sleep(0.1)
        status = agent.status().model_dump(mode="json")
        metrics = agent.metrics_text().decode()
    finally:
        agent.stop()
    kinds = set(status["uploader"]["errors_by_kind"])
    assert kinds and kinds <= {"auth", "client"}
    assert "linefleet_upload_errors_total{kind=" in metrics
    assert "not-the-secret" not in str(status) and "not-the-secret" not in metrics
    assert status["spool"]["depth"] > 0 and status["spool"]["uploaded"] == 0


def test_shadow_model_feeds_the_disagreement_sampler(tmp_path: Path) -> None:
    shadow = brightness_detector(tmp_path / "shadow.onnx", size=96, names=list(CLASS_NAMES))
    path = config_file(tmp_path, "{enabled: false}")
    text = path.read_text().replace(
        "disagreement: {enabled: false}",
        "disagreement: {every_n: 1, per_minute: 1000, min_interval_s: 0}",
    )
    text = text.replace(
        "random: {probability: 0.5, per_minute: 1000, min_interval_s: 0}",
        "random: {enabled: false}",
    )
    text = text.replace("model: {path:", f"model: {{shadow_path: {shadow}, path:")
    path.write_text(text)
    agent = Agent(load_config(path))
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and agent.status().model_dump(mode="json")["mining"]["seen"] < 30
        ):
            time.sleep(0.1)
        status = agent.status().model_dump(mode="json")
    finally:
        agent.stop()
    # Two different models (64 vs 96 px cells) disagree on a busy belt.
    assert status["mining"]["triggered"].get("disagreement", 0) > 0


def test_a_full_disk_is_said_once_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At the disk's free-space floor every example used to be dropped silently while
    /readyz said ready: now a log line (once), /status, /readyz and a metric say so."""
    floor = "{min_free_bytes: 1000000000000000}"  # more than any disk has free
    agent = Agent(load_config(config_file(tmp_path, "{enabled: false}", floor)))
    agent.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and agent.status().spool.rejected < 5:  # type: ignore[union-attr]
            time.sleep(0.1)
        status = agent.status()
        assert status.spool is not None and status.spool.rejected >= 5 and status.spool.disk_low
        assert any("free-space floor" in d for d in status.degraded)
        assert any("free-space floor" in p for p in agent.readiness())
        assert "linefleet_spool_disk_low 1.0" in agent.metrics_text().decode()
    finally:
        agent.stop()
    said = [r for r in caplog.records if "free-space floor" in r.getMessage()]
    assert len(said) == 1, "once per episode, not once per dropped example"


def test_without_storage_mining_is_off_and_says_why(tmp_path: Path) -> None:
    path = config_file(tmp_path, "{enabled: false}")
    path.write_text(path.read_text().replace("  spool_without_storage: true\n", ""))
    agent = Agent(load_config(path))
    agent.start()
    try:
        status = agent.status()
        assert status.mining is None and status.spool is None
        assert any("mining is off: storage is disabled" in d for d in status.degraded)
    finally:
        agent.stop()
