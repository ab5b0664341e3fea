"""The control plane's database: SQLite by default (a real file, WAL), through SQLAlchemy Core
so a ``postgresql://`` URL works unchanged. Schema changes are numbered migrations applied at
open, recorded in ``schema_migrations``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.types import TypeDecorator

from cloud_trainer.errors import TrainerConfigError, TrainerError


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend keeps (SQLite drops the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass timezone-aware UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("fleet", String(64), nullable=False, index=True),
    Column("group_name", String(64), index=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("agent_version", String(32)),
    Column("model_name", String(64)),
    Column("running_version", Integer),
    Column("ota_state", String(32)),
    Column("probation", Boolean, nullable=False, default=False),
    Column("reason", String(500), nullable=False, default=""),
    Column("rollout_id", String(64)),
    # The agent numbers its reports in microseconds since the epoch: past 32 bits.
    Column("reported_sequence", BigInteger, nullable=False, default=-1),
    Column("reported_at", UtcDateTime()),
    Column("heartbeat_at", UtcDateTime()),
    Column("fps", Float),
    Column("heartbeat_model_version", Integer),
    Column("inference_errors", Integer),
    Column("spool_depth", Integer),
    Column("uptime_s", Float),
    # From the last heartbeat: the runtime running the model (e.g. "OpenVINO:CPU:bf16"), its
    # latency, and the cameras, {camera_id: CameraHealth} as JSON.
    Column("provider", String(64)),
    Column("latency_ms_p50", Float),
    Column("latency_ms_p99", Float),
    Column("cameras", Text),
    # Heartbeat schema 3: OTA on or off (NULL: the agent did not say) and the key ids the
    # agent trusts, as a JSON list.
    Column("ota_enabled", Boolean),
    Column("trusted_keys", Text),
    # Heartbeat schema 4: the spool's oldest example (a backlog that does not drain) and
    # failed uploads since the agent started.
    Column("spool_oldest_age_s", Float),
    Column("upload_errors", Integer),
    # A fingerprint of the shape ``cameras`` was written in (device_columns.cameras_format).
    Column("cameras_format", String(32)),
)

# Each device's recent past, one row per heartbeat at most every fleet.history_interval_s:
# the console's device page and drift charts. Pruned past fleet.history_keep_h.
device_history = Table(
    "device_history",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("device_id", String(64), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
    Column("model_version", Integer),
    Column("fps", Float),
    Column("latency_ms_p99", Float),
    Column("inference_errors", Integer),
    Column("spool_depth", Integer),
    Column("upload_errors", Integer),
    # {camera_id: {"state", "drifting", "line": LineWindow}} as JSON.
    Column("cameras", Text),
    Index("device_history_device_at", "device_id", "at"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("rollout_id", String(64), primary_key=True),
    Column("fleet", String(64), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("previous_version", Integer),
    Column("state", String(32), nullable=False),
    Column("targets", JSON, nullable=False),
    Column("waves", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("current_wave", Integer, nullable=False, default=0),
    Column("wave_started_at", UtcDateTime()),
    Column("wave_completed_at", UtcDateTime()),
    Column("reason", String(1000), nullable=False, default=""),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("state", String(32), nullable=False),
    Column("targeted_at", UtcDateTime()),
    Column("done_at", UtcDateTime()),
    Column("baseline_fps", Float),
    Column("reason", String(500), nullable=False, default=""),
)

counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),  # desired-state sequences are epoch ms
)

# People's labels pulled from Label Studio: one row per hard example (its latest outcome),
# and how the annotation changed the model's pre-labels, per class.
label_reviews = Table(
    "label_reviews",
    metadata,
    Column("example_key", String(512), primary_key=True),
    Column("fleet", String(64), nullable=False, index=True),
    Column("project_id", Integer, nullable=False),
    Column("task_id", Integer, nullable=False),
    Column("annotation_id", Integer),
    Column("annotation_stamp", String(64)),  # Label Studio's updated_at, to spot edits
    Column("outcome", String(16), nullable=False),  # labeled, skipped, rejected
    Column("reason", Text, nullable=False, default=""),
    Column("model_name", String(64)),
    Column("model_version", Integer),
    Column("pulled_at", UtcDateTime, nullable=False),
)

label_corrections = Table(
    "label_corrections",
    metadata,
    Column("example_key", String(512), primary_key=True),
    Column("class_name", String(64), primary_key=True),
    Column("prelabeled", Integer, nullable=False),
    Column("labeled", Integer, nullable=False),
    Column("kept", Integer, nullable=False),
    Column("moved", Integer, nullable=False),
    Column("relabeled", Integer, nullable=False),
    Column("added", Integer, nullable=False),
    Column("removed", Integer, nullable=False),
)


def _create_all(connection: Connection) -> None:
    metadata.create_all(connection, tables=[devices, rollouts, rollout_devices, counters])


def _widen_sequences(connection: Connection) -> None:
    """Migration 1 made the sequence columns INTEGER, which PostgreSQL keeps in 32 bits: the
    first report (epoch microseconds) or rollout (epoch milliseconds) overflowed it. SQLite's
    INTEGER is 64-bit already, and a database created since gets BIGINT from migration 1."""
    if connection.dialect.name != "postgresql":
        return
    connection.execute(text("ALTER TABLE devices ALTER COLUMN reported_sequence TYPE BIGINT"))
    connection.execute(text("ALTER TABLE counters ALTER COLUMN value TYPE BIGINT"))


def _add_device_columns(connection: Connection, columns: dict[str, str]) -> None:
    """Add the ``{name: SQL type}`` columns ``devices`` lacks: a database made by an older
    migration lacks them, one made since has them already (migration 1 creates the table
    from today's metadata)."""
    present = {c["name"] for c in inspect(connection).get_columns("devices")}
    for name, kind in columns.items():
        if name not in present:
            connection.execute(text(f"ALTER TABLE devices ADD COLUMN {name} {kind}"))


def _add_probation(connection: Connection) -> None:
    """Reported state schema 2 says whether the running version is on probation."""
    _add_device_columns(connection, {"probation": "BOOLEAN NOT NULL DEFAULT FALSE"})


def _add_heartbeat_health(connection: Connection) -> None:
    """The dashboard shows each device's runtime, latency and cameras (heartbeat schema 2
    added the cameras' rates, frame age and last error)."""
    _add_device_columns(
        connection,
        {
            "provider": "VARCHAR(64)",
            "latency_ms_p50": "FLOAT",
            "latency_ms_p99": "FLOAT",
            "cameras": "TEXT",
        },
    )


def _add_ota_trust(connection: Connection) -> None:
    """Heartbeat schema 3 says whether OTA is on and which keys the agent trusts, so a
    rollout warns about devices that will never take it."""
    _add_device_columns(connection, {"ota_enabled": "BOOLEAN", "trusted_keys": "TEXT"})


def _add_device_history(connection: Connection) -> None:
    """Heartbeat schema 4: spool backlog age and upload errors on the device row, and the
    history table for the device page."""
    _add_device_columns(connection, {"spool_oldest_age_s": "FLOAT", "upload_errors": "INTEGER"})
    metadata.create_all(connection, tables=[device_history])


def _add_cameras_format(connection: Connection) -> None:
    """/api/devices splices the stored cameras into its answer when they are in today's shape."""
    _add_device_columns(connection, {"cameras_format": "VARCHAR(32)"})


def _add_label_reviews(connection: Connection) -> None:
    metadata.create_all(connection, tables=[label_reviews, label_corrections])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "devices, rollouts, rollout_devices, counters", _create_all),
    (2, "64-bit sequence columns", _widen_sequences),
    (3, "devices.probation", _add_probation),
    (4, "devices: runtime, latency and cameras from heartbeats", _add_heartbeat_health),
    (5, "devices: OTA enabled and trusted keys from heartbeats", _add_ota_trust),
    (6, "label_reviews, label_corrections: people's labels, corrections", _add_label_reviews),
    (7, "device_history; devices: spool oldest age, upload errors", _add_device_history),
    (8, "devices.cameras_format", _add_cameras_format),
]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_database(url: str) -> Engine:
    """Open (and migrate) the database at ``url``, e.g. ``sqlite:///var/lib/lf/fleet.db``."""
    try:
        # pre_ping: after a database restart the pool's connections are dead; test each one
        # as it is taken instead of failing the first statement on it.
        engine = create_engine(url, future=True, pool_pre_ping=True)
    except ArgumentError as exc:
        raise TrainerConfigError(f"fleet.database_url is not a database URL: {exc}") from exc
    except ImportError as exc:
        raise TrainerConfigError(
            f"fleet.database_url {_shown(url)} needs a driver that is not installed ({exc}); "
            "for PostgreSQL: pip install 'linefleet[postgres]'"
        ) from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with engine.begin() as connection:
            metadata.create_all(connection, tables=[schema_migrations])
            applied = set(connection.scalars(select(schema_migrations.c.version)))
            for version, name, migrate in MIGRATIONS:
                if version not in applied:
                    migrate(connection)
                    connection.execute(
                        schema_migrations.insert().values(version=version, name=name)
                    )
    except OperationalError as exc:
        raise TrainerError(
            f"cannot open the fleet database {engine.url.render_as_string()}: {exc.orig}"
        ) from exc
    return engine


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable)"


def applied_migrations(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.scalars(select(schema_migrations.c.version)))
