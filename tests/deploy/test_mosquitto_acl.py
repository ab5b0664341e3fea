"""The shipped mosquitto TLS + ACL config on a real broker: devices are isolated."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from cloud_trainer.cli import main as trainer_cli
from edge_agent.agent import Agent
from edge_agent.config import load_config
from shared.messages import OnlineStatus, parse_payload
from testing.local_services import MosquittoProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path, clients: list[str]) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("linefleet test CA"))
        .issuer_name(_name("linefleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(cn: str, server: bool = False) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (directory / f"{cn}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{cn}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    issue("server", server=True)
    for cn in clients:
        issue(cn)


@pytest.fixture
def secure_broker(
    tmp_path: Path, broker_factory: Callable[..., MosquittoProcess]
) -> tuple[MosquittoProcess, Path]:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, ["edge-01", "edge-02", "control-plane"])
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text(
        "fleet: plant1\ndevices:\n  edge-01: {group: line-a}\n  edge-02: {group: line-b}\n"
    )
    acl = tmp_path / "linefleet.acl"
    assert trainer_cli(["fleet-acl", "--inventory", str(inventory), "--out", str(acl)]) == 0
    shipped = (ROOT / "deploy/mosquitto/linefleet.conf").read_text()
    config = "\n".join(
        line
        for line in shipped.splitlines()
        if not line.startswith(("listener", "persistence", "autosave"))
    )
    config = (
        config.replace("/etc/mosquitto/certs/ca.crt", str(pki / "ca.crt"))
        .replace("/etc/mosquitto/certs/server.crt", str(pki / "server.crt"))
        .replace("/etc/mosquitto/certs/server.key", str(pki / "server.key"))
        .replace("/etc/mosquitto/linefleet.acl", str(acl))
    )
    return broker_factory(extra_config=config, persistence=False), pki


class Client:
    def __init__(
        self, broker: MosquittoProcess, pki: Path, cert: str | None, client_id: str
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.acks: dict[int, Any] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(pki / "ca.crt"),
            certfile=str(pki / f"{cert}.crt") if cert else None,
            keyfile=str(pki / f"{cert}.key") if cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.acks.__setitem__(mid, reason)
        try:
            self.client.connect(broker.host, broker.port)
        except (ssl.SSLError, OSError):
            self.refused.set()
            return
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        (self.refused if reason.is_failure else self.connected).set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_devices_only_see_their_own_and_their_groups_topics(
    secure_broker: tuple[MosquittoProcess, Path],
) -> None:
    broker, pki = secure_broker
    control = Client(broker, pki, "control-plane", "cp")
    edge1 = Client(broker, pki, "edge-01", "edge-01")
    spoof = Client(broker, pki, "edge-02", "edge-01-spoof")  # edge-02's cert, another id
    for client in (control, edge1, spoof):
        assert client.connected.wait(5)
    for client in (edge1, spoof):
        client.client.subscribe("lf/plant1/#", qos=1)
    time.sleep(0.3)
    for topic in (
        "lf/plant1/dev/edge-01/desired",
        "lf/plant1/dev/edge-02/desired",
        "lf/plant1/grp/line-a/desired",
        "lf/plant1/grp/line-b/desired",
    ):
        control.client.publish(topic, topic.encode(), qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.5)
    assert sorted(t for t, _ in edge1.messages) == [
        "lf/plant1/dev/edge-01/desired",
        "lf/plant1/grp/line-a/desired",
    ]
    assert sorted(t for t, _ in spoof.messages) == [
        "lf/plant1/dev/edge-02/desired",
        "lf/plant1/grp/line-b/desired",
    ]
    # Writing another device's reported topic is refused (MQTT v5 PUBACK "not authorized").
    forged = spoof.client.publish("lf/plant1/dev/edge-01/reported", b"{}", qos=1)
    own = spoof.client.publish("lf/plant1/dev/edge-02/reported", b"{}", qos=1)
    forged.wait_for_publish(5)
    own.wait_for_publish(5)
    time.sleep(0.2)
    assert spoof.acks[forged.mid].is_failure and not spoof.acks[own.mid].is_failure
    for client in (control, edge1, spoof):
        client.close()


def test_a_device_cannot_take_another_devices_client_id(
    secure_broker: tuple[MosquittoProcess, Path],
) -> None:
    """edge-02's valid certificate with edge-01's client id: without
    ``use_username_as_clientid`` the broker kicked edge-01 off and published its last will."""
    broker, pki = secure_broker
    control = Client(broker, pki, "control-plane", "cp")
    edge1 = Client(broker, pki, "edge-01", "edge-01")
    assert control.connected.wait(5) and edge1.connected.wait(5)
    dropped = threading.Event()
    edge1.client.on_disconnect = lambda *_: dropped.set()
    will = OnlineStatus(device_id="edge-01", online=False).to_payload()
    edge1.client.will_set("lf/plant1/dev/edge-01/online", will, qos=1, retain=True)
    control.client.subscribe("lf/plant1/dev/edge-01/online", qos=1)
    time.sleep(0.3)
    intruder = Client(broker, pki, "edge-02", "edge-01")
    assert intruder.connected.wait(5)
    assert not dropped.wait(2.0), "edge-01 was disconnected by a client claiming its id"
    assert not [m for t, m in control.messages if t.endswith("/online")]
    for client in (control, edge1, intruder):
        client.close()


def test_the_broker_refuses_oversized_messages(
    secure_broker: tuple[MosquittoProcess, Path],
) -> None:
    """The agent refuses payloads over 256 KiB; the broker must not retain one either."""
    broker, pki = secure_broker
    edge1 = Client(broker, pki, "edge-01", "edge-01")
    assert edge1.connected.wait(5)
    topic = "lf/plant1/dev/edge-01/reported"
    edge1.client.publish(topic, b"s" * 1000, qos=1, retain=True).wait_for_publish(5)
    dropped = threading.Event()
    edge1.client.on_disconnect = lambda *_: dropped.set()
    huge = edge1.client.publish(topic, b"h" * (10 * 1024 * 1024), qos=1, retain=True)
    assert dropped.wait(10), "the broker disconnects a client that sends an oversized packet"
    edge1.close()
    del huge
    control = Client(broker, pki, "control-plane", "cp")
    assert control.connected.wait(5)
    control.client.subscribe(topic, qos=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not control.messages:
        time.sleep(0.05)
    assert [len(m) for _, m in control.messages] == [1000], "the small message stays retained"
    control.close()


def test_no_certificate_no_connection(secure_broker: tuple[MosquittoProcess, Path]) -> None:
    broker, pki = secure_broker
    anonymous = Client(broker, pki, None, "nobody")
    assert not anonymous.connected.wait(2)


def test_agent_connects_over_tls_with_its_certificate(
    tmp_path: Path, secure_broker: tuple[MosquittoProcess, Path]
) -> None:
    broker, pki = secure_broker
    control = Client(broker, pki, "control-plane", "cp")
    assert control.connected.wait(5)
    control.client.subscribe("lf/plant1/dev/edge-01/online", qos=1)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
device: {{id: edge-01, fleet: plant1, group: line-a}}
cameras: [{{kind: synthetic, id: cam0, width: 320, height: 320, fps: 10}}]
mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{ca_file: {pki / "ca.crt"},
        cert_file: {pki / "edge-01.crt"}, key_file: {pki / "edge-01.key"}}}}}
api: {{enabled: false}}
mining: {{enabled: false}}
state_dir: {tmp_path / "state"}
"""
    )
    agent = Agent(load_config(config))
    agent.start()
    try:
        assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not control.messages:
            time.sleep(0.05)
        assert parse_payload(OnlineStatus, control.messages[-1][1]).online is True
    finally:
        agent.stop()
        control.close()
