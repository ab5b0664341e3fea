"""Real broker, object-store and database processes on loopback, for tests, benchmarks and
the demo.

These start the same software a plant would run (mosquitto, PostgreSQL) or a real
S3-compatible HTTP server (moto's server mode, nanio), as child processes on free loopback
ports, and can stop and restart them to simulate outages. Nothing here is imported by the
agent or trainer at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from shared.errors import LinefleetError

LOOPBACK = "127.0.0.1"


class ServiceError(LinefleetError):
    """A local service could not be found, started or reached."""


PORT_ATTEMPTS = 3
# What our services print when their port is taken: uvicorn/moto ("address already in use"),
# mosquitto ("Address in use"), Label Studio ("port is already in use"), postgres.
_PORT_TAKEN_SIGNS = ("address already in use", "address in use", "port is already in use")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening(host: str, port: int, *, source_port: int = 0) -> bool:
    """Whether something listens on ``host:port``. A port from :func:`free_port` lies in the
    ephemeral range, so a connect from a source port that happens to be the same one
    "succeeds" with nothing listening (TCP simultaneous open, the socket connected to
    itself): that does not count."""
    try:
        with socket.create_connection(
            (host, port), timeout=0.2, source_address=(host, source_port)
        ) as sock:
            return bool(sock.getsockname() != sock.getpeername())
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"process exited with code {process.returncode} before listening")
        if listening(host, port):
            return
        time.sleep(0.02)
    raise ServiceError(f"nothing listened on {host}:{port} within {timeout:.1f} s")


def find_mosquitto() -> str:
    """Path of the mosquitto binary; Debian puts it in /usr/sbin, often not on PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ServiceError(
            "mosquitto is not installed: run `make test` (it installs it) or "
            "`apt-get install mosquitto`"
        )
    return found


def _raise_open_files_limit() -> None:
    """A broker serving a thousand clients needs more than the usual 1,024 descriptors (at
    1,024 mosquitto served 1,015 clients and hung the rest without an error)."""
    import resource  # noqa: PLC0415 - POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _ChildService:
    """Start/stop/restart bookkeeping shared by the concrete services."""

    name = "service"
    start_timeout = 10.0

    def __init__(self, workdir: Path, port: int | None = None, host: str = LOOPBACK) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        # A port we picked may be taken by someone else's connection before the service
        # binds it; only then, and only before the first start succeeded, may it change.
        self._may_move_port = port is None
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _user(self) -> str | None:
        """The user to run the process as (None: this process's user)."""
        return None

    def _prepare(self) -> None:
        """One-time set-up before the first start (e.g. initialising a data folder)."""

    def _ready(self) -> bool:
        """Whether the service answers, once its port is open."""
        return True

    def _cleanup(self) -> None:
        """Remove what the service left behind, once it is stopped for good."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start and wait until the service answers. A port this object picked (see
        :func:`free_port`) can be taken by another process's outgoing connection between
        the pick and the bind (CI saw it once in 600 starts): then the first start moves to
        a fresh port, up to :data:`PORT_ATTEMPTS` times. A restart keeps its port, since
        clients know it."""
        if self.running:
            return self
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start_once()
            except ServiceError:
                said = self.log_path.read_text(errors="replace")[log_offset:].lower()
                lost_port = any(sign in said for sign in _PORT_TAKEN_SIGNS)
                if not (self._may_move_port and lost_port and attempt < PORT_ATTEMPTS):
                    raise
                self.port = free_port(self.host)
                continue
            self._may_move_port = False
            return self
        raise AssertionError("unreachable: the last attempt raises or returns")

    def _start_once(self) -> None:
        self._prepare()
        _raise_open_files_limit()  # inherited by the child
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                user=self._user(),
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            wait_for_port(self.host, self.port, timeout=self.start_timeout, process=self._process)
            deadline = time.monotonic() + self.start_timeout
            while not self._ready():
                if time.monotonic() > deadline or not self.running:
                    raise ServiceError(f"{self.name} listens but does not answer")
                time.sleep(0.05)
        except ServiceError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(
                f"{self.name} did not start on port {self.port}: {exc}\n{tail}"
            ) from exc

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process (SIGTERM, or SIGKILL with ``kill``) and wait for it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._cleanup()


class MosquittoProcess(_ChildService):
    """A foreground mosquitto with a generated config; retained messages survive restarts."""

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        persistence: bool = True,
        extra_config: str = "",
    ) -> None:
        super().__init__(workdir, port, host)
        self.binary = find_mosquitto()
        self.persistence = persistence
        self.extra_config = extra_config
        self.config_path = workdir / "mosquitto.conf"

    def _command(self) -> list[str]:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true" if "allow_anonymous" not in self.extra_config else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_inflight_messages 100",
            "max_queued_messages 100000",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root mosquitto would drop to user `mosquitto`, who cannot read our temp dir.
            lines.append("user root")
        lines.append(self.extra_config)
        self.config_path.write_text("\n".join(line for line in lines if line) + "\n")
        return [self.binary, "-c", str(self.config_path)]

    @property
    def version(self) -> str:
        out = subprocess.run(  # noqa: S603
            [self.binary, "-h"], capture_output=True, text=True, check=False, timeout=5
        ).stdout
        first = out.splitlines()[0] if out else "mosquitto"
        return first.replace("mosquitto version ", "").strip()


