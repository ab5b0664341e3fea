"""TensorRT engines for onnxruntime's TensorRT provider: where they are kept, what they are
keyed by, and the shapes they are built for.

An engine is specific to the GPU model, the TensorRT version and the onnxruntime build.
onnxruntime names its engine files by compute capability only and checks nothing else (its
documentation asks users to clear the cache when the model, TensorRT, onnxruntime or the
hardware changes). So every engine folder is keyed by all of them, and kept with the model
version it was built from (``<version dir>/tensorrt/<gpu>_trt<v>_ort<v>/``): a rollback
finds its engine ready, pruning a version deletes its engines, and an upgraded TensorRT or a
replaced GPU builds afresh instead of loading an engine built for something else.

Built when the model loads, never on a live frame. onnxruntime builds the engine when the
session is created if every input shape is known; a model exported with a dynamic batch or
size would otherwise be built at its first run, which is an infer worker's time, minutes
on a small box. Such a model gets explicit optimisation profiles (batch 1 to the line's
largest batch, at the model's own size), so the build happens in the loader: during OTA
staging on the OTA thread, or before the line starts.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
ENGINE_FOLDER = "tensorrt"
UNKNOWN = "unknown"
_TENSORRT_PACKAGES = ("tensorrt", "tensorrt-cu12", "tensorrt-cu12-libs", "tensorrt-libs")
_NVINFER_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GpuIdentity:
    """What a TensorRT engine is valid for."""

    gpu: str  # e.g. "NVIDIA H200", from the driver
    tensorrt: str  # e.g. "10.9.0"
    onnxruntime: str

    @property
    def known(self) -> bool:
        return UNKNOWN not in (self.gpu, self.tensorrt)

    def folder_name(self) -> str:
        """``nvidia-h200_trt10.9.0_ort1.22.0``: safe as one path component."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or UNKNOWN
        name = f"{gpu}_trt{self.tensorrt}_ort{self.onnxruntime}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:120]


def gpu_name(device_id: int = 0) -> str:
    """The GPU's model name as the driver reports it, or ``unknown``."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return UNKNOWN
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command, no shell
            [smi, "--query-gpu=name", "--format=csv,noheader", f"--id={device_id}"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed", extra={"error": str(exc)})
        return UNKNOWN
    name = done.stdout.strip().splitlines()[0].strip() if done.stdout.strip() else ""
    if done.returncode != 0 or not name:
        log.warning("nvidia-smi gave no GPU name", extra={"rc": done.returncode})
        return UNKNOWN
    return name[:80]


def version_from_nvinfer(number: int) -> str:
    """TensorRT's ``getInferLibVersion()`` (e.g. 100900 or 8601) as ``10.9.0`` / ``8.6.1``."""
    if number >= 10_000:  # TensorRT 10 and later: major * 10000 + minor * 100 + patch
        return f"{number // 10_000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def tensorrt_version() -> str:
    """The TensorRT that onnxruntime will load: its wheel's version, else the library's own."""
    for package in _TENSORRT_PACKAGES:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    for library in _NVINFER_LIBRARIES:
        try:
            nvinfer = ctypes.CDLL(library)
        except OSError:
            continue
        get_version = nvinfer.getInferLibVersion
        get_version.restype = ctypes.c_int32
        return version_from_nvinfer(int(get_version()))
    return UNKNOWN


@functools.cache
def gpu_identity() -> GpuIdentity:
    """This box's identity for engines, probed once per process."""
    import onnxruntime as ort  # noqa: PLC0415

    identity = GpuIdentity(gpu_name(), tensorrt_version(), ort.__version__)
    if not identity.known:
        log.warning(
            "TensorRT engines keyed without the GPU model or TensorRT version",
            extra={"gpu": identity.gpu, "tensorrt": identity.tensorrt},
        )
    return identity


def engine_dir(model_path: Path, root: Path | None, identity: GpuIdentity) -> Path:
    """Where engines built from ``model_path`` are kept: with the model (its version's
    folder in the model store), or under ``root`` (``model.trt_cache_dir``) in a folder of
    the model's own name and parent, for a model folder that is read-only."""
    base = model_path.parent / ENGINE_FOLDER if root is None else root / _model_slug(model_path)
    return base / identity.folder_name()


def _model_slug(model_path: Path) -> str:
    resolved = model_path.resolve()
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{resolved.parent.name}-{resolved.stem}")[:120]


def profile_shapes(
    input_name: str,
    shape: tuple[int | None, ...],
    *,
    max_batch: int,
    size: tuple[int, int] | None,
) -> dict[str, str]:
    """onnxruntime's ``trt_profile_*_shapes`` for an input with dynamic dimensions (none for
    a static one: its engine is built at session creation anyway). Dynamic height and width
    take ``size``, the model's own; the batch ranges from 1 to ``max_batch``."""
    if len(shape) != 4 or all(d is not None for d in shape):
        return {}
    height, width = shape[2], shape[3]
    if height is None or width is None:
        if size is None:
            return {}  # unknown size: the runner refuses such a model anyway
        height = height or size[0]
        width = width or size[1]
    channels = shape[1] or 3

    def dims(batch: int) -> str:
        return f"{input_name}:{batch}x{channels}x{height}x{width}"

    low = shape[0] or 1
    high = shape[0] or max(1, max_batch)
    return {
        "trt_profile_min_shapes": dims(low),
        "trt_profile_opt_shapes": dims(low),
        "trt_profile_max_shapes": dims(high),
    }


def provider_options(engines: Path, *, fp16: bool, profiles: dict[str, str]) -> dict[str, Any]:
    """The TensorRT provider's options: engine and timing caches in ``engines``."""
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(engines),
        "trt_fp16_enable": fp16,
        **profiles,
    }
