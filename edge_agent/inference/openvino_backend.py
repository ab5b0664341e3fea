"""OpenVINO as a backend: the ONNX file compiled for the CPU (or an Intel GPU) by OpenVINO's
own runtime, behind the runner's one interface.

Why the ``openvino`` runtime and not onnxruntime's OpenVINO execution provider: the plugin EP
(``onnxruntime-ep-openvino``) registers with stock onnxruntime but lists no device on the AMD
CPUs here (it targets Intel CPUs, GPUs and NPUs), and ``onnxruntime-openvino`` is a whole
separate onnxruntime build that must never sit beside ``onnxruntime``. The runtime itself runs
on any x86 CPU with AVX2 and reads our ONNX files directly (no conversion step on the box).

Threads: one compiled model serves every infer worker; each worker thread keeps its own infer
request. ``INFERENCE_NUM_THREADS`` caps the threads like onnxruntime's intra-op setting, and
the latency hint with one stream keeps a frame's run on all of them. Precision: OpenVINO picks
bf16 by itself on CPUs that have it (``auto``); ``f32`` pins full precision.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openvino as ov
from numpy.typing import NDArray

from edge_agent.errors import ModelLoadError, RunCancelledError
from edge_agent.inference.backend import CancelToken, TensorSpec

if TYPE_CHECKING:
    from edge_agent.inference.runner import RunnerOptions

_DTYPES: dict[str, type] = {"f32": np.float32, "f16": np.float16}
_METADATA_KEYS = ("names", "imgsz", "task", "stride", "batch")
_POLL_S = 0.002  # how often a waiting run looks at its cancel token


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d.get_length() if d.is_static else None for d in shape)


class OpenVinoBackend:
    def __init__(self, path: Path, options: RunnerOptions) -> None:
        from edge_agent.inference.runner import intra_op_threads  # noqa: PLC0415

        core = ov.Core()
        device = options.openvino_device
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": intra_op_threads(options.intra_op_threads),
        }
        if options.openvino_precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = options.openvino_precision
        try:
            model = core.read_model(str(path))
            self._metadata = _read_metadata(model)
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError for every kind of refusal
            raise ModelLoadError(
                f"OpenVINO refused {path.name} on {device}: {str(exc).splitlines()[0][:300]}"
            ) from exc
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self._device = f"OpenVINO:{device}:{precision}"
        self._local = threading.local()

    @property
    def device(self) -> str:
        return self._device

    @property
    def fallback(self) -> str | None:
        return None  # a device OpenVINO cannot compile for is refused, never replaced

    @property
    def inputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(
                i.get_any_name(),
                _dims(i.get_partial_shape()),
                _DTYPES.get(i.get_element_type().get_type_name(), object),
            )
            for i in self._compiled.inputs
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(
                o.get_any_name(),
                _dims(o.get_partial_shape()),
                _DTYPES.get(o.get_element_type().get_type_name(), object),
            )
            for o in self._compiled.outputs
        ]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def run(self, blob: NDArray[np.floating], cancel: CancelToken | None) -> NDArray[np.floating]:
        request = self._request()
        if cancel is None:
            request.infer({0: blob}, share_inputs=True)
        else:
            if cancel.cancelled:
                raise RunCancelledError("model run cancelled to make way for a live frame")
            request.start_async({0: blob}, share_inputs=True)
            while not request.wait_for(int(_POLL_S * 1000)):
                if cancel.cancelled:
                    request.cancel()
                    self._local.request = None  # a cancelled request is not run again
                    raise RunCancelledError("model run cancelled to make way for a live frame")
        return np.asarray(request.get_output_tensor(0).data, dtype=np.float32).copy()

    def close(self) -> None:
        del self._compiled


def _read_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata (ultralytics' names, imgsz ...), which OpenVINO keeps under
    ``framework`` in the model's runtime info."""
    found: dict[str, str] = {}
    for key in _METADATA_KEYS:
        try:
            found[key] = str(model.get_rt_info(["framework", key]).astype(str))
        except (RuntimeError, KeyError, IndexError, TypeError):
            continue
    return found
