"""Real broker and object-store processes on loopback, for tests, benchmarks and the demo.

These start the same software a plant would run (mosquitto) or a real S3-compatible HTTP
server (moto's server mode), as child processes on free loopback ports, and can stop and
restart them to simulate outages. Nothing here is imported by the agent or trainer at run
time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from shared.errors import LinefleetError

LOOPBACK = "127.0.0.1"


class ServiceError(LinefleetError):
    """A local service could not be found, started or reached."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"process exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
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
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        _raise_open_files_limit()  # inherited by the child
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            wait_for_port(self.host, self.port, timeout=self.start_timeout, process=self._process)
        except ServiceError as exc:
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ServiceError(
                f"{self.name} did not start on port {self.port}: {exc}\n{tail}"
            ) from exc
        return self

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
