from __future__ import annotations

import functools
import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.camera import (
    Backoff,
    CameraState,
    CameraWorker,
    FrameHub,
    FrameSource,
    OpenCVSource,
    PyAVSource,
    SyntheticSource,
    redact_url,
)
from edge_agent.camera.frame import normalise_image
from edge_agent.camera.sources import Capture
from edge_agent.errors import CameraError
from shared.synth import LineConfig
from tests.waiting import wait_for as _wait_for


class ScriptedSource(FrameSource):
    """Fails to open ``open_failures`` times, then yields ``script`` items (image, 'err', None)."""

    live = True

    def __init__(self, script: list[object], open_failures: int = 0) -> None:
        self.script = list(script)
        self.open_failures = open_failures
        self.opens = 0

    @property
    def description(self) -> str:
        return "scripted"

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.open_failures:
            raise CameraError("camera unreachable")

    def read(self) -> Capture | None:
        if not self.script:
            return None
        item = self.script.pop(0)
        if isinstance(item, str):
            raise CameraError("stream broke")
        return item, None  # type: ignore[return-value]


GOOD = np.zeros((32, 32, 3), np.uint8)
FAST = Backoff(initial_s=0.01, max_s=0.02, rng=random.Random(0))

wait_for = functools.partial(_wait_for, timeout=5.0)


def run_worker(
    source: FrameSource, **kwargs: object
) -> tuple[CameraWorker, FrameHub, threading.Event]:
    hub, stop = FrameHub(), threading.Event()
    worker = CameraWorker("cam", source, hub, stop, backoff=FAST, **kwargs)  # type: ignore[arg-type]
    worker.start()
    return worker, hub, stop


def test_reconnects_after_open_failures_and_read_errors() -> None:
    source = ScriptedSource([GOOD, "err", GOOD, GOOD], open_failures=2)
    worker, _hub, stop = run_worker(source)
    assert wait_for(lambda: worker.state is CameraState.ENDED)
    assert source.opens == 4  # 2 failures, 1 stream that broke, 1 to the end
    assert worker.stats.frames == 3 and worker.stats.read_errors == 1
    assert worker.stats.reconnects == 1
    assert worker.stats.last_error == "stream broke"
    stop.set()


def test_corrupt_frames_are_counted_and_skipped() -> None:
    bad = [
        None,
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((32, 32, 3), np.float32),
        np.zeros((4, 4, 3), np.uint8),
    ]
    source = ScriptedSource([*bad, GOOD])
    worker, hub, stop = run_worker(source)
    assert wait_for(lambda: worker.state is CameraState.ENDED)
    assert worker.stats.corrupt_frames == 4 and worker.stats.frames == 1
    assert hub.take()[0].sequence == 0
    stop.set()


class GarbageSource(ScriptedSource):
    """A camera that keeps sending undecodable frames (a broken encoder)."""

    def read(self) -> Capture | None:
        time.sleep(0.002)
        return None, None  # type: ignore[return-value]


def test_only_corrupt_frames_means_stalled_then_reconnect() -> None:
    source = GarbageSource([])
    worker, _hub, stop = run_worker(source, stall_timeout_s=0.05)
    assert wait_for(lambda: worker.stats.reconnects >= 1)
    stop.set()
    worker.join(2)


def test_camera_that_never_opens_keeps_retrying_until_stop() -> None:
    source = ScriptedSource([], open_failures=10**9)
    worker, _hub, stop = run_worker(source)
    assert wait_for(lambda: source.opens >= 3)
    assert worker.state is CameraState.RECONNECTING
    stop.set()
    worker.join(2)
    assert not worker.is_alive() and worker.state is CameraState.ENDED


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[-1] >= 4.0  # reached the cap region
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_synthetic_source_paced_and_labelled() -> None:
    source = SyntheticSource(LineConfig(width=320, height=320, part_size=(28, 52), seed=1))
    worker, hub, stop = run_worker(source, fps_limit=50.0)
    time.sleep(0.5)
    stop.set()
    worker.join(2)
    assert 10 <= worker.stats.frames <= 40, "about 50 FPS for 0.5 s"
    (frame,) = hub.take()
    assert frame.truth is not None and frame.image.shape == (320, 320, 3)


@pytest.mark.parametrize("capture", [OpenCVSource, PyAVSource])
def test_video_file_source_ends_or_loops(tmp_path: Path, capture: type[FrameSource]) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    worker, hub, stop = run_worker(capture(str(path)), lossless=True)  # type: ignore[call-arg]
    seen: list[int] = []
    deadline = time.monotonic() + 10
    while len(seen) < 5 and time.monotonic() < deadline:
        seen += [int(frame.image.mean()) for frame in hub.take(1, timeout=0.1)]
    assert wait_for(lambda: worker.state is CameraState.ENDED)
    assert worker.stats.frames == 5
    # Every frame in order, decoded to the picture that was written (MJPEG is lossy).
    assert [round(value / 40) for value in seen] == [0, 1, 2, 3, 4]
    looping, _hub2, stop2 = run_worker(capture(str(path), loop=True))  # type: ignore[call-arg]
    assert wait_for(lambda: looping.stats.frames > 12)
    stop.set()
    stop2.set()


@pytest.mark.parametrize("capture", [OpenCVSource, PyAVSource])
def test_missing_file_and_unreachable_stream_fail_to_open(
    tmp_path: Path, capture: type[FrameSource]
) -> None:
    with pytest.raises(CameraError, match="cannot open"):
        capture(str(tmp_path / "absent.mp4")).open()  # type: ignore[call-arg]
    source = OpenCVSource("rtsp://user:secret@127.0.0.1:9/stream", open_timeout_s=0.5)
    with pytest.raises(CameraError) as info:
        source.open()
    assert "secret" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:pa55@10.0.0.5:554/h264") == "rtsp://***@10.0.0.5:554/h264"
    assert redact_url("rtsp://10.0.0.5/h264") == "rtsp://10.0.0.5/h264"


def test_normalise_image_converts_grey_and_bgra() -> None:
    grey = normalise_image(np.zeros((20, 20), np.uint8))
    bgra = normalise_image(np.zeros((20, 20, 4), np.uint8))
    assert grey is not None and grey.shape == (20, 20, 3)
    assert bgra is not None and bgra.shape == (20, 20, 3)


def test_synthetic_drift_schedule_changes_the_line_after_n_frames() -> None:
    from edge_agent.camera.sources import SyntheticSource
    from shared.synth import LineConfig, SyntheticLine

    source = SyntheticSource(LineConfig(seed=4), drift_schedule=[(3, "lighting")])
    source.open()
    frames = [source.read() for _ in range(4)]
    assert all(f is not None for f in frames)
    assert "lighting" in source.description
    # Frame 4 is the first of the drifted line (which restarts its belt).
    drifted = SyntheticLine(LineConfig(seed=4, drift="lighting")).next_frame().image
    assert (frames[3][0] == drifted).all()  # type: ignore[index]
    assert not (frames[0][0] == drifted).all()  # type: ignore[index]


def test_drift_schedule_config_is_validated() -> None:
    import pytest
    from pydantic import ValidationError

    from edge_agent.config import SyntheticCamera

    with pytest.raises(ValidationError, match="unknown drift"):
        SyntheticCamera(id="c", drift_schedule=[{"after_frames": 5, "drift": "fog"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="increasing"):
        SyntheticCamera(
            id="c",
            drift_schedule=[
                {"after_frames": 5, "drift": "blur_angle"},
                {"after_frames": 5, "drift": "lighting"},
            ],  # type: ignore[list-item]
        )
