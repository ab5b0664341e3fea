"""Constrained identifier types shared by topics, object keys, manifests and messages.

An id that ends up in an MQTT topic level or an object-key segment must not be able to
escape it: no ``/``, no MQTT wildcards (``+``, ``#``), no ``..``, no control characters.
One pattern, enforced everywhere an id enters the system.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from shared.errors import ContractError

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID_RE = re.compile(ID_PATTERN)

# Human text that travels in payloads (reasons, error messages): bounded, never a path.
ShortText = Annotated[str, StringConstraints(max_length=512)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
SemVer = Annotated[str, StringConstraints(pattern=r"^\d{1,4}\.\d{1,4}\.\d{1,6}$")]


def check_identifier(value: str, *, what: str) -> str:
    """Return ``value`` if it is a safe identifier, else raise :class:`ContractError`."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise ContractError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return value


def _identifier(value: str) -> str:
    return check_identifier(value, what="identifier")


# Device, fleet, group, camera, model and run ids.
Identifier = Annotated[str, StringConstraints(max_length=64), AfterValidator(_identifier)]


def parse_semver(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; raises :class:`ContractError` for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ContractError(f"invalid version {version!r}: expected MAJOR.MINOR.PATCH")
    major, minor, patch = (int(p) for p in parts)
    return major, minor, patch
