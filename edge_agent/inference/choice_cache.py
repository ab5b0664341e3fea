"""The (runtime, model file) chosen for a version on this box, remembered across restarts.

Choosing loads the model in every allowed runtime and precision and times them on probe
frames: seconds of a box's start, and the memory of runtimes it will not use. What wins
depends only on the files, this box (CPU, runtime versions) and the settings that shape a
run, so a restart with all of those unchanged loads the remembered winner directly. Any
change (another version or file, an upgraded onnxruntime, OpenVINO or TensorRT, another
CPU or GPU, other threads or providers) is another key, and the agent chooses afresh. Every
OTA staging chooses on live frames and records its result here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_agent.inference.runner import RunnerOptions
from edge_agent.inference.tensorrt_engines import gpu_identity
from edge_agent.inference.variants import GPU_PROVIDERS, ModelFile
from shared.canonical import canonical_json

log = logging.getLogger(__name__)

MAX_ENTRIES = 20
_RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "openvino")


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu(options: RunnerOptions) -> list[str] | None:
    """The GPU and TensorRT version, when a GPU provider may run the model: another GPU or
    TensorRT can change which candidate is fastest."""
    if not any(p in GPU_PROVIDERS for p in options.providers):
        return None
    identity = gpu_identity()
    return [identity.gpu, identity.tensorrt]


def choice_key(
    files: Sequence[tuple[ModelFile, str]],
    options: RunnerOptions,
    settings: dict[str, Any],
) -> str:
    """``files``: each model file with its sha256; ``settings``: what else the choice
    depended on (allowed runtimes and precision, agreement thresholds)."""
    shaping = asdict(options)
    for ignored in ("warm_up_at_load", "warmup_runs", "trt_cache_dir"):
        shaping.pop(ignored, None)
    document = {
        "files": [
            [f.precision, digest, list(f.runtimes or ()), f.candidate] for f, digest in files
        ],
        "options": {k: str(v) for k, v in shaping.items()},
        "settings": settings,
        "box": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "runtimes": {p: _installed(p) for p in _RUNTIME_PACKAGES},
            "gpu": _gpu(options),
        },
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


class ChoiceCache:
    """``{key: {"runtime": ..., "precision": ...}}`` in one small JSON file; unreadable or
    foreign content reads as empty (the agent then simply chooses again)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> tuple[str, str] | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        runtime, precision = entry.get("runtime"), entry.get("precision")
        if isinstance(runtime, str) and isinstance(precision, str):
            return runtime, precision
        return None

    def put(self, key: str, runtime: str, precision: str) -> None:
        entries = self._read()
        entries.pop(key, None)
        entries[key] = {"runtime": runtime, "precision": precision}
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(kept))
            temporary.replace(self.path)
        except OSError as exc:  # a lost entry costs one more choice at the next start
            log.warning("runtime choice not remembered", extra={"error": str(exc)})

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}
