"""Canonical JSON: the exact bytes that signatures cover.

Two parties must produce byte-identical output for the same document, whatever the key
order or whitespace of the JSON they received. Keys are sorted, separators are minimal,
text is UTF-8 (not ``\\u`` escapes), and NaN/Infinity are refused because JSON has no
portable spelling for them.
"""

from __future__ import annotations

import json
from typing import Any

from shared.errors import ContractError


def canonical_json(document: Any) -> bytes:
    """Serialise ``document`` (JSON-compatible values only) to canonical UTF-8 bytes."""
    try:
        text = json.dumps(
            document,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ContractError(f"document cannot be canonicalised: {exc}") from exc
    return text.encode("utf-8")
