"""Spool -> S3-compatible object store (AWS S3, MinIO, Ceph RGW, nanio ...) through boto3.

Each example is three objects under idempotent keys; the JSON sidecar goes last, so a
reader that lists ``*.json`` only ever finds complete examples. The spool row is deleted
only after the store confirmed all three writes. Failures are retried with capped
exponential backoff and jitter. The backoff is store-wide, like a circuit breaker: while the
store is failing, every worker pauses, so an outage costs one probe per backoff interval
rather than one request per spooled example. Retry times are also kept in the spool (they
survive restarts), and failures are counted by kind (auth, server, network) for /status.
botocore's own retries are off: they would hide outages and stack up behind ours.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from edge_agent.bandwidth import TokenBucket
from edge_agent.upload.spool import Spool, SpoolItem
from shared.errors import ContractError
from shared.infra.s3 import S3Target, make_s3_client
from shared.object_keys import validate_object_key

log = logging.getLogger(__name__)


def classify(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if status in (401, 403) or code in {
            "AccessDenied",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
        }:
            return "auth"
        if status == 404 or code == "NoSuchBucket":
            return "missing_bucket"
        if status == 503 or code == "SlowDown":
            return "throttled"
        if 400 <= status < 500:
            return "client"
        return "server"
    if isinstance(exc, EndpointConnectionError | BotoCoreError | OSError):
        return "network"
    return "other"


@dataclass
class UploaderStats:
    uploaded: int = 0
    failed: int = 0
    bytes: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    last_success_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def success(self, size: int) -> None:
        with self._lock:
            self.uploaded += 1
            self.bytes += size
            self.last_success_at = time.time()

    def failure(self, kind: str, message: str) -> None:
        with self._lock:
            self.failed += 1
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
            self.last_error = f"{kind}: {message}"[:300]


class Uploader:
    def __init__(
        self,
        spool: Spool,
        target: S3Target,
        stop: threading.Event,
        *,
        concurrency: int = 2,
        bandwidth_bytes_s: float = 0.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        lease_s: float = 120.0,
        client: Any | None = None,
    ) -> None:
        self.spool = spool
        self.target = target
        self.stop_event = stop
        self.client = client or make_s3_client(target, max_pool=max(concurrency * 3, 10))
        self.bandwidth = TokenBucket(bandwidth_bytes_s)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        # How long an example stays claimed; after a crash it is retried once this passes.
        self.lease_s = lease_s
        self.stats = UploaderStats()
        self._rng = random.Random()
        self._breaker_lock = threading.Lock()
        self._consecutive_failures = 0
        self._paused_until = 0.0  # monotonic
        self._threads = [
            threading.Thread(target=self._loop, name=f"uploader-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self.spool.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def retry_delay(self, attempts: int) -> float:
        nominal = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(attempts, 30))
        return float(nominal * self._rng.uniform(0.5, 1.0))

    def _pause_remaining(self) -> float:
        with self._breaker_lock:
            return self._paused_until - time.monotonic()

    def _record_failure(self) -> float:
        """One more failure in a row: pause every worker; returns the delay."""
        with self._breaker_lock:
            delay = self.retry_delay(self._consecutive_failures)
            self._consecutive_failures += 1
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            return delay

    def _record_success(self) -> None:
        with self._breaker_lock:
            self._consecutive_failures = 0
            self._paused_until = 0.0

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            pause = self._pause_remaining()
            if pause > 0:
                self.stop_event.wait(min(pause, 1.0))
                continue
            item = self.spool.lease(lease_s=self.lease_s, wait_s=1.0)
            if item is None:
                continue
            self.upload_one(item)

    def upload_one(self, item: SpoolItem) -> bool:
        try:
            for key in (f"{item.key_base}.jpg", f"{item.key_base}.txt", f"{item.key_base}.json"):
                validate_object_key(key)
        except ContractError as exc:
            # A key that can never be valid: park it far in the future instead of looping.
            self.stats.failure("bad_key", str(exc))
            self.spool.fail(item.id, f"bad key: {exc}", 86400.0)
            return False
        objects = (
            (f"{item.key_base}.jpg", item.jpeg, "image/jpeg"),
            (f"{item.key_base}.txt", item.prelabel.encode(), "text/plain"),
            (f"{item.key_base}.json", item.sidecar.encode(), "application/json"),
        )
        size = sum(len(body) for _, body, _ in objects)
        if not self.bandwidth.consume(size, self.stop_event):
            self.spool.fail(item.id, "agent stopping", 0.0)
            return False
        try:
            for key, body, content_type in objects:
                self.client.put_object(
                    Bucket=self.target.bucket, Key=key, Body=body, ContentType=content_type
                )
        except (ClientError, BotoCoreError, OSError) as exc:
            kind = classify(exc)
            delay = self._record_failure()
            message = str(exc).splitlines()[0][:200]
            self.stats.failure(kind, message)
            self.spool.fail(item.id, f"{kind}: {message}", delay)
            log.warning(
                "upload failed",
                extra={
                    "kind": kind,
                    "error": message,
                    "retry_in_s": round(delay, 2),
                    "attempts": item.attempts + 1,
                },
            )
            return False
        self.spool.complete(item.id)
        self.stats.success(size)
        self._record_success()
        return True
