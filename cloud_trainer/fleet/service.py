"""The running control plane: one MQTT connection feeding the fleet registry, and the rollout
controller's loop. ``cloud-trainer serve`` and ``cloud-trainer rollout ... --wait`` use it.

Subscriptions: ``reported`` and ``online`` are retained, and MQTT v5 never delivers retained
messages to shared subscriptions, so every replica subscribes to them directly (low volume);
``heartbeat`` is high volume and not retained, so replicas split it with
``$share/{group}/...``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud_trainer import __version__
from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import TrainerError
from cloud_trainer.fleet.api import create_control_app
from cloud_trainer.fleet.db import open_database
from cloud_trainer.fleet.device_registry import FleetRegistry
from cloud_trainer.fleet.rollout import ManifestSource, RolloutController, RolloutStatus
from cloud_trainer.fleet.states import LIVE
from cloud_trainer.release.model_registry import ModelRegistry
from cloud_trainer.store import ObjectStore
from shared.infra.http import HttpServer
from shared.infra.mqtt_link import MqttLink
from shared.signing import SigningKey
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)


class ControlPlane:
    def __init__(
        self,
        config: TrainerConfig,
        manifests: ManifestSource,
        signer: SigningKey,
        *,
        engine: Engine | None = None,
    ) -> None:
        fleet = config.model_line.fleet
        self.config = config
        self.topics = Topics(fleet, prefix=config.mqtt.topic_prefix)
        self.engine = engine or open_database(config.fleet.url(config.work_dir))
        self.registry = FleetRegistry(
            self.engine,
            fleet,
            self.topics,
            history_interval_s=config.fleet.history_interval_s,
            history_keep_s=config.fleet.history_keep_h * 3600.0,
        )
        self._last_message = time.monotonic()
        self.link = MqttLink(
            config.mqtt,
            config.fleet.controller_id,
            agent_version=__version__,
            presence_topic=self.topics.control(f"presence-{config.fleet.controller_id}"),
        )
        self.link.add_handler(self._on_message)
        self.link.subscribe(self.topics.all_devices(Channel.REPORTED), qos=1)
        self.link.subscribe(self.topics.all_devices(Channel.ONLINE), qos=1)
        self.link.subscribe(
            f"$share/{config.fleet.share_group}/{self.topics.all_devices(Channel.HEARTBEAT)}",
            qos=0,
        )
        self.controller = RolloutController(
            self.engine,
            self.registry,
            manifests,
            signer,
            self._publish,
            topics=self.topics,
        )

    def serve_api(self, models: ModelRegistry, store: ObjectStore) -> HttpServer:
        """Start the HTTP API and dashboard in a thread; returns the running server."""
        api = self.config.fleet.api
        app = create_control_app(
            registry=self.registry,
            controller=self.controller,
            models=models,
            store=store,
            token=api.token.get_secret_value() if api.token else None,
            default_params=self.config.fleet.rollout,
        )
        server = HttpServer(app, api.host, api.port)
        server.start()
        return server

    def _publish(self, topic: str, payload: bytes) -> None:
        if not self.link.publish(topic, payload, qos=1, retain=True):
            raise TrainerError(f"MQTT outbox full: could not queue the desired state for {topic}")

    def _on_message(self, topic: str, payload: bytes, _retained: bool) -> None:
        self._last_message = time.monotonic()
        self.registry.ingest(topic, payload)

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect, then take in the retained fleet state before anyone acts on it."""
        self.link.start()
        if not self.link.wait_connected(timeout_s):
            self.link.stop(timeout=0.5)
            mqtt = self.config.mqtt
            raise TrainerError(
                f"cannot reach the MQTT broker at {mqtt.host}:{mqtt.port} within {timeout_s:.0f} s"
            )
        settle = self.config.fleet.settle_s
        deadline = time.monotonic() + max(settle * 5, 1.0)
        while time.monotonic() < deadline:
            if time.monotonic() - self._last_message >= settle:
                break
            time.sleep(0.05)

    def stop(self) -> None:
        self.link.stop()

    def follow(
        self,
        rollout_id: str,
        on_change: Callable[[RolloutStatus], object],
        *,
        timeout_s: float | None = None,
    ) -> RolloutStatus:
        """Drive ``rollout_id`` until it is no longer running or paused (or ``timeout_s``),
        calling ``on_change`` whenever its state, wave or device counts move."""
        stop = threading.Event()
        timer = threading.Timer(timeout_s, stop.set) if timeout_s is not None else None
        last: list[tuple[object, ...]] = [()]

        def done() -> bool:
            status = self.controller.status(rollout_id, warnings=False)
            key = (status.state, status.current_wave, sorted(status.counts.items()))
            if key != last[0]:
                last[0] = key
                on_change(status)
            return status.state not in LIVE

        if timer is not None:
            timer.start()
        try:
            try:
                finished = done()
            except SQLAlchemyError:  # the database is down: run() retries every tick
                finished = False
            if not finished:
                self.run(stop, until=done)
        finally:
            if timer is not None:
                timer.cancel()
        return self.controller.status(rollout_id)

    def run(self, stop: threading.Event, until: Callable[[], bool] | None = None) -> None:
        """Tick the controller every ``tick_interval_s`` until ``stop`` (or ``until()``)."""
        interval = self.config.fleet.tick_interval_s
        while not stop.wait(interval):
            try:
                if self.registry.write_deferred() == 0:
                    self.controller.tick()
                if until is not None and until():
                    return
            except TrainerError as exc:
                log.error("rollout tick failed: %s", exc)
            except SQLAlchemyError as exc:  # the database is down: retry next tick
                log.error("rollout tick failed, database: %s", str(exc).splitlines()[0][:300])
