"""The harness itself: a real mosquitto and a real S3 server answer over the network."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from shared.messages import OnlineStatus, parse_payload
from shared.object_keys import model_artifact_key
from shared.topics import Channel, Topics
from testing.local_services import (
    LOOPBACK,
    MosquittoProcess,
    ServiceError,
    find_mosquitto,
    free_port,
    listening,
)
from testing.rtsp_camera import RtspServer

pytestmark = pytest.mark.integration


def _receive_one(broker: MosquittoProcess, topic: str, timeout: float = 5.0) -> mqtt.MQTTMessage:
    got: list[mqtt.MQTTMessage] = []
    event = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append(message)
        event.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert event.wait(timeout), f"no message on {topic}"
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]


def _publish_retained(broker: MosquittoProcess, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    info = client.publish(topic, payload, qos=1, retain=True, properties=Properties(3))
    info.wait_for_publish(5)
    assert info.is_published()
    client.loop_stop()
    client.disconnect()


def test_retained_message_round_trip(mosquitto: MosquittoProcess, fleet_name: str) -> None:
    topic = Topics(fleet_name).device("edge-01", Channel.ONLINE)
    status = OnlineStatus(device_id="edge-01", online=True)
    _publish_retained(mosquitto, topic, status.to_payload())
    message = _receive_one(mosquitto, topic)
    assert message.retain
    assert parse_payload(OnlineStatus, message.payload) == status


def test_retained_messages_survive_broker_restart(
    broker_factory: Callable[..., MosquittoProcess], fleet_name: str
) -> None:
    broker = broker_factory()
    topic = Topics(fleet_name).device("edge-02", Channel.ONLINE)
    _publish_retained(broker, topic, OnlineStatus(device_id="edge-02", online=True).to_payload())
    broker.restart()
    assert _receive_one(broker, topic).retain


def test_missing_mosquitto_is_a_loud_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda *_a, **_k: None)
    with pytest.raises(ServiceError, match="apt-get install mosquitto"):
        find_mosquitto()


def test_s3_server_speaks_s3(s3_client: Any, bucket: str) -> None:
    key = model_artifact_key("det", 1)
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"onnx-bytes")
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"onnx-bytes"
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="models/")
    assert [o["Key"] for o in listed["Contents"]] == [key]


@pytest.mark.skipif(sys.platform != "linux", reason="TCP simultaneous open as Linux does it")
def test_a_socket_connected_to_itself_is_not_a_listener() -> None:
    """Free ports are ephemeral ports: a connect from the same port number reaches itself
    with nothing listening, which once made the demo poll an agent that had not started."""
    port = free_port()
    assert not listening(LOOPBACK, port, source_port=port)
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen()
        assert listening(LOOPBACK, server.getsockname()[1])


def _take_port(port: int) -> socket.socket:
    """Hold ``port`` the way an outgoing connection does: bound, not listening, without
    SO_REUSEADDR, so a server's bind fails and nothing answers a connect."""
    thief = socket.socket()
    thief.bind((LOOPBACK, port))
    return thief


def test_a_picked_port_taken_before_the_first_start_moves(tmp_path: Path) -> None:
    """CI once lost a picked port to another process between the pick and the bind."""
    broker = MosquittoProcess(tmp_path)
    picked = broker.port
    with _take_port(picked), broker:
        assert broker.port != picked
        assert listening(broker.host, broker.port)


def test_a_port_the_caller_chose_never_moves(tmp_path: Path) -> None:
    port = free_port()
    with _take_port(port), pytest.raises(ServiceError, match=f"port {port}"):
        MosquittoProcess(tmp_path, port=port).start()


def test_a_restart_keeps_its_port(tmp_path: Path) -> None:
    """Clients know the port by then: a restart that cannot bind it fails loudly."""
    with MosquittoProcess(tmp_path) as broker:
        port = broker.port
        broker.stop()
        with _take_port(port), pytest.raises(ServiceError, match=f"port {port}"):
            broker.start()


def test_an_rtsp_server_moves_off_a_taken_port(rtsp_clips: dict[str, Path]) -> None:
    server = RtspServer({"cam": rtsp_clips["small"]})
    picked = server.port
    with _take_port(picked):
        server.start()
        try:
            assert server.port != picked
            assert listening(LOOPBACK, server.port)
        finally:
            server.kill()
