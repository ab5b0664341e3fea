"""One loaded model: validation before use, warm-up, run, decode; the runtime behind it is a
:mod:`~edge_agent.inference.backend` (onnxruntime by default, OpenVINO on request).

A model is refused *before* it serves a frame if it is not ONNX, if its input is not an
NCHW 3-channel image, if its output is neither a raw YOLO head nor NMS-in-graph, if its class
count disagrees with the manifest, or if its warm-up output is not finite.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import (
    InferenceError,
    ModelIncompatibleError,
    RunCancelledError,
)
from edge_agent.inference.backend import CancelToken, Runtime, open_backend
from edge_agent.inference.decode import decode_nms_in_graph, decode_yolo_raw
from edge_agent.inference.ort_backend import CPU
from edge_agent.inference.preprocess import letterbox
from shared.detections import Detections

log = logging.getLogger(__name__)

OutputFormat = Literal["yolo_raw", "nms_in_graph"]
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
# Devices on which a first run costs what later ones do: no warm-up needed before serving.
CPU_DEVICES = (CPU, "OpenVINO:CPU")
_MAX_METADATA_CHARS = 200_000


@dataclass(frozen=True)
class RunnerOptions:
    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0  # 0: one per core, which measured best on CPU
    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    max_detections: int = 300
    warmup_runs: int = 2
    # False: the caller warms up (``warm_up()``) where it suits it, e.g. OTA between two live
    # batches. A model is never served before its first finite output either way.
    warm_up_at_load: bool = True
    # The largest batch the line sends (TensorRT builds its engine for 1..max_batch).
    max_batch: int = 1
    # TensorRT engines: with the model's version by default (tensorrt_engines.engine_dir).
    trt_cache_dir: Path | None = None
    trt_fp16: bool = True
    thread_spinning: bool = False  # see ort_backend.session_options
    runtime: Runtime = "onnxruntime"
    openvino_device: str = "CPU"
    openvino_precision: Literal["auto", "f32", "bf16", "f16"] = "auto"


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    input_name: str
    input_height: int
    input_width: int
    input_dtype: type
    batch: int | None  # None: dynamic batch
    output_format: OutputFormat
    num_classes: int
    class_names: tuple[str, ...]
    provider: str
    metadata: dict[str, str] = field(default_factory=dict)


def intra_op_threads(requested: int, *, workers: int = 1) -> int:
    """Threads per inference: as asked, or the cores shared out between ``workers``
    inferences in flight at once."""
    return requested or max(1, (os.cpu_count() or 1) // workers)


def parse_class_names(metadata: dict[str, str]) -> tuple[str, ...] | None:
    """Class names from ultralytics' ``names`` metadata (``{0: 'bolt', ...}``), if present."""
    value = _literal(metadata.get("names"), max_chars=_MAX_METADATA_CHARS)
    if isinstance(value, dict) and all(isinstance(k, int) for k in value):
        if sorted(value) != list(range(len(value))):
            return None
        return tuple(str(value[i]) for i in range(len(value)))
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return None


def metadata_input_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(height, width) from ultralytics' ``imgsz`` metadata (``[320, 320]``), if present."""
    parsed = _literal(metadata.get("imgsz"), max_chars=64)
    if isinstance(parsed, list | tuple) and len(parsed) == 2:
        return int(parsed[0]), int(parsed[1])
    return None


def _literal(text: str | None, *, max_chars: int) -> Any:
    """A Python literal from model metadata, or None: metadata is input from outside."""
    if not text or len(text) > max_chars:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        log.warning("ignoring model metadata that is not a literal")
        return None


