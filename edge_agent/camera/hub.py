"""Latest-frame buffers for all cameras behind one condition variable.

A slow model skips stale frames instead of building a backlog: each camera has one slot,
a newer frame replaces an unread one and is counted as dropped. Non-live sources (files)
may instead put losslessly: the reader waits for room, so it reads on demand. The consumer takes the
newest frame of up to N cameras at once (for batching), round-robin so no camera starves.
A frame replaced unread costs no colour conversion: a decoded picture is converted only when
someone asks for its image (see :class:`DecodedPicture`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from edge_agent.camera.frame import Frame


class FrameHub:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._slots: OrderedDict[str, Frame | None] = OrderedDict()
        self.dropped: dict[str, int] = {}
        self.delivered: dict[str, int] = {}

    def register(self, camera_id: str) -> None:
        with self._cond:
            self._slots.setdefault(camera_id, None)
            self.dropped.setdefault(camera_id, 0)
            self.delivered.setdefault(camera_id, 0)

    def put(
        self, frame: Frame, *, lossless: bool = False, stop: threading.Event | None = None
    ) -> bool:
        """Offer a frame. ``lossless`` waits for the unread one to be taken instead of
        replacing it (for files, where every frame matters and reading is on demand).
        Returns False if a lossless put was abandoned because ``stop`` was set."""
        with self._cond:
            while lossless and self._slots.get(frame.camera_id) is not None:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.1)
            if self._slots.get(frame.camera_id) is not None:
                self.dropped[frame.camera_id] = self.dropped.get(frame.camera_id, 0) + 1
            self._slots[frame.camera_id] = frame
            self._cond.notify_all()
            return True

    def take(self, max_frames: int = 1, timeout: float | None = None) -> list[Frame]:
        """Newest unread frames of up to ``max_frames`` cameras; [] if none came in ``timeout``."""
        with self._cond:
            if not any(f is not None for f in self._slots.values()) and timeout:
                self._cond.wait(timeout)
            taken: list[Frame] = []
            for camera_id in list(self._slots):
                frame = self._slots[camera_id]
                if frame is None:
                    continue
                self._slots[camera_id] = None
                # Rotate: a camera served now goes to the back of the line.
                self._slots.move_to_end(camera_id)
                self.delivered[camera_id] += 1
                taken.append(frame)
                if len(taken) >= max_frames:
                    break
            if taken:
                self._cond.notify_all()  # lossless producers wait for room
            return taken

    def pending(self) -> int:
        """Frames waiting to be taken."""
        with self._cond:
            return sum(frame is not None for frame in self._slots.values())

    def wake(self) -> None:
        """Wake a waiting consumer (on stop)."""
        with self._cond:
            self._cond.notify_all()
