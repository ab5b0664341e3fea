"""Frame sources: the synthetic line, and OpenCV capture for RTSP/HTTP/USB/video files.

A source only opens, reads and closes; states, pacing, stall detection and reconnects are the
worker's job, so every source gets the same behaviour.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from edge_agent.camera.frame import DecodedPicture
from edge_agent.errors import CameraError
from shared.detections import Detections
from shared.synth import LineConfig, SyntheticLine

#: (image or decoded picture, exact labels): ``None`` for a frame the source skipped as corrupt.
Capture = tuple[NDArray[np.uint8] | DecodedPicture | None, Detections | None]
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """``rtsp://user:secret@cam/stream`` -> ``rtsp://***@cam/stream``: safe to log."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", url)


class FrameSource(ABC):
    #: Whether frames arrive at the camera's own pace (live) or as fast as we read (files).
    live: bool = True

    @property
    @abstractmethod
    def description(self) -> str:
        """What to show in logs and /status; never contains credentials."""

    @abstractmethod
    def open(self) -> None:
        """Connect; raises :class:`CameraError` when the camera cannot be opened."""

    @abstractmethod
    def read(self) -> Capture | None:
        """Next frame, ``None`` at the end of a finite source; raises :class:`CameraError`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device or stream."""


class SyntheticSource(FrameSource):
    """The project's synthetic conveyor, with exact labels on every frame."""

    live = False

    def __init__(
        self,
        config: LineConfig,
        *,
        max_frames: int | None = None,
        drift_schedule: Sequence[tuple[int, str]] = (),
    ) -> None:
        self._config = config
        self._line: SyntheticLine | None = None
        self._max_frames = max_frames
        self._count = 0
        # (after_frames, drift) steps, applied in order as frames go by.
        self._schedule = sorted(drift_schedule)

    @property
    def description(self) -> str:
        return f"synthetic line (seed {self._config.seed}, drift {self._config.drift})"

    def set_drift(self, drift: str) -> None:
        """Change line conditions mid-run (the demo's drifting line); keeps the seed."""
        self._config = self._config.model_copy(update={"drift": drift})
        self._line = SyntheticLine(self._config)

    def open(self) -> None:
        if self._line is None:
            self._line = SyntheticLine(self._config)

    def read(self) -> Capture | None:
        if self._line is None:
            raise CameraError("synthetic source read before open")
        if self._max_frames is not None and self._count >= self._max_frames:
            return None
        if self._schedule and self._count >= self._schedule[0][0]:
            self.set_drift(self._schedule.pop(0)[1])
        self._count += 1
        frame = self._line.next_frame()
        return frame.image, frame.truth


class OpenCVSource(FrameSource):
    """RTSP/HTTP streams, USB devices (an integer index) and video files through OpenCV."""

    def __init__(
        self,
        url: str | int,
        *,
        loop: bool = False,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._loop = loop
        self._open_timeout_ms = int(open_timeout_s * 1000)
        self._read_timeout_ms = int(read_timeout_s * 1000)
        self._capture: cv2.VideoCapture | None = None
        self.is_file = isinstance(url, str) and "://" not in url
        self.live = not self.is_file

    @property
    def description(self) -> str:
        if isinstance(self._url, int):
            return f"usb device {self._url}"
        return redact_url(self._url)

    def open(self) -> None:
        self.close()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self._open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self._read_timeout_ms,
        ]
        if isinstance(self._url, int):
            capture = cv2.VideoCapture(self._url, cv2.CAP_ANY, params)
        else:
            capture = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"cannot open {self.description}")
        self._capture = capture

    def read(self) -> Capture | None:
        if self._capture is None:
            raise CameraError(f"{self.description} read before open")
        ok, image = self._capture.read()
        if not ok and self.is_file:
            if not self._loop:
                return None
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._capture.read()
        if not ok or image is None:
            raise CameraError(f"no frame from {self.description}")
        return cast(NDArray[np.uint8], image), None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
