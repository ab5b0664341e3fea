"""A captured frame and the camera states the agent reports."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.detections import Detections
from shared.messages import CameraState

__all__ = ["CameraState", "DecodedPicture", "Frame", "I420Planes", "normalise_image"]

#: The Y, U and V planes of a YUV 4:2:0 picture (U and V at half width and height).
I420Planes = tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]]


def normalise_image(image: NDArray[np.uint8] | None) -> NDArray[np.uint8] | None:
    """BGR HxWx3 uint8, converting grey and BGRA; ``None`` for anything unusable."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        return None
    if image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 16:
        return image
    return None


class DecodedPicture(Protocol):
    """A decoded video picture, converted to BGR only if someone asks for it.

    Converting a 1080p YUV picture to BGR costs about a quarter of decoding it (1.7 vs 6 ms
    on the 2-core EPYC); the model needs a small letterboxed copy, which the pipeline makes
    from the YUV planes directly (:func:`edge_agent.inference.letterbox_i420`), and a newer
    frame replaces an unread one. So most frames are never converted at full size."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    def bgr(self) -> NDArray[np.uint8]:
        """The full picture as BGR HxWx3 uint8."""

    def i420(self) -> I420Planes:
        """Views of the picture's Y, U and V planes (no copy)."""


class Frame:
    """One camera frame: its pixels (BGR, or a decoded picture converted on first use), when
    it was read, and for the synthetic line its exact labels. Treated as immutable: several
    threads hold the same frame."""

    __slots__ = (
        "_image",
        "_lock",
        "_picture",
        "camera_id",
        "captured_at",
        "captured_mono",
        "sequence",
        "truth",
    )

    def __init__(
        self,
        camera_id: str,
        sequence: int,  # per camera, from 0, never reused within a run
        image: NDArray[np.uint8] | None,  # BGR HxWx3, or None with a picture
        captured_at: datetime,  # wall clock, for people and object keys
        captured_mono: float,  # time.monotonic(), for latencies
        *,
        truth: Detections | None = None,  # exact labels, synthetic line only
        picture: DecodedPicture | None = None,
    ) -> None:
        if image is None and picture is None:
            raise ValueError("a frame needs an image or a decoded picture")
        self.camera_id = camera_id
        self.sequence = sequence
        self.captured_at = captured_at
        self.captured_mono = captured_mono
        self.truth = truth
        self._image = image
        self._picture = picture
        # Several threads may ask for the image (pipeline, mining); PyAV's converter must
        # not run twice at once on one picture, and converting twice would be waste.
        self._lock = threading.Lock()

    @property
    def image(self) -> NDArray[np.uint8]:
        """BGR HxWx3 uint8, converted from the decoded picture the first time it is asked."""
        image = self._image
        if image is not None:
            return image
        with self._lock:
            if self._image is None:
                assert self._picture is not None
                self._image = self._picture.bgr()
            return self._image

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) without converting anything."""
        if self._image is not None:
            return int(self._image.shape[0]), int(self._image.shape[1])
        assert self._picture is not None
        return self._picture.height, self._picture.width

    def i420(self) -> I420Planes | None:
        """The YUV planes while the frame has not been converted to BGR, else ``None``
        (then the BGR image is there already, and is the cheaper source)."""
        if self._image is not None or self._picture is None:
            return None
        return self._picture.i420()

    @property
    def frame_id(self) -> str:
        """Unique per camera across restarts (the sequence restarts, the clock does not)."""
        stamp = self.captured_at.strftime("%Y%m%dT%H%M%S%f")[:-3]
        return f"{self.camera_id}-{stamp}-{self.sequence:08d}"

    def __repr__(self) -> str:
        height, width = self.size
        return f"Frame({self.frame_id}, {width}x{height})"
