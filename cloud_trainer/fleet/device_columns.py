"""How the fleet table's JSON columns are written and read back, and the table as JSON.

``/api/devices`` sends every device of the fleet, every 2 s while the console is open. Parsing
each row's cameras into models and serializing them again cost 5-6x the database's own time at
5,000 devices (``benchmarks/console.py``). The registry writes each row's cameras already in the
API's shape, with a fingerprint of that shape (:func:`cameras_format`), so the read path can
splice the stored text into the response unparsed. A row written by an older version (another
fingerprint, or none) goes through the models as before: it shows in today's shape, never raw.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from shared.messages import CameraHealth

CAMERAS = TypeAdapter(dict[str, CameraHealth])
KEYS = TypeAdapter(list[str])


@functools.cache
def cameras_format() -> str:
    """A fingerprint of the stored cameras' shape: any change to ``CameraHealth`` changes it,
    so rows written before the change are re-read through the models instead of spliced."""
    schema = json.dumps(CAMERAS.json_schema(), sort_keys=True).encode()
    return hashlib.sha256(schema).hexdigest()[:16]


def stored_cameras(cameras: Mapping[str, CameraHealth]) -> str:
    """The fleet table's cameras: without the line windows (they go to the history only and
    would double what /api/devices sends), in the exact shape the API sends."""
    shown = {camera: health.model_copy(update={"line": None}) for camera, health in cameras.items()}
    return CAMERAS.dump_json(shown).decode()


def stored_keys(keys: Sequence[str]) -> str:
    return KEYS.dump_json(list(keys)).decode()


def keys_from_column(stored: str | None) -> list[str]:
    if not stored:
        return []
    try:
        return KEYS.validate_json(stored)
    except ValidationError:
        return []


def cameras_from_column(stored: str | None) -> dict[str, CameraHealth]:
    """The stored cameras; a value this version cannot read shows as none, never an error
    (it was validated when the heartbeat came in)."""
    if not stored:
        return {}
    try:
        return CAMERAS.validate_json(stored)
    except ValidationError:
        return {}


def rows_to_json(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """The device rows (columns ``names``, which include ``cameras``, ``trusted_keys`` and
    ``cameras_format``) as the JSON array ``/api/devices`` answers, equal to what pydantic makes
    of ``DeviceRow`` (tests/cloud_trainer/fleet/test_fleet_db.py holds them equal)."""
    current = cameras_format()
    out: list[dict[str, Any]] = []
    for row in rows:
        values = dict(zip(names, row, strict=True))
        if values.pop("cameras_format") == current:
            cameras = orjson.Fragment(values["cameras"] or "{}")
            keys = orjson.Fragment(values["trusted_keys"] or "[]")
        else:
            cameras = orjson.Fragment(CAMERAS.dump_json(cameras_from_column(values["cameras"])))
            keys = orjson.Fragment(KEYS.dump_json(keys_from_column(values["trusted_keys"])))
        values["cameras"], values["trusted_keys"] = cameras, keys
        # SQLite hands booleans back as 0/1.
        values["probation"] = bool(values["probation"])
        if values["ota_enabled"] is not None:
            values["ota_enabled"] = bool(values["ota_enabled"])
        out.append(values)
    return orjson.dumps(out, option=orjson.OPT_UTC_Z)
