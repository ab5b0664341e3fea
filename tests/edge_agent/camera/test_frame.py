"""Frames made from decoded YUV pictures: converted once and only when asked, and
letterboxed for the model straight from the YUV planes."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import av
import cv2
import numpy as np
import pytest

from edge_agent.camera import Frame
from edge_agent.camera.pyav_source import AVPicture
from edge_agent.inference import letterbox_i420, letterbox_image
from shared.synth import LineConfig, SyntheticLine


def picture(width: int, height: int, seed: int = 0) -> tuple[AVPicture, np.ndarray]:
    """A synthetic-line frame as a YUV 4:2:0 PyAV picture, and the BGR it came from."""
    line = SyntheticLine(LineConfig(width=max(width, 128), height=max(height, 128), seed=seed))
    bgr = cv2.resize(line.next_frame().image, (width, height))
    frame = av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format="yuv420p")
    return AVPicture(frame), bgr


class CountingPicture:
    """Counts conversions (and makes them slow, so two threads would overlap)."""

    def __init__(self, inner: AVPicture) -> None:
        self.inner = inner
        self.conversions = 0
        self.width, self.height = inner.width, inner.height

    def bgr(self) -> np.ndarray:
        self.conversions += 1
        time.sleep(0.05)
        return self.inner.bgr()

    def i420(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.inner.i420()


def test_a_picture_is_converted_once_even_when_threads_ask_together() -> None:
    counting = CountingPicture(picture(320, 240)[0])
    frame = Frame("cam", 0, None, datetime.now(UTC), time.monotonic(), picture=counting)
    assert frame.size == (240, 320) and counting.conversions == 0
    assert frame.i420() is not None
    images: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: images.append(frame.image)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counting.conversions == 1
    assert all(image is images[0] for image in images)
    assert frame.i420() is None  # the BGR image is there now: the cheaper source


def test_a_frame_needs_pixels() -> None:
    with pytest.raises(ValueError, match="image or a decoded picture"):
        Frame("cam", 0, None, datetime.now(UTC), time.monotonic())


@pytest.mark.parametrize(
    ("width", "height", "size"),
    # 1000 wide: rows padded to 1024 bytes in the planes, which the views must skip.
    [(1920, 1080, 320), (1280, 720, 640), (1000, 562, 320)],
)
def test_letterbox_from_yuv_matches_converting_first(width: int, height: int, size: int) -> None:
    pic, _ = picture(width, height)
    fitted = letterbox_i420(pic.i420(), size, size)
    assert fitted is not None
    canvas, mapping = fitted
    reference, reference_mapping = letterbox_image(pic.bgr(), size, size)
    assert mapping == reference_mapping  # the same geometry, so boxes map back the same
    assert canvas.shape == reference.shape == (size, size, 3)
    difference = np.abs(canvas.astype(int) - reference.astype(int))
    assert difference.mean() < 1.5  # resize-then-convert vs convert-then-resize
    assert np.all(canvas[0, :] == 114) and np.all(reference[0, :] == 114)  # same padding


def test_an_odd_fitted_size_falls_back_to_the_bgr_path() -> None:
    odd, _ = picture(642, 482)
    assert letterbox_i420(odd.i420(), 321, 321) is None  # 321 x 241: 4:2:0 needs even sides
