"""The uploader against real S3-compatible servers over HTTP."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bandwidth import TokenBucket
from edge_agent.upload.spool import Spool, SpoolError
from edge_agent.upload.uploader import Uploader
from shared.infra.s3 import S3Target
from testing.local_services import NanioS3Process, free_port
from tests.waiting import wait_for as _wait_for

pytestmark = pytest.mark.integration
BUCKET = "hard-examples-test"

wait_for = functools.partial(_wait_for, timeout=20.0)


def fill(spool: Spool, count: int, size: int = 20_000, prefix: str = "k") -> set[str]:
    keys = set()
    for i in range(count):
        base = f"hard-examples/plant1/edge-01/2026/11/23/{prefix}{i:05d}"
        assert spool.accept(
            base,
            jpeg=b"j" * size,
            sidecar=f'{{"i": {i}}}',
            prelabel="0 0.5 0.5 0.1 0.1\n",
            priority=1.0,
        ).accepted
        keys |= {f"{base}.jpg", f"{base}.json", f"{base}.txt"}
    return keys


def listed(client: Any) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def target(server: NanioS3Process, secret: str | None = None) -> S3Target:
    return S3Target(
        bucket=BUCKET,
        endpoint_url=server.endpoint_url,
        access_key_id=server.access_key,
        secret_access_key=secret or server.secret_key,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
    )


@pytest.fixture
def store(nanio: NanioS3Process, nanio_client: Any) -> Iterator[tuple[NanioS3Process, Any]]:
    nanio_client.create_bucket(Bucket=BUCKET)
    yield nanio, nanio_client


def run_uploader(spool: Spool, tgt: S3Target, **kwargs: Any) -> tuple[Uploader, threading.Event]:
    stop = threading.Event()
    uploader = Uploader(
        spool, tgt, stop, concurrency=2, backoff_initial_s=0.2, backoff_max_s=1.0, **kwargs
    )
    uploader.start()
    return uploader, stop


def test_drains_spool_with_complete_examples(
    tmp_path: Path, store: tuple[NanioS3Process, Any]
) -> None:
    server, client = store
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    expected = fill(spool, 20)
    uploader, stop = run_uploader(spool, target(server))
    assert wait_for(lambda: spool.stats().depth == 0)
    stop.set()
    uploader.join()
    keys = listed(client)
    assert sorted(keys) == sorted(expected)
    body = client.get_object(Bucket=BUCKET, Key=sorted(expected)[1])["Body"].read()
    assert body.startswith(b'{"i": ')
    assert uploader.stats.uploaded == 20 and spool.stats().uploaded == 20


def test_store_outage_then_back_every_example_exactly_once(
    tmp_path: Path, store: tuple[NanioS3Process, Any]
) -> None:
    server, client = store
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    expected = fill(spool, 10, prefix="before")
    uploader, stop = run_uploader(spool, target(server))
    assert wait_for(lambda: spool.stats().depth == 0)
    server.stop()  # the store goes away
    expected |= fill(spool, 15, prefix="during")
    assert wait_for(lambda: uploader.stats.errors_by_kind.get("network", 0) >= 2)
    attempts_during_outage = spool.stats().failures
    time.sleep(1.0)
    assert spool.stats().failures - attempts_during_outage < 15, "backoff: no busy loop"
    assert spool.stats().depth == 15, "nothing lost while the store is down"
    server.start()  # same data directory: what was uploaded before is still there
    assert wait_for(lambda: spool.stats().depth == 0, timeout=30)
    stop.set()
    uploader.join()
    keys = listed(client)
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == expected


def test_uploads_resume_when_the_store_answers_not_when_the_backoff_runs_out(
    tmp_path: Path, store: tuple[NanioS3Process, Any]
) -> None:
    """A 30 s backoff after the first failure; the store is back after ~3 s. The probe finds
    it and uploads resume at once (each worker used to double the shared backoff too)."""
    server, client = store
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    stop = threading.Event()
    uploader = Uploader(
        spool,
        target(server),
        stop,
        concurrency=2,
        backoff_initial_s=30.0,
        backoff_max_s=300.0,
        probe_interval_s=0.5,
    )
    uploader.start()
    try:
        server.stop()
        expected = fill(spool, 5, prefix="outage")
        assert wait_for(lambda: uploader.stats.failed >= 1)
        time.sleep(3.0)
        server.start()
        back = time.monotonic()
        assert wait_for(lambda: spool.stats().depth == 0, timeout=10)
        assert time.monotonic() - back < 10
        assert set(listed(client)) >= expected
    finally:
        stop.set()
        uploader.join()


def test_a_second_agent_cannot_open_the_same_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    with pytest.raises(SpoolError, match="in use by another process"):
        Spool(tmp_path / "spool", min_free_bytes=0)
    spool.close()
    Spool(tmp_path / "spool", min_free_bytes=0).close()  # free once the first one closed


def test_wrong_credentials_are_auth_errors_with_backoff(
    tmp_path: Path, store: tuple[NanioS3Process, Any]
) -> None:
    server, _client = store
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    fill(spool, 3)
    uploader, stop = run_uploader(spool, target(server, secret="wrong-secret"))
    time.sleep(2.0)
    stop.set()
    uploader.join()
    assert uploader.stats.errors_by_kind.get("auth", 0) >= 1
    assert 2 <= uploader.stats.failed <= 10, "store-wide backoff, not a busy loop"
    assert set(uploader.stats.errors_by_kind) <= {"auth", "client"}
    assert (
        "wrong-secret" not in uploader.stats.last_error and "wrong-secret" not in spool.last_error()
    )
    assert spool.stats().depth == 3, "nothing deleted without the store's confirmation"


UPLOADER_CHILD = """
import sys, threading, time
from pathlib import Path
from edge_agent.upload.spool import Spool, SpoolError
from edge_agent.upload.uploader import Uploader
from shared.infra.s3 import S3Target
spool = Spool(Path(sys.argv[1]), min_free_bytes=0)
target = S3Target(bucket=sys.argv[3], endpoint_url=sys.argv[2], access_key_id=sys.argv[4],
                       secret_access_key=sys.argv[5])
