"""RTSP/HTTP streams and video files through FFmpeg's libraries (PyAV).

Chosen over OpenCV's capture for streams and files because it lets the agent (measured in
``benchmarks/cameras.py``, reasons in the README):

- hand over decoded YUV pictures, converted to BGR only if someone asks
  (:class:`DecodedPicture`; the model's letterbox is made from the YUV planes);
- set options per stream (RTSP over TCP, socket timeouts) instead of one process-wide
  ``OPENCV_FFMPEG_CAPTURE_OPTIONS``;
- tell a stall (no data within the read timeout), refused credentials and the end of a stream
  apart, each by its own exception, and see which frames the decoder flagged as corrupt;
- decode key frames only when the pipeline needs no more (``decode: keyframes``): inter frames
  are dropped before they cost any decoding;
- decode on the GPU where the box has one (``hwaccel: cuda``; frames come back to system
  memory for the pipeline).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Literal, cast

import av
import av.error
import numpy as np
from av.codec.hwaccel import HWAccel
from numpy.typing import NDArray

from edge_agent.camera.frame import I420Planes
from edge_agent.camera.sources import Capture, FrameSource, redact_url
from edge_agent.errors import CameraAuthError, CameraError, CameraStallError

DecodeMode = Literal["all", "keyframes"]
_AUTH_ERRORS = (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)


class PyAVSource(FrameSource):
    """A stream (``rtsp://``, ``http://`` ...) or a video file, decoded by libavcodec.

    ``read`` returns the decoded picture (YUV, converted to BGR only if asked), or ``None``
    as the image for a frame skipped as corrupt: after a frame the decoder flags as
    corrupt, or a packet it cannot decode, every frame up to the next key frame is skipped too,
    because inter frames built on a damaged one carry its garbage (a sorter must not act on
    smeared parts)."""

    def __init__(
        self,
        url: str,
        *,
        loop: bool = False,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        rtsp_transport: Literal["tcp", "udp"] = "tcp",
        decode: DecodeMode = "all",
        decode_threads: int = 1,
        hwaccel: str | None = None,
        max_pixels: int = 8192 * 4320,
    ) -> None:
        self._url = url
        self._loop = loop
        self._open_timeout_s = open_timeout_s
        self._read_timeout_s = read_timeout_s
        self._rtsp_transport = rtsp_transport
        self._decode = decode
        self._decode_threads = decode_threads
        self._hwaccel = hwaccel
        self._max_pixels = max_pixels
        self.is_file = "://" not in url
        self.live = not self.is_file
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[Capture] | None = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return redact_url(self._url)

    def _options(self) -> dict[str, str]:
        if self._url.startswith(("rtsp://", "rtsps://")):
            return {
                "rtsp_transport": self._rtsp_transport,
                "allowed_media_types": "video",
                # FFmpeg probes 5 s by default: a reconnect took 1.1 s and began with a
                # second of stale frames. The SDP and the first key frame tell all we need
                # (measured: open in 0.08 s); 500 kB holds a 1080p key frame.
                "analyzeduration": "200000",
                "probesize": "500000",
            }
        return {}

    def open(self) -> None:
        self.close()
        try:
            container = av.open(
                self._url,
                options=self._options(),
                timeout=(self._open_timeout_s, self._read_timeout_s),
                hwaccel=HWAccel(self._hwaccel) if self._hwaccel else None,
            )
        except _AUTH_ERRORS as exc:
            raise CameraAuthError(
                f"{self.description} refused the credentials ({self._reason(exc)}): "
                "check the user and password in the camera URL"
            ) from exc
        except av.error.ExitError as exc:
            raise CameraError(
                f"{self.description} did not answer within {self._open_timeout_s:g} s"
            ) from exc
        except (av.FFmpegError, OSError) as exc:
            if self._hwaccel:
                raise CameraError(
                    f"cannot open {self.description} with hardware decoding "
                    f"'{self._hwaccel}' ({self._reason(exc)}): is the device there and its "
                    "driver loaded? Without it, set hwaccel: none"
                ) from exc
            raise CameraError(f"cannot open {self.description}: {self._reason(exc)}") from exc
        if not container.streams.video:
            container.close()
            raise CameraError(f"{self.description} has no video stream")
        stream = container.streams.video[0]
        declared = stream.codec_context.width * stream.codec_context.height
        if declared > self._max_pixels:
            container.close()
            raise CameraError(
                f"{self.description} sends {stream.codec_context.width}x"
                f"{stream.codec_context.height}, above the camera's max_pixels "
                f"({self._max_pixels}): lower the camera's resolution or raise max_pixels"
            )
        # The decoder refuses larger pictures too, so a stream that declares a small size
        # and then sends parameter sets for a huge one cannot make it allocate gigabytes.
        stream.codec_context.options = {"max_pixels": str(self._max_pixels)}
        stream.thread_count = self._decode_threads
        if self._decode == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        with self._lock:
            self._container = container
            self._frames = self._decoded(container, stream)

    def _reason(self, exc: BaseException) -> str:
        """FFmpeg's message without the URL it quotes (it holds the credentials)."""
        if isinstance(exc, av.FFmpegError):
            return redact_url(exc.strerror or type(exc).__name__)
        return redact_url(str(exc))

    def _decoded(
        self, container: av.container.InputContainer, stream: av.VideoStream
    ) -> Iterator[Capture]:
        waiting_for_key = False
        while True:
            asked = time.monotonic()
            for packet in container.demux(stream):
                if self.live and time.monotonic() - asked >= self._read_timeout_s:
                    # The read timeout fired: FFmpeg's RTSP demuxer then hands out the frame
                    # it held back (it waits for the next one to know a frame is complete)
                    # and only the read after that fails, a second timeout later. Measured:
                    # a stall took twice the read timeout to detect without this.
                    raise self._stalled()
                if packet.size == 0:
                    continue  # the flush packet at the end of the stream
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    waiting_for_key = True
                    yield None, None
                    asked = time.monotonic()
                    continue
                for frame in frames:
                    if frame.is_corrupt:
                        waiting_for_key = True
                    elif waiting_for_key and frame.key_frame:
                        waiting_for_key = False
                    if waiting_for_key:
                        yield None, None
                    else:
                        yield _picture(frame), None
                asked = time.monotonic()
            if not (self.is_file and self._loop):
                return
            container.seek(0)

    def read(self) -> Capture | None:
        frames = self._frames
        if frames is None:
            raise CameraError(f"{self.description} read before open")
        try:
            return next(frames)
        except StopIteration:
            if self.is_file:
                return None
            raise CameraError(f"{self.description} ended the stream") from None
        except av.error.ExitError as exc:
            raise self._stalled() from exc
        except (av.FFmpegError, OSError) as exc:
            raise CameraError(f"{self.description} failed: {self._reason(exc)}") from exc

    def _stalled(self) -> CameraStallError:
        return CameraStallError(
            f"no data from {self.description} for {self._read_timeout_s:g} s "
            "(connection open, stream stalled)"
        )

    def close(self) -> None:
        with self._lock:
            container, self._container, self._frames = self._container, None, None
        if container is not None:
            # Closing a dead connection can fail: there is nothing left to release then.
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()


_YUV420 = frozenset({"yuv420p", "yuvj420p"})


class AVPicture:
    """A decoded PyAV frame in YUV 4:2:0 as a :class:`DecodedPicture`."""

    __slots__ = ("_frame",)

    def __init__(self, frame: av.VideoFrame) -> None:
        self._frame = frame

    @property
    def width(self) -> int:
        return int(self._frame.width)

    @property
    def height(self) -> int:
        return int(self._frame.height)

    def bgr(self) -> NDArray[np.uint8]:
        return cast(NDArray[np.uint8], self._frame.to_ndarray(format="bgr24"))

    def i420(self) -> I420Planes:
        y, u, v = self._frame.planes
        height, width = self.height, self.width
        return (
            _plane(y, height, width),
            _plane(u, (height + 1) // 2, (width + 1) // 2),
            _plane(v, (height + 1) // 2, (width + 1) // 2),
        )


def _plane(plane: av.video.plane.VideoPlane, rows: int, columns: int) -> NDArray[np.uint8]:
    """A view of a plane without its row padding (lines are aligned, e.g. to 64 bytes)."""
    buffer = np.frombuffer(cast(bytes, plane), np.uint8)  # the plane exports its buffer
    return buffer.reshape(-1, plane.line_size)[:rows, :columns]


def _picture(frame: av.VideoFrame) -> AVPicture | NDArray[np.uint8]:
    """YUV 4:2:0 (what cameras send) stays a lazy picture; any other layout is converted
    now, in the camera thread, where a failure counts as a corrupt frame."""
    if frame.format.name in _YUV420:
        return AVPicture(frame)
    return cast(NDArray[np.uint8], frame.to_ndarray(format="bgr24"))
