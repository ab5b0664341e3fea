"""``edge-agent run`` and ``check-config`` as a plant engineer runs them: real processes.

Start-up failures (a missing key file, a model that is not ONNX, the API port taken) end in
one JSON log line and exit code 1, never a traceback; ``check-config`` finds them first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.signing import SigningKey
from tests.edge_agent.onnx_models import brightness_detector


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"device: {{id: edge-cli}}\nstate_dir: {tmp_path / 'state'}\n"
        "cameras: [{kind: synthetic, id: cam0, width: 320, height: 320, fps: 5}]\n" + body
    )
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def assert_clean_failure(done: subprocess.CompletedProcess[str], words: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    failures = [line for line in lines if line.get("msg") == "agent failed to start"]
    assert failures and words in failures[-1]["error"], output


def test_a_model_that_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("not a model")
    config = write_config(
        tmp_path,
        f"model: {{path: {tmp_path / 'model.onnx'}}}\nmqtt: {{enabled: false}}\n"
        "api: {enabled: false}\n",
    )
    assert_clean_failure(edge_agent("run", "--config", str(config)), "model.onnx")
    checked = edge_agent("check-config", "--config", str(config))
    assert checked.returncode == 1 and "model.path:" in checked.stderr


def test_a_missing_trusted_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "keys" / "release.pub"
    config = write_config(
        tmp_path,
        "mqtt: {host: 127.0.0.1, port: 9}\napi: {enabled: false}\n"
        f"ota: {{enabled: true, trusted_keys: {{release-1: {missing}}}}}\n",
    )
    assert_clean_failure(edge_agent("run", "--config", str(config)), "release-1")
    checked = edge_agent("check-config", "--config", str(config))
    assert checked.returncode == 1 and "ota.trusted_keys.release-1" in checked.stderr


def test_the_api_port_in_use(tmp_path: Path, taken_port: int) -> None:
    model = brightness_detector(tmp_path / "model.onnx", names=["a", "b", "c", "d", "e"])
    config = write_config(
        tmp_path,
        f"model: {{path: {model}}}\nmqtt: {{enabled: false}}\napi: {{port: {taken_port}}}\n",
    )
    assert_clean_failure(edge_agent("run", "--config", str(config)), "port")


def test_check_config_reads_the_files_a_run_needs(tmp_path: Path) -> None:
    key = SigningKey.generate("release-1")
    (tmp_path / "release.pub").write_bytes(key.public_pem())
    (tmp_path / "empty-secret").write_text("")
    config = write_config(
        tmp_path,
        "mqtt: {host: 127.0.0.1, port: 9, password_file: /nonexistent/mqtt-password}\n"
        f"storage: {{enabled: true, secret_access_key_file: {tmp_path / 'empty-secret'}}}\n"
        f"ota: {{enabled: true, trusted_keys: {{release-1: {tmp_path / 'release.pub'}}}}}\n",
    )
    checked = edge_agent("check-config", "--config", str(config))
    assert checked.returncode == 1
    assert "storage.secret_access_key_file file" in checked.stderr and "is empty" in checked.stderr
    good = write_config(
        tmp_path,
        f"ota: {{enabled: true, trusted_keys: {{release-1: {tmp_path / 'release.pub'}}}}}\n",
    )
    assert edge_agent("check-config", "--config", str(good)).returncode == 0


def test_ota_without_mqtt_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "mqtt: {enabled: false}\n"
        f"ota: {{enabled: true, trusted_keys: {{release-1: {tmp_path / 'k.pub'}}}}}\n",
    )
    checked = edge_agent("check-config", "--config", str(config))
    assert checked.returncode == 1 and "ota.enabled needs mqtt.enabled" in checked.stderr


def test_a_synthetic_camera_the_generator_refuses_is_a_config_error(tmp_path: Path) -> None:
    """128x128 passed validation and then failed in the generator with a traceback."""
    config = tmp_path / "small.yaml"
    config.write_text(
        "cameras: [{kind: synthetic, id: cam0, width: 128, height: 128}]\nmqtt: {enabled: false}\n"
    )
    checked = edge_agent("check-config", "--config", str(config))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "cameras.0.synthetic" in checked.stderr and "cannot hold parts" in checked.stderr
