"""The camera state machine: connect, stream, detect stalls, reconnect with backoff.

connecting -> streaming -> (stalled | error) -> reconnecting -> streaming ... -> ended; failed
while the camera refuses our credentials (retried slowly). Streaming starts with the first
frame, not the handshake. One thread per camera; it only ever blocks in the source's read
(bounded by the source's timeouts) or in ``stop.wait``, so a stop is honoured promptly.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from edge_agent.camera.frame import CameraState, DecodedPicture, Frame, normalise_image
from edge_agent.camera.hub import FrameHub
from edge_agent.camera.sources import FrameSource
from edge_agent.errors import CameraAuthError, CameraError, CameraStallError
from shared.detections import Detections

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
    frames: int = 0  # offered to the pipeline
    frames_read: int = 0  # everything the source gave, skipped and corrupt ones included
    corrupt_frames: int = 0
    read_errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_error: str = ""
    fps: float = 0.0  # offered to the pipeline per second
    fps_in: float = 0.0  # read from the source per second


class _Rate:
    """Events per second over windows of about a second (for fps in and out)."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._count = 0
        self.value = 0.0

    def tick(self, now: float) -> None:
        self._count += 1
        if now - self._start >= 1.0:
            self.value = self._count / (now - self._start)
            self._start, self._count = now, 0


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
        auth_retry_s: float = 60.0,
    ) -> None:
        super().__init__(name=f"camera-{camera_id}", daemon=True)
        self.camera_id = camera_id
        self.source = source
        self.hub = hub
        self.stop_event = stop
        self.fps_limit = fps_limit
        self.stall_timeout_s = stall_timeout_s
        self.backoff = backoff or Backoff()
        self.auth_retry_s = auth_retry_s
        # Lossless only makes sense where we set the pace (files, synthetic line).
        self.lossless = lossless and not source.live
        self.stats = CameraStats()
        self._state = CameraState.CONNECTING
        self._state_lock = threading.Lock()
        # Recent transitions (monotonic time, state, reason), oldest first: what the camera
        # went through, for /status and for tests of the state machine.
        self.history: deque[tuple[float, CameraState, str]] = deque(maxlen=32)
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
            self.history.append((time.monotonic(), state, reason))
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
            except CameraAuthError as exc:
                # Refused credentials do not fix themselves: retry slowly, never at full speed.
                self._record_error(str(exc))
                self._set_state(CameraState.FAILED, "credentials refused")
                if self.stop_event.wait(self.auth_retry_s * self.backoff.rng.uniform(0.8, 1.0)):
                    break
                continue
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
            ended = self._stream()
            self.stats.fps = self.stats.fps_in = 0.0  # no frames until the next stream
            self.source.close()
            if ended:
                self._set_state(CameraState.ENDED, "end of source")
                return
            if self.stop_event.is_set():
                break
            self.stats.reconnects += 1
            if self.stop_event.wait(self.backoff.next_delay()):
                break
        self._set_state(CameraState.ENDED, "agent stopping")

    def _stream(self) -> bool:
        """Read until stop, end of source (True) or an error/stall that needs a reconnect."""
        streaming = False
        last_good = time.monotonic()
        period = 1.0 / self.fps_limit if self.fps_limit else 0.0
        next_due = time.monotonic()
        rate_in, rate_out = _Rate(), _Rate()
        while not self.stop_event.is_set():
            try:
                capture = self.source.read()
            except CameraStallError as exc:
                self.stats.stalls += 1
                self._record_error(str(exc))
                self._set_state(CameraState.STALLED, "no data within the read timeout")
                return False
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
            if not streaming:
                # Streaming from the first frame, not the handshake: a camera that accepts
                # the connection and sends nothing has not recovered.
                streaming = True
                self._set_state(CameraState.STREAMING)
                self.backoff.reset()
            self.stats.frames_read += 1
            rate_in.tick(now)
            self.stats.fps_in = rate_in.value
            raw = capture[0]
            image = raw if raw is None or not isinstance(raw, np.ndarray) else normalise_image(raw)
            if image is None:
                self.stats.corrupt_frames += 1
                if now - last_good > self.stall_timeout_s:
                    self._record_error(
                        f"only corrupt or undecodable frames for {self.stall_timeout_s:g} s"
                    )
                    self._set_state(CameraState.STALLED, "only corrupt frames")
                    self.stats.stalls += 1
                    return False
                continue
            last_good = now
            if period and self.source.live:
                # A live camera sends at its own pace: skip (without converting) what the
                # configured rate does not ask for.
                if now < next_due:
                    continue
                next_due = max(next_due + period, now - period)
            item = self._package(image, capture[1], now)
            self._sequence += 1
            self.stats.frames += 1
            if not self.hub.put(item, lossless=self.lossless, stop=self.stop_event):
                break
            if self.lossless:
                last_good = time.monotonic()  # waiting for room is back-pressure, not a stall
            rate_out.tick(now)
            self.stats.fps = rate_out.value
            if period and not self.source.live:
                next_due = max(next_due + period, now - period)
                delay = next_due - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
        return False

    def _package(
        self, image: NDArray[np.uint8] | DecodedPicture, truth: Detections | None, now: float
    ) -> Frame:
        """An image becomes a frame as it is; a decoded picture one converted when asked."""
        captured_at = datetime.now(UTC)
        if isinstance(image, np.ndarray):
            return Frame(self.camera_id, self._sequence, image, captured_at, now, truth=truth)
        return Frame(self.camera_id, self._sequence, None, captured_at, now, picture=image)

    def _record_error(self, message: str) -> None:
        self.stats.last_error = message[:300]
        log.warning("camera error", extra={"camera": self.camera_id, "error": message[:300]})