stop = threading.Event()
Uploader(spool, target, stop, concurrency=2, bandwidth_bytes_s=400_000, lease_s=120.0).start()
time.sleep(600)
"""


def test_sigkill_mid_upload_then_restart(tmp_path: Path, store: tuple[NanioS3Process, Any]) -> None:
    server, client = store
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, min_free_bytes=0)
    expected = fill(spool, 30, size=60_000)
    spool.close()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            UPLOADER_CHILD,
            str(spool_dir),
            server.endpoint_url,
            BUCKET,
            server.access_key,
            server.secret_key,
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3])),
    )
    try:
        assert wait_for(lambda: len(listed(client)) >= 9, timeout=30), "some uploads happened"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
    finally:
        child.kill()
    assert len(listed(client)) < len(expected), "killed mid-way"
    spool = Spool(spool_dir, min_free_bytes=0)
    stop = threading.Event()
    # The killed process held 120 s leases; they belonged to it, so its examples in flight
    # are due as soon as the spool is opened again (they used to wait out the lease).
    restarted = time.monotonic()
    uploader = Uploader(spool, target(server), stop, concurrency=2)
    uploader.start()
    assert wait_for(lambda: spool.stats().depth == 0, timeout=60)
    drained_s = time.monotonic() - restarted
    assert drained_s < 60, drained_s
    stop.set()
    uploader.join()
    keys = listed(client)
    assert sorted(keys) == sorted(expected)


class _FaultyS3(http.server.BaseHTTPRequestHandler):
    mode = "500"

    def do_PUT(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        if self.mode == "slow":
            time.sleep(3)
        self.send_response(500)
        self.send_header("content-type", "application/xml")
        body = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.mark.parametrize(("mode", "kind"), [("500", "server"), ("slow", "network")])
def test_server_errors_and_timeouts_are_classified(tmp_path: Path, mode: str, kind: str) -> None:
    handler = type("Handler", (_FaultyS3,), {"mode": mode})
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        spool = Spool(tmp_path / "spool", min_free_bytes=0)
        fill(spool, 2)
        tgt = S3Target(
            bucket=BUCKET,
            endpoint_url=f"http://127.0.0.1:{port}",
            access_key_id="a",
            secret_access_key="b",
            read_timeout_s=0.5,
        )
        uploader, stop = run_uploader(spool, tgt)
        assert wait_for(lambda: uploader.stats.errors_by_kind.get(kind, 0) >= 2, timeout=15)
        stop.set()
        uploader.join()
        assert spool.stats().depth == 2
    finally:
        httpd.shutdown()


def test_token_bucket_caps_bandwidth() -> None:
    bucket = TokenBucket(100_000)
    stop = threading.Event()
    started = time.monotonic()
    for _ in range(3):
        assert bucket.consume(100_000, stop)
    assert time.monotonic() - started >= 1.5, "300 kB at 100 kB/s with a 100 kB burst"
    stop.set()
    assert TokenBucket(1.0).consume(10_000, stop) is False, "a stop interrupts the wait"
