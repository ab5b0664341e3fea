"""One error tree for the contracts, so callers can catch a whole family at once.

Every exception says what was wrong with the input and, where it helps, what to do about it.
Third-party exceptions (pydantic, cryptography, json) are mapped to these at the boundary with
``raise ... from exc`` so the cause stays visible in tracebacks.
"""

from __future__ import annotations


class LinefleetError(Exception):
    """Base of every error raised on purpose by linefleet code."""


class ConfigError(LinefleetError):
    """A configuration is invalid or names files that cannot be read; the message lists each
    problem with its location."""


class ContractError(LinefleetError, ValueError):
    """An input does not satisfy one of the shared contracts (message, manifest, key, topic)."""


class PayloadError(ContractError):
    """An MQTT payload could not be accepted: too large, not UTF-8, not JSON or not valid."""


class TopicError(ContractError):
    """A topic is not one of ours, or an id would escape its topic level."""


class ObjectKeyError(ContractError):
    """An object-store key is malformed or tries to escape its prefix (``..``, ``/`` ...)."""


class DetectionsError(ContractError):
    """Detection arrays have wrong shapes, dtypes or non-finite values."""


class SignatureError(LinefleetError):
    """A signed document does not verify: missing, malformed or wrong signature."""


class UntrustedKeyError(SignatureError):
    """A document is signed with a key id this verifier was not configured to trust."""


class KeyLoadError(LinefleetError):
    """A signing or verification key could not be read from the given file or text."""
