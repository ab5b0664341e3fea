"""Versioned MQTT payloads, and the one function that turns untrusted bytes into them.

Every payload is a pydantic model with ``extra="forbid"`` and bounded strings and lists,
so a malformed, oversized or hostile message becomes a :class:`PayloadError` with a readable
reason, never an exception deep inside an agent thread.
"""

from __future__ import annotations

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


class TargetScope(StrEnum):
    DEVICE = "device"
    GROUP = "group"


class DesiredTarget(BaseModel):
    """Whom a desired state is for, inside its signature: a device, or every device of a group.
    Without it a validly signed message could be replayed onto another device's (or another
    fleet's) topic and be obeyed there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: TargetScope
    id: Identifier

    @classmethod
    def device(cls, device_id: str) -> DesiredTarget:
        return cls(scope=TargetScope.DEVICE, id=device_id)

    @classmethod
    def group(cls, group: str) -> DesiredTarget:
        return cls(scope=TargetScope.GROUP, id=group)

    def __str__(self) -> str:
        return f"{self.scope.value} {self.id!r}"


class DesiredState(_Message):
    """Retained on a device or group ``desired`` topic: the model the device should run.

    Signed by the control plane, and bound to its ``fleet`` and ``target`` (device or group):
    an agent obeys only a message addressed to itself or its group in its fleet. ``sequence``
    grows with every new desired state of a rollout controller, so an agent can refuse a
    replayed older message even if it is validly signed; ``action=rollback`` is the only way to
    ask for a lower version.
    """

    fleet: Identifier
    target: DesiredTarget
    rollout_id: Identifier
    sequence: int = Field(ge=0, le=2**53)
    issued_at: AwareDatetime
    action: DesiredAction = DesiredAction.UPDATE
    manifest: ModelManifest
    # Optional presigned URL for the artifact, for devices without store credentials.
    artifact_url: HttpUrl | None = None
    key_id: Identifier | None = None
    signature: Annotated[str, StringConstraints(max_length=256)] | None = None


# Agents before schema 2 had no ``probation`` field: they said so in the reason, in exactly these
# words. Read only by ReportedState's compatibility shim below; never written.
_LEGACY_PROBATION_REASON = "on probation"


class ReportedState(_Message):
    """Retained on the device ``reported`` topic: where the device is in its OTA life.

    Schema 2 added ``probation`` (the running version is active but not yet proven). A schema-1
    report from an older agent still parses: its probation is read from the reason it used to
    carry, so a rollout never counts an unproven device as done.
    """

    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]
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
    # True while the running version is on probation after a swap (health still watched).
    probation: bool = False
    reason: ShortText = ""
    # The agent's own counter (ReportSequence): lets a subscriber drop duplicates and
    # out-of-order copies.
    sequence: int = Field(ge=0, le=2**53)
    updated_at: AwareDatetime

    @model_validator(mode="before")
    @classmethod
    def _legacy_probation(cls, data: object) -> object:
        if (
            isinstance(data, dict)
            and data.get("schema_version") == 1
            and "probation" not in data
            and data.get("reason") == _LEGACY_PROBATION_REASON
        ):
            return {**data, "probation": True}
        return data

    @model_validator(mode="after")
    def _probation_needs_active(self) -> ReportedState:
        if self.probation and self.ota_state is not OtaState.ACTIVE:
            raise ValueError("probation applies only to an active version")
        return self


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


class CameraState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"


class LineWindow(BaseModel):
    """What the model reported from one camera since the previous heartbeat: the raw
    material of the console's drift charts (heartbeat schema 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(ge=0.0, le=86_400.0)
    frames: int = Field(ge=0)
    detections_per_min: dict[ClassName, Annotated[float, Field(ge=0.0, le=1e7)]] = Field(
        default_factory=dict, max_length=256
    )
    mean_confidence: dict[ClassName, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict, max_length=256
    )
    # Share of frames with a detection in the uncertain confidence band.
    band_share: float = Field(default=0.0, ge=0.0, le=1.0)
    hard_examples_per_min: float = Field(default=0.0, ge=0.0, le=1e7)


class CameraHealth(BaseModel):
    """One camera in a heartbeat. Fields after ``errors`` came with heartbeat schema 2,
    ``drifting`` with schema 3, ``line`` with schema 4."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: CameraState
    fps: float = Field(ge=0.0, le=10_000.0)  # offered to the pipeline
    dropped_frames: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    fps_in: float = Field(default=0.0, ge=0.0, le=10_000.0)  # read from the camera
    frame_age_ms_p99: float = Field(default=0.0, ge=0.0)
    reconnects: int = Field(default=0, ge=0)
    stalls: int = Field(default=0, ge=0)
    last_error: Annotated[str, StringConstraints(max_length=300)] = ""
    # What the model reports from this camera has moved from its baseline (mining's drift
    # sampler): the line changed under the model.
    drifting: bool = False
    line: LineWindow | None = None


class Heartbeat(_Message):
    """Schema 2 added the cameras' fps in, frame age, reconnects, stalls and last error; a
    schema-1 heartbeat of an older agent still parses (those figures read as zero).
    Schema 3 added whether OTA is enabled and which signing keys the agent trusts, so a
    rollout can warn about devices that will never take it (older agents: unknown), and
    whether each camera's line is drifting. Schema 4 added each camera's line window (what
    the model reported since the last heartbeat), the spool's oldest example and upload
    errors."""

    schema_version: Literal[1, 2, 3, 4] = 4  # type: ignore[assignment]
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
    spool_oldest_age_s: float = Field(default=0.0, ge=0.0)
    upload_errors: int = Field(default=0, ge=0)
    cameras: dict[Identifier, CameraHealth] = Field(default_factory=dict, max_length=64)
    ota_enabled: bool | None = None  # None: an agent older than schema 3 did not say
    trusted_keys: list[Identifier] = Field(default_factory=list, max_length=32)


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


class DriftAlert(_Message):
    """Published on ``alerts`` when a camera's line starts or stops drifting under the model
    (the agent's drift sampler, against the camera's own baseline): for the plant's
    systems (MES, an andon board), beside the heartbeat flag the console and ``serve`` use."""

    device_id: Identifier
    camera_id: Identifier
    drifting: bool
    at: AwareDatetime
    model_name: Identifier | None = None
    model_version: int | None = Field(default=None, ge=1)
    # The camera's line window of the heartbeat that saw the change, when there was one.
    line: LineWindow | None = None


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
    except RecursionError as exc:  # hostile nesting ([[[[...) deeper than the parser's stack
        raise PayloadError("payload is nested too deeply to be one of our messages") from exc
    except ValueError as exc:  # e.g. an integer of thousands of digits (int_max_str_digits)
        raise PayloadError(f"payload holds a value that cannot be read: {exc}"[:300]) from exc
    if not isinstance(document, dict):
        raise PayloadError(f"payload must be a JSON object, got {type(document).__name__}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise PayloadError(
            f"invalid {model.__name__}: {describe_validation_error(exc, limit=5)}"
        ) from exc
