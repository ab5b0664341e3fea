"""Staged rollouts over a real mosquitto with simulated devices, state in a real SQLite file
(and, for the tests marked so, in a real PostgreSQL server too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloud_trainer.config import TrainerConfig
from cloud_trainer.fleet.db import rollout_devices
from cloud_trainer.fleet.params import RolloutAction, RolloutParams, RolloutTargets
from cloud_trainer.fleet.rollout import RolloutError, RolloutStatus, wave_sizes
from cloud_trainer.fleet.service import ControlPlane
from cloud_trainer.fleet.states import RolloutState
from cloud_trainer.release.model_registry import ModelRegistry, PublishFiles
from cloud_trainer.store import ObjectStore
from shared.manifest import ArtifactRef, Lineage, ModelManifest, ModelVariant
from shared.signing import SigningKey, Verifier
from shared.topics import Topics
from testing.fleet_simulator import DeviceBehaviour, SimulatedDevice, SimulatedFleet
from testing.local_services import MosquittoProcess, PostgresProcess
from tests.factories import make_manifest
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

KEY = SigningKey.generate("cp-test")
VERIFIER = Verifier({"cp-test": KEY.private_key.public_key()})
MODEL = "line-detector"


def publish_versions(store: ObjectStore, tmp_path: Path, count: int) -> ModelRegistry:
    registry = ModelRegistry(store, MODEL)
    for index in range(count):
        onnx = tmp_path / f"v{index}.onnx"
        onnx.write_bytes(b"model-%d" % index)

        def build(
            version: int,
            artifact: ArtifactRef,
            weights: ArtifactRef | None,
            variants: list[ModelVariant],
        ) -> ModelManifest:
            return make_manifest().model_copy(
                update={"model_name": MODEL, "version": version, "artifact": artifact}
            )

        registry.publish(build, PublishFiles(onnx=onnx), KEY, lineage=Lineage())
    return registry


@pytest.fixture
def registry(store: ObjectStore, tmp_path: Path) -> ModelRegistry:
    return publish_versions(store, tmp_path, 2)


def config_for(
    broker: MosquittoProcess, fleet: str, tmp_path: Path, database_url: str
) -> TrainerConfig:
    return TrainerConfig(
        mqtt={"host": broker.host, "port": broker.port},  # type: ignore[arg-type]
        model_line={"fleet": fleet, "name": MODEL},  # type: ignore[arg-type]
        fleet={  # type: ignore[arg-type]
            "database_url": database_url,
            "tick_interval_s": 0.05,
            "settle_s": 0.3,
            "controller_id": f"cp-{fleet}",
        },
        work_dir=tmp_path / "work",
    )


@pytest.fixture
def plane_factory(
    mosquitto: MosquittoProcess,
    registry: ModelRegistry,
    fleet_name: str,
    tmp_path: Path,
    database_url: str,
) -> Iterator[Callable[..., ControlPlane]]:
    planes: list[ControlPlane] = []

    def make(broker: MosquittoProcess | None = None, database: str | None = None) -> ControlPlane:
        config = config_for(broker or mosquitto, fleet_name, tmp_path, database or database_url)
        plane = ControlPlane(config, registry.manifest, KEY)
        plane.start()
        planes.append(plane)
        return plane

    yield make
    for plane in planes:
        plane.stop()


def sim_fleet(
    broker: MosquittoProcess, fleet: str, count: int, behaviour: DeviceBehaviour | None = None
) -> SimulatedFleet:
    devices = [
        SimulatedDevice(f"dev-{i:03d}", "line-1", 1, behaviour or DeviceBehaviour())
        for i in range(count)
    ]
    fleet_sim = SimulatedFleet(
        broker.host, broker.port, Topics(fleet), devices, verifier=VERIFIER, heartbeat_s=0.2
    )
    fleet_sim.start()
    return fleet_sim


def run_until(plane: ControlPlane, until: Callable[[], bool], timeout: float = 30.0) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        plane.run(stop, until=until)
    finally:
        timer.cancel()
    assert until(), f"condition not reached within {timeout} s"


def run_until_done(plane: ControlPlane, rollout_id: str, timeout: float = 30.0) -> str:
    run_until(plane, lambda: plane.controller.status(rollout_id).state != "running", timeout)
    return plane.controller.status(rollout_id).state


def targeted_times(plane: ControlPlane, rollout_id: str) -> dict[int, list[Any]]:
    with plane.engine.connect() as connection:
        rows = connection.execute(
            select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)
        ).all()
    waves: dict[int, list[Any]] = {}
    for row in rows:
        waves.setdefault(row.wave, []).append(row)
    return waves


def test_wave_sizes_are_cumulative_with_a_canary() -> None:
    assert wave_sizes(1000, [0.001, 0.1, 0.5, 1.0], 1) == [1, 100, 500, 1000]
    assert wave_sizes(10, [0.01, 1.0], 1) == [1, 10]
    assert wave_sizes(3, [0.1, 0.5, 1.0], 2) == [2, 2, 3]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_rollout_goes_wave_by_wave_and_every_device_ends_active(
    mosquitto: MosquittoProcess, plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    fleet = sim_fleet(mosquitto, fleet_name, 10)
    try:
        plane = plane_factory()
        wait_for(lambda: len(plane.registry.devices()) == 10, timeout=10)
        params = RolloutParams(waves=[0.1, 0.5, 1.0], soak_s=0.3)
        plane.controller.start("r1", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        assert run_until_done(plane, "r1") == RolloutState.SUCCEEDED
        status = plane.controller.status("r1")
        assert status.counts == {"active": 10}
        assert [sum(w.values()) for w in status.per_wave] == [1, 4, 5]
        waves = targeted_times(plane, "r1")
        canary_done = waves[0][0].done_at
        assert all(r.targeted_at >= canary_done for r in waves[1])  # canary proven first
        wait_for(lambda: all(d.running_version == 2 for d in plane.registry.devices()), 10)
        assert not fleet.rejected  # every desired state verified on the device side
        with pytest.raises(RolloutError, match="already exists"):
            plane.controller.start("r1", MODEL, 2, RolloutTargets(whole_fleet=True), params)
    finally:
        fleet.stop()


def test_a_failing_canary_stops_the_rollout_before_wave_two_and_is_retargeted(
    mosquitto: MosquittoProcess, plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    fleet = sim_fleet(mosquitto, fleet_name, 8, DeviceBehaviour(fail_versions={2}))
    try:
        plane = plane_factory()
        wait_for(lambda: len(plane.registry.devices()) == 8, timeout=10)
        params = RolloutParams(waves=[0.1, 0.5, 1.0], soak_s=0.1)
        plane.controller.start("r-bad", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        assert run_until_done(plane, "r-bad") == RolloutState.ABORTED
        status = plane.controller.status("r-bad")
        assert "1 of 1 device(s) failed" in status.reason
        assert status.counts == {"retargeted": 1, "pending": 7}
        canary = next(iter(targeted_times(plane, "r-bad")[0]))
        touched = fleet.devices[canary.device_id]
        wait_for(lambda: touched.desired_sequence > 0, 5)
        assert "failed:1" in touched.history
        untouched = [d for d in fleet.devices.values() if d.device_id != canary.device_id]
        assert all(d.history == ["active:1"] for d in untouched)
    finally:
        fleet.stop()


def test_offline_devices_time_out_without_failing_and_update_when_back(
    mosquitto: MosquittoProcess, plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    fleet = sim_fleet(mosquitto, fleet_name, 10)
    try:
        plane = plane_factory()
        wait_for(lambda: len(plane.registry.devices()) == 10, timeout=10)
        offline = ["dev-003", "dev-007"]  # 20% of the fleet loses power
        for device_id in offline:
            fleet.set_offline(device_id, True)
        wait_for(lambda: not any(plane.registry.device(d).online for d in offline), 10)  # type: ignore[union-attr]
        params = RolloutParams(waves=[0.2, 1.0], soak_s=0.1, device_timeout_s=1.0)
        plane.controller.start("r-off", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        assert run_until_done(plane, "r-off") == RolloutState.SUCCEEDED
        assert plane.controller.status("r-off").counts == {"active": 8, "timed_out": 2}
        for device_id in offline:
            fleet.set_offline(device_id, False)
        # Desired states are retained: the returning devices update by themselves.
        wait_for(lambda: all(fleet.devices[d].running_version == 2 for d in offline), 15)
    finally:
        fleet.stop()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_restarted_controller_resumes_the_rollout(
    mosquitto: MosquittoProcess, plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    fleet = sim_fleet(mosquitto, fleet_name, 6)
    try:
        first = plane_factory()
        wait_for(lambda: len(first.registry.devices()) == 6, timeout=10)
        params = RolloutParams(waves=[0.2, 0.5, 1.0], soak_s=0.5)
        first.controller.start("r-restart", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        run_until(first, lambda: first.controller.status("r-restart").current_wave >= 1)
        first.stop()  # killed mid-rollout
        second = plane_factory()
        assert second.controller.status("r-restart").state == RolloutState.RUNNING
        assert run_until_done(second, "r-restart") == RolloutState.SUCCEEDED
        assert second.controller.status("r-restart").counts == {"active": 6}
        # Each device updated exactly once (no duplicate downloads after the restart).
        assert all(d.history.count("downloading:1") == 1 for d in fleet.devices.values())
    finally:
        fleet.stop()


def test_a_broker_restart_mid_rollout_is_survived(
    broker_factory: Callable[..., MosquittoProcess],
    plane_factory: Callable[..., ControlPlane],
    fleet_name: str,
) -> None:
    broker = broker_factory()
    fleet = sim_fleet(broker, fleet_name, 6)
    try:
        plane = plane_factory(broker)
        wait_for(lambda: len(plane.registry.devices()) == 6, timeout=10)
        params = RolloutParams(waves=[0.2, 1.0], soak_s=1.5)
        plane.controller.start("r-broker", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        run_until(plane, lambda: plane.controller.status("r-broker").counts.get("active", 0) >= 1)
        broker.restart()
        assert run_until_done(plane, "r-broker", timeout=40) == RolloutState.SUCCEEDED
        wait_for(lambda: all(d.running_version == 2 for d in fleet.devices.values()), 15)
    finally:
        fleet.stop()


def test_a_database_restart_mid_rollout_is_survived(
    mosquitto: MosquittoProcess,
    plane_factory: Callable[..., ControlPlane],
    fleet_name: str,
    tmp_path: Path,
) -> None:
    with PostgresProcess(tmp_path / "postgres") as database:
        fleet = sim_fleet(mosquitto, fleet_name, 6)
        try:
            plane = plane_factory(database=database.create_database("fleet"))
            wait_for(lambda: len(plane.registry.devices()) == 6, timeout=10)
            params = RolloutParams(waves=[0.2, 1.0], soak_s=1.0)
            plane.controller.start("r-db", MODEL, 2, RolloutTargets(whole_fleet=True), params)
            run_until(plane, lambda: plane.controller.status("r-db").counts.get("active", 0) >= 1)
            database.stop()
            # `rollout --wait` follows the rollout through the outage.
            followed: list[RolloutStatus] = []
            loop = threading.Thread(
                target=lambda: followed.append(plane.follow("r-db", lambda _: None, timeout_s=60)),
                daemon=True,
            )
            loop.start()
            # Heartbeats keep coming: held in memory; the loop's ticks fail and go on.
            wait_for(lambda: plane.registry.deferred > 0, timeout=10)
            time.sleep(0.5)
            assert loop.is_alive()
            database.start()
            loop.join(timeout=60)
            assert plane.registry.deferred == 0
            assert plane.registry.outcomes["deferred"] > 0
            assert [status.state for status in followed] == [RolloutState.SUCCEEDED]
            assert plane.controller.status("r-db").counts == {"active": 6}
        finally:
            fleet.stop()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_registry_rejects_forged_stale_and_malformed_reports(
    plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    from shared.messages import Heartbeat, OtaState, ReportedState, ReportSequence, utc_now
    from shared.topics import Channel

    plane = plane_factory()
    registry, topics = plane.registry, plane.topics

    def report(device: str, sequence: int, version: int) -> bytes:
        return ReportedState(
            device_id=device,
            fleet=fleet_name,
            agent_version="0.1.0",
            ota_state=OtaState.ACTIVE,
            running_version=version,
            sequence=sequence,
            updated_at=utc_now(),
        ).to_payload()

    # Epoch microseconds, as the agent numbers its reports: past 32 bits.
    now = ReportSequence().next()
    topic_a = topics.device("dev-a", Channel.REPORTED)
    assert registry.ingest(topic_a, report("dev-a", now, 2)) == "applied"
    assert registry.ingest(topic_a, report("dev-a", now, 2)) == "stale"  # duplicate
    assert registry.ingest(topic_a, report("dev-a", now - 1, 1)) == "stale"  # out of order
    assert registry.ingest(topic_a, report("dev-b", now + 9, 1)) == "rejected_forged"
    assert registry.ingest(topic_a, b"\xff\x00 not json") == "rejected_payload"
    assert registry.ingest("lf/other/dev/x/reported", report("x", 1, 1)) == "rejected_topic"
    device = registry.device("dev-a")
    assert device is not None and device.running_version == 2 and device.reported_sequence == now
    assert registry.device("dev-b") is None
    assert registry.ingest(topic_a, report("dev-a", now + 1, 3)) == "applied"
    device = registry.device("dev-a")
    assert device is not None and device.running_version == 3
    # A device first seen by its heartbeat: its first report still applies.
    heartbeat = Heartbeat(device_id="dev-c", sent_at=utc_now(), uptime_s=5.0, fps=30.0)
    heartbeat_payload = heartbeat.to_payload()
    assert (
        registry.ingest(topics.device("dev-c", Channel.HEARTBEAT), heartbeat_payload) == "applied"
    )
    topic_c = topics.device("dev-c", Channel.REPORTED)
    assert registry.ingest(topic_c, report("dev-c", now, 2)) == "applied"
    device = registry.device("dev-c")
    assert device is not None and device.fps == 30.0 and device.reported_sequence == now


def test_start_refuses_bad_requests(
    plane_factory: Callable[..., ControlPlane], registry: ModelRegistry
) -> None:
    plane = plane_factory()
    with pytest.raises(RolloutError, match="match no device"):
        plane.controller.start("r-x", MODEL, 2, RolloutTargets(groups=["nobody"]), RolloutParams())
    with pytest.raises(Exception, match="no published version 7"):
        plane.controller.start("r-y", MODEL, 7, RolloutTargets(devices=["dev-1"]), RolloutParams())
    plane.controller.start("r-z", MODEL, 2, RolloutTargets(devices=["dev-1"]), RolloutParams())
    with pytest.raises(RolloutError, match="still in progress"):
        plane.controller.start("r-w", MODEL, 2, RolloutTargets(devices=["dev-2"]), RolloutParams())
    plane.controller.abort("r-z")
    assert plane.controller.status("r-z").state == RolloutState.ABORTED
    with pytest.raises(RolloutError, match="cannot do that now"):
        plane.controller.pause("r-z")


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_concurrent_callers_never_share_a_desired_state_sequence(
    plane_factory: Callable[..., ControlPlane],
) -> None:
    """The control loop and the API take sequence numbers at the same time; a device drops
    a desired state whose sequence it has seen, so two must never get the same number."""
    controller = plane_factory().controller
    taken: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(len(taken))

    def take(into: list[int]) -> None:
        start.wait()
        for _ in range(25):
            into.extend(controller._next_sequences(3))

    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    numbers = [n for into in taken for n in into]
    assert len(numbers) == 4 * 25 * 3 and len(set(numbers)) == len(numbers)
    for into in taken:  # each caller's numbers keep growing
        assert into == sorted(into)
    assert list(controller._next_sequences(0)) == []


def test_a_rollout_warns_about_devices_that_will_never_take_it(
    mosquitto: MosquittoProcess, plane_factory: Callable[..., ControlPlane], fleet_name: str
) -> None:
    """From their heartbeats: a device with OTA off, one that does not trust the control
    plane's key; an agent too old to say (None) and a willing one raise nothing."""
    trusting = DeviceBehaviour(ota_enabled=True, trusted_keys=("cp-test",), update_delay_s=30)
    devices = [
        SimulatedDevice("dev-ok", "line-1", 1, trusting),
        SimulatedDevice("dev-old", "line-1", 1, DeviceBehaviour(update_delay_s=30, drifting=True)),
        SimulatedDevice("dev-off", "line-1", 1, DeviceBehaviour(ota_enabled=False)),
        SimulatedDevice(
            "dev-other", "line-1", 1, DeviceBehaviour(ota_enabled=True, trusted_keys=("other",))
        ),
    ]
    fleet = SimulatedFleet(
        mosquitto.host, mosquitto.port, Topics(fleet_name), devices, heartbeat_s=0.2
    )
    fleet.start()
    try:
        plane = plane_factory()
        wait_for(
            lambda: sum(d.ota_enabled is not None for d in plane.registry.devices()) == 3,
            timeout=10,
        )
        assert plane.registry.device("dev-other").trusted_keys == ["other"]  # type: ignore[union-attr]
        assert plane.registry.drifting_devices() == ["dev-old"]  # what serve's drift trigger counts
        params = RolloutParams(waves=[1.0], device_timeout_s=600)
        plane.controller.start("r-warn", MODEL, 2, RolloutTargets(whole_fleet=True), params)
        warnings = plane.controller.status("r-warn").warnings
        assert len(warnings) == 2, warnings
        assert "dev-off has OTA disabled" in warnings[0]
        assert "dev-other does not trust signing key 'cp-test'" in warnings[1]
        assert plane.controller.status("r-warn", warnings=False).warnings == []
        # Per device: its state in the rollout, its own report and the time left to answer.
        views = {v.device_id: v for v in plane.controller.devices("r-warn")}
        assert set(views) == {"dev-ok", "dev-old", "dev-off", "dev-other"}
        waiting = views["dev-ok"]
        assert waiting.wave == 1 and waiting.state == "targeted" and waiting.online
        assert waiting.timeout_in_s is not None and 590 < waiting.timeout_in_s <= 600
        assert [v.device_id for v in plane.controller.devices("r-warn", wave=1, limit=2)] == [
            "dev-off",
            "dev-ok",
        ]
        assert plane.controller.devices("r-warn", wave=2) == []
        with pytest.raises(RolloutError, match="no rollout"):
            plane.controller.devices("nope")
        plane.controller.act("r-warn", RolloutAction.ABORT)
        assert plane.controller.status("r-warn").warnings == [], "only live rollouts warn"
    finally:
        fleet.stop()
