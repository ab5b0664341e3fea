"""Ed25519 signatures over canonical JSON, for model manifests and desired-state messages.

The signature covers every field of the document except ``signature`` itself, *including*
``key_id``: an attacker cannot re-label a signature as coming from another trusted key.
Verifiers trust only the key ids they were configured with; the key id in a document is a
lookup hint, never a source of trust.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel

from shared.canonical import canonical_json
from shared.errors import KeyLoadError, SignatureError, UntrustedKeyError

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SIGNATURE_FIELD = "signature"
KEY_ID_FIELD = "key_id"

SignedModel = TypeVar("SignedModel", bound=BaseModel)


def signed_bytes(document: BaseModel) -> bytes:
    """The bytes a signature covers: canonical JSON of the document without its signature."""
    payload: dict[str, Any] = document.model_dump(mode="json", exclude={SIGNATURE_FIELD})
    return canonical_json(payload)


@dataclass(frozen=True)
class SigningKey:
    """A private key with the id under which verifiers know its public half."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.fullmatch(self.key_id):
            raise KeyLoadError(f"invalid key id {self.key_id!r}: use letters, digits, '_.-'")

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        return cls(key_id=key_id, private_key=Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, key_id: str, pem: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyLoadError(f"signing key {key_id!r} is not an unencrypted PEM key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyLoadError(f"signing key {key_id!r} is not an Ed25519 key")
        return cls(key_id=key_id, private_key=key)

    @classmethod
    def from_file(cls, key_id: str, path: Path) -> SigningKey:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise KeyLoadError(f"cannot read signing key file {path}: {exc.strerror}") from exc
        return cls.from_pem(key_id, pem)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, document: SignedModel) -> SignedModel:
        """Return a copy of ``document`` carrying this key's id and a fresh signature."""
        unsigned = document.model_copy(update={KEY_ID_FIELD: self.key_id, SIGNATURE_FIELD: None})
        # Round-trip through validation so the signed bytes are those a receiver will see.
        unsigned = type(document).model_validate(unsigned.model_dump(mode="json"))
        raw = self.private_key.sign(signed_bytes(unsigned))
        signature = base64.b64encode(raw).decode("ascii")
        return unsigned.model_copy(update={SIGNATURE_FIELD: signature})


def load_public_key(pem: bytes, *, key_id: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyLoadError(f"trusted key {key_id!r} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyLoadError(f"trusted key {key_id!r} is not an Ed25519 public key")
    return key


class Verifier:
    """Checks signatures against a fixed set of trusted public keys."""

    def __init__(self, trusted: dict[str, Ed25519PublicKey]) -> None:
        for key_id in trusted:
            if not KEY_ID_PATTERN.fullmatch(key_id):
                raise KeyLoadError(f"invalid trusted key id {key_id!r}")
        self._trusted = dict(trusted)

    @classmethod
    def from_pem_files(cls, files: dict[str, Path]) -> Verifier:
        keys: dict[str, Ed25519PublicKey] = {}
        for key_id, path in files.items():
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise KeyLoadError(f"cannot read trusted key {key_id!r} at {path}") from exc
            keys[key_id] = load_public_key(pem, key_id=key_id)
        return cls(keys)

    @property
    def trusted_key_ids(self) -> frozenset[str]:
        return frozenset(self._trusted)

    def verify(self, document: BaseModel) -> None:
        """Raise :class:`SignatureError` unless ``document`` is signed by a trusted key."""
        key_id = getattr(document, KEY_ID_FIELD, None)
        signature = getattr(document, SIGNATURE_FIELD, None)
        if not key_id or not signature:
            raise SignatureError("document is not signed (missing key_id or signature)")
        public_key = self._trusted.get(key_id)
        if public_key is None:
            raise UntrustedKeyError(
                f"document signed with untrusted key id {key_id!r}; "
                f"trusted ids: {sorted(self._trusted) or 'none configured'}"
            )
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError("signature is not valid base64") from exc
        try:
            public_key.verify(raw, signed_bytes(document))
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature does not match the document (key id {key_id!r}): "
                "the document was modified or signed with another key"
            ) from exc
