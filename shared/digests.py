"""Content digests, one implementation for the agent's downloads and the trainer's registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def file_hasher(path: Path) -> hashlib._Hash:
    """A sha256 over a file's bytes, read in 1 MiB chunks (model files do not fit comfortably
    in RAM on every edge box), that more bytes can still be fed to (a resumed download)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return file_hasher(path).hexdigest()
