"""The camera state machine: connect, stream, detect stalls, reconnect with backoff.

connecting -> streaming -> (stalled | error) -> reconnecting -> streaming ... -> ended.
One thread per camera; it only ever blocks in the source's read (bounded by the source's
timeouts) or in ``stop.wait``, so a stop is honoured promptly.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import cv2
import numpy as np
from numpy.typing import NDArray

from edge_agent.camera.frame import CameraState, Frame
from edge_agent.camera.hub import FrameHub
from edge_agent.camera.sources import FrameSource
from edge_agent.errors import CameraError

log = logging.getLogger(__name__)


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (0.5x-1x of the nominal delay)."""

    initial_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        nominal = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return float(nominal * self.rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class CameraStats:
    frames: int = 0
    corrupt_frames: int = 0
    read_errors: int = 0
    reconnects: int = 0
    last_error: str = ""
    fps: float = 0.0


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


class CameraWorker(threading.Thread):
    def __init__(
        self,
        camera_id: str,
        source: FrameSource,
        hub: FrameHub,
        stop: threading.Event,
        *,
        fps_limit: float | None = None,
        stall_timeout_s: float = 20.0,
        backoff: Backoff | None = None,
        lossless: bool = False,
    ) -> None:
        super().__init__(name=f"camera-{camera_id}", daemon=True)
        self.camera_id = camera_id
        self.source = source
        self.hub = hub
        self.stop_event = stop
        self.fps_limit = fps_limit
        self.stall_timeout_s = stall_timeout_s
        self.backoff = backoff or Backoff()
        # Lossless only makes sense where we set the pace (files, synthetic line).
        self.lossless = lossless and not source.live
        self.stats = CameraStats()
        self._state = CameraState.CONNECTING
        self._state_lock = threading.Lock()
        self._sequence = 0
        hub.register(camera_id)

    @property
    def state(self) -> CameraState:
        with self._state_lock:
            return self._state

    def _set_state(self, state: CameraState, reason: str = "") -> None:
        with self._state_lock:
            if state == self._state:
                return
            self._state = state
        log.info(
            "camera state",
            extra={"camera": self.camera_id, "state": state.value, "reason": reason},
        )

    def run(self) -> None:
        first = True
        while not self.stop_event.is_set():
            self._set_state(CameraState.CONNECTING if first else CameraState.RECONNECTING)
            first = False
            try:
                self.source.open()
            except CameraError as exc:
                self._record_error(str(exc))
                if self.stop_event.wait(self.backoff.next_delay()):
                    break
                continue
            except Exception as exc:  # noqa: BLE001 - a broken driver must not kill the agent
                self._record_error(f"unexpected error opening camera: {exc!r}")
                if self.stop_event.wait(self.backoff.next_delay()):
                    break
                continue
            self.backoff.reset()
            ended = self._stream()
            self.source.close()
            if ended:
                self._set_state(CameraState.ENDED, "end of source")
                return
            self.stats.reconnects += 1
            if self.stop_event.wait(self.backoff.next_delay()):
                break
        self._set_state(CameraState.ENDED, "agent stopping")

    def _stream(self) -> bool:
        """Read until stop, end of source (True) or an error/stall that needs a reconnect."""
        self._set_state(CameraState.STREAMING)
        last_good = time.monotonic()
        period = 1.0 / self.fps_limit if self.fps_limit else 0.0
        next_due = time.monotonic()
        fps_window_start, fps_window_frames = time.monotonic(), 0
        while not self.stop_event.is_set():
            try:
                capture = self.source.read()
            except CameraError as exc:
                self.stats.read_errors += 1
                self._record_error(str(exc))
                return False
            except Exception as exc:  # noqa: BLE001
                self.stats.read_errors += 1
                self._record_error(f"unexpected read error: {exc!r}")
                return False
            now = time.monotonic()
            if capture is None:
                return True
            image = normalise_image(capture[0])
            if image is None:
                self.stats.corrupt_frames += 1
                if now - last_good > self.stall_timeout_s:
                    self._set_state(CameraState.STALLED, "only corrupt frames")
                    return False
                continue
            last_good = now
            frame = Frame(
                camera_id=self.camera_id,
                sequence=self._sequence,
                image=image,
                captured_at=datetime.now(UTC),
                captured_mono=now,
                truth=capture[1],
            )
            self._sequence += 1
            self.stats.frames += 1
            if not self.hub.put(frame, lossless=self.lossless, stop=self.stop_event):
                break
            if self.lossless:
                last_good = time.monotonic()  # waiting for room is back-pressure, not a stall
            fps_window_frames += 1
            if now - fps_window_start >= 1.0:
                self.stats.fps = fps_window_frames / (now - fps_window_start)
                fps_window_start, fps_window_frames = now, 0
            if period and not self.source.live:
                next_due = max(next_due + period, now - period)
                delay = next_due - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
        return False

    def _record_error(self, message: str) -> None:
        self.stats.last_error = message[:300]
        log.warning("camera error", extra={"camera": self.camera_id, "error": message[:300]})
