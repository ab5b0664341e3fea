"""The onnxruntime session: provider choice, validation before use, warm-up, run, decode.

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
import onnxruntime as ort
from numpy.typing import NDArray

from edge_agent.errors import (
    InferenceError,
    ModelIncompatibleError,
    ModelLoadError,
    RunCancelledError,
)
from edge_agent.inference.decode import decode_nms_in_graph, decode_yolo_raw
from edge_agent.inference.preprocess import letterbox
from shared.detections import Detections

log = logging.getLogger(__name__)

OutputFormat = Literal["yolo_raw", "nms_in_graph"]
CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
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
    trt_cache_dir: Path | None = None
    trt_fp16: bool = True
    thread_spinning: bool = False  # see session_options


class CancelToken:
    """Lets another thread stop a model run between two graph nodes (onnxruntime's
    ``RunOptions.terminate``; measured 0.6 ms to take effect on a 2-core CPU), so background
    model work gives way to a live frame at once instead of making it wait a whole inference.
    One token per attempt: once cancelled it stays cancelled. A provider that runs the whole
    graph as one node (TensorRT) only stops at the end of the run."""

    def __init__(self) -> None:
        self.run_options = ort.RunOptions()
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        self.run_options.terminate = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled


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


def session_options(threads: int, *, spinning: bool = False) -> ort.SessionOptions:
    """Options for every session: full graph optimisation, ``threads`` intra-op threads of
    its own, and by default no spinning.

    onnxruntime's pool threads spin after a run, waiting for the next one (20-50 ms of CPU
    measured). At 30 fps the gap between frames is shorter, so a pool thread never slept and
    kept a core from the camera, pre/post-processing, uploader and OTA threads. Measured on
    2 cores with the real pipeline (``benchmarks/ort_spinning.py``, 8 alternating rounds):
    without spinning 1.17 cores busy instead of 1.68; frame latency p50 +17% (a run's
    threads sleep between the graph's parallel sections) but p99 -18% (31 vs 41 ms); with
    two cameras saturating the box, 1.17x the frames/s. In OTA swaps the worst frame came
    down from 37 to 32 ms (median over swaps, ``benchmarks/ota_swap.py``). onnxruntime's
    process-wide pool cannot be told not to spin from Python, so each session has its own.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    spin = "1" if spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    opts.log_severity_level = 3
    return opts


def select_providers(
    preferred: tuple[str, ...], available: list[str]
) -> tuple[list[str], list[str]]:
    """Providers to ask for, in order, and why the others were skipped. CPU is always last."""
    chosen: list[str] = []
    skipped: list[str] = []
    for name in preferred:
        if name in available:
            if name not in chosen:
                chosen.append(name)
        else:
            skipped.append(f"{name} not available in this onnxruntime build")
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen, skipped


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


def _literal(text: str | None, *, max_chars: int) -> Any:
    """A Python literal from model metadata, or None: metadata is input from outside."""
    if not text or len(text) > max_chars:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        log.warning("ignoring model metadata that is not a literal")
        return None


def _open_session(
    path: Path,
    options: ort.SessionOptions,
    providers: list[str],
    provider_options: list[dict[str, Any]],
) -> ort.InferenceSession:
    """A session on exactly ``providers``, with onnxruntime's own fallbacks off: on a
    provider error it prints a banner to stdout (the agent's log is JSON on stderr) and,
    during ``run``, silently rebuilds the session on CPU on the hot path, while the
    heartbeat still names the GPU. Here the error is raised and the caller decides."""
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=providers,
            provider_options=provider_options,
            enable_fallback=0,  # read by newer onnxruntime; older ones ignore the keyword
        )
    except Exception as exc:
        raise ModelLoadError(
            f"onnxruntime refused {path.name}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    session.disable_fallback()  # the run-time fallback, on every version
    return session


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


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
        self._session = self._create_session(Path(path))
        self.info = self._inspect(Path(path), class_names, expected_input, output_format)
        self._closed = threading.Event()
        if self.options.warm_up_at_load:
            self.warm_up()

    # ----------------------------------------------------------------- loading
    def _create_session(self, path: Path) -> ort.InferenceSession:
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        opts = session_options(
            intra_op_threads(self.options.intra_op_threads),
            spinning=self.options.thread_spinning,
        )
        chosen, skipped = select_providers(self.options.providers, ort.get_available_providers())
        for reason in skipped:
            log.info("provider skipped", extra={"reason": reason})
        provider_options: list[dict[str, Any]] = []
        for name in chosen:
            if name == "TensorrtExecutionProvider" and self.options.trt_cache_dir is not None:
                provider_options.append(
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(self.options.trt_cache_dir),
                        "trt_fp16_enable": self.options.trt_fp16,
                    }
                )
            else:
                provider_options.append({})
        try:
            session = _open_session(path, opts, chosen, provider_options)
        except ModelLoadError as exc:
            if chosen == [CPU]:
                raise
            # A GPU provider that cannot start (driver, CUDA or TensorRT libraries) leaves
            # the box on CPU: slower, but running, and said so in the log and heartbeats.
            log.warning(
                "provider failed, using CPU", extra={"wanted": chosen[0], "reason": str(exc)}
            )
            session = _open_session(path, opts, [CPU], [{}])
        used = session.get_providers()
        if used and used[0] != chosen[0]:
            log.warning(
                "provider fell back",
                extra={"wanted": chosen[0], "using": used[0]},
            )
        return session

    def _inspect(
        self,
        path: Path,
        class_names: tuple[str, ...] | None,
        expected_input: tuple[int, int] | None,
        output_format: OutputFormat | None,
    ) -> ModelInfo:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
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
        if _dim(shape[1]) != 3:
            raise ModelIncompatibleError(f"model input has {shape[1]} channels; expected 3")
        height, width = _dim(shape[2]), _dim(shape[3])
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        if height is None or width is None:
            parsed = _literal(meta.get("imgsz"), max_chars=64)
            if isinstance(parsed, list | tuple) and len(parsed) == 2:
                height, width = int(parsed[0]), int(parsed[1])
            elif expected_input is not None:
                height, width = expected_input
            else:
                raise ModelIncompatibleError("model input size is dynamic and not in metadata")
        if expected_input is not None and (height, width) != tuple(expected_input):
            raise ModelIncompatibleError(
                f"model input is {height}x{width} but the manifest says "
                f"{expected_input[0]}x{expected_input[1]}"
            )
        dtypes: dict[str, type] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        if spec.type not in dtypes:
            raise ModelIncompatibleError(f"model input type {spec.type} is not float32/float16")
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
        if output_format == "nms_in_graph" or (output_format is None and _dim(out_shape[2]) == 6):
            fmt = "nms_in_graph"
            num_classes = len(names) if names else 0
        else:
            fmt = "yolo_raw"
            channels = _dim(out_shape[1])
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
            input_dtype=dtypes[spec.type],
            batch=_dim(shape[0]),
            output_format=fmt,
            num_classes=len(names),
            class_names=tuple(names),
            provider=self._session.get_providers()[0],
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
        options = cancel.run_options if cancel is not None else None
        try:
            if self.info.batch == 1 and blob.shape[0] > 1:
                parts = [self._run_one(blob[i : i + 1], options) for i in range(blob.shape[0])]
                output = np.concatenate(parts, axis=0)
            else:
                output = self._run_one(blob, options)
        except InferenceError:
            raise
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise RunCancelledError("model run cancelled to make way for a live frame") from exc
            raise InferenceError(f"model run failed: {str(exc).splitlines()[0][:300]}") from exc
        if not np.isfinite(output).all():  # ~0.1 ms; NaN must never reach the line
            raise InferenceError("model output contains NaN or infinity")
        return output

    def _run_one(
        self, blob: NDArray[np.floating], options: ort.RunOptions | None
    ) -> NDArray[np.floating]:
        result = self._session.run(None, {self.info.input_name: blob}, options)[0]
        return np.asarray(result, dtype=np.float32)

    def decode(self, output: NDArray[np.floating]) -> list[Detections]:
        """Raw output -> detections in model-input pixels (undo the letterbox afterwards)."""
        opts = self.options
        if self.info.output_format == "nms_in_graph":
            return decode_nms_in_graph(
                output, conf_threshold=opts.conf_threshold, max_detections=opts.max_detections
            )
        return decode_yolo_raw(
            output,
            conf_threshold=opts.conf_threshold,
            iou_threshold=opts.iou_threshold,
            max_detections=opts.max_detections,
        )

    def detect(self, images: list[NDArray[np.uint8]]) -> list[Detections]:
        """BGR images in, detections in source pixels out (the whole path, for API and eval)."""
        if not images:
            return []
        blob, boxes = letterbox(
            images, self.info.input_height, self.info.input_width, dtype=self.info.input_dtype
        )
        decoded = self.decode(self.run(blob))
        return [mapping.to_source(det) for mapping, det in zip(boxes, decoded, strict=True)]

    def close(self) -> None:
        """Release the session (its memory goes when the last reference does)."""
        self._closed.set()
        del self._session


PAD_GREY = 114.0 / 255.0
