"""Near-duplicate suppression: a stopped conveyor must not upload the same frame 1000 times.

A 64-bit difference hash (dHash) of a 9x8 grey thumbnail costs ~0.1 ms; frames within a
small Hamming distance of a recently accepted frame of the same camera are suppressed.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np
from numpy.typing import NDArray


def dhash(image: NDArray[np.uint8]) -> int:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


class NearDuplicateFilter:
    def __init__(self, max_distance: int = 4, history: int = 64) -> None:
        self.max_distance = max_distance
        self.history = history
        self._recent: dict[str, deque[int]] = {}
        self.suppressed = 0

    def is_duplicate(self, camera_id: str, image: NDArray[np.uint8]) -> bool:
        """Check and, if new, remember the frame's hash."""
        value = dhash(image)
        recent = self._recent.setdefault(camera_id, deque(maxlen=self.history))
        if any((value ^ seen).bit_count() <= self.max_distance for seen in recent):
            self.suppressed += 1
            return True
        recent.append(value)
        return False
