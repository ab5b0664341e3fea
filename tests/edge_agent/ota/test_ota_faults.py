"""OTA under faults: the broker restarts mid-download; the agent is SIGKILLed mid-switch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from shared.messages import OtaState
from shared.signing import SigningKey
from shared.synth import CLASS_NAMES
from shared.topics import Topics
from testing.local_services import MosquittoProcess, MotoS3Process
from tests.edge_agent.onnx_models import brightness_detector
from tests.edge_agent.ota.helpers import ControlPlane
from tests.edge_agent.ota.test_ota import DEVICE, write_agent_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


def test_broker_restart_during_download(
    tmp_path: Path,
    broker_factory: Callable[..., MosquittoProcess],
    s3_server: MotoS3Process,
    s3_client: Any,
    bucket: str,
    fleet_name: str,
) -> None:
    broker = broker_factory()
    plane = ControlPlane(
        broker, Topics(fleet_name), s3_client, bucket, SigningKey.generate("release-1")
    )
    config = write_agent_config(tmp_path, plane, s3_server, broker_port=broker.port)
    agent = Agent(load_config(config))
    agent.start()
    try:
        plane.wait_report(lambda r: r.running_version == 1)
        model = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES))
        manifest = plane.upload(model, 2)
        s3_client.delete_object(Bucket=bucket, Key=manifest.artifact.key)  # not there yet
        plane.send(DEVICE, plane.desired(manifest))
        plane.wait_report(lambda r: r.ota_state is OtaState.DOWNLOADING and "retrying" in r.reason)
        broker.restart()  # mid-download: the agent and the control plane both reconnect
        s3_client.put_object(Bucket=bucket, Key=manifest.artifact.key, Body=model.read_bytes())
        plane.wait_active(2, timeout=60)
        assert agent.mqtt is not None and agent.mqtt.stats.connects >= 2
    finally:
        agent.stop()
        plane.close()


def run_agent(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_sigkill_during_the_switch_leaves_a_runnable_agent(
    tmp_path: Path,
    mosquitto: MosquittoProcess,
    s3_server: MotoS3Process,
    s3_client: Any,
    bucket: str,
    fleet_name: str,
) -> None:
    plane = ControlPlane(
        mosquitto, Topics(fleet_name), s3_client, bucket, SigningKey.generate("release-1")
    )
    config = write_agent_config(tmp_path, plane, s3_server, probation=1.0)
    process = run_agent(config)
    try:
        plane.wait_report(lambda r: r.running_version == 1)
        model = brightness_detector(tmp_path / "v2.onnx", names=list(CLASS_NAMES))
        plane.send(DEVICE, plane.desired(plane.upload(model, 2)))
        plane.wait_report(lambda r: r.ota_state is OtaState.STAGED)
        os.kill(process.pid, signal.SIGKILL)  # power cut in the middle of the switch
        process.wait(5)
        plane.reports.clear()
        process = run_agent(config)
        # Wherever the kill landed, the restarted agent resumes the retained desired state
        # (or its probation) and ends on v2, proven good.
        plane.wait_active(2, timeout=60)
        state = json.loads((tmp_path / "state/models/state.json").read_text())
        assert state["current"] == 2 and state["probation"] is False
    finally:
        process.kill()
        plane.close()
