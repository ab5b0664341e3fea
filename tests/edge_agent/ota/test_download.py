"""Model downloads against a real S3 server (moto) and a plain HTTP server: resume, the
sha256 taken as the bytes arrive, the bandwidth cap."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bandwidth import TokenBucket
from edge_agent.ota.controller import OtaPolicy
from edge_agent.ota.download import (
    CHUNK,
    DownloadError,
    IntegrityError,
    PermanentDownloadError,
    download_artifact,
)
from shared.manifest import ArtifactRef

pytestmark = pytest.mark.integration


@pytest.fixture
def artifact_bytes() -> bytes:
    return os.urandom(3 * CHUNK + 12_345)


@pytest.fixture
def stored(s3_client: Any, bucket: str, artifact_bytes: bytes) -> ArtifactRef:
    key = "models/line-detector/7/model.onnx"
    s3_client.put_object(Bucket=bucket, Key=key, Body=artifact_bytes)
    return ArtifactRef(
        key=key, sha256=hashlib.sha256(artifact_bytes).hexdigest(), size_bytes=len(artifact_bytes)
    )


def test_a_resumed_download_hashes_what_it_had_and_what_came(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef, artifact_bytes: bytes
) -> None:
    destination = tmp_path / "model-7.onnx"
    (tmp_path / "model-7.onnx.part").write_bytes(artifact_bytes[: CHUNK + 100])
    path = download_artifact(
        stored, destination, threading.Event(), client=s3_client, bucket=bucket
    )
    assert path.read_bytes() == artifact_bytes
    assert not (tmp_path / "model-7.onnx.part").exists()


def test_a_corrupt_prefix_is_caught_by_the_hash_and_started_over(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef, artifact_bytes: bytes
) -> None:
    destination = tmp_path / "model-7.onnx"
    part = tmp_path / "model-7.onnx.part"
    part.write_bytes(b"\0" * (CHUNK + 100))  # right length, wrong bytes (a disk went bad)
    with pytest.raises(IntegrityError, match="sha256"):
        download_artifact(stored, destination, threading.Event(), client=s3_client, bucket=bucket)
    assert not part.exists() and not destination.exists(), "nothing unverified is kept"
    download_artifact(stored, destination, threading.Event(), client=s3_client, bucket=bucket)
    assert destination.read_bytes() == artifact_bytes


def test_the_bandwidth_cap_paces_the_download(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef, artifact_bytes: bytes
) -> None:
    rate = 4 * CHUNK  # bytes per second: the artifact takes at least ~0.75 s
    started = time.monotonic()
    download_artifact(
        stored,
        tmp_path / "model-7.onnx",
        threading.Event(),
        client=s3_client,
        bucket=bucket,
        bandwidth=TokenBucket(rate, burst_bytes=CHUNK),
    )
    # A lower bound only (the cap guarantees it whatever the machine's load).
    assert time.monotonic() - started >= (len(artifact_bytes) - CHUNK) / rate * 0.9


def test_a_stop_interrupts_a_paced_download_and_keeps_the_part(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef
) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(DownloadError, match="agent stopping"):
        download_artifact(
            stored,
            tmp_path / "model-7.onnx",
            stop,
            client=s3_client,
            bucket=bucket,
            bandwidth=TokenBucket(CHUNK, burst_bytes=CHUNK),
        )
    part = tmp_path / "model-7.onnx.part"
    assert 0 < part.stat().st_size < stored.size_bytes, "resumable from where it stopped"


@pytest.fixture
def plain_http(tmp_path: Path, artifact_bytes: bytes) -> Iterator[str]:
    """Python's file server: it ignores Range and always answers 200 with the whole file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "model.onnx").write_bytes(artifact_bytes)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/model.onnx"
    server.shutdown()
    server.server_close()


def test_a_server_that_ignores_range_restarts_the_file_and_the_hash(
    tmp_path: Path, plain_http: str, artifact_bytes: bytes
) -> None:
    ref = ArtifactRef(
        key="models/line-detector/7/model.onnx",
        sha256=hashlib.sha256(artifact_bytes).hexdigest(),
        size_bytes=len(artifact_bytes),
    )
    destination = tmp_path / "model-7.onnx"
    (tmp_path / "model-7.onnx.part").write_bytes(artifact_bytes[:1000])
    download_artifact(ref, destination, threading.Event(), url=plain_http)
    assert destination.read_bytes() == artifact_bytes


def test_a_missing_artifact_is_a_permanent_failure(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef, plain_http: str
) -> None:
    missing = stored.model_copy(update={"key": "models/line-detector/8/model.onnx"})
    with pytest.raises(PermanentDownloadError, match="NoSuchKey"):
        download_artifact(
            missing, tmp_path / "m.onnx", threading.Event(), client=s3_client, bucket=bucket
        )
    with pytest.raises(PermanentDownloadError, match="HTTP 404"):
        download_artifact(
            stored, tmp_path / "m.onnx", threading.Event(), url=plain_http + ".missing"
        )


def test_a_truncated_artifact_fails_at_once_and_on_resume(
    tmp_path: Path, s3_client: Any, bucket: str, stored: ArtifactRef, artifact_bytes: bytes
) -> None:
    """The store holds fewer bytes than the manifest says: found from the response's size
    (not after the download, not as 'incomplete' forever), and a .part longer than what the
    store has (416 on resume) is dropped."""
    s3_client.put_object(Bucket=bucket, Key=stored.key, Body=artifact_bytes[: 2 * CHUNK])
    destination = tmp_path / "model-7.onnx"
    with pytest.raises(IntegrityError, match=f"the store holds {2 * CHUNK} bytes"):
        download_artifact(stored, destination, threading.Event(), client=s3_client, bucket=bucket)
    part = tmp_path / "model-7.onnx.part"
    part.write_bytes(artifact_bytes[: 3 * CHUNK])
    with pytest.raises(PermanentDownloadError):
        download_artifact(stored, destination, threading.Event(), client=s3_client, bucket=bucket)
    assert not part.exists()


def test_transient_retries_back_off_to_a_cap() -> None:
    policy = OtaPolicy(download_retry_s=1.0, download_retry_max_s=20.0)
    delays = [policy.retry_delay_s(attempt) for attempt in range(8)]
    for attempt, delay in enumerate(delays):
        base = min(2.0**attempt, 20.0)
        assert 0.8 * base <= delay <= 1.2 * base
    assert max(delays) <= 24.0
