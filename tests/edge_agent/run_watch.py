"""A wrapper around a runner's ``run`` for tests that count model runs or look for
overlapping ones."""

from __future__ import annotations

import threading
import time

import numpy as np

from edge_agent.errors import RunCancelledError
from edge_agent.inference import InferenceRunner


class RunWatcher:
    """Wraps a runner's ``run``: counts finished and cancelled runs, and with ``hold_s`` > 0
    holds each run that long so that two overlapping runs would be seen."""

    def __init__(self, runner: InferenceRunner, *, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.active = 0
        self.overlaps = 0
        self.done = 0
        self.cancelled = 0
        self.lock = threading.Lock()
        self._run = runner.run
        runner.run = self.run  # type: ignore[method-assign]

    def run(self, blob: np.ndarray, **kwargs: object) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.overlaps += self.active > 1
        try:
            time.sleep(self.hold_s)
            output = self._run(blob, **kwargs)  # type: ignore[arg-type]
        except RunCancelledError:
            with self.lock:
                self.cancelled += 1
            raise
        finally:
            with self.lock:
                self.active -= 1
        with self.lock:
            self.done += 1
        return output
