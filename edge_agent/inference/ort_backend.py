"""onnxruntime as a backend: provider choice (TensorRT > CUDA > CPU as configured), session
options, and runs that a :class:`~edge_agent.inference.backend.CancelToken` can stop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edge_agent.errors import ModelLoadError
from edge_agent.inference.backend import CancelToken, TensorSpec
from edge_agent.inference.tensorrt_engines import (
    TENSORRT,
    engine_dir,
    gpu_identity,
    profile_shapes,
    provider_options,
)

if TYPE_CHECKING:
    from edge_agent.inference.runner import RunnerOptions

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
_DTYPES: dict[str, type] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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


def _tensorrt_options(path: Path, options: RunnerOptions) -> dict[str, Any]:
    """The TensorRT provider's options for ``path``: its keyed engine folder, and profiles
    that make a dynamic model's engine build at load (see :mod:`.tensorrt_engines`)."""
    engines = engine_dir(path, options.trt_cache_dir, gpu_identity())
    try:
        engines.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the TensorRT engine folder {engines}: {exc}") from exc
    name, shape, size = _input_of(path)
    profiles = profile_shapes(name, shape, max_batch=options.max_batch, size=size)
    log.info(
        "TensorRT engines",
        extra={"folder": str(engines), "dynamic": bool(profiles), "max_batch": options.max_batch},
    )
    return provider_options(engines, fp16=options.trt_fp16, profiles=profiles)


def _input_of(path: Path) -> tuple[str, tuple[int | None, ...], tuple[int, int] | None]:
    """The model's input name and shape, and its size from ultralytics' ``imgsz`` metadata,
    read by a CPU session without optimisation (milliseconds; only boxes using TensorRT)."""
    from edge_agent.inference.runner import metadata_input_size  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    session = _open_session(path, opts, [CPU], [{}])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return "", (), None  # refused by the runner's own checks after loading
    size = metadata_input_size(dict(session.get_modelmeta().custom_metadata_map))
    return inputs[0].name, _dims(inputs[0].shape), size


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OrtBackend:
    """An onnxruntime session; ``session.run`` is thread-safe, so no lock on the hot path."""

    def __init__(self, path: Path, options: RunnerOptions) -> None:
        from edge_agent.inference.runner import intra_op_threads  # noqa: PLC0415

        opts = session_options(
            intra_op_threads(options.intra_op_threads), spinning=options.thread_spinning
        )
        chosen, skipped = select_providers(options.providers, ort.get_available_providers())
        for reason in skipped:
            log.info("provider skipped", extra={"reason": reason})
        provider_options = [
            _tensorrt_options(path, options) if name == TENSORRT else {} for name in chosen
        ]
        reasons = list(skipped)
        try:
            session = _open_session(path, opts, chosen, provider_options)
        except ModelLoadError as exc:
            if chosen == [CPU]:
                raise
            # A GPU provider that cannot start (driver, CUDA or TensorRT libraries, an engine
            # that fails to build) leaves the box on CPU: slower, but running, and said so in
            # the log, heartbeats and the OTA report (``fallback``).
            log.warning(
                "provider failed, using CPU", extra={"wanted": chosen[0], "reason": str(exc)}
            )
            reasons.append(f"{chosen[0]} failed: {exc}")
            session = _open_session(path, opts, [CPU], [{}])
        used = session.get_providers()
        if used and used[0] != chosen[0]:
            log.warning("provider fell back", extra={"wanted": chosen[0], "using": used[0]})
        self.session = session
        wanted = options.providers[0] if options.providers else CPU
        self._fallback = (
            f"running on {used[0]}, not {wanted}: {'; '.join(reasons)}"[:300]
            if used and used[0] != wanted and reasons
            else None
        )
        self._input_name = session.get_inputs()[0].name if session.get_inputs() else ""

    @property
    def device(self) -> str:
        return str(self.session.get_providers()[0])

    @property
    def fallback(self) -> str | None:
        return self._fallback

    @property
    def inputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(i.name, _dims(i.shape), _DTYPES.get(i.type, object))
            for i in self.session.get_inputs()
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(o.name, _dims(o.shape), _DTYPES.get(o.type, object))
            for o in self.session.get_outputs()
        ]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, blob: NDArray[np.floating], cancel: CancelToken | None) -> NDArray[np.floating]:
        run_options = None
        if cancel is not None:
            run_options = ort.RunOptions()
            cancel.on_cancel(lambda: setattr(run_options, "terminate", True))
        result = self.session.run(None, {self._input_name: blob}, run_options)[0]
        return np.asarray(result, dtype=np.float32)

    def close(self) -> None:
        del self.session
