"""Disk spool for hard examples: a crash-safe queue between mining and the uploader.

One SQLite database in WAL mode with ``synchronous=FULL``. An example (JPEG, JSON sidecar,
YOLO pre-labels) is one row written in one transaction, so ``accept`` returning means it is
on disk: a ``kill -9`` or power loss afterwards loses nothing, and a crash before leaves no
half example. Measured here: ~1,700 durable 60 KB commits/s, well above what mining needs.

The spool never fills the disk: a byte quota with eviction by priority then age (lowest
priority, oldest first), and a free-space floor below which new examples are refused.
Uploaders *lease* rows (so two threads never upload the same row at once); leases are wall
time, so they expire across restarts and an interrupted upload is simply retried. Object
keys are idempotent, so a retry after a crash overwrites rather than duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_agent.errors import EdgeAgentError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key_base TEXT NOT NULL UNIQUE,
    priority REAL NOT NULL,
    created_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    sidecar TEXT NOT NULL,
    prelabel TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    leased_until REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS examples_due ON examples (next_attempt_at, priority DESC, id);
CREATE INDEX IF NOT EXISTS examples_evict ON examples (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

log = logging.getLogger(__name__)


class SpoolError(EdgeAgentError):
    """The spool database could not be opened or written."""


@dataclass(frozen=True)
class SpoolItem:
    id: int
    key_base: str
    priority: float
    created_at: float
    jpeg: bytes
    sidecar: str
    prelabel: str
    attempts: int


@dataclass(frozen=True)
class AcceptResult:
    accepted: bool
    evicted: int = 0
    reason: str = ""


@dataclass(frozen=True)
class SpoolStats:
    depth: int
    bytes: int
    oldest_age_s: float
    accepted: int
    evicted: int
    rejected: int
    uploaded: int
    failures: int
    # The disk is at its free-space floor: every new example is dropped until space returns.
    disk_low: bool = False


def _exclusive_lock(path: Path) -> IO[bytes]:
    """Hold ``path`` locked for this process's life: two agents on one spool would upload
    each other's leased examples twice. The kernel drops the lock when the process dies."""
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise SpoolError(
            f"the spool in {path.parent} is in use by another process (another agent with the "
            "same state_dir?)"
        ) from exc
    return handle


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        quota_bytes: int = 2 * 1024**3,
        min_free_bytes: int = 512 * 1024**2,
    ) -> None:
        self.directory = directory
        self.quota_bytes = quota_bytes
        self.min_free_bytes = min_free_bytes
        self.disk_low = False
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = _exclusive_lock(directory / "spool.lock")
            self._db = sqlite3.connect(
                directory / "spool.sqlite3", isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"cannot open the spool in {directory}: {exc}") from exc
        self._bytes = self._scalar("SELECT COALESCE(SUM(size_bytes), 0) FROM examples")
        # Leases belong to the process that took them, and this process holds the spool alone
        # (the lock above): whatever is still leased was in flight when the last one died
        # (kill -9, power loss). It is due now, not when a fixed lease would have run out.
        with self._transaction() as db:
            db.execute("UPDATE examples SET leased_until = 0 WHERE leased_until > 0")

    # ----------------------------------------------------------------- helpers
    def _scalar(self, sql: str, *params: object) -> int:
        row = self._db.execute(sql, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _counter(self, name: str) -> int:
        return self._scalar("SELECT value FROM counters WHERE name = ?", name)

    # ----------------------------------------------------------------- producer side
    def accept(
        self, key_base: str, *, jpeg: bytes, sidecar: str, prelabel: str, priority: float
    ) -> AcceptResult:
        """Store one example durably, evicting lower-priority ones to stay within quota."""
        size = len(jpeg) + len(sidecar.encode()) + len(prelabel.encode())
        with self._lock:
            if size > self.quota_bytes:
                return self._reject(f"example of {size} bytes exceeds the whole quota")
            try:
                free = shutil.disk_usage(self.directory).free
            except OSError:
                free = 0
            if free - size < self.min_free_bytes:
                if not self.disk_low:  # once per episode, not once per dropped example
                    self.disk_low = True
                    log.warning(
                        "spool disk at its free-space floor: hard examples are dropped",
                        extra={"free_bytes": free, "min_free_bytes": self.min_free_bytes},
                    )
                return self._reject(f"only {free} bytes free on the spool's disk")
            if self.disk_low:
                self.disk_low = False
                log.info("spool disk has room again", extra={"free_bytes": free})
            try:
                with self._transaction() as db:
                    evicted = self._make_room(db, size, priority)
                    if evicted is None:
                        self._bump("rejected")
                        return AcceptResult(False, 0, "quota full of higher-priority examples")
                    db.execute(
                        "INSERT INTO examples(key_base, priority, created_at, size_bytes, jpeg, "
                        "sidecar, prelabel) VALUES (?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(key_base) DO NOTHING",
                        (key_base, priority, time.time(), size, jpeg, sidecar, prelabel),
                    )
                    inserted = db.execute("SELECT changes()").fetchone()[0] == 1
                    self._bump("accepted" if inserted else "duplicates")
            except sqlite3.Error as exc:
                raise SpoolError(f"spool write failed: {exc}") from exc
            if inserted:
                self._bytes += size
                self._has_work.notify_all()
            return AcceptResult(inserted, evicted, "" if inserted else "already spooled")

    def _reject(self, reason: str) -> AcceptResult:
        with self._transaction():
            self._bump("rejected")
        return AcceptResult(False, 0, reason)

    def _make_room(self, db: sqlite3.Connection, size: int, priority: float) -> int | None:
        """Evict lowest-priority, oldest rows until ``size`` fits; None if it cannot fit
        without evicting examples more important than the new one."""
        needed = self._bytes + size - self.quota_bytes
        if needed <= 0:
            return 0
        victims: list[tuple[int, int]] = []
        freed = 0
        for row_id, row_size, row_priority in db.execute(
            "SELECT id, size_bytes, priority FROM examples ORDER BY priority ASC, id ASC"
        ):
            if row_priority > priority:
                break
            victims.append((row_id, row_size))
            freed += row_size
            if freed >= needed:
                break
        if freed < needed:
            return None
        db.executemany("DELETE FROM examples WHERE id = ?", [(v[0],) for v in victims])
        self._bump("evicted", len(victims))
        self._bytes -= freed
        return len(victims)

    # ----------------------------------------------------------------- consumer side
    def lease(self, *, lease_s: float = 120.0, wait_s: float = 0.0) -> SpoolItem | None:
        """Take the most important due example for ``lease_s``; None if nothing is due.

        Within a priority, the newest first: a backlog (an outage, a thin uplink) is the line
        as it was; the trainer needs the line as it is now first. Measured in
        ``benchmarks/learning_loop.py`` (a 3% upload budget after a drift): oldest-first
        spent the budget on frames from before the drift."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while True:
                now = time.time()
                row = self._db.execute(
                    "SELECT id, key_base, priority, created_at, jpeg, sidecar, prelabel, attempts "
                    "FROM examples WHERE next_attempt_at <= ? AND leased_until <= ? "
                    "ORDER BY priority DESC, id DESC LIMIT 1",
                    (now, now),
                ).fetchone()
                if row is not None:
                    with self._transaction() as db:
                        db.execute(
                            "UPDATE examples SET leased_until = ? WHERE id = ?",
                            (now + lease_s, row[0]),
                        )
                    return SpoolItem(*row)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._has_work.wait(min(remaining, self._seconds_until_due()))

    def _seconds_until_due(self) -> float:
        row = self._db.execute(
            "SELECT MIN(MAX(next_attempt_at, leased_until)) FROM examples"
        ).fetchone()
        if row is None or row[0] is None:
            return 3600.0
        return max(0.01, float(row[0]) - time.time())

    def complete(self, item_id: int) -> None:
        """The store confirmed every object of the example: drop it from the spool."""
        with self._lock, self._transaction() as db:
            size = self._scalar("SELECT size_bytes FROM examples WHERE id = ?", item_id)
            db.execute("DELETE FROM examples WHERE id = ?", (item_id,))
            if db.execute("SELECT changes()").fetchone()[0]:
                self._bytes -= size
                self._bump("uploaded")

    def fail(self, item_id: int, error: str, retry_in_s: float) -> None:
        """Upload failed: release the lease and schedule a retry."""
        with self._lock:
            with self._transaction() as db:
                db.execute(
                    "UPDATE examples SET attempts = attempts + 1, next_attempt_at = ?, "
                    "leased_until = 0, last_error = ? WHERE id = ?",
                    (time.time() + retry_in_s, error[:300], item_id),
                )
                self._bump("failures")
            self._has_work.notify_all()

    def wake(self) -> None:
        with self._lock:
            self._has_work.notify_all()

    def retry_now(self) -> int:
        """The store is back: every example waiting out a retry delay is due now."""
        with self._lock:
            with self._transaction() as db:
                db.execute(
                    "UPDATE examples SET next_attempt_at = 0 "
                    "WHERE next_attempt_at > 0 AND leased_until = 0"
                )
                changed = int(db.execute("SELECT changes()").fetchone()[0])
            self._has_work.notify_all()
        return changed

    # ----------------------------------------------------------------- housekeeping
    def stats(self) -> SpoolStats:
        with self._lock:
            depth = self._scalar("SELECT COUNT(*) FROM examples")
            oldest = self._db.execute("SELECT MIN(created_at) FROM examples").fetchone()[0]
            return SpoolStats(
                depth=depth,
                bytes=self._bytes,
                oldest_age_s=0.0 if oldest is None else max(0.0, time.time() - float(oldest)),
                accepted=self._counter("accepted"),
                evicted=self._counter("evicted"),
                rejected=self._counter("rejected"),
                uploaded=self._counter("uploaded"),
                failures=self._counter("failures"),
                disk_low=self.disk_low,
            )

    def last_error(self) -> str:
        with self._lock:
            row = self._db.execute(
                "SELECT last_error FROM examples WHERE last_error != '' "
                "ORDER BY next_attempt_at DESC LIMIT 1"
            ).fetchone()
            return str(row[0]) if row else ""

    def compact(self) -> None:
        """Give freed pages back to the file system (cheap; run from housekeeping)."""
        with self._lock:
            self._db.execute("PRAGMA incremental_vacuum")
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()  # releases the flock
