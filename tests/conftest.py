"""Fixtures that start the real services: mosquitto and an S3-compatible HTTP server.

They never skip: a missing mosquitto binary is an error that says how to install it, so a
CI run without the broker fails loudly instead of passing on nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from testing.local_services import (
    LabelStudioProcess,
    MosquittoProcess,
    MotoS3Process,
    NanioS3Process,
    PostgresProcess,
)
from testing.rtsp_camera import RtspServer, encode_clip, rtsp_available


def _announce(config: pytest.Config, message: str) -> None:
    """Print to the real terminal/CI log even though fixtures run under output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(f"[linefleet] {message}")
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[linefleet] {message}")


@pytest.fixture(scope="session")
def mosquitto(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MosquittoProcess]:
    """One real mosquitto for the session; tests isolate themselves by fleet name."""
    broker = MosquittoProcess(tmp_path_factory.mktemp("mosquitto"))
    with broker:
        _announce(
            request.config,
            f"mosquitto {broker.version} listening on {broker.host}:{broker.port} "
            f"(pid {broker.pid})",
        )
        yield broker


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoProcess]]:
    """Private brokers for tests that stop, restart or reconfigure them."""
    started: list[MosquittoProcess] = []

    def make(**kwargs: Any) -> MosquittoProcess:
        broker = MosquittoProcess(tmp_path / f"broker{len(started)}", **kwargs).start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def s3_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MotoS3Process]:
    server = MotoS3Process(tmp_path_factory.mktemp("s3"), port=None, host="127.0.0.1")
    with server:
        _announce(request.config, f"S3 server (moto) at {server.endpoint_url} (pid {server.pid})")
        yield server


@pytest.fixture(scope="session")
def postgres(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresProcess]:
    """One real PostgreSQL server for the session; each test makes its own database."""
    with PostgresProcess(tmp_path_factory.mktemp("postgres")) as server:
        _announce(request.config, f"PostgreSQL at {server.url()} (pid {server.pid})")
        yield server


@pytest.fixture(scope="session")
def label_studio(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioProcess]:
    """One real Label Studio server for the session (from the virtual environment `make
    test` gives it); tests isolate themselves by project title (fleet name)."""
    with LabelStudioProcess(tmp_path_factory.mktemp("label-studio")) as server:
        _announce(request.config, f"Label Studio at {server.url} (pid {server.pid})")
        yield server


def make_s3_client(endpoint_url: str, access_key: str, secret_key: str, region: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


@pytest.fixture
def s3_client(s3_server: MotoS3Process) -> Any:
    return make_s3_client(
        s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, s3_server.region
    )


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = f"lf-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def fleet_name() -> str:
    """A unique fleet id per test, so tests sharing the broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def nanio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NanioS3Process]:
    """A private nanio per test: persistent, signature-checking, stoppable."""
    server = NanioS3Process(tmp_path / "nanio")
    with server:
        _announce(request.config, f"S3 server (nanio) at {server.endpoint_url} (pid {server.pid})")
        yield server


@pytest.fixture
def nanio_client(nanio: NanioS3Process) -> Any:
    return make_s3_client(nanio.endpoint_url, nanio.access_key, nanio.secret_key, nanio.region)


@pytest.fixture(scope="session")
def rtsp_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic-line clips for the RTSP server: two resolutions of H.264 (a camera that
    changes resolution mid-stream switches between them) and one of H.265."""
    missing = rtsp_available()
    if missing is not None:
        pytest.fail(f"the RTSP test server cannot run: {missing}; `make test` installs it")
    directory = tmp_path_factory.mktemp("rtsp-clips")
    return {
        "small": encode_clip(directory, width=320, height=240, frames=75),
        "large": encode_clip(directory, width=480, height=360, frames=75, seed=1),
        "h265": encode_clip(directory, width=320, height=240, frames=50, codec="h265"),
    }


@pytest.fixture
def rtsp_server(rtsp_clips: dict[str, Path]) -> Iterator[Callable[..., RtspServer]]:
    """Starts real RTSP servers (GStreamer) on free loopback ports; stops them after the test."""
    started: list[RtspServer] = []

    def make(mounts: dict[str, str] | None = None, **kwargs: Any) -> RtspServer:
        chosen = mounts or {"cam": "small"}
        server = RtspServer({name: rtsp_clips[clip] for name, clip in chosen.items()}, **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()