class InferenceRunner:
    """One loaded model. ``session.run`` is thread-safe; the runner adds no lock on the hot path."""

    def __init__(
        self,
        path: Path,
        options: RunnerOptions | None = None,
        *,
        class_names: tuple[str, ...] | None = None,
        expected_input: tuple[int, int] | None = None,
        output_format: OutputFormat | None = None,
    ) -> None:
        self.options = options or RunnerOptions()
        self._backend = open_backend(Path(path), self.options)
        self.info = self._inspect(Path(path), class_names, expected_input, output_format)
        self._closed = threading.Event()
        if self.options.warm_up_at_load:
            self.warm_up()

    # ----------------------------------------------------------------- loading
    def _inspect(
        self,
        path: Path,
        class_names: tuple[str, ...] | None,
        expected_input: tuple[int, int] | None,
        output_format: OutputFormat | None,
    ) -> ModelInfo:
        inputs = self._backend.inputs
        outputs = self._backend.outputs
        if len(inputs) != 1:
            raise ModelIncompatibleError(
                f"model has {len(inputs)} inputs; expected one image input"
            )
        spec = inputs[0]
        shape = spec.shape
        if len(shape) != 4:
            raise ModelIncompatibleError(
                f"model input {spec.name!r} has rank {len(shape)} {shape}; expected NCHW (rank 4)"
            )
        if shape[1] != 3:
            raise ModelIncompatibleError(f"model input has {shape[1]} channels; expected 3")
        height, width = shape[2], shape[3]
        meta = self._backend.metadata
        if height is None or width is None:
            from_metadata = metadata_input_size(meta)
            if from_metadata is not None:
                height, width = from_metadata
            elif expected_input is not None:
                height, width = expected_input
            else:
                raise ModelIncompatibleError("model input size is dynamic and not in metadata")
        if expected_input is not None and (height, width) != tuple(expected_input):
            raise ModelIncompatibleError(
                f"model input is {height}x{width} but the manifest says "
                f"{expected_input[0]}x{expected_input[1]}"
            )
        if spec.dtype not in (np.float32, np.float16):
            raise ModelIncompatibleError(f"model input {spec.name!r} is not float32/float16")
        if len(outputs) < 1:
            raise ModelIncompatibleError("model has no outputs")
        out_shape = outputs[0].shape
        if len(out_shape) != 3:
            raise ModelIncompatibleError(
                f"model output has rank {len(out_shape)} {out_shape}; expected [B, 4+nc, N] "
                "or [B, K, 6]"
            )
        names_from_model = parse_class_names(meta)
        names = class_names or names_from_model
        fmt: OutputFormat
        # [B, K, 6] is NMS-in-graph; a raw head is [B, 4+nc, N] with N in the thousands. The
        # manifest's declared format wins over the shape guess.
        if output_format == "nms_in_graph" or (output_format is None and out_shape[2] == 6):
            fmt = "nms_in_graph"
            num_classes = len(names) if names else 0
        else:
            fmt = "yolo_raw"
            channels = out_shape[1]
            if channels is None or channels < 5:
                raise ModelIncompatibleError(
                    f"raw YOLO output needs 4+nc channels, got {out_shape}"
                )
            num_classes = channels - 4
        if names is None:
            names = tuple(f"class{i}" for i in range(num_classes))
        if fmt == "yolo_raw" and len(names) != num_classes:
            raise ModelIncompatibleError(
                f"model predicts {num_classes} classes but {len(names)} class names were given"
            )
        if names_from_model and class_names and names_from_model != class_names:
            raise ModelIncompatibleError(
                f"class names in the model {list(names_from_model)} differ from the manifest's "
                f"{list(class_names)}"
            )
        return ModelInfo(
            path=path,
            input_name=spec.name,
            input_height=height,
            input_width=width,
            input_dtype=spec.dtype,
            batch=shape[0],
            output_format=fmt,
            num_classes=len(names),
            class_names=tuple(names),
            provider=self._backend.device,
            metadata={k: v[:1000] for k, v in meta.items()},
        )

    def warm_up(self, runs: int | None = None, *, cancel: CancelToken | None = None) -> None:
        """First runs allocate and tune kernels; do them now, and refuse non-finite output.
        ``runs`` defaults to the options' ``warmup_runs``."""
        info = self.info
        blob: NDArray[np.floating] = np.zeros(
            (1, 3, info.input_height, info.input_width), dtype=info.input_dtype
        )
        blob += np.asarray(PAD_GREY, dtype=info.input_dtype)
        for _ in range(max(1, self.options.warmup_runs if runs is None else runs)):
            self.run(blob, cancel=cancel)

    # ----------------------------------------------------------------- running
    @property
    def provider(self) -> str:
        return self.info.provider

    def run(
        self, blob: NDArray[np.floating], *, cancel: CancelToken | None = None
    ) -> NDArray[np.floating]:
        """Raw model output for an NCHW batch; raises :class:`InferenceError` if unusable, and
        :class:`RunCancelledError` if ``cancel`` stopped it."""
        if self._closed.is_set():
            raise InferenceError("runner is closed")
        if blob.dtype != self.info.input_dtype:
            blob = blob.astype(self.info.input_dtype)
        try:
            if self.info.batch == 1 and blob.shape[0] > 1:
                parts = [self._backend.run(blob[i : i + 1], cancel) for i in range(blob.shape[0])]
                output = np.concatenate(parts, axis=0)
            else:
                output = self._backend.run(blob, cancel)
        except InferenceError:
            raise
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise RunCancelledError("model run cancelled to make way for a live frame") from exc
            raise InferenceError(f"model run failed: {str(exc).splitlines()[0][:300]}") from exc
        if not np.isfinite(output).all():  # ~0.1 ms; NaN must never reach the line
            raise InferenceError("model output contains NaN or infinity")
        return output

    def decode(
        self, output: NDArray[np.floating], *, conf_threshold: float | None = None
    ) -> list[Detections]:
        """Raw output -> detections in model-input pixels (undo the letterbox afterwards), at
        the options' confidence threshold unless told another (e.g. to compare runtimes)."""
        opts = self.options
        conf = opts.conf_threshold if conf_threshold is None else conf_threshold
        if self.info.output_format == "nms_in_graph":
            return decode_nms_in_graph(
                output, conf_threshold=conf, max_detections=opts.max_detections
            )
        return decode_yolo_raw(
            output,
            conf_threshold=conf,
            iou_threshold=opts.iou_threshold,
            max_detections=opts.max_detections,
        )

    def detect(
        self, images: list[NDArray[np.uint8]], *, conf_threshold: float | None = None
    ) -> list[Detections]:
        """BGR images in, detections in source pixels out (the whole path, for API and eval)."""
        if not images:
            return []
        blob, boxes = letterbox(
            images, self.info.input_height, self.info.input_width, dtype=self.info.input_dtype
        )
        decoded = self.decode(self.run(blob), conf_threshold=conf_threshold)
        return [mapping.to_source(det) for mapping, det in zip(boxes, decoded, strict=True)]

    @property
    def fallback(self) -> str | None:
        """Why the model runs on another device than configured first, if it does."""
        return self._backend.fallback

    @property
    def on_cpu(self) -> bool:
        """Runs on a CPU, where a first run costs what later ones do (no warm-up needed)."""
        return self.provider.startswith(CPU_DEVICES)

    def close(self) -> None:
        """Release the model (its memory goes when the last reference does)."""
        self._closed.set()
        self._backend.close()


PAD_GREY = 114.0 / 255.0
