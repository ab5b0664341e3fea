"""Cameras against a real RTSP server (GStreamer's, fed with H.264/H.265 of the synthetic line):
a camera that reboots, stalls with the connection open, changes resolution, sends damaged
frames or refuses our credentials."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.agent import Agent
from edge_agent.camera import (
    Backoff,
    CameraState,
    CameraWorker,
    FrameHub,
    PyAVSource,
)
from edge_agent.config import load_config
from edge_agent.errors import CameraAuthError, CameraError
from shared.messages import utc_now
from testing.rtsp_camera import RtspServer
from tests.edge_agent.onnx_models import brightness_detector
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

QUICK = Backoff(initial_s=0.1, max_s=0.5, rng=random.Random(1))


class CountingSource(PyAVSource):
    """Counts connection attempts (to prove refused credentials are not retried at speed)."""

    opens = 0

    def open(self) -> None:
        self.opens += 1
        super().open()


@pytest.fixture
def run_camera() -> Iterator[Callable[..., tuple[CameraWorker, FrameHub]]]:
    stops: list[threading.Event] = []
    workers: list[CameraWorker] = []

    def start(source: PyAVSource, **kwargs: object) -> tuple[CameraWorker, FrameHub]:
        hub, stop = FrameHub(), threading.Event()
        options: dict[str, object] = {"backoff": QUICK, **kwargs}
        worker = CameraWorker("cam", source, hub, stop, **options)  # type: ignore[arg-type]
        worker.start()
        stops.append(stop)
        workers.append(worker)
        return worker, hub

    yield start
    for stop in stops:
        stop.set()
    for worker in workers:
        worker.join(timeout=15)
        assert not worker.is_alive(), "a camera thread did not stop"


def states(worker: CameraWorker) -> list[CameraState]:
    return [state for _, state, _ in worker.history]


def in_order(history: list[CameraState], *expected: CameraState) -> bool:
    """Whether ``expected`` occur in ``history`` in this order (others may come between)."""
    remaining = iter(history)
    return all(any(state is wanted for state in remaining) for wanted in expected)


def take_one(hub: FrameHub, timeout: float = 5.0) -> list:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frames = hub.take(1, timeout=0.1)
        if frames:
            return frames
    return []


def test_streams_frames_at_the_cameras_pace_converted_only_when_asked(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    frames = take_one(hub)
    assert frames
    (frame,) = frames
    # A decoded picture, not converted to BGR until someone asks for the image.
    planes = frame.i420()
    assert planes is not None and frame.size == (240, 320)
    assert [p.shape for p in planes] == [(240, 320), (120, 160), (120, 160)]
    assert frame.image.shape == (240, 320, 3)
    assert frame.image.mean() > 10  # a real picture, not a black frame
    assert frame.i420() is None  # converted once, kept
    time.sleep(2.2)
    assert 20 <= worker.stats.fps_in <= 30  # the server sends 25 fps
    assert worker.stats.corrupt_frames == 0 and worker.stats.read_errors == 0


def test_a_camera_that_reboots_is_reconnected_with_backoff(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam"), read_timeout_s=3))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    server.kill()
    assert wait_for(lambda: worker.state is CameraState.RECONNECTING, timeout=5)
    time.sleep(1.5)  # several refused attempts, spaced by the backoff
    assert worker.state is CameraState.RECONNECTING
    assert "connection refused" in worker.stats.last_error.lower()
    server.start()
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    before = worker.stats.frames
    assert wait_for(lambda: worker.stats.frames > before + 10, timeout=5)
    assert worker.stats.reconnects >= 1
    assert in_order(
        states(worker), CameraState.STREAMING, CameraState.RECONNECTING, CameraState.STREAMING
    )
    assert take_one(hub)


def test_a_stall_with_the_connection_open_is_detected_within_the_read_timeout(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, _hub = run_camera(PyAVSource(server.url("cam"), read_timeout_s=1.5))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    stalled_at = time.monotonic()
    server.stall("cam")
    assert wait_for(lambda: worker.state is CameraState.STALLED, timeout=6)
    detected_s = time.monotonic() - stalled_at
    # The read timeout, not twice it (FFmpeg's demuxer hands out a held-back frame when the
    # timeout fires; the source counts that as the stall).
    assert 1.4 <= detected_s <= 1.5 + 0.8
    assert worker.stats.stalls == 1
    assert "stalled" in worker.stats.last_error
    assert wait_for(lambda: worker.stats.fps_in == 0.0, timeout=2)  # not the last rate
    # The camera keeps trying while stalled; once frames flow again it streams.
    server.resume("cam")
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    assert in_order(
        states(worker), CameraState.STALLED, CameraState.RECONNECTING, CameraState.STREAMING
    )


def test_a_resolution_change_mid_stream_is_followed(
    rtsp_server: Callable[..., RtspServer],
    run_camera: Callable[..., tuple[CameraWorker, FrameHub]],
    rtsp_clips: dict[str, Path],
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    assert take_one(hub)[0].image.shape == (240, 320, 3)
    server.switch("cam", rtsp_clips["large"])

    def larger() -> bool:
        frames = hub.take(1, timeout=0.1)
        return bool(frames) and frames[0].image.shape == (360, 480, 3)

    assert wait_for(larger, timeout=5)
    assert worker.stats.read_errors == 0 and worker.stats.reconnects == 0


def test_damaged_frames_are_counted_and_skipped_until_the_next_key_frame(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    server.corrupt("cam", 3)
    assert wait_for(lambda: worker.stats.corrupt_frames > 0, timeout=5)
    # It keeps streaming: damage is not a reason to reconnect.
    before = worker.stats.frames
    assert wait_for(lambda: worker.stats.frames > before + 25, timeout=5)
    assert worker.state is CameraState.STREAMING
    assert worker.stats.read_errors == 0 and worker.stats.reconnects == 0
    assert worker.stats.corrupt_frames <= 25  # at most the rest of one GOP of 25
    assert take_one(hub)


def test_refused_credentials_give_a_clear_error_and_slow_retries(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server(user="line", password="right-secret")
    with pytest.raises(CameraAuthError, match="credentials") as caught:
        PyAVSource(server.url("cam", password="wrong-secret")).open()
    assert "wrong-secret" not in str(caught.value)
    source = CountingSource(server.url("cam", password="wrong-secret"))
    worker, _hub = run_camera(source, auth_retry_s=30.0)
    assert wait_for(lambda: worker.state is CameraState.FAILED, timeout=10)
    time.sleep(2.0)
    assert source.opens == 1  # not hammering the camera (30 s between tries)
    assert "credentials" in worker.stats.last_error
    assert "wrong-secret" not in worker.stats.last_error
    # With the right password the same server streams.
    good, _ = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: good.state is CameraState.STREAMING, timeout=10)


def test_latest_frame_semantics_keep_frames_fresh_for_a_slow_consumer(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    time.sleep(1.5)  # past the burst of queued frames a new connection gets
    ages: list[float] = []
    for _ in range(15):
        time.sleep(0.15)  # a model slower than the camera
        for frame in hub.take(1, timeout=0.5):
            ages.append(time.monotonic() - frame.captured_mono)
    assert len(ages) >= 12
    ages.sort()
    # One frame interval (40 ms) plus scheduling: frames do not queue up behind the consumer
    # (a queue would make them 150 ms older at every take). The worst take may meet the
    # server's own jitter on a loaded machine.
    assert ages[len(ages) // 2] < 0.045 and ages[-2] < 0.070 and ages[-1] < 0.150
    assert hub.dropped["cam"] > 0  # stale frames were replaced, not queued


def test_keyframes_only_decoding_drops_inter_frames_before_decoding(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server()
    worker, hub = run_camera(PyAVSource(server.url("cam"), decode="keyframes"))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    time.sleep(1.0)
    start_frames, started = worker.stats.frames_read, time.monotonic()
    time.sleep(3.0)
    rate = (worker.stats.frames_read - start_frames) / (time.monotonic() - started)
    assert 0.5 <= rate <= 2.0  # one key frame a second (GOP 25 at 25 fps)
    assert worker.stats.corrupt_frames == 0
    assert take_one(hub)


def test_h265_streams_decode(
    rtsp_server: Callable[..., RtspServer], run_camera: Callable[..., tuple[CameraWorker, FrameHub]]
) -> None:
    server = rtsp_server({"cam": "h265"})
    worker, hub = run_camera(PyAVSource(server.url("cam")))
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    frames = take_one(hub)
    assert frames and frames[0].image.shape == (240, 320, 3)


def test_nothing_listening_is_a_clear_error() -> None:
    source = PyAVSource("rtsp://user:secret@127.0.0.1:9/stream", open_timeout_s=1.0)
    with pytest.raises(CameraError) as caught:
        source.open()
    assert "secret" not in str(caught.value)
    assert "***@127.0.0.1:9" in str(caught.value)


def test_the_agent_reports_each_cameras_rates_age_and_stalls(
    rtsp_server: Callable[..., RtspServer], tmp_path: Path
) -> None:
    server = rtsp_server(user="line", password="hunter2")
    model = brightness_detector(
        tmp_path / "model.onnx", names=["bolt", "nut", "washer", "bracket", "defect"]
    )
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
device: {{id: edge-rtsp, fleet: test}}
cameras:
  - {{kind: stream, id: line1, url: "{server.url("cam")}", read_timeout_s: 1.5}}
model: {{path: {model}}}
mqtt: {{enabled: false}}
api: {{port: 0}}
logging: {{json_format: false}}
state_dir: {tmp_path / "state"}
"""
    )
    agent = Agent(load_config(config))
    agent.start()
    try:
        assert agent.api is not None
        base = f"http://127.0.0.1:{agent.api.port}"

        def camera() -> dict[str, Any]:
            status: dict[str, Any] = httpx.get(f"{base}/status", timeout=5).json()
            return dict(status["cameras"]["line1"])

        assert wait_for(lambda: camera()["fps_in"] > 20, timeout=15)
        streaming = camera()
        assert streaming["state"] == "streaming" and streaming["fps"] > 20
        # Frames are picked up fresh (p50 inside a frame interval), not queued.
        assert 0 < streaming["frame_age_ms_p50"] < 40 and streaming["frame_age_ms_p99"] < 150
        assert "hunter2" not in streaming["source"]
        beat = agent.status().heartbeat(utc_now()).cameras["line1"]
        assert beat.fps_in > 20 and beat.frame_age_ms_p99 > 0
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'linefleet_camera_fps_in{camera="line1"}' in metrics
        server.stall("cam")
        assert wait_for(lambda: camera()["stalls"] >= 1, timeout=10)
        stalled = camera()
        assert "stalled" in stalled["last_error"] and "hunter2" not in stalled["last_error"]
        server.resume("cam")
        assert wait_for(lambda: camera()["state"] == "streaming", timeout=15)
        # The state machine's recent steps, for an operator asking why it reconnected.
        steps = [(step["state"], step["reason"]) for step in camera()["recent_states"]]
        assert ("stalled", "no data within the read timeout") in steps
        assert steps[-1][0] == "streaming" and "reconnecting" in [state for state, _ in steps]
    finally:
        agent.stop()


