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


# Failures that mean the store is not answering (as opposed to refusing this request).
OUTAGE_KINDS = frozenset({"network", "server", "throttled", "other"})


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
        probe_interval_s: float = 5.0,
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
        # While paused, one worker asks the store every probe_interval_s whether it answers
        # again; when it does, the pause and every example's wait end at once, so uploads
        # resume seconds after an outage instead of when a grown backoff runs out.
        self.probe_interval_s = probe_interval_s
        self.stats = UploaderStats()
        self._rng = random.Random()
        self._breaker_lock = threading.Lock()
        self._consecutive_failures = 0
        self._paused_until = 0.0  # monotonic
        # Bumped at each escalation: failures of requests sent before it are the same outage
        # seen by other workers, and do not double the backoff again.
        self._generation = 0
        self._next_probe = 0.0  # monotonic
        self._probing = False
        self._outage = False  # the last failure was the store not answering (not auth ...)
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

    def _record_failure(self, generation: int, kind: str) -> float:
        """A failure of a request sent in ``generation``: pause every worker; returns the
        delay. Only the first failure of a generation escalates the backoff, so N workers
        failing together count as one failure, not N doublings."""
        with self._breaker_lock:
            self._outage = kind in OUTAGE_KINDS
            if generation == self._generation:
                self._consecutive_failures += 1
                self._generation += 1
            delay = self.retry_delay(self._consecutive_failures - 1)
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            return delay

    def _record_success(self) -> None:
        with self._breaker_lock:
            self._consecutive_failures = 0
            self._paused_until = 0.0
            self._generation += 1

    def _current_generation(self) -> int:
        with self._breaker_lock:
            return self._generation

    def _claim_probe(self) -> bool:
        """True for the one worker whose turn it is to probe the store. Only after an outage:
        a probe cannot tell whether wrong credentials or a refused request are fixed, so those
        wait out their backoff."""
        with self._breaker_lock:
            now = time.monotonic()
            if not self._outage or self._probing or now < self._next_probe:
                return False
            self._probing = True
            self._next_probe = now + self.probe_interval_s
            return True

    def probe(self) -> bool:
        """Does the store answer? Any S3 answer but a server error counts (a 403 from HEAD
        with put-only credentials is the store answering); a connection error does not."""
        try:
            self.client.head_bucket(Bucket=self.target.bucket)
        except ClientError as exc:
            return classify(exc) not in ("server", "throttled")
        except (BotoCoreError, OSError):
            return False
        return True

    def _probe_while_paused(self) -> None:
        if not self._claim_probe():
            return
        try:
            if self.probe():
                log.info("object store answers again: uploads resume")
                self._record_success()
                self.spool.retry_now()
        finally:
            with self._breaker_lock:
                self._probing = False

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            pause = self._pause_remaining()
            if pause > 0:
                self._probe_while_paused()
                self.stop_event.wait(min(pause, self.probe_interval_s, 1.0))
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
        generation = self._current_generation()
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
            delay = self._record_failure(generation, kind)
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
