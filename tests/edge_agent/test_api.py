"""The local API over real HTTP, served by a running agent on the synthetic line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import load_config
from tests.edge_agent.onnx_models import brightness_detector
from tests.shared.test_image_header import png_declaring


def agent_config(tmp_path: Path, **api: object) -> Path:
    model = brightness_detector(
        tmp_path / "model.onnx", names=["bolt", "nut", "washer", "bracket", "defect"]
    )
    api_yaml = ", ".join(f"{k}: {v}" for k, v in {"port": 0, **api}.items())
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""
device: {{id: edge-api, fleet: test}}
cameras:
  - {{kind: synthetic, id: cam0, width: 320, height: 320, fps: 30}}
  - {{kind: stream, id: dead, url: "rtsp://admin:hunter2@127.0.0.1:9/x", open_timeout_s: 0.2}}
model: {{path: {model}}}
mqtt: {{enabled: false}}
api: {{{api_yaml}}}
logging: {{json_format: false}}
state_dir: {tmp_path / "state"}
"""
    )
    return path


@pytest.fixture
def running_agent(tmp_path: Path) -> Iterator[tuple[Agent, str]]:
    agent = Agent(load_config(agent_config(tmp_path)))
    agent.start()
    assert agent.api is not None
    try:
        yield agent, f"http://127.0.0.1:{agent.api.port}"
    finally:
        agent.stop()


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def test_health_ready_status_metrics(running_agent: tuple[Agent, str]) -> None:
    _agent, base = running_agent
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        deadline = time.monotonic() + 10
        while http.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/readyz").json() == {"ready": True, "problems": []}
        status = http.get("/status").json()
        assert (
            status["model"]["name"] == "model"
            and status["model"]["provider"] == "CPUExecutionProvider"
        )
        assert status["cameras"]["cam0"]["state"] == "streaming"
        dead = status["cameras"]["dead"]
        assert dead["state"] in {"connecting", "reconnecting"}
        assert "hunter2" not in str(status), "credentials never shown"
        while (
            http.get("/status").json()["pipeline"]["processed"] < 5 and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        metrics = http.get("/metrics").text
        assert "linefleet_frames_processed_total" in metrics
        assert 'linefleet_stage_latency_seconds_bucket{le="0.01",stage="infer"}' in metrics
        assert 'linefleet_camera_state{camera="dead",state=' in metrics


def test_detect_endpoint(running_agent: tuple[Agent, str]) -> None:
    _agent, base = running_agent
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:32, 32:48] = 255
    with httpx.Client(base_url=base, timeout=5) as http:
        body = http.post("/detect", content=png(image)).json()
        assert body["image"] == {"width": 64, "height": 64}
        (det,) = body["detections"]
        assert det["class_name"] == "bolt" and det["xyxy"] == [32.0, 16.0, 48.0, 32.0]
        bad = http.post("/detect", content=b"definitely not an image")
        assert bad.status_code == 400 and "not a decodable image" in bad.json()["detail"]
        assert http.post("/detect", content=b"").status_code == 400


def test_detect_refuses_oversized_uploads(tmp_path: Path) -> None:
    agent = Agent(load_config(agent_config(tmp_path, max_upload_bytes=2048)))
    agent.start()
    try:
        assert agent.api is not None
        url = f"http://127.0.0.1:{agent.api.port}/detect"
        response = httpx.post(url, content=b"x" * 10_000, timeout=5)
        assert response.status_code == 413
    finally:
        agent.stop()


def test_detect_refuses_a_decompression_bomb_by_its_header(
    running_agent: tuple[Agent, str],
) -> None:
    """A few KB declaring 16,000 x 16,000 pixels: refused before decoding (it used to take the
    agent from ~310 MB to 1.8 GB); the agent keeps serving."""
    _agent, base = running_agent
    with httpx.Client(base_url=base, timeout=5) as http:
        bomb = http.post("/detect", content=png_declaring(16_000, 16_000))
        assert bomb.status_code == 413 and "16000x16000" in bomb.json()["detail"]
        other = http.post("/detect", content=b"GIF89a" + b"\x00" * 100)
        assert other.status_code == 400 and "JPEG or PNG" in other.json()["detail"]
        assert http.get("/healthz").status_code == 200
        small = np.zeros((64, 64, 3), np.uint8)
        assert http.post("/detect", content=png(small)).status_code == 200


def test_bearer_token(tmp_path: Path) -> None:
    agent = Agent(load_config(agent_config(tmp_path, token="t0ken")))
    agent.start()
    try:
        assert agent.api is not None
        with httpx.Client(base_url=f"http://127.0.0.1:{agent.api.port}", timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/status").status_code == 401
            assert http.get("/status", headers={"Authorization": "Bearer nope"}).status_code == 401
            ok = http.get("/status", headers={"Authorization": "Bearer t0ken"})
            assert ok.status_code == 200
    finally:
        agent.stop()