def test_hardware_decoding_missing_on_the_box_is_a_clear_error(
    rtsp_server: Callable[..., RtspServer],
) -> None:
    """This machine has no GPU: asking for CUDA decoding names the cause and the way out."""
    server = rtsp_server()
    with pytest.raises(CameraError, match=r"hardware decoding 'cuda'.*hwaccel: none"):
        PyAVSource(server.url("cam"), hwaccel="cuda").open()


def test_pictures_above_max_pixels_are_refused_at_open_and_mid_stream(
    rtsp_server: Callable[..., RtspServer],
    run_camera: Callable[..., tuple[CameraWorker, FrameHub]],
    rtsp_clips: dict[str, Path],
) -> None:
    """A camera (or whatever answers at its address) cannot make the decoder allocate
    arbitrary pictures: a declared size above max_pixels is refused when opening, and
    parameter sets for a larger picture mid-stream make undecodable frames, not a crash."""
    server = rtsp_server({"cam": "large"})
    with pytest.raises(CameraError, match=r"sends 480x360, above the camera's max_pixels"):
        PyAVSource(server.url("cam"), max_pixels=320 * 240).open()
    small = rtsp_server({"cam": "small"})
    worker, hub = run_camera(
        PyAVSource(small.url("cam"), max_pixels=320 * 240), stall_timeout_s=2.0
    )
    assert wait_for(lambda: worker.state is CameraState.STREAMING, timeout=10)
    assert take_one(hub)
    small.switch("cam", rtsp_clips["large"])
    assert wait_for(lambda: worker.stats.corrupt_frames > 10, timeout=10)
    assert wait_for(lambda: worker.stats.stalls >= 1, timeout=10)
    assert "undecodable" in worker.stats.last_error
