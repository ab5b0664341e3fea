"""Simulated agents: lightweight MQTT clients that implement the device side of the OTA
contract (desired -> downloading -> active on probation -> active, or failed), for tests and
the fleet benchmark. Many clients are driven from one selector loop in one thread: paho's
``loop_start`` uses ``select()`` and breaks past ~340 clients per process (field notes)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from shared.errors import LinefleetError
from shared.messages import (
    CameraHealth,
    CameraState,
    DesiredAction,
    DesiredState,
    DesiredTarget,
    Heartbeat,
    LineWindow,
    OnlineStatus,
    OtaState,
    ReportedState,
    ReportSequence,
    parse_payload,
    utc_now,
)
from shared.signing import Verifier
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)


def simulated_line(fps: float, *, drifting: bool) -> LineWindow:
    """A camera's line window: four parts a frame; a drifting line loses most of its bolts,
    and the model grows unsure (lower confidence, more frames in the band)."""
    per_min = 60.0 * fps
    bolts = 0.2 if drifting else 1.0
    return LineWindow(
        seconds=1.0,
        frames=int(fps),
        detections_per_min={"bolt": per_min * bolts, "nut": per_min, "washer": per_min * 0.5},
        mean_confidence={"bolt": 0.41 if drifting else 0.83, "nut": 0.8, "washer": 0.78},
        band_share=0.62 if drifting else 0.08,
        hard_examples_per_min=6.0 if drifting else 0.6,
    )


@dataclass
class DeviceBehaviour:
    """How a simulated device answers a new desired version."""

    update_delay_s: float = 0.05
    probation_s: float = 0.05
    fail_versions: set[int] = field(default_factory=set)  # report failed for these
    fps: float = 30.0
    fps_by_version: dict[int, float] = field(default_factory=dict)
    # What the heartbeat says of OTA (None: like an agent older than heartbeat schema 3).
    ota_enabled: bool | None = None
    trusted_keys: tuple[str, ...] = ()
    drifting: bool = False  # cam0's line changed under the model (the drift sampler's view)


@dataclass
class SimulatedDevice:
    device_id: str
    group: str | None
    running_version: int
    behaviour: DeviceBehaviour
    model_name: str = "line-detector"
    sequence: int = 0
    report_sequence: ReportSequence = field(default_factory=ReportSequence)
    desired_sequence: int = -1
    rollout_id: str | None = None
    client: Any = None
    connected: bool = False
    retry_at: float = 0.0
    last_report: bytes | None = None
    sock: Any = None
    history: list[str] = field(default_factory=list)


class SimulatedFleet:
    def __init__(
        self,
        host: str,
        port: int,
        topics: Topics,
        devices: list[SimulatedDevice],
        *,
        verifier: Verifier | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.topics = topics
        self.devices = {d.device_id: d for d in devices}
        self.verifier = verifier
        self.heartbeat_s = heartbeat_s
        self.rejected: list[str] = []
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sim-fleet", daemon=True)
        self._offline: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        for device in self.devices.values():
            self._connect(device)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for device in self.devices.values():
            if device.client is not None:
                device.client.disconnect()

    def set_offline(self, device_id: str, offline: bool) -> None:
        """Offline devices are disconnected (their will says online=false) until set back."""
        with self._lock:
            if offline:
                self._offline.add(device_id)
            else:
                self._offline.discard(device_id)

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._counter), action))

    # ------------------------------------------------------------------ connections
    def _connect(self, device: SimulatedDevice) -> None:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{device.device_id}", protocol=mqtt.MQTTv5
        )
        will = OnlineStatus(device_id=device.device_id, online=False)
        client.will_set(
            self.topics.device(device.device_id, Channel.ONLINE), will.to_payload(), 1, True
        )
        client.user_data_set(device)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        device.client = client
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError:
            device.connected = False
            device.retry_at = time.monotonic() + 0.5
            return
        self._register(device)

    def _register(self, device: SimulatedDevice) -> None:
        sock = device.client.socket()
        if sock is not None:
            self._selector.register(sock, selectors.EVENT_READ, device)
            device.sock = sock

    def _on_connect(self, client: Any, device: SimulatedDevice, *_: Any) -> None:
        device.connected = True
        client.subscribe(self.topics.device(device.device_id, Channel.DESIRED), qos=1)
        status = OnlineStatus(device_id=device.device_id, online=True, at=utc_now())
        client.publish(
            self.topics.device(device.device_id, Channel.ONLINE), status.to_payload(), 1, True
        )
        if device.last_report is None:
            self._report(device, OtaState.ACTIVE, "")
        else:  # the broker may have lost it (restart without persistence)
            topic = self.topics.device(device.device_id, Channel.REPORTED)
            client.publish(topic, device.last_report, 1, True)

    def _on_disconnect(self, _client: Any, device: SimulatedDevice, *_: Any) -> None:
        device.connected = False

    # ------------------------------------------------------------------ device logic
    def _report(
        self, device: SimulatedDevice, state: OtaState, reason: str, *, probation: bool = False
    ) -> None:
        device.sequence = device.report_sequence.next()  # as the agent numbers them
        report = ReportedState(
            device_id=device.device_id,
            fleet=self.topics.fleet,
            group=device.group,
            agent_version="0.1.0",
            ota_state=state,
            model_name=device.model_name,
            running_version=device.running_version,
            rollout_id=device.rollout_id,
            probation=probation,
            reason=reason,
            sequence=device.sequence,
            updated_at=utc_now(),
        )
        device.history.append(f"{state.value}:{device.running_version}")
        device.last_report = report.to_payload()
        device.client.publish(
            self.topics.device(device.device_id, Channel.REPORTED), device.last_report, 1, True
        )

    def _heartbeat(self, device: SimulatedDevice) -> None:
        fps = device.behaviour.fps_by_version.get(device.running_version, device.behaviour.fps)
        beat = Heartbeat(
            device_id=device.device_id,
            sent_at=utc_now(),
            uptime_s=1.0,
            model_name=device.model_name,
            model_version=device.running_version,
            fps=fps,
            latency_ms_p50=8.0,
            latency_ms_p99=15.0,
            cameras={
                "cam0": CameraHealth(
                    state=CameraState.STREAMING,
                    fps=fps,
                    fps_in=25.0,
                    frame_age_ms_p99=12.0,
                    drifting=device.behaviour.drifting,
                    line=simulated_line(fps, drifting=device.behaviour.drifting),
                )
            },
            ota_enabled=device.behaviour.ota_enabled,
            trusted_keys=list(device.behaviour.trusted_keys),
        )
        device.client.publish(
            self.topics.device(device.device_id, Channel.HEARTBEAT), beat.to_payload(), 0, False
        )

    def _on_message(self, _client: Any, device: SimulatedDevice, message: Any) -> None:
        try:
            desired = parse_payload(DesiredState, bytes(message.payload))
            if self.verifier is not None:
                self.verifier.verify(desired)
        except LinefleetError as exc:
            self.rejected.append(f"{device.device_id}: {exc}")
            return
        if desired.fleet != self.topics.fleet or desired.target != DesiredTarget.device(
            device.device_id
        ):
            self.rejected.append(f"{device.device_id}: desired state for {desired.target}")
            return
        if desired.sequence <= device.desired_sequence:
            return  # replay or retained copy already handled
        device.desired_sequence = desired.sequence
        version = desired.manifest.version
        if version == device.running_version:
            return
        if version < device.running_version and desired.action is not DesiredAction.ROLLBACK:
            self.rejected.append(f"{device.device_id}: downgrade without rollback")
            return
        device.rollout_id = desired.rollout_id
        self._report(device, OtaState.DOWNLOADING, "")
        behaviour = device.behaviour

        def finish() -> None:
            if version in behaviour.fail_versions:
                self._report(device, OtaState.FAILED, "smoke check failed: outputs not finite")
                return
            device.running_version = version
            self._report(device, OtaState.ACTIVE, "", probation=True)
            self.later(behaviour.probation_s, lambda: self._report(device, OtaState.ACTIVE, ""))

        self.later(behaviour.update_delay_s, finish)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        last_misc = last_beat = time.monotonic()
        while not self._stop.is_set():
            for device in self.devices.values():
                client = device.client
                offline = device.device_id in self._offline
                if offline and device.connected:
                    self._drop(device)
                elif not offline and not device.connected and client is not None:
                    self._reconnect(device)
                if device.connected and client.want_write():
                    client.loop_write()
            for key, _ in self._selector.select(timeout=0.02):
                device = key.data
                if device.client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._unregister(device)
            now = time.monotonic()
            if now - last_misc > 0.5:
                last_misc = now
                for device in self.devices.values():
                    if device.connected:
                        device.client.loop_misc()
            if self.heartbeat_s is not None and now - last_beat > self.heartbeat_s:
                last_beat = now
                for device in self.devices.values():
                    if device.connected:
                        self._heartbeat(device)
            self._run_timers(now)

    def _run_timers(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > now:
                    return
                _, _, action = heapq.heappop(self._timers)
            try:
                action()
            except Exception:
                log.exception("simulated device action failed")

    def _unregister(self, device: SimulatedDevice) -> None:
        device.connected = False
        # The socket we registered, not paho's current one: paho drops its reference on an
        # error, and a new socket may reuse the same file descriptor number.
        if device.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(device.sock)
            device.sock = None

    def _drop(self, device: SimulatedDevice) -> None:
        """Vanish without DISCONNECT (as a power cut), so the broker sends the last will."""
        self._unregister(device)
        sock = device.client.socket()
        if sock is not None:
            sock.close()
        device.connected = False

    def _reconnect(self, device: SimulatedDevice) -> None:
        if time.monotonic() < device.retry_at:
            return
        device.retry_at = time.monotonic() + 0.5
        self._unregister(device)
        try:
            device.client.reconnect()
        except OSError:
            return
        self._register(device)
