"""Fetch a model artifact into ``<name>.part``, resuming after interruptions, then check
size and sha256, fsync, and rename. Nothing unverified ever has the final name."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from edge_agent.errors import EdgeAgentError
from shared.digests import file_sha256
from shared.manifest import ArtifactRef

CHUNK = 1024 * 1024


class DownloadError(EdgeAgentError):
    """The artifact could not be fetched (yet); a retry resumes where it stopped."""


class IntegrityError(EdgeAgentError):
    """The fetched artifact does not match the manifest: tampered or truncated."""


def _fetch_s3(
    client: Any, bucket: str, key: str, part: Path, *, offset: int, stop: threading.Event
) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    try:
        response = client.get_object(**kwargs)
        with part.open("ab") as handle:
            for chunk in response["Body"].iter_chunks(CHUNK):
                if stop.is_set():
                    raise DownloadError("agent stopping")
                handle.write(chunk)
    except (ClientError, BotoCoreError, OSError) as exc:
        raise DownloadError(f"download of {key} failed: {str(exc).splitlines()[0][:200]}") from exc


def _fetch_url(url: str, part: Path, offset: int, stop: threading.Event) -> None:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=30.0) as response:
            if response.status_code not in (200, 206):
                raise DownloadError(f"artifact URL answered HTTP {response.status_code}")
            mode = "ab" if response.status_code == 206 else "wb"
            with part.open(mode) as handle:
                for chunk in response.iter_bytes(CHUNK):
                    if stop.is_set():
                        raise DownloadError("agent stopping")
                    handle.write(chunk)
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
) -> Path:
    """Download (resuming a ``.part``), verify and return ``destination``."""
    part = destination.with_name(destination.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if offset > artifact.size_bytes:
        part.unlink()  # longer than the artifact can be: start over
        offset = 0
    if offset < artifact.size_bytes:
        if url is not None:
            _fetch_url(url, part, offset, stop)
        elif client is not None and bucket is not None:
            _fetch_s3(client, bucket, artifact.key, part, offset=offset, stop=stop)
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
    digest = file_sha256(part)
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
