"""One MQTT connection (paho-mqtt 2, MQTT v5): an agent's, or the control plane's.

Pitfalls from the field notes, and what this does about them:
- publishing from several threads has deadlocked paho: all publishes go through one
  outbox drained by one publisher thread;
- an exception in ``on_connect`` kills paho's network thread: callbacks catch everything;
- a TLS rejection never calls ``on_connect``: ``wait_connected`` has its own timeout;
- ``wait_for_publish`` inside a callback hangs: callbacks only enqueue.
The session is persistent (``clean_start=False`` with a session expiry on the first
connect), subscriptions are renewed on every connect, and the broker publishes a retained
``online=false`` on the presence topic as our last will. The link knows a client id and a
presence topic, nothing about devices: the agent passes its device id and its ``online`` topic,
the control plane its controller id and a control topic.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.infra.config import MqttConnectionSection
from shared.messages import OnlineStatus, utc_now

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]


@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class LinkStats:
    published: int = 0
    dropped: int = 0
    connects: int = 0
    received: int = 0
    handler_errors: int = 0


class MqttLink:
    def __init__(
        self,
        config: MqttConnectionSection,
        client_id: str,
        *,
        presence_topic: str,
        agent_version: str,
    ) -> None:
        self.config = config
        self.client_id = client_id
        # Where `online` and the last will go: a device's own `online` topic, or (for the
        # control plane, which is not a device) a control topic.
        self.presence_topic = presence_topic
        self.agent_version = agent_version
        self.stats = LinkStats()
        self.connected = threading.Event()
        self._announce_online = threading.Event()
        self._stop = threading.Event()
        self._outbox: queue.Queue[_Outgoing] = queue.Queue(maxsize=config.outbox_limit)
        self._subscriptions: dict[str, int] = {}
        self._handlers: list[MessageHandler] = []
        self._lock = threading.Lock()
        self._first_connect = True
        self._publisher = threading.Thread(
            target=self._publish_loop, name="mqtt-publisher", daemon=True
        )
        self._client = self._make_client(client_id)

    # ----------------------------------------------------------------- set-up
    def _make_client(self, client_id: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        cfg = self.config
        if cfg.username:
            password = cfg.password.get_secret_value() if cfg.password else None
            client.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(cfg.tls.insecure_skip_verify)
        will = OnlineStatus(
            device_id=self.client_id, online=False, agent_version=self.agent_version
        )
        client.will_set(
            self.presence_topic,
            will.to_payload(),
            qos=1,
            retain=True,
        )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        with self._lock:
            self._subscriptions[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def add_handler(self, handler: MessageHandler) -> None:
        self._handlers.append(handler)

    def start(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        self._publisher.start()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Say we are going offline (retained), flush briefly, disconnect."""
        if self.connected.is_set():
            status = OnlineStatus(
                device_id=self.client_id,
                online=False,
                at=utc_now(),
                agent_version=self.agent_version,
            )
            self.publish(
                self.presence_topic,
                status.to_payload(),
                qos=1,
                retain=True,
            )
            self._drain(timeout)
        self._stop.set()
        self._publisher.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def _drain(self, timeout: float) -> None:
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not self._outbox.empty() and not deadline.is_set():
                deadline.wait(0.01)
        finally:
            timer.cancel()

    # ----------------------------------------------------------------- publishing
    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """Queue a message; False (and counted) when the outbox is full."""
        try:
            self._outbox.put_nowait(_Outgoing(topic, payload, qos, retain))
        except queue.Full:
            self.stats.dropped += 1
            return False
        return True

    def _publish_loop(self) -> None:
        pending: _Outgoing | None = None
        while not self._stop.is_set():
            if not self.connected.wait(0.1):
                continue
            if self._announce_online.is_set():
                self._announce_online.clear()
                self._publish_online()
            if pending is None:
                try:
                    pending = self._outbox.get(timeout=0.1)
                except queue.Empty:
                    continue
            info = self._client.publish(
                pending.topic, pending.payload, qos=pending.qos, retain=pending.retain
            )
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats.published += 1
                pending = None
            elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                self._stop.wait(0.1)  # keep it and retry once reconnected
            else:
                log.warning("publish refused", extra={"topic": pending.topic, "rc": int(info.rc)})
                self.stats.dropped += 1
                pending = None

    def _publish_online(self) -> None:
        online = OnlineStatus(
            device_id=self.client_id, online=True, at=utc_now(), agent_version=self.agent_version
        )
        self._client.publish(
            self.presence_topic,
            online.to_payload(),
            qos=1,
            retain=True,
        )

    # ----------------------------------------------------------------- callbacks
    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        try:
            if reason.is_failure:
                log.error("mqtt connection refused", extra={"reason": str(reason)})
                return
            self.stats.connects += 1
            with self._lock:
                subscriptions = list(self._subscriptions.items())
            for topic, qos in subscriptions:
                client.subscribe(topic, qos=qos)
            # The publisher thread announces `online` before anything else it sends.
            self._announce_online.set()
            self.connected.set()
            log.info("mqtt connected", extra={"host": self.config.host, "port": self.config.port})
        except Exception:
            log.exception("error in mqtt on_connect")

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("mqtt disconnected", extra={"reason": str(reason)})

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        for handler in self._handlers:
            try:
                handler(message.topic, bytes(message.payload), bool(message.retain))
            except Exception:
                self.stats.handler_errors += 1
                log.exception("mqtt message handler failed", extra={"topic": message.topic[:200]})
