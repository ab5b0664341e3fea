"""A captured frame and the camera states the agent reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from shared.detections import Detections
from shared.messages import CameraState

__all__ = ["CameraState", "Frame"]


@dataclass(frozen=True, slots=True)
class Frame:
    camera_id: str
    sequence: int  # per camera, from 0, never reused within a run
    image: NDArray[np.uint8]  # BGR HxWx3
    captured_at: datetime  # wall clock, for people and object keys
    captured_mono: float  # time.monotonic(), for latencies
    truth: Detections | None = None  # exact labels, synthetic line only

    @property
    def frame_id(self) -> str:
        """Unique per camera across restarts (the sequence restarts, the clock does not)."""
        stamp = self.captured_at.strftime("%Y%m%dT%H%M%S%f")[:-3]
        return f"{self.camera_id}-{stamp}-{self.sequence:08d}"
