"""The staged rollout controller.

A rollout sends one model version to a set of devices in cumulative waves (e.g. 1 canary ->
10% -> 50% -> 100%). Each wave's devices get a signed, retained ``desired`` message; a device
counts as done when it reports the version ``active`` and proven (off probation), with fps
not below a share of what it ran before. After a wave is done and has soaked, the next one
starts. When failures exceed the count or ratio threshold the rollout aborts and every
touched device is re-targeted to the version it ran before (``action=rollback``).

All state is in the database and every step is idempotent, so a controller killed at any
point resumes the rollout where it was when restarted. Deadlines use wall-clock UTC stored in
the database on purpose: they must survive the controller's restart (monotonic time does not).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, case, func, select
from sqlalchemy.exc import IntegrityError

from cloud_trainer.errors import TrainerError
from cloud_trainer.fleet.db import counters, rollout_devices, rollouts
from cloud_trainer.fleet.device_registry import DeviceRow, FleetRegistry
from cloud_trainer.fleet.params import (
    RolloutAction,
    RolloutParams,
    RolloutRequest,
    RolloutTargets,
    new_rollout_id,
)
from cloud_trainer.fleet.states import LIVE, TERMINAL_IN_WAVE, DeviceState, RolloutState
from shared.manifest import ModelManifest
from shared.messages import DesiredAction, DesiredState, DesiredTarget, OtaState, utc_now
from shared.signing import SigningKey
from shared.topics import Channel, Topics

log = logging.getLogger(__name__)


class RolloutError(TrainerError):
    """A rollout request cannot be carried out (unknown id, another one running, no target)."""


@dataclass(frozen=True)
class RolloutStatus:
    rollout_id: str
    model_name: str
    version: int
    state: RolloutState
    current_wave: int
    waves: list[float]
    reason: str
    counts: dict[str, int]
    per_wave: list[dict[str, int]]
    created_at: datetime
    updated_at: datetime
    # Devices of a live rollout that will never take it, from their heartbeats: OTA off, or
    # the control plane's signing key not among their trusted keys.
    warnings: list[str] = field(default_factory=list)


MAX_WARNINGS = 20


@dataclass(frozen=True)
class RolloutDeviceView:
    """One device of a rollout, for an operator asking why a wave does not move: its state
    in the rollout, what the device itself last reported, and how long until it times out."""

    device_id: str
    wave: int  # 1-based, as the page shows it
    state: DeviceState
    targeted_at: datetime | None
    done_at: datetime | None
    reason: str  # the rollout's reason for this device (failure, retarget)
    online: bool | None
    ota_state: str | None  # the device's own report
    device_reason: str
    running_version: int | None
    timeout_in_s: float | None  # while targeted and the rollout has a device timeout


def device_warning(device: DeviceRow, key_id: str) -> str | None:
    """Why ``device`` cannot take a version signed by ``key_id``; None when it can or when
    its agent is too old to say."""
    if device.ota_enabled is False:
        return f"{device.device_id} has OTA disabled (ota.enabled: false): it keeps its model"
    if device.ota_enabled and key_id not in device.trusted_keys:
        return (
            f"{device.device_id} does not trust signing key {key_id!r} (it trusts "
            f"{', '.join(device.trusted_keys) or 'none'}): it will reject the update"
        )
    return None


Publish = Callable[[str, bytes], None]  # retained, QoS 1
ManifestSource = Callable[[int], ModelManifest]


def wave_sizes(total: int, waves: Sequence[float], min_canary: int) -> list[int]:
    """Cumulative device counts per wave; the first wave holds at least ``min_canary``."""
    sizes: list[int] = []
    for index, fraction in enumerate(waves):
        size = math.ceil(fraction * total)
        if index == 0:
            size = max(size, min(min_canary, total))
        sizes.append(min(total, max(size, sizes[-1] if sizes else 0)))
    if sizes:
        sizes[-1] = total
    return sizes


class RolloutController:
    def __init__(
        self,
        engine: Engine,
        registry: FleetRegistry,
        manifests: ManifestSource,
        signer: SigningKey,
        publish: Publish,
        *,
        topics: Topics | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.fleet = registry.fleet
        self.manifests = manifests
        self.signer = signer
        self.publish = publish
        self.topics = topics or registry.topics
        self.now = now

    # ------------------------------------------------------------------ commands
    def start(
        self,
        rollout_id: str,
        model_name: str,
        version: int,
        targets: RolloutTargets,
        params: RolloutParams,
    ) -> str:
        with self.engine.connect() as connection:
            live = connection.execute(
                select(rollouts.c.rollout_id).where(
                    rollouts.c.fleet == self.fleet,
                    rollouts.c.state.in_([s.value for s in LIVE]),
                )
            ).first()
            if live is not None:
                raise RolloutError(
                    f"rollout {live[0]} is still in progress on fleet {self.fleet}: "
                    "wait for it, or abort it first"
                )
            if connection.execute(
                select(rollouts.c.rollout_id).where(rollouts.c.rollout_id == rollout_id)
            ).first():
                raise RolloutError(f"rollout id {rollout_id!r} already exists")
        manifest = self.manifests(version)  # fails early when the version is not published
        if manifest.model_name != model_name:
            raise RolloutError(f"version {version} belongs to {manifest.model_name}")
        device_ids = self._resolve(targets)
        if not device_ids:
            raise RolloutError("the rollout targets match no device")
        order = sorted(
            device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).digest()
        )
        sizes = wave_sizes(len(order), params.waves or [1.0], params.min_canary_devices)
        now = self.now()
        with self.engine.begin() as connection:
            connection.execute(
                rollouts.insert().values(
                    rollout_id=rollout_id,
                    fleet=self.fleet,
                    model_name=model_name,
                    version=version,
                    state=RolloutState.RUNNING.value,
                    targets=targets.model_dump(mode="json"),
                    waves=params.waves or [1.0],
                    params=params.model_dump(mode="json"),
                    current_wave=-1,
                    reason="",
                    created_at=now,
                    updated_at=now,
                )
            )
            start = 0
            for wave, end in enumerate(sizes):
                for device_id in order[start:end]:
                    connection.execute(
                        rollout_devices.insert().values(
                            rollout_id=rollout_id,
                            device_id=device_id,
                            wave=wave,
                            state=DeviceState.PENDING.value,
                            reason="",
                        )
                    )
                start = end
        log.info(
            "rollout %s: %s v%d to %d device(s) in %s",
            rollout_id,
            model_name,
            version,
            len(order),
            sizes,
        )
        self.tick()
        return rollout_id

    def start_request(
        self, request: RolloutRequest, model_name: str, defaults: RolloutParams
    ) -> str:
        """:meth:`start` from an operator's request (CLI or API); returns the rollout id. The
        parameters the request sets override the configured defaults; the rest keep them (a
        console that asks only for waves must not reset the failure limits)."""
        params = defaults
        if request.params is not None:
            given = request.params.model_dump(exclude_unset=True)
            params = RolloutParams.model_validate({**defaults.model_dump(), **given})
        return self.start(
            request.rollout_id or new_rollout_id(self.now()),
            model_name,
            request.version,
            request.targets,
            params,
        )

    def act(self, rollout_id: str, action: RolloutAction) -> None:
        """Carry out an operator's action on a rollout."""
        handlers: dict[RolloutAction, Callable[[str], None]] = {
            RolloutAction.PAUSE: self.pause,
            RolloutAction.RESUME: self.resume,
            RolloutAction.ABORT: self.abort,
            RolloutAction.ROLLBACK: self.rollback,
        }
        handlers[action](rollout_id)

    def pause(self, rollout_id: str) -> None:
        self._set_state(
            rollout_id, RolloutState.PAUSED, {RolloutState.RUNNING}, "paused by request"
        )

    def resume(self, rollout_id: str) -> None:
        self._set_state(rollout_id, RolloutState.RUNNING, {RolloutState.PAUSED}, "")

    def abort(self, rollout_id: str, reason: str = "aborted by request") -> None:
        self._require(rollout_id, LIVE)
        self._retarget_touched(rollout_id)
        self._update(rollout_id, state=RolloutState.ABORTED.value, reason=reason)

    def rollback(self, rollout_id: str) -> None:
        self._require(rollout_id, LIVE | {RolloutState.SUCCEEDED, RolloutState.ABORTED})
        self._retarget_touched(rollout_id)
        self._update(
            rollout_id, state=RolloutState.ROLLED_BACK.value, reason="rolled back by request"
        )

    # ------------------------------------------------------------------ the loop body
    def tick(self) -> None:
        """Advance every running rollout by what the fleet reported since the last tick."""
        with self.engine.connect() as connection:
            running = connection.scalars(
                select(rollouts.c.rollout_id).where(
                    rollouts.c.fleet == self.fleet,
                    rollouts.c.state == RolloutState.RUNNING.value,
                )
            ).all()
        for rollout_id in running:
            self._advance(rollout_id)

    def _advance(self, rollout_id: str) -> None:
        rollout = self._row(rollout_id)
        params = RolloutParams.model_validate(rollout["params"])
        now = self.now()
        self._observe(rollout_id, rollout["version"], params, now)
        counts = self._counts(rollout_id)
        failures = counts.get(DeviceState.FAILED.value, 0)
        touched = sum(v for k, v in counts.items() if k != DeviceState.PENDING.value)
        if touched and (
            failures > params.max_failures or failures / touched > params.max_failure_ratio
        ):
            reason = (
                f"{failures} of {touched} device(s) failed (limits: {params.max_failures} "
                f"devices, {params.max_failure_ratio:.0%}); touched devices re-targeted to "
                "their previous version"
            )
            log.warning("rollout %s aborted: %s", rollout_id, reason)
            self.abort(rollout_id, reason)
            return
        wave = rollout["current_wave"]
        if wave >= 0:
            states = self._wave_states(rollout_id, wave)
            if any(s not in TERMINAL_IN_WAVE for s in states):
                return
            if rollout["wave_completed_at"] is None:
                self._update(rollout_id, wave_completed_at=now)
                if params.soak_s > 0:
                    return
            elif now - rollout["wave_completed_at"] < timedelta(seconds=params.soak_s):
                return
        next_wave = wave + 1
        if next_wave >= len(rollout["waves"]):
            self._update(rollout_id, state=RolloutState.SUCCEEDED.value, reason="every wave done")
            log.info("rollout %s succeeded", rollout_id)
            return
        self._target_wave(rollout_id, next_wave, self.manifests(rollout["version"]))

    def _target_wave(self, rollout_id: str, wave: int, manifest: ModelManifest) -> None:
        now = self.now()
        with self.engine.connect() as connection:
            device_ids = list(
                connection.scalars(
                    select(rollout_devices.c.device_id).where(
                        rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.wave == wave
                    )
                ).all()
            )
        known = self.registry.devices_by_id(device_ids)
        sequences = self._next_sequences(len(device_ids))
        for device_id, sequence in zip(device_ids, sequences, strict=True):
            self._send(rollout_id, device_id, manifest, DesiredAction.UPDATE, sequence)
        self._update_devices(
            rollout_id,
            {
                "state": DeviceState.TARGETED.value,
                "targeted_at": now,
                "baseline_fps": bindparam("baseline"),
            },
            [
                {"target_device": d, "baseline": known[d].fps if d in known else None}
                for d in device_ids
            ],
        )
        # The wave counts as started only once every device of it has been sent its state;
        # a controller killed half-way re-sends the same (idempotent) retained messages.
        self._update(rollout_id, current_wave=wave, wave_started_at=now, wave_completed_at=None)
        log.info("rollout %s: wave %d targeted (%d device(s))", rollout_id, wave, len(device_ids))

    def _observe(self, rollout_id: str, version: int, params: RolloutParams, now: datetime) -> None:
        """Judge every in-flight device from the registry: two queries and one batched write
        per tick, whatever the fleet size."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(rollout_devices).where(
                    rollout_devices.c.rollout_id == rollout_id,
                    rollout_devices.c.state.in_(
                        [
                            DeviceState.TARGETED.value,
                            DeviceState.ACTIVE.value,
                            DeviceState.TIMED_OUT.value,
                        ]
                    ),
                )
            ).all()
        known = self.registry.devices_by_id([r.device_id for r in rows])
        changes = []
        for row in rows:
            values = row._mapping
            state, reason = self._judge(
                rollout_id=rollout_id,
                version=version,
                params=params,
                row=values,
                device=known.get(values["device_id"]),
                now=now,
            )
            if state.value != values["state"] or reason != values["reason"]:
                changes.append(
                    {
                        "target_device": values["device_id"],
                        "new_state": state.value,
                        "new_reason": reason[:500],
                        "new_done_at": now if state in TERMINAL_IN_WAVE else None,
                    }
                )
        if not changes:
            return
        self._update_devices(
            rollout_id,
            {
                "state": bindparam("new_state"),
                "reason": bindparam("new_reason"),
                "done_at": bindparam("new_done_at"),
            },
            changes,
        )

    @staticmethod
    def _judge(
        *,
        rollout_id: str,
        version: int,
        params: RolloutParams,
        row: Any,
        device: DeviceRow | None,
        now: datetime,
    ) -> tuple[DeviceState, str]:
        targeted_at: datetime = row["targeted_at"]
        fresh = (
            device is not None
            and device.reported_at is not None
            and device.reported_at >= targeted_at - timedelta(seconds=5)
        )
        if (
            device is not None
            and fresh
            and device.rollout_id == rollout_id
            and device.ota_state in (OtaState.FAILED, OtaState.ROLLED_BACK)
        ):
            return DeviceState.FAILED, f"{device.ota_state}: {device.reason}"
        if (
            device is not None
            and device.running_version == version
            and device.ota_state is OtaState.ACTIVE
            and not device.probation
        ):
            baseline = row["baseline_fps"]
            if (
                baseline
                and device.fps is not None
                and device.heartbeat_model_version == version
                and device.fps < params.min_fps_ratio * baseline
            ):
                return (
                    DeviceState.FAILED,
                    f"fps {device.fps:.1f} below {params.min_fps_ratio:.0%} of {baseline:.1f}",
                )
            return DeviceState.ACTIVE, ""
        if params.device_timeout_s is not None and now - targeted_at > timedelta(
            seconds=params.device_timeout_s
        ):
            online = device is not None and device.online
            return DeviceState.TIMED_OUT, "no report in time" + ("" if online else " (offline)")
        return DeviceState.TARGETED, ""

    # ------------------------------------------------------------------ re-targeting
    def _retarget_touched(self, rollout_id: str) -> None:
        """Send every touched device back to the version it ran before the rollout."""
        rollout = self._row(rollout_id)
        with self.engine.connect() as connection:
            touched = connection.scalars(
                select(rollout_devices.c.device_id).where(
                    rollout_devices.c.rollout_id == rollout_id,
                    rollout_devices.c.state != DeviceState.PENDING.value,
                    rollout_devices.c.state != DeviceState.RETARGETED.value,
                )
            ).all()
        previous = rollout["previous_version"]
        manifests: dict[int, ModelManifest] = {}  # one fetch per version, not per device
        for device_id in touched:
            target = previous or self._previous_of(device_id, rollout["version"])
            if target is None:
                log.warning("rollout %s: no previous version known for %s", rollout_id, device_id)
                continue
            if target not in manifests:
                manifests[target] = self.manifests(target)
            self._send(rollout_id, device_id, manifests[target], DesiredAction.ROLLBACK)
            with self.engine.begin() as connection:
                connection.execute(
                    rollout_devices.update()
                    .where(
                        rollout_devices.c.rollout_id == rollout_id,
                        rollout_devices.c.device_id == device_id,
                    )
                    .values(state=DeviceState.RETARGETED.value, reason=f"back to v{target}")
                )

    def _previous_of(self, device_id: str, version: int) -> int | None:
        device = self.registry.device(device_id)
        if device is None or device.running_version is None:
            return None
        if device.running_version != version:
            return device.running_version
        return version - 1 if version > 1 else None

    # ------------------------------------------------------------------ messages
    def _next_sequences(self, count: int) -> range:
        """``count`` fresh desired-state sequence numbers, growing across restarts and even
        database loss: they start at max(stored + 1, milliseconds now).

        One atomic ``UPDATE ... RETURNING``: the control loop and the API (starting or
        steering a rollout) take numbers concurrently, and a read-then-write would hand both
        the same ones, or fail on the first insert of the counter."""
        reserved = max(count, 1)
        floor = int(self.now().timestamp() * 1000) + reserved - 1
        bumped = counters.c.value + reserved
        take = (
            counters.update()
            .where(counters.c.name == "desired_sequence")
            .values(value=case((bumped > floor, bumped), else_=floor))
            .returning(counters.c.value)
        )
        for _ in range(2):
            with self.engine.begin() as connection:
                last = connection.execute(take).scalar()
            if last is not None:
                first = last - reserved + 1
                return range(first, first + count)
            try:  # the first number ever: create the counter (whoever wins), then take
                with self.engine.begin() as connection:
                    connection.execute(counters.insert().values(name="desired_sequence", value=0))
            except IntegrityError:
                pass
        raise TrainerError("the desired_sequence counter vanished while taking numbers")

    def _send(
        self,
        rollout_id: str,
        device_id: str,
        manifest: ModelManifest,
        action: DesiredAction,
        sequence: int | None = None,
    ) -> None:
        desired = DesiredState(
            fleet=self.fleet,
            target=DesiredTarget.device(device_id),
            rollout_id=rollout_id,
            sequence=self._next_sequences(1)[0] if sequence is None else sequence,
            issued_at=self.now(),
            action=action,
            manifest=manifest,
        )
        payload = self.signer.sign(desired).to_payload()
        self.publish(self.topics.device(device_id, Channel.DESIRED), payload)

    # ------------------------------------------------------------------ queries
    def _resolve(self, targets: RolloutTargets) -> list[str]:
        chosen: set[str] = set(targets.devices)
        if targets.whole_fleet:
            chosen.update(d.device_id for d in self.registry.devices())
        for group in targets.groups:
            chosen.update(d.device_id for d in self.registry.devices(group=group))
        return sorted(chosen)

    def _row(self, rollout_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(rollouts).where(rollouts.c.rollout_id == rollout_id)
            ).first()
        if row is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        return dict(row._mapping)

    def _require(self, rollout_id: str, allowed: AbstractSet[RolloutState]) -> dict[str, Any]:
        row = self._row(rollout_id)
        if row["state"] not in {s.value for s in allowed}:
            raise RolloutError(f"rollout {rollout_id} is {row['state']}; cannot do that now")
        return row

    def _set_state(
        self, rollout_id: str, state: RolloutState, allowed: AbstractSet[RolloutState], reason: str
    ) -> None:
        self._require(rollout_id, allowed)
        self._update(rollout_id, state=state.value, reason=reason)

    def _update(self, rollout_id: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                rollouts.update()
                .where(rollouts.c.rollout_id == rollout_id)
                .values(updated_at=self.now(), **values)
            )

    def _update_devices(
        self, rollout_id: str, values: dict[str, Any], rows: list[dict[str, Any]]
    ) -> None:
        """One batched write of ``values`` to the rollout's devices named by each row's
        ``target_device`` (bind parameters in ``values`` take the rows' other keys)."""
        with self.engine.begin() as connection:
            connection.execute(
                rollout_devices.update()
                .where(
                    rollout_devices.c.rollout_id == rollout_id,
                    rollout_devices.c.device_id == bindparam("target_device"),
                )
                .values(**values),
                rows,
            )

    def _counts(self, rollout_id: str) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(rollout_devices.c.state, func.count())
                .where(rollout_devices.c.rollout_id == rollout_id)
                .group_by(rollout_devices.c.state)
            ).all()
        return {state: int(count) for state, count in rows}

    def _wave_states(self, rollout_id: str, wave: int) -> list[DeviceState]:
        with self.engine.connect() as connection:
            states = connection.scalars(
                select(rollout_devices.c.state).where(
                    rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.wave == wave
                )
            ).all()
        return [DeviceState(s) for s in states]

    def status(self, rollout_id: str, *, warnings: bool = True) -> RolloutStatus:
        """``warnings=False`` skips the per-device checks: a loop that only watches the
        rollout's progress does not pay for them every tick."""
        row = self._row(rollout_id)
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(rollout_devices.c.wave, rollout_devices.c.state, func.count())
                .where(rollout_devices.c.rollout_id == rollout_id)
                .group_by(rollout_devices.c.wave, rollout_devices.c.state)
            ).all()
        per_wave: list[dict[str, int]] = [{} for _ in row["waves"]]
        for wave, state, count in rows:
            per_wave[int(wave)][state] = int(count)
        return RolloutStatus(
            rollout_id=rollout_id,
            model_name=row["model_name"],
            version=row["version"],
            state=RolloutState(row["state"]),
            current_wave=row["current_wave"],
            waves=list(row["waves"]),
            reason=row["reason"],
            counts=self._counts(rollout_id),
            per_wave=per_wave,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            warnings=self._warnings(rollout_id)
            if warnings and RolloutState(row["state"]) in LIVE
            else [],
        )

    def _warnings(self, rollout_id: str) -> list[str]:
        """What stops devices of a live rollout that are not done yet (bounded: a fleet of
        thousands with OTA off must not make the page unreadable)."""
        with self.engine.connect() as connection:
            waiting = list(
                connection.scalars(
                    select(rollout_devices.c.device_id).where(
                        rollout_devices.c.rollout_id == rollout_id,
                        rollout_devices.c.state.not_in([s.value for s in TERMINAL_IN_WAVE]),
                    )
                ).all()
            )
        found = sorted(
            w
            for d in self.registry.devices_by_id(waiting).values()
            if (w := device_warning(d, self.signer.key_id)) is not None
        )
        if len(found) > MAX_WARNINGS:
            more = len(found) - MAX_WARNINGS
            return [*found[:MAX_WARNINGS], f"... and {more} more device(s)"]
        return found

    def devices(
        self, rollout_id: str, *, wave: int | None = None, limit: int = 500
    ) -> list[RolloutDeviceView]:
        """The rollout's devices (of ``wave``, 1-based), failures and waiting ones first."""
        row = self._row(rollout_id)
        timeout = RolloutParams.model_validate(row["params"]).device_timeout_s
        query = select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)
        if wave is not None:
            query = query.where(rollout_devices.c.wave == wave - 1)
        order = {
            DeviceState.FAILED: 0,
            DeviceState.TIMED_OUT: 1,
            DeviceState.TARGETED: 2,
            DeviceState.PENDING: 3,
            DeviceState.RETARGETED: 4,
            DeviceState.ACTIVE: 5,
        }
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query)]
        rows.sort(key=lambda r: (order.get(DeviceState(r["state"]), 9), r["device_id"]))
        rows = rows[:limit]
        known = self.registry.devices_by_id([r["device_id"] for r in rows])
        now = self.now()
        views = []
        for r in rows:
            device = known.get(r["device_id"])
            state = DeviceState(r["state"])
            left = None
            if state is DeviceState.TARGETED and timeout is not None and r["targeted_at"]:
                elapsed = (now - r["targeted_at"]).total_seconds()
                left = round(max(0.0, timeout - elapsed), 1)
            views.append(
                RolloutDeviceView(
                    device_id=r["device_id"],
                    wave=int(r["wave"]) + 1,
                    state=state,
                    targeted_at=r["targeted_at"],
                    done_at=r["done_at"],
                    reason=r["reason"],
                    online=device.online if device else None,
                    ota_state=device.ota_state.value if device and device.ota_state else None,
                    device_reason=device.reason if device else "",
                    running_version=device.running_version if device else None,
                    timeout_in_s=left,
                )
            )
        return views

    def rollouts(self) -> list[str]:
        with self.engine.connect() as connection:
            return list(
                connection.scalars(
                    select(rollouts.c.rollout_id)
                    .where(rollouts.c.fleet == self.fleet)
                    .order_by(rollouts.c.created_at.desc())
                ).all()
            )
