"""The agent on a real mosquitto: events, online/last will, heartbeats, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.config import load_config
from shared.messages import DetectionEvent, DriftAlert, Heartbeat, OnlineStatus, parse_payload
from shared.topics import Channel, Topics
from testing.local_services import MosquittoProcess
from tests.edge_agent.onnx_models import brightness_detector

pytestmark = pytest.mark.integration


class Listener:
    """A real MQTT subscriber collecting messages by topic."""

    def __init__(self, broker: MosquittoProcess, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _ in self.messages if t == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.on(topic)) >= count:
                return self.on(topic)
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} messages on {topic}: {len(self.on(topic))}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(tmp_path: Path, broker: MosquittoProcess, fleet: str, **extra: str) -> Path:
    model = brightness_detector(tmp_path / "model.onnx")
    path = tmp_path / "agent.yaml"
    mqtt_extra = "".join(f", {k}: {v}" for k, v in extra.items())
    path.write_text(
        f"""
device: {{id: edge-mq, fleet: {fleet}}}
cameras: [{{kind: synthetic, id: cam0, width: 320, height: 320, fps: 30}}]
model: {{path: {model}}}
mqtt: {{host: {broker.host}, port: {broker.port}, events_max_per_s: 5{mqtt_extra}}}
api: {{port: 0}}
state_dir: {tmp_path / "state"}
"""
    )
    return path


@pytest.fixture
def listener(mosquitto: MosquittoProcess, fleet_name: str) -> Iterator[Listener]:
    listen = Listener(mosquitto, f"lf/{fleet_name}/#")
    yield listen
    listen.close()


def test_events_online_and_heartbeat(
    tmp_path: Path, mosquitto: MosquittoProcess, fleet_name: str, listener: Listener
) -> None:
    topics = Topics(fleet_name)
    agent = Agent(load_config(write_config(tmp_path, mosquitto, fleet_name)))
    agent.start()
    try:
        online = listener.wait_for(topics.device("edge-mq", Channel.ONLINE))
        assert parse_payload(OnlineStatus, online[0]).online is True
        events = listener.wait_for(topics.device("edge-mq", Channel.EVENTS), count=5)
        event = parse_payload(DetectionEvent, events[-1])
        assert event.camera_id == "cam0" and event.image_width == 320
        assert event.model_name == "model"
        agent.publish_heartbeat()
        beat = parse_payload(
            Heartbeat, listener.wait_for(topics.device("edge-mq", Channel.HEARTBEAT))[0]
        )
        assert beat.cameras["cam0"].state == "streaming" and beat.fps >= 0
        # OTA is off in this config: the fleet is told, so a rollout can warn about it.
        assert beat.schema_version == 4 and beat.ota_enabled is False and beat.trusted_keys == []
        # What the model reported from the camera since its first frame (the line window;
        # that each heartbeat starts a new one is tests/edge_agent/sinks/mining/).
        first = beat.cameras["cam0"].line
        assert first is not None and first.frames > 0 and first.seconds > 0
        assert set(first.mean_confidence) == set(first.detections_per_min)
        # A camera's line that starts drifting is an alert for the plant (once), and so is
        # its return to the baseline.
        cam = beat.cameras["cam0"]
        drifting = beat.model_copy(
            update={"cameras": {"cam0": cam.model_copy(update={"drifting": True})}}
        )
        assert [a.drifting for a in agent.publish_drift_alerts(drifting)] == [True]
        assert agent.publish_drift_alerts(drifting) == []
        assert [a.drifting for a in agent.publish_drift_alerts(beat)] == [False]
        alerts = listener.wait_for(topics.device("edge-mq", Channel.ALERTS), count=2)
        received = [parse_payload(DriftAlert, raw) for raw in alerts]
        assert [(a.camera_id, a.drifting) for a in received] == [("cam0", True), ("cam0", False)]
        assert received[0].line == first
        started = time.monotonic()
        time.sleep(1.0)
        rate = len(listener.on(topics.device("edge-mq", Channel.EVENTS)))
        elapsed = time.monotonic() - started + 2
        assert rate / elapsed <= 6, "rate limit of 5 events/s per camera holds"
    finally:
        agent.stop()
    offline = listener.wait_for(topics.device("edge-mq", Channel.ONLINE), count=2)
    assert parse_payload(OnlineStatus, offline[-1]).online is False


def test_last_will_on_crash(
    tmp_path: Path, mosquitto: MosquittoProcess, fleet_name: str, listener: Listener
) -> None:
    config = write_config(tmp_path, mosquitto, fleet_name, keepalive_s="5")
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
    )
    topic = Topics(fleet_name).device("edge-mq", Channel.ONLINE)
    try:
        listener.wait_for(topic, count=1, timeout=20)
        process.kill()  # no goodbye: the broker must publish the will
        process.wait(5)
        payloads = listener.wait_for(topic, count=2, timeout=20)
        assert parse_payload(OnlineStatus, payloads[-1]).online is False
    finally:
        process.kill()


def test_run_command_stops_cleanly_on_sigterm(
    tmp_path: Path, mosquitto: MosquittoProcess, fleet_name: str
) -> None:
    config = write_config(tmp_path, mosquitto, fleet_name)
    text = config.read_text().replace("api: {port: 0}", "api: {port: 0, enabled: true}")
    config.write_text(text)
    env = dict(os.environ, LINEFLEET_API__PORT=str(_free_port()))
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        env=env,
    )
    base = f"http://127.0.0.1:{env['LINEFLEET_API__PORT']}"
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            time.sleep(0.1)
        assert ready, "agent became ready"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
        assert time.monotonic() - sent < 5.0, "stopped within 5 s"
        assert code == 0
    finally:
        process.kill()
    assert process.stderr is not None
    lines = [line for line in process.stderr.read().decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every log line is one JSON object
    messages = [r["msg"] for r in records]
    assert "agent started" in messages and "agent stopped" in messages


def _free_port() -> int:
    from testing.local_services import free_port

    return free_port()
