"""The fleet registry: what every device reports, kept in the database.

Fed with raw MQTT messages (topic + bytes) by :mod:`cloud_trainer.fleet.listener`. Every payload
is untrusted: it must parse, its device id must be the one in its topic (a device that may
publish only under its own topic cannot speak for another, and a payload that claims to is
rejected), and a ``reported`` message older than the last one applied (by the agent's own
sequence) is dropped, so duplicates and out-of-order copies never move a device backwards.

When the database is down (a PostgreSQL restart, a full disk), the newest message of each
topic is held in memory and written by :meth:`FleetRegistry.write_deferred` once it answers
again: ``reported`` and ``online`` are retained and sent once per change, so a message lost
here would leave a device's row wrong until its next state change.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from cloud_trainer.fleet.db import device_history, devices
from cloud_trainer.fleet.device_columns import (
    CAMERAS,
    cameras_format,
    cameras_from_column,
    keys_from_column,
    rows_to_json,
    stored_cameras,
    stored_keys,
)
from cloud_trainer.fleet.states import IngestOutcome
from shared.errors import ContractError
from shared.messages import (
    CameraHealth,
    Heartbeat,
    OnlineStatus,
    OtaState,
    ReportedState,
    parse_payload,
)
from shared.topics import Channel, Scope, Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    fleet: str
    group_name: str | None
    online: bool
    agent_version: str | None
    model_name: str | None
    running_version: int | None
    ota_state: OtaState | None
    probation: bool
    reason: str
    rollout_id: str | None
    reported_sequence: int
    reported_at: datetime | None
    heartbeat_at: datetime | None
    fps: float | None
    heartbeat_model_version: int | None
    inference_errors: int | None
    spool_depth: int | None  # hard examples waiting on the box's disk for upload
    # From the last heartbeat: the runtime running the model, its latency, the cameras
    # (empty before the first schema-2 heartbeat).
    provider: str | None
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    cameras: dict[str, CameraHealth]
    # Heartbeat schema 3: None while unknown (an older agent, or no heartbeat yet).
    ota_enabled: bool | None
    trusted_keys: list[str]
    # Heartbeat schema 4: the spool's oldest example and failed uploads (None: unknown).
    spool_oldest_age_s: float | None
    upload_errors: int | None

    @classmethod
    def from_row(cls, row: Any, prefix: str = "") -> DeviceRow:
        mapping = row._mapping  # a new RowMapping per access: take it once per row
        values = {name: mapping[prefix + name] for name in cls.__dataclass_fields__}
        state = values["ota_state"]
        values["ota_state"] = OtaState(state) if state is not None else None
        values["probation"] = bool(values["probation"])
        values["cameras"] = cameras_from_column(values["cameras"])
        enabled = values["ota_enabled"]
        values["ota_enabled"] = None if enabled is None else bool(enabled)
        values["trusted_keys"] = keys_from_column(values["trusted_keys"])
        return cls(**values)


MAX_DEFERRED = 100_000  # topics held while the database is down; about one per device channel
# The database is down, unreachable or locked: worth holding the message. Any other database
# error (a value it refuses) would fail again, so that message is counted and dropped.
DATABASE_DOWN = (OperationalError, InterfaceError)


class HistoryPoint(BaseModel):
    """One heartbeat of a device's recent past (the console's device page and charts)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    model_version: int | None
    fps: float | None
    latency_ms_p99: float | None
    inference_errors: int | None
    spool_depth: int | None
    upload_errors: int | None
    cameras: dict[str, CameraHealth]


