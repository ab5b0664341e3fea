"""The object-store key layout, in one place, for the agent's uploader and the trainer.

Keys are built only from validated identifiers and dates, so no input can produce a key
outside its prefix. :func:`validate_object_key` guards keys that arrive from outside
(manifests, listings) before they are used as paths or fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.errors import ContractError, ObjectKeyError
from shared.identifiers import check_identifier

MAX_KEY_LENGTH = 1024
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
HARD_EXAMPLES = "hard-examples"
LABELS = "labels"
MODELS = "models"
DATASETS = "datasets"
RUNS = "runs"


def validate_object_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`ObjectKeyError`.

    Refused: empty keys, absolute keys, empty or dot segments (``a//b``, ``./``, ``../``),
    backslashes, control or non-ASCII characters, and over-long keys.
    """
    if not isinstance(key, str) or not key:
        raise ObjectKeyError("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ObjectKeyError(f"object key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _KEY_SEGMENT.fullmatch(segment) or ".." in segment:
            raise ObjectKeyError(
                f"unsafe object key {key!r}: segment {segment!r} is empty, a dot segment or "
                "holds characters other than letters, digits, '_', '.', '=', '-'"
            )
    return key


def _id(value: str, what: str) -> str:
    try:
        return check_identifier(value, what=what)
    except ContractError as exc:
        raise ObjectKeyError(str(exc)) from exc


def _day_path(when: datetime) -> str:
    if when.tzinfo is None:
        raise ObjectKeyError("timestamps in object keys must be timezone-aware")
    utc = when.astimezone(UTC)
    return f"{utc.year:04d}/{utc.month:02d}/{utc.day:02d}"


@dataclass(frozen=True)
class HardExampleKeys:
    """The image, prediction sidecar and YOLO pre-label keys of one hard example."""

    image: str
    sidecar: str
    prelabel: str


def hard_example_keys(
    fleet: str, device: str, captured_at: datetime, frame_id: str
) -> HardExampleKeys:
    """``hard-examples/{fleet}/{device}/{yyyy}/{mm}/{dd}/{frame_id}.{jpg,json,txt}``.

    The same frame always maps to the same keys, so a re-upload after a crash overwrites
    instead of duplicating.
    """
    base = (
        f"{HARD_EXAMPLES}/{_id(fleet, 'fleet')}/{_id(device, 'device')}/"
        f"{_day_path(captured_at)}/{_id(frame_id, 'frame id')}"
    )
    return HardExampleKeys(image=f"{base}.jpg", sidecar=f"{base}.json", prelabel=f"{base}.txt")


@dataclass(frozen=True)
class ParsedHardExampleKey:
    fleet: str
    device: str
    day: str
    frame_id: str
    extension: str


_HARD_EXAMPLE_RE = re.compile(
    rf"^{HARD_EXAMPLES}/(?P<fleet>[^/]+)/(?P<device>[^/]+)/"
    r"(?P<day>\d{4}/\d{2}/\d{2})/(?P<frame>[^/]+)\.(?P<ext>jpg|json|txt)$"
)


def parse_hard_example_key(key: str) -> ParsedHardExampleKey:
    validate_object_key(key)
    match = _HARD_EXAMPLE_RE.fullmatch(key)
    if match is None:
        raise ObjectKeyError(f"not a hard-example key: {key!r}")
    return ParsedHardExampleKey(
        fleet=_id(match["fleet"], "fleet"),
        device=_id(match["device"], "device"),
        day=match["day"],
        frame_id=_id(match["frame"], "frame id"),
        extension=match["ext"],
    )


def label_key(fleet: str, device: str, day: str, frame_id: str) -> str:
    """``labels/{fleet}/{device}/{yyyy}/{mm}/{dd}/{frame_id}.txt`` mirroring the example's key."""
    if not re.fullmatch(r"\d{4}/\d{2}/\d{2}", day):
        raise ObjectKeyError(f"day must be yyyy/mm/dd, got {day!r}")
    return (
        f"{LABELS}/{_id(fleet, 'fleet')}/{_id(device, 'device')}/{day}/"
        f"{_id(frame_id, 'frame id')}.txt"
    )


def model_prefix(name: str, version: int) -> str:
    if not isinstance(version, int) or version < 1:
        raise ObjectKeyError(f"model version must be a positive integer, got {version!r}")
    return f"{MODELS}/{_id(name, 'model name')}/{version}"


def model_artifact_key(name: str, version: int) -> str:
    return f"{model_prefix(name, version)}/model.onnx"


def model_variant_key(name: str, version: int, precision: str) -> str:
    """A lower-precision variant of the version's model (``int8``, ``fp16``)."""
    return f"{model_prefix(name, version)}/model.{_id(precision, 'precision')}.onnx"


def model_weights_key(name: str, version: int) -> str:
    return f"{model_prefix(name, version)}/model.pt"


def model_manifest_key(name: str, version: int) -> str:
    return f"{model_prefix(name, version)}/manifest.json"


def model_index_key(name: str) -> str:
    return f"{MODELS}/{_id(name, 'model name')}/index.json"


def dataset_prefix(name: str, version: str) -> str:
    return f"{DATASETS}/{_id(name, 'dataset name')}/{_id(version, 'dataset version')}"


def run_prefix(run_id: str) -> str:
    return f"{RUNS}/{_id(run_id, 'run id')}"
