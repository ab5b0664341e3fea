"""OTA under faults: the broker restarts mid-download; the agent is SIGKILLed mid-switch."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def flaky_artifact_server(body: bytes) -> Iterator[tuple[str, threading.Event]]:
    """An HTTP artifact server that answers 503 until the event is set, then serves ``body``."""
    available = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not available.is_set():
                self.send_error(503, "not yet")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/model.onnx", available
    finally:
        server.shutdown()
        server.server_close()


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
        with flaky_artifact_server(model.read_bytes()) as (url, available):
            # The artifact server answers 503 (transient: retried with backoff) for now.
            plane.send(DEVICE, plane.desired(manifest, artifact_url=url))
            plane.wait_report(
                lambda r: r.ota_state is OtaState.DOWNLOADING and "retrying" in r.reason
            )
            broker.restart()  # mid-download: the agent and the control plane both reconnect
            available.set()
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