class NanioS3Process(_ChildService):
    """nanio: an S3-compatible server on plain folders. It checks SigV4 signatures (a wrong
    secret gets 403) and its objects survive a restart, which outage tests need."""

    name = "nanio-s3"
    start_timeout = 30.0
    region = "us-east-1"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        access_key: str = "linefleet",
        secret_key: str = "linefleet-secret",  # noqa: S107 - local test/demo server only
    ) -> None:
        super().__init__(workdir, port, host)
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = workdir / "data"

    def _command(self) -> list[str]:
        binary = shutil.which("nanio") or str(Path(sys.executable).with_name("nanio"))
        return [
            binary,
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--no-access-log",
            "--log-level",
            "warning",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NANIO_ACCESS_KEY"] = self.access_key
        env["NANIO_SECRET_KEY"] = self.secret_key
        return env

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class MotoS3Process(_ChildService):
    """moto's S3-compatible HTTP server (in memory: objects do not survive a restart)."""

    name = "moto-s3"
    start_timeout = 30.0
    access_key = "testing"
    secret_key = "testing"  # noqa: S105 - moto accepts any credentials
    region = "us-east-1"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
        return env

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def find_postgres_bindir() -> Path:
    """The folder of PostgreSQL's server programs. Debian keeps them off PATH, in
    ``/usr/lib/postgresql/<major>/bin``; the newest major version there wins."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if path.parent.parent.name.isdigit()
    ]
    if not installed:
        raise ServiceError(
            "PostgreSQL is not installed: run `make test` (it installs it) or "
            "`apt-get install postgresql`"
        )
    return max(installed, key=lambda folder: int(folder.parent.name))


class PostgresProcess(_ChildService):
    """A throwaway PostgreSQL server: its own cluster in a private folder, trust
    authentication on loopback only, fsync off (test data). PostgreSQL refuses to run as
    root, so under root the cluster belongs to the ``postgres`` user the package creates."""

    name = "postgres"
    start_timeout = 30.0
    role = "linefleet"

    def __init__(self, workdir: Path, *, port: int | None = None, host: str = LOOPBACK) -> None:
        super().__init__(workdir, port, host)
        self.bindir = find_postgres_bindir()
        self._run_as = "postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        # Under root the pytest temp folders (mode 0700) are closed to `postgres`.
        self._private = Path(tempfile.mkdtemp(prefix="linefleet-pg-")) if self._run_as else None
        self.data_dir = (self._private or workdir) / "data"

    def _user(self) -> str | None:
        return self._run_as

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self._private is not None and self._run_as is not None:
            shutil.chown(self._private, user=self._run_as)
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                self.role,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=self._run_as,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed ({result.returncode}): {result.stderr[-2000:]}")

    def _command(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.data_dir),  # the unix socket stays inside the cluster's folder
            "-F",  # no fsync: test data
        ]

    def _ready(self) -> bool:
        return self._psql("postgres", "SELECT 1").returncode == 0

    def _psql(self, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or psql)
        return subprocess.run(  # noqa: S603 - fixed argv, no shell
            [
                str(psql),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.role,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        if not name.isidentifier():
            raise ServiceError(f"database name {name!r} is not a plain identifier")
        result = self._psql("postgres", f'CREATE DATABASE "{name}"')
        if result.returncode != 0:
            raise ServiceError(f"cannot create database {name}: {result.stderr.strip()[:500]}")
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.role}@{self.host}:{self.port}/{database}"

    def _cleanup(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)


def find_label_studio() -> str:
    """The ``label-studio`` command: ``$LINEFLEET_LABEL_STUDIO``, the virtual environment
    ``make test`` creates for it (its pins would fight ours), or one on the PATH."""
    candidates = [
        os.environ.get("LINEFLEET_LABEL_STUDIO"),
        str(Path(__file__).resolve().parents[1] / ".labelstudio-venv" / "bin" / "label-studio"),
        shutil.which("label-studio"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(
        "label-studio not found: `make labelstudio` installs it into .labelstudio-venv "
        "(or set LINEFLEET_LABEL_STUDIO to its command)"
    )


class LabelStudioProcess(_ChildService):
    """A real Label Studio server (SQLite, one admin user) on loopback, offline: its version
    check, analytics and error reporting are switched off. Its first start migrates the
    database, which takes about a minute."""

    name = "label-studio"
    start_timeout = 300.0
    username = "admin@linefleet.test"
    password = "linefleet-labels"  # noqa: S105 - local test/demo server only
    legacy_token = "linefleet-legacy-token"  # noqa: S105 - local test/demo server only

    def __init__(self, workdir: Path, *, port: int | None = None, host: str = LOOPBACK) -> None:
        super().__init__(workdir, port, host)
        self.data_dir = workdir / "data"
        self._pat: str | None = None

    def _command(self) -> list[str]:
        return [
            find_label_studio(),
            "start",
            "--no-browser",
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--username",
            self.username,
            "--password",
            self.password,
            "--user-token",
            self.legacy_token,
            "--enable-legacy-api-token",
            "--log-level",
            "WARNING",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LATEST_VERSION_CHECK": "false",
                "COLLECT_ANALYTICS": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
                # Its SSRF guard blocks private and loopback addresses by default, our S3
                # server among them; the guard stays on for any subnet listed here.
                "USE_DEFAULT_BANNED_SUBNETS": "false",
                "USER_ADDITIONAL_BANNED_SUBNETS": "169.254.0.0/16",
            }
        )
        env.pop("HOST", None)  # Label Studio reads HOST as its public URL
        return env

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def personal_access_token(self) -> str:
        """A personal access token of the admin (the kind people copy from Label Studio's
        Account & Settings), created once through its API."""
        if self._pat is None:
            request = urllib.request.Request(  # noqa: S310 - loopback URL of our own server
                f"{self.url}/api/token/",
                method="POST",
                headers={"Authorization": f"Token {self.legacy_token}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                self._pat = str(json.load(response)["token"])
        return self._pat
