"""One formatter for pydantic validation errors: MQTT payloads and manifests report it in one
bounded line, configuration files list every problem."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(
    exc: ValidationError, *, limit: int | None = None, separator: str = "; "
) -> str:
    """Field locations and messages, never the input values (they may hold secrets or hostile
    text). ``limit`` bounds the list for log lines; config errors list every problem."""
    errors = exc.errors(include_input=False, include_url=False)
    shown = errors if limit is None else errors[:limit]
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<top level>'}: {e['msg']}" for e in shown]
    if len(errors) > len(shown):
        parts.append(f"and {len(errors) - len(shown)} more")
    return separator.join(parts)