class FleetRegistry:
    def __init__(
        self,
        engine: Engine,
        fleet: str,
        topics: Topics | None = None,
        *,
        history_interval_s: float = 60.0,
        history_keep_s: float = 48 * 3600.0,
    ) -> None:
        self.engine = engine
        self.fleet = fleet
        self.topics = topics or Topics(fleet)
        self.history_interval = timedelta(seconds=history_interval_s)
        self.history_keep = timedelta(seconds=history_keep_s)
        self._history_last: dict[str, datetime] = {}  # device -> last recorded heartbeat
        self._history_writes = 0
        self.outcomes: Counter[IngestOutcome] = Counter()
        # topic -> newest payload not yet written, oldest first. One lock for all writes, so
        # a held message can never land after a newer one of its topic.
        self._deferred: dict[str, bytes] = {}
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ ingest
    def ingest(self, topic: str, payload: bytes) -> IngestOutcome:
        """Apply one message; returns what happened (also counted in :attr:`outcomes`):
        ``applied``, ``stale``, ``ignored``, ``rejected_*``, or ``deferred`` (database down:
        held for :meth:`write_deferred`)."""
        with self._write_lock:
            try:
                outcome = self._write(topic, payload)
                self._deferred.pop(topic, None)  # superseded by this newer message
            except DATABASE_DOWN as exc:
                outcome = self._defer(topic, payload, exc)
            self.outcomes[outcome] += 1
        return outcome

    @property
    def deferred(self) -> int:
        """Messages held while the database is down."""
        with self._write_lock:
            return len(self._deferred)

    def write_deferred(self) -> int:
        """Write the held messages, oldest first, until the database fails again; returns
        how many are still held. The control plane calls it every tick."""
        with self._write_lock:
            if not self._deferred:
                return 0
            while self._deferred:
                topic, payload = next(iter(self._deferred.items()))
                try:
                    outcome = self._write(topic, payload)
                except DATABASE_DOWN:
                    return len(self._deferred)
                del self._deferred[topic]
                self.outcomes[outcome] += 1
            log.warning("fleet database answers again: held messages written")
            return 0

    def _write(self, topic: str, payload: bytes) -> IngestOutcome:
        """:meth:`_ingest`, raising only :data:`DATABASE_DOWN` errors: a value the database
        refuses would fail again, so that message is counted and dropped."""
        try:
            return self._ingest(topic, payload)
        except DATABASE_DOWN:
            raise
        except SQLAlchemyError as exc:
            log.error(
                "fleet database refused the message on %s: %s",
                topic[:200],
                str(exc).splitlines()[0][:300],
            )
            return IngestOutcome.REFUSED_BY_DATABASE

    def _defer(self, topic: str, payload: bytes, exc: SQLAlchemyError) -> IngestOutcome:
        if not self._deferred:
            log.error(
                "fleet database unavailable, holding messages until it answers: %s",
                str(exc).splitlines()[0][:300],
            )
        self._deferred.pop(topic, None)
        self._deferred[topic] = payload
        if len(self._deferred) > MAX_DEFERRED:
            oldest = next(iter(self._deferred))
            del self._deferred[oldest]
            self.outcomes[IngestOutcome.DROPPED_DATABASE_DOWN] += 1
        return IngestOutcome.DEFERRED

    def _ingest(self, topic: str, payload: bytes) -> IngestOutcome:
        try:
            address = self.topics.parse(topic)
        except ContractError:
            return IngestOutcome.REJECTED_TOPIC
        if address.scope is not Scope.DEVICE:
            return IngestOutcome.IGNORED
        device_id = address.target
        try:
            if address.channel == Channel.REPORTED:
                return self._reported(device_id, parse_payload(ReportedState, payload))
            if address.channel == Channel.ONLINE:
                return self._online(device_id, parse_payload(OnlineStatus, payload))
            if address.channel == Channel.HEARTBEAT:
                return self._heartbeat(device_id, parse_payload(Heartbeat, payload))
        except ContractError as exc:
            log.warning("rejected %s: %s", topic, exc)
            return IngestOutcome.REJECTED_PAYLOAD
        return IngestOutcome.IGNORED

    def _forged(self, topic_device: str, claimed: str, topic: str) -> bool:
        if claimed != topic_device:
            log.warning(
                "rejected %s message on %s's topic claiming device %r", topic, topic_device, claimed
            )
            return True
        return False

    def _upsert(
        self, device_id: str, values: dict[str, Any], *, sequence: int | None = None
    ) -> bool:
        """Insert or update one device's row, in one transaction. With ``sequence`` only a
        report newer than the stored one is written (the check and the write are one
        statement); False means the row was there and at least as new."""
        this_device = devices.c.device_id == device_id
        update = devices.update().where(this_device).values(**values)
        if sequence is not None:
            update = update.where(devices.c.reported_sequence < sequence)
        with self.engine.begin() as connection:
            if connection.execute(update).rowcount:
                return True
            if connection.execute(select(devices.c.device_id).where(this_device)).first():
                return False
            connection.execute(
                devices.insert().values(device_id=device_id, fleet=self.fleet, **values)
            )
        return True

    def _reported(self, device_id: str, message: ReportedState) -> IngestOutcome:
        if self._forged(device_id, message.device_id, "reported") or message.fleet != self.fleet:
            return IngestOutcome.REJECTED_FORGED
        applied = self._upsert(
            device_id,
            {
                "group_name": message.group,
                "agent_version": message.agent_version,
                "model_name": message.model_name,
                "running_version": message.running_version,
                "ota_state": message.ota_state.value,
                "probation": message.probation,
                "reason": message.reason[:500],
                "rollout_id": message.rollout_id,
                "reported_sequence": message.sequence,
                "reported_at": message.updated_at,
            },
            sequence=message.sequence,
        )
        return IngestOutcome.APPLIED if applied else IngestOutcome.STALE

    def _online(self, device_id: str, message: OnlineStatus) -> IngestOutcome:
        if self._forged(device_id, message.device_id, "online"):
            return IngestOutcome.REJECTED_FORGED
        values: dict[str, Any] = {"online": message.online}
        if message.agent_version:
            values["agent_version"] = message.agent_version
        self._upsert(device_id, values)
        return IngestOutcome.APPLIED

    def _heartbeat(self, device_id: str, message: Heartbeat) -> IngestOutcome:
        if self._forged(device_id, message.device_id, "heartbeat"):
            return IngestOutcome.REJECTED_FORGED
        self._upsert(
            device_id,
            {
                "heartbeat_at": message.sent_at,
                "fps": message.fps,
                "heartbeat_model_version": message.model_version,
                "inference_errors": message.inference_errors,
                "spool_depth": message.spool_depth,
                "uptime_s": message.uptime_s,
                "provider": message.provider,
                "latency_ms_p50": message.latency_ms_p50,
                "latency_ms_p99": message.latency_ms_p99,
                "cameras": stored_cameras(message.cameras),
                "cameras_format": cameras_format(),
                "ota_enabled": message.ota_enabled,
                "trusted_keys": stored_keys(message.trusted_keys),
                "spool_oldest_age_s": message.spool_oldest_age_s,
                "upload_errors": message.upload_errors,
                "online": True,
            },
        )
        self._record_history(device_id, message)
        return IngestOutcome.APPLIED

    def _record_history(self, device_id: str, message: Heartbeat) -> None:
        """At most one row per device and history interval; old rows are pruned now and
        then (every 500 writes), in the same ingest thread."""
        last = self._history_last.get(device_id)
        if last is not None and message.sent_at - last < self.history_interval:
            return
        self._history_last[device_id] = message.sent_at
        with self.engine.begin() as connection:
            connection.execute(
                device_history.insert().values(
                    device_id=device_id,
                    at=message.sent_at,
                    model_version=message.model_version,
                    fps=message.fps,
                    latency_ms_p99=message.latency_ms_p99,
                    inference_errors=message.inference_errors,
                    spool_depth=message.spool_depth,
                    upload_errors=message.upload_errors,
                    cameras=CAMERAS.dump_json(dict(message.cameras)).decode(),
                )
            )
            self._history_writes += 1
            if self._history_writes % 500 == 1:
                cutoff = datetime.now(UTC) - self.history_keep
                connection.execute(device_history.delete().where(device_history.c.at < cutoff))

    # ------------------------------------------------------------------ queries
    def drifting_devices(self) -> list[str]:
        """Online devices whose last heartbeat says a camera's line drifts under the model."""
        return sorted(
            d.device_id
            for d in self.devices()
            if d.online and any(c.drifting for c in d.cameras.values())
        )

    def history(self, device_id: str, since: datetime) -> list[HistoryPoint]:
        """The device's recorded heartbeats since ``since``, oldest first."""
        query = (
            select(device_history)
            .where(device_history.c.device_id == device_id, device_history.c.at >= since)
            .order_by(device_history.c.at)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            HistoryPoint(
                at=row.at,
                model_version=row.model_version,
                fps=row.fps,
                latency_ms_p99=row.latency_ms_p99,
                inference_errors=row.inference_errors,
                spool_depth=row.spool_depth,
                upload_errors=row.upload_errors,
                cameras=cameras_from_column(row.cameras),
            )
            for row in rows
        ]

    def device(self, device_id: str) -> DeviceRow | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(devices).where(devices.c.device_id == device_id)
            ).first()
        return DeviceRow.from_row(row) if row else None

    def devices_by_id(self, device_ids: list[str]) -> dict[str, DeviceRow]:
        """Many devices in one query (the rollout controller's hot path)."""
        found: dict[str, DeviceRow] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(device_ids), 500):
                chunk = device_ids[start : start + 500]
                rows = connection.execute(select(devices).where(devices.c.device_id.in_(chunk)))
                found.update((row.device_id, DeviceRow.from_row(row)) for row in rows)
        return found

    def devices_json(self) -> bytes:
        """Every device of the fleet as ``/api/devices`` sends it: the same as serializing
        :meth:`devices`, at a fraction of the cost (see :mod:`device_columns`)."""
        names = [*DeviceRow.__dataclass_fields__, "cameras_format"]
        query = select(*(devices.c[name] for name in names)).where(devices.c.fleet == self.fleet)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(devices.c.device_id)).all()
        return rows_to_json(names, rows)

    def devices(self, *, group: str | None = None) -> list[DeviceRow]:
        query = select(devices).where(devices.c.fleet == self.fleet)
        if group is not None:
            query = query.where(devices.c.group_name == group)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(devices.c.device_id)).all()
        return [DeviceRow.from_row(r) for r in rows]
