"""Versioned MQTT payloads, and the one function that turns untrusted bytes into them.

Every payload is a pydantic model with ``extra="forbid"`` and bounded strings and lists,
so a malformed, oversized or hostile message becomes a :class:`PayloadError` with a readable
reason, never an exception deep inside an agent thread.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import PayloadError
from shared.identifiers import Identifier, SemVer, ShortText
from shared.manifest import ClassName, ModelManifest
from shared.validation import describe_validation_error

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DETECTIONS_PER_EVENT = 1000

Model = TypeVar("Model", bound=BaseModel)


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)

    schema_version: Literal[1] = 1

    def to_payload(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode("utf-8")


class OtaState(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class DesiredAction(StrEnum):
    UPDATE = "update"
    ROLLBACK = "rollback"


HttpUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=4096)]


class DesiredState(_Message):
    """Retained on a device or group ``desired`` topic: the model the device should run.

    Signed by the control plane. ``sequence`` grows with every new desired state of a rollout
    controller, so an agent can refuse a replayed older message even if it is validly signed;
    ``action=rollback`` is the only way to ask for a lower version.
    """

    fleet: Identifier
    rollout_id: Identifier
    sequence: int = Field(ge=0, le=2**53)
    issued_at: AwareDatetime
    action: DesiredAction = DesiredAction.UPDATE
    manifest: ModelManifest
    # Optional presigned URL for the artifact, for devices without store credentials.
    artifact_url: HttpUrl | None = None
    key_id: Identifier | None = None
    signature: Annotated[str, StringConstraints(max_length=256)] | None = None


class ReportedState(_Message):
    """Retained on the device ``reported`` topic: where the device is in its OTA life."""

    device_id: Identifier
    fleet: Identifier
    group: Identifier | None = None
    agent_version: SemVer
    ota_state: OtaState
    model_name: Identifier | None = None
    running_version: int | None = Field(default=None, ge=1)
    desired_version: int | None = Field(default=None, ge=1)
    previous_good_version: int | None = Field(default=None, ge=1)
    rollout_id: Identifier | None = None
    reason: ShortText = ""
    # The agent's own counter (ReportSequence): lets a subscriber drop duplicates and
    # out-of-order copies.
    sequence: int = Field(ge=0, le=2**53)
    updated_at: AwareDatetime


class ReportSequence:
    """``ReportedState.sequence`` numbers: epoch microseconds, so they keep growing across
    agent restarts, and never below the last one given out, so a wall clock stepped back
    (NTP correcting an edge box) does not make the fleet registry drop reports as stale."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


class CameraHealth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["connecting", "streaming", "stalled", "reconnecting", "ended", "failed"]
    fps: float = Field(ge=0.0, le=10_000.0)
    dropped_frames: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)


class Heartbeat(_Message):
    device_id: Identifier
    sent_at: AwareDatetime
    uptime_s: float = Field(ge=0.0)
    model_name: Identifier | None = None
    model_version: int | None = Field(default=None, ge=1)
    provider: Annotated[str, StringConstraints(max_length=64)] = "CPUExecutionProvider"
    fps: float = Field(ge=0.0, le=100_000.0)
    latency_ms_p50: float = Field(default=0.0, ge=0.0)
    latency_ms_p99: float = Field(default=0.0, ge=0.0)
    inference_errors: int = Field(default=0, ge=0)
    dropped_frames: int = Field(default=0, ge=0)
    spool_depth: int = Field(default=0, ge=0)
    spool_bytes: int = Field(default=0, ge=0)
    cameras: dict[Identifier, CameraHealth] = Field(default_factory=dict, max_length=64)


class OnlineStatus(_Message):
    """Retained on ``online``; the broker publishes ``online=false`` as the last will."""

    device_id: Identifier
    online: bool
    at: AwareDatetime | None = None
    agent_version: SemVer | None = None


class DetectionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    class_id: int = Field(ge=0, lt=1000)
    class_name: ClassName | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    xyxy: tuple[float, float, float, float]

    @field_validator("xyxy")
    @classmethod
    def _ordered(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = box
        if not (x2 >= x1 and y2 >= y1):
            raise ValueError("box must satisfy x2 >= x1 and y2 >= y1")
        return box


class DetectionEvent(_Message):
    """Published on ``events`` for the line (sorter, MES)."""

    device_id: Identifier
    camera_id: Identifier
    frame_id: Identifier
    captured_at: AwareDatetime
    model_name: Identifier | None = None
    model_version: int | None = Field(default=None, ge=1)
    image_width: int = Field(gt=0, le=16384)
    image_height: int = Field(gt=0, le=16384)
    detections: list[DetectionRecord] = Field(max_length=MAX_DETECTIONS_PER_EVENT)


def check_wave_fractions(waves: list[float]) -> list[float]:
    """Cumulative wave fractions: each in (0, 1], strictly increasing, the last 1.0 (the whole
    target). Shared by rollout commands and the controller's parameters."""
    if any(not 0.0 < w <= 1.0 for w in waves):
        raise ValueError("wave fractions must lie in (0, 1]")
    if any(b <= a for a, b in itertools.pairwise(waves)):
        raise ValueError("wave fractions must strictly increase")
    if waves and waves[-1] != 1.0:
        raise ValueError("the last wave must be 1.0 (the whole target)")
    return waves


class RolloutAction(StrEnum):
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


class RolloutTargets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: list[Identifier] = Field(default_factory=list, max_length=1000)
    devices: list[Identifier] = Field(default_factory=list, max_length=100_000)
    whole_fleet: bool = False

    @model_validator(mode="after")
    def _some_target(self) -> RolloutTargets:
        if not (self.whole_fleet or self.groups or self.devices):
            raise ValueError("a rollout needs whole_fleet, groups or devices")
        return self


class RolloutCommand(_Message):
    """A request to the rollout controller (CLI or API -> ``ctl/rollout``)."""

    command_id: Identifier
    action: RolloutAction
    rollout_id: Identifier
    issued_at: AwareDatetime
    model_name: Identifier | None = None
    version: int | None = Field(default=None, ge=1)
    targets: RolloutTargets | None = None
    # Cumulative fractions of the targets per wave, e.g. [0.01, 0.1, 0.5, 1.0].
    waves: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], max_length=20)
    min_canary_devices: int = Field(default=1, ge=0)
    soak_s: float = Field(default=60.0, ge=0.0, le=7 * 86400)
    max_failures: int = Field(default=1, ge=0)
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)

    @field_validator("waves")
    @classmethod
    def _waves_increase_to_one(cls, waves: list[float]) -> list[float]:
        return check_wave_fractions(waves) if waves else waves

    @model_validator(mode="after")
    def _start_needs_target(self) -> RolloutCommand:
        if self.action is RolloutAction.START and (
            self.model_name is None or self.version is None or self.targets is None
        ):
            raise ValueError("start needs model_name, version and targets")
        return self


def parse_payload(model: type[Model], raw: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> Model:
    """Decode untrusted MQTT bytes into ``model``; raises :class:`PayloadError` with the reason."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise PayloadError(f"payload must be bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise PayloadError(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    if len(raw) == 0:
        raise PayloadError("payload is empty")
    try:
        text = bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"payload is not UTF-8 (byte {exc.start})") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"payload is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(document, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(document).__name__}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise PayloadError(
            f"invalid {model.__name__}: {describe_validation_error(exc, limit=5)}"
        ) from exc
