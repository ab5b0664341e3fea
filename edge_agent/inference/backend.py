"""What the runner needs of a runtime, and the runtimes there are.

Pre-processing (letterbox), decoding and NMS are the agent's own and the same for every
runtime; a backend only takes an NCHW blob and returns the raw head. So a variant compiled for
another runtime is judged by exactly the code that serves the line, and a box can pick the
fastest runtime without its detections changing form.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import ModelLoadError

if TYPE_CHECKING:
    from edge_agent.inference.runner import RunnerOptions

Runtime = Literal["onnxruntime", "openvino"]
RUNTIMES: tuple[Runtime, ...] = ("onnxruntime", "openvino")


class CancelToken:
    """Lets another thread stop a model run early, so background model work gives way to a
    live frame at once instead of making it wait a whole inference. Each runtime hooks its
    own way of stopping (onnxruntime's ``RunOptions.terminate`` between two graph nodes,
    measured 0.6 ms to take effect on a 2-core CPU; OpenVINO's request cancel). One token per
    attempt: once cancelled it stays cancelled. A runtime that runs the whole graph as one
    node (TensorRT) only stops at the end of the run."""

    def __init__(self) -> None:
        self._cancelled = False
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when cancelled (at once if it already is)."""
        with self._lock:
            if not self._cancelled:
                self._hooks.append(hook)
                return
        hook()

    @property
    def cancelled(self) -> bool:
        return self._cancelled


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the runtime declares it (None: a dynamic dimension)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: type  # np.float32 / np.float16, or object for anything else


class Backend(Protocol):
    """One loaded model in one runtime. ``run`` is called from several threads at once."""

    @property
    def device(self) -> str:
        """What runs the model, as heartbeats and /status name it (e.g. CPUExecutionProvider,
        OpenVINO:CPU)."""
        ...

    @property
    def fallback(self) -> str | None:
        """Why the model runs on another device than configured first (e.g. TensorRT not in
        this onnxruntime build, or its engine failed to build), for the OTA report; None
        when it runs where configured."""
        ...

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    @property
    def metadata(self) -> dict[str, str]:
        """The model's string metadata (ultralytics writes names, imgsz, task)."""
        ...

    def run(self, blob: NDArray[np.floating], cancel: CancelToken | None) -> NDArray[np.floating]:
        """The first output for ``blob``; raises on failure, stops early when cancelled."""
        ...

    def close(self) -> None: ...


def open_backend(path: Path, options: RunnerOptions) -> Backend:
    """The model at ``path`` in the runtime ``options.runtime`` names. A runtime that is not
    installed is an error, never a silent fallback to another one."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    if options.runtime == "openvino":
        try:
            from edge_agent.inference.openvino_backend import OpenVinoBackend  # noqa: PLC0415
        except ImportError as exc:
            raise ModelLoadError(
                "model.runtime 'openvino' needs the openvino package: "
                "pip install 'linefleet[edge-openvino]'"
            ) from exc
        return OpenVinoBackend(path, options)
    from edge_agent.inference.ort_backend import OrtBackend  # noqa: PLC0415

    return OrtBackend(path, options)
