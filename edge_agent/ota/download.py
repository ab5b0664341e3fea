"""Fetch a model artifact into ``<name>.part``, resuming after interruptions, then check
size and sha256, fsync, and rename. Nothing unverified ever has the final name.

The sha256 is computed as the bytes arrive (a resumed download hashes what it already has
first), so the file is not read a second time. An optional bandwidth cap paces the download
in small chunks: on the box the download's CPU work is then spread out instead of landing on
the live frames of one burst, and on the plant network it leaves room for the cameras."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from edge_agent.bandwidth import TokenBucket
from edge_agent.errors import EdgeAgentError
from shared.digests import file_hasher
from shared.manifest import ArtifactRef

CHUNK = 256 * 1024


class DownloadError(EdgeAgentError):
    """The artifact could not be fetched (yet); a retry resumes where it stopped."""


class IntegrityError(EdgeAgentError):
    """The fetched artifact does not match the manifest: tampered or truncated."""


class _PartFile:
    """The ``.part`` being filled: appends, hashes as it goes, keeps to the bandwidth cap."""

    def __init__(self, path: Path, bandwidth: TokenBucket | None, stop: threading.Event) -> None:
        self.path = path
        self.bandwidth = bandwidth
        self.stop = stop
        self.hasher = file_hasher(path) if path.exists() else hashlib.sha256()

    def restart(self) -> None:
        """The server sent the whole artifact instead of the rest: start the file over."""
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()

    def append(self, chunks: Iterator[bytes]) -> None:
        with self.path.open("ab") as handle:
            for chunk in chunks:
                if self.stop.is_set() or (
                    self.bandwidth is not None and not self.bandwidth.consume(len(chunk), self.stop)
                ):
                    raise DownloadError("agent stopping")
                handle.write(chunk)
                self.hasher.update(chunk)


def _fetch_s3(client: Any, bucket: str, key: str, part: _PartFile, offset: int) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    try:
        response = client.get_object(**kwargs)
        part.append(response["Body"].iter_chunks(CHUNK))
    except (ClientError, BotoCoreError, OSError) as exc:
        raise DownloadError(f"download of {key} failed: {str(exc).splitlines()[0][:200]}") from exc


def _fetch_url(url: str, part: _PartFile, offset: int) -> None:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=30.0) as response:
            if response.status_code not in (200, 206):
                raise DownloadError(f"artifact URL answered HTTP {response.status_code}")
            if response.status_code == 200 and offset:
                part.restart()
            part.append(response.iter_bytes(CHUNK))
    except httpx.HTTPError as exc:
        raise DownloadError(f"artifact URL failed: {exc}") from exc


def download_artifact(
    artifact: ArtifactRef,
    destination: Path,
    stop: threading.Event,
    *,
    client: Any | None = None,
    bucket: str | None = None,
    url: str | None = None,
    bandwidth: TokenBucket | None = None,
) -> Path:
    """Download (resuming a ``.part``), verify and return ``destination``."""
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if offset > artifact.size_bytes:
        part.unlink()  # longer than the artifact can be: start over
        offset = 0
    filling = _PartFile(part, bandwidth, stop)
    if offset < artifact.size_bytes:
        if url is not None:
            _fetch_url(url, filling, offset)
        elif client is not None and bucket is not None:
            _fetch_s3(client, bucket, artifact.key, filling, offset)
        else:
            raise DownloadError("no object store or URL configured for model downloads")
    size = part.stat().st_size
    if size != artifact.size_bytes:
        if size > artifact.size_bytes:
            part.unlink()
            raise IntegrityError(
                f"artifact is {size} bytes, the manifest says {artifact.size_bytes}"
            )
        raise DownloadError(f"artifact incomplete: {size} of {artifact.size_bytes} bytes")
    digest = filling.hasher.hexdigest()
    if digest != artifact.sha256:
        part.unlink()
        raise IntegrityError(
            f"artifact sha256 {digest[:12]}... does not match the manifest's "
            f"{artifact.sha256[:12]}...: tampered or corrupt"
        )
    with part.open("rb") as handle:
        os.fsync(handle.fileno())
    part.replace(destination)
    return destination
