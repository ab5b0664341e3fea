"""The control plane's database schema and migrations, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import TypeAdapter
from sqlalchemy import create_engine, select, text, update

from cloud_trainer.errors import TrainerConfigError, TrainerError
from cloud_trainer.fleet.db import applied_migrations, devices, open_database, schema_migrations
from cloud_trainer.fleet.device_registry import DeviceRow, FleetRegistry
from cloud_trainer.fleet.states import IngestOutcome
from shared.messages import (
    CameraHealth,
    CameraState,
    Heartbeat,
    LineWindow,
    OtaState,
    ReportedState,
    ReportSequence,
    utc_now,
)
from shared.topics import Channel, Topics
from testing.local_services import PostgresProcess, free_port

pytestmark = pytest.mark.integration
ALL_MIGRATIONS = [1, 2, 3, 4, 5, 6, 7, 8]


def reported(device_id: str, sequence: int) -> bytes:
    return ReportedState(
        device_id=device_id,
        fleet="plant",
        agent_version="0.1.0",
        ota_state=OtaState.ACTIVE,
        running_version=1,
        sequence=sequence,
        updated_at=utc_now(),
    ).to_payload()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_agent_sized_sequences_are_stored(database_url: str) -> None:
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant")
    topic = Topics("plant").device("box-1", Channel.REPORTED)
    sequence = ReportSequence().next()
    assert sequence > 2**31  # what a 32-bit INTEGER column refused on PostgreSQL
    assert registry.ingest(topic, reported("box-1", sequence)) == "applied"
    device = registry.device("box-1")
    assert device is not None and device.reported_sequence == sequence
    open_database(database_url)  # opening again applies nothing twice
    assert applied_migrations(engine) == ALL_MIGRATIONS


def test_a_postgres_database_from_migration_1_is_widened(postgres: PostgresProcess) -> None:
    url = postgres.create_database("fleet_migration_1")
    engine = open_database(url)
    # Put the database back as migration 1 left it: 32-bit sequence columns.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE devices ALTER COLUMN reported_sequence TYPE INTEGER"))
        connection.execute(text("ALTER TABLE counters ALTER COLUMN value TYPE INTEGER"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 2))
    old = FleetRegistry(engine, "plant")
    topic = Topics("plant").device("box-1", Channel.REPORTED)
    # A value the database refuses would fail again: counted and dropped, not held.
    assert old.ingest(topic, reported("box-1", ReportSequence().next())) == "refused_by_database"
    assert old.deferred == 0

    engine = open_database(url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    with create_engine(url).connect() as connection:
        types = dict(
            connection.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type "
                    "FROM information_schema.columns WHERE column_name IN "
                    "('reported_sequence', 'value') AND table_name IN ('devices', 'counters')"
                )
            ).all()
        )
    assert types == {"devices.reported_sequence": "bigint", "counters.value": "bigint"}
    sequence = ReportSequence().next()
    assert FleetRegistry(engine, "plant").ingest(topic, reported("box-1", sequence)) == "applied"
    with engine.connect() as connection:
        stored = connection.execute(select(devices.c.reported_sequence)).scalar_one()
    assert stored == sequence


def test_report_sequences_never_go_back_when_the_clock_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_800_000_000_000_000_000]  # ns
    monkeypatch.setattr("shared.messages.time.time_ns", lambda: clock[0])
    sequence = ReportSequence()
    first = sequence.next()
    assert first == clock[0] // 1000
    assert sequence.next() == first + 1  # same microsecond
    clock[0] -= 3600 * 10**9  # NTP steps the box's clock back an hour
    assert sequence.next() == first + 2
    clock[0] += 7200 * 10**9
    assert sequence.next() == clock[0] // 1000


def test_database_errors_name_the_url_without_its_password() -> None:
    unreachable = f"postgresql+psycopg2://fleet:s3cret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(TrainerError, match="cannot open the fleet database") as caught:
        open_database(unreachable)
    assert "s3cret" not in str(caught.value) and "fleet:***@" in str(caught.value)
    no_driver = "postgresql+pg8000://fleet:s3cret@127.0.0.1:5432/fleet"
    with pytest.raises(TrainerConfigError, match=r"linefleet\[postgres\]") as caught:
        open_database(no_driver)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(TrainerConfigError, match="not a database URL"):
        open_database("not a url at all")


def test_messages_are_held_while_the_database_is_down(tmp_path: Path) -> None:
    with PostgresProcess(tmp_path / "postgres") as database:
        engine = open_database(database.create_database("fleet"))
        registry = FleetRegistry(engine, "plant")
        topics = Topics("plant")
        reports = topics.device("box-1", Channel.REPORTED)
        sequence = ReportSequence()
        assert registry.ingest(reports, reported("box-1", sequence.next())) == "applied"
        database.stop()
        newer, newest = sequence.next(), sequence.next()
        heartbeat = Heartbeat(device_id="box-1", sent_at=utc_now(), uptime_s=9.0, fps=12.5)
        assert registry.ingest(reports, reported("box-1", newer)) == "deferred"
        beats = topics.device("box-1", Channel.HEARTBEAT)
        assert registry.ingest(beats, heartbeat.to_payload()) == "deferred"
        assert registry.ingest(reports, reported("box-1", newest)) == "deferred"
        assert registry.deferred == 2  # the newest message of each topic
        assert registry.write_deferred() == 2  # still down: nothing lost
        database.start()
        assert registry.write_deferred() == 0
        device = registry.device("box-1")
        assert device is not None
        assert device.reported_sequence == newest and device.fps == 12.5
        assert registry.outcomes["deferred"] == 3 and registry.outcomes["applied"] == 3


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_database_from_before_probation_gains_the_column(database_url: str) -> None:
    engine = open_database(database_url)
    # Put the database back as migrations 1-2 left it before reports had a probation field.
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE devices DROP COLUMN probation"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 3))
    engine.dispose()
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant")
    topic = Topics("plant").device("box-1", Channel.REPORTED)
    report = ReportedState(
        device_id="box-1",
        fleet="plant",
        agent_version="0.1.0",
        ota_state=OtaState.ACTIVE,
        running_version=2,
        probation=True,
        sequence=ReportSequence().next(),
        updated_at=utc_now(),
    )
    assert registry.ingest(topic, report.to_payload()) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and device.probation and device.ota_state is OtaState.ACTIVE


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_database_from_before_heartbeat_health_gains_the_columns(database_url: str) -> None:
    engine = open_database(database_url)
    # Put the database back as migrations 1-3 left it, before heartbeats carried cameras.
    with engine.begin() as connection:
        for column in ("provider", "latency_ms_p50", "latency_ms_p99", "cameras"):
            connection.execute(text(f"ALTER TABLE devices DROP COLUMN {column}"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 4))
    engine.dispose()
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant")
    topic = Topics("plant").device("box-1", Channel.HEARTBEAT)
    stalled = CameraHealth(
        state=CameraState.STALLED,
        fps=0.0,
        fps_in=0.0,
        frame_age_ms_p99=35.5,
        reconnects=3,
        stalls=2,
        last_error="no data from rtsp://***@cam/1 for 10 s",
    )
    beat = Heartbeat(
        device_id="box-1",
        sent_at=utc_now(),
        uptime_s=9.0,
        fps=12.5,
        provider="OpenVINO:CPU:bf16",
        latency_ms_p50=5.2,
        latency_ms_p99=9.8,
        cameras={"cam1": stalled},
    )
    assert registry.ingest(topic, beat.to_payload()) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and device.cameras == {"cam1": stalled}
    assert device.provider == "OpenVINO:CPU:bf16"
    assert (device.latency_ms_p50, device.latency_ms_p99) == (5.2, 9.8)
    # A schema-1 heartbeat of an older agent still counts; its cameras read as zeros.
    legacy = {
        "schema_version": 1,
        "device_id": "box-1",
        "sent_at": utc_now().isoformat(),
        "uptime_s": 10.0,
        "fps": 11.0,
        "cameras": {"cam1": {"state": "streaming", "fps": 11.0}},
    }
    assert registry.ingest(topic, json.dumps(legacy).encode()) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and device.cameras["cam1"].state is CameraState.STREAMING
    assert device.cameras["cam1"].fps_in == 0.0


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_database_from_before_ota_trust_gains_the_columns(database_url: str) -> None:
    engine = open_database(database_url)
    # Put the database back as migrations 1-4 left it, before heartbeats said OTA and keys.
    with engine.begin() as connection:
        for column in ("ota_enabled", "trusted_keys"):
            connection.execute(text(f"ALTER TABLE devices DROP COLUMN {column}"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 5))
    engine.dispose()
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant")
    topic = Topics("plant").device("box-1", Channel.HEARTBEAT)
    beat = Heartbeat(
        device_id="box-1",
        sent_at=utc_now(),
        uptime_s=9.0,
        fps=12.5,
        ota_enabled=True,
        trusted_keys=["release-2026"],
    )
    assert registry.ingest(topic, beat.to_payload()) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and device.ota_enabled is True
    assert device.trusted_keys == ["release-2026"]
    # A schema-2 heartbeat of an older agent says nothing of OTA: unknown, not "disabled".
    older = Heartbeat(device_id="box-1", sent_at=utc_now(), uptime_s=10.0, fps=12.0)
    legacy = json.loads(older.to_payload()) | {"schema_version": 2}
    del legacy["ota_enabled"], legacy["trusted_keys"]
    assert registry.ingest(topic, json.dumps(legacy).encode()) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and device.ota_enabled is None and device.trusted_keys == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_database_from_before_history_gains_it_and_heartbeats_fill_it(
    database_url: str,
) -> None:
    engine = open_database(database_url)
    # Put the database back as migrations 1-6 left it: no history, no spool age.
    with engine.begin() as connection:
        for column in ("spool_oldest_age_s", "upload_errors"):
            connection.execute(text(f"ALTER TABLE devices DROP COLUMN {column}"))
        connection.execute(text("DROP TABLE device_history"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 7))
    engine.dispose()
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant", history_interval_s=60.0, history_keep_s=3600.0)
    topic = Topics("plant").device("box-1", Channel.HEARTBEAT)
    start = utc_now() - timedelta(minutes=10)

    def beat(seconds: float, bolts: float) -> bytes:
        line = LineWindow(seconds=20.0, frames=100, detections_per_min={"bolt": bolts})
        return Heartbeat(
            device_id="box-1",
            sent_at=start + timedelta(seconds=seconds),
            uptime_s=seconds,
            fps=5.0,
            spool_depth=3,
            spool_oldest_age_s=420.0,
            upload_errors=2,
            cameras={"cam0": CameraHealth(state=CameraState.STREAMING, fps=5.0, line=line)},
        ).to_payload()

    for seconds, bolts in ((0, 60.0), (20, 61.0), (40, 59.0), (60, 12.0), (130, 11.0)):
        assert registry.ingest(topic, beat(seconds, bolts)) == IngestOutcome.APPLIED
    device = registry.device("box-1")
    assert device is not None and (device.spool_oldest_age_s, device.upload_errors) == (420.0, 2)
    history = registry.history("box-1", start - timedelta(seconds=1))
    # One point a minute at most: the heartbeats at 0, 60 and 130 s.
    assert [
        p.cameras["cam0"].line.detections_per_min["bolt"] for p in history if p.cameras["cam0"].line
    ] == [60.0, 12.0, 11.0]
    assert registry.history("box-1", start + timedelta(seconds=100))[0].spool_depth == 3
    assert registry.history("box-9", start) == []
    # Old rows are pruned as new ones come.
    old = Heartbeat(device_id="box-2", sent_at=start - timedelta(hours=5), uptime_s=1, fps=1.0)
    registry._history_writes = 0  # the next write prunes
    registry.ingest(Topics("plant").device("box-2", Channel.HEARTBEAT), old.to_payload())
    registry.ingest(topic, beat(300, 10.0))
    assert registry.history("box-2", start - timedelta(hours=6)) == []


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_the_fleet_as_json_is_the_rows_serialized_old_rows_included(database_url: str) -> None:
    """/api/devices splices stored cameras; rows from before that (or in an older shape, or
    unreadable) must come out exactly as parsing and serializing them would make them."""
    engine = open_database(database_url)
    registry = FleetRegistry(engine, "plant")
    topics = Topics("plant")
    line = LineWindow(seconds=20.0, frames=100, detections_per_min={"bolt": 3.0})

    def beat(device: str, **fields: object) -> bytes:
        cameras = {
            "cam0": CameraHealth(state=CameraState.STREAMING, fps=5.0, line=line),
            "cam1": CameraHealth(
                state=CameraState.RECONNECTING, fps=0.0, errors=4, last_error="EOF"
            ),
        }
        return Heartbeat(
            device_id=device, sent_at=utc_now(), uptime_s=3.5, fps=5.25, cameras=cameras, **fields
        ).to_payload()

    assert registry.ingest(topics.device("box-1", Channel.REPORTED), reported("box-1", 7)) == (
        IngestOutcome.APPLIED
    )
    for device in ("box-1", "box-2", "box-3"):
        registry.ingest(
            topics.device(device, Channel.HEARTBEAT),
            beat(device, ota_enabled=device == "box-1", trusted_keys=["k1", "k2"]),
        )
    registry.ingest(topics.device("box-4", Channel.REPORTED), reported("box-4", 1))
    FleetRegistry(engine, "other").ingest(
        Topics("other").device("box-9", Channel.HEARTBEAT), beat("box-9")
    )
    # box-2: written before the cameras had a format, in an older shape; box-3: unreadable.
    with engine.begin() as connection:
        for device, cameras in (
            ("box-2", '{"cam0": {"state": "streaming", "fps": 2.0}}'),
            ("box-3", "{not json"),
        ):
            connection.execute(
                update(devices)
                .where(devices.c.device_id == device)
                .values(cameras=cameras, cameras_format=None, trusted_keys="[1, {}]")
            )

    spliced = json.loads(registry.devices_json())
    parsed = json.loads(TypeAdapter(list[DeviceRow]).dump_json(registry.devices()))
    assert [d["device_id"] for d in spliced] == ["box-1", "box-2", "box-3", "box-4"]
    assert spliced == parsed
    assert spliced[0]["cameras"]["cam0"]["line"] is None  # windows go to the history only
    assert spliced[1]["cameras"]["cam0"]["fps"] == 2.0 and spliced[1]["trusted_keys"] == []
    assert spliced[2]["cameras"] == {} and spliced[3]["cameras"] == {}


def test_a_database_from_before_the_cameras_format_gains_the_column(database_url: str) -> None:
    engine = open_database(database_url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE devices DROP COLUMN cameras_format"))
        connection.execute(schema_migrations.delete().where(schema_migrations.c.version == 8))
    engine.dispose()
    engine = open_database(database_url)
    assert applied_migrations(engine) == ALL_MIGRATIONS
    registry = FleetRegistry(engine, "plant")
    registry.ingest(
        Topics("plant").device("box-1", Channel.HEARTBEAT),
        Heartbeat(device_id="box-1", sent_at=utc_now(), uptime_s=1, fps=1.0).to_payload(),
    )
    assert json.loads(registry.devices_json())[0]["device_id"] == "box-1"
