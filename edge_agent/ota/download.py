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


class PermanentDownloadError(DownloadError):
    """Retrying cannot help: the artifact is missing, access is refused, or the store holds
    other bytes than the manifest names. The desired state fails; no retry."""


class IntegrityError(PermanentDownloadError):
    """The fetched artifact does not match the manifest: tampered or truncated."""


# S3 error codes and HTTP statuses that no retry will change.
_PERMANENT_CODES = frozenset(
    {
        "NoSuchKey",
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidRange",
        "InvalidObjectState",
    }
)
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 416})


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


def _fetch_s3(
    client: Any, bucket: str, artifact: ArtifactRef, part: _PartFile, offset: int
) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": artifact.key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    try:
        response = client.get_object(**kwargs)
        _check_total(_s3_total(response, offset), artifact, part, offset)
        part.append(response["Body"].iter_chunks(CHUNK))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"download of {artifact.key} failed: {code or status} {error.get('Message', '')}"
        if code in _PERMANENT_CODES or status in _PERMANENT_STATUSES:
            if status == 416 or code == "InvalidRange":
                part.restart()  # the store holds fewer bytes than we already have
            raise PermanentDownloadError(message.strip()[:300]) from exc
        raise DownloadError(message.strip()[:300]) from exc
    except (BotoCoreError, OSError) as exc:
        raise DownloadError(
            f"download of {artifact.key} failed: {str(exc).splitlines()[0][:200]}"
        ) from exc


def _s3_total(response: dict[str, Any], offset: int) -> int | None:
    """The object's full size as the store reports it (Content-Range, else the length)."""
    content_range = str(response.get("ContentRange") or "")
    if "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.get("ContentLength")
    return offset + int(length) if isinstance(length, int) else None


def _check_total(total: int | None, artifact: ArtifactRef, part: _PartFile, offset: int) -> None:
    """A store object of another size than the manifest says will never verify: fail now,
    before fetching it, instead of after (or, when shorter, forever 'incomplete')."""
    if total is not None and total != artifact.size_bytes:
        if offset:
            part.restart()
        raise IntegrityError(
            f"the store holds {total} bytes at {artifact.key}, the manifest says "
            f"{artifact.size_bytes}: truncated or replaced"
        )


def _fetch_url(url: str, artifact: ArtifactRef, part: _PartFile, offset: int) -> None:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=30.0) as response:
            status = response.status_code
            if status in _PERMANENT_STATUSES:
                if status == 416:
                    part.restart()
                raise PermanentDownloadError(f"artifact URL answered HTTP {status}")
            if status not in (200, 206):
                raise DownloadError(f"artifact URL answered HTTP {status}")
            if status == 200 and offset:
                part.restart()
                offset = 0
            content_range = response.headers.get("content-range", "")
            length = response.headers.get("content-length", "")
            total = None
            if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
                total = int(content_range.rsplit("/", 1)[1])
            elif length.isdigit():
                total = offset + int(length)
            _check_total(total, artifact, part, offset)
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
            _fetch_url(url, artifact, filling, offset)
        elif client is not None and bucket is not None:
            _fetch_s3(client, bucket, artifact, filling, offset)
        else:
            raise PermanentDownloadError(
                "no object store or URL configured for model downloads: enable storage, "
                "or send desired states with an artifact_url"
            )
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
