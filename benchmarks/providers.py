"""Which execution provider the agent gets on this box, what it costs to load, how fast it
runs, and whether its outputs match the CPU's.

For each preference list the agent's config can ask for (CPU; CUDA > CPU; TensorRT > CUDA >
CPU) the model is loaded through the agent's own ``InferenceRunner`` (provider selection,
validation, warm-up), then run on synthetic-line frames. The CPU run is the peer: latency
ratios and output differences are against it, in the same process.

    python benchmarks/providers.py --model model.onnx [--runs 200]

A GPU box needs the ``edge-gpu`` extra (onnxruntime-gpu); TensorRT also needs its libraries
(without them onnxruntime falls back and the report says which provider served).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.errors import EdgeAgentError  # noqa: E402
from edge_agent.inference import InferenceRunner, RunnerOptions, letterbox  # noqa: E402
from shared.detections import count_matches  # noqa: E402
from shared.synth import SyntheticLine  # noqa: E402

PREFERENCES = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


def measure(
    model: Path, preference: tuple[str, ...], blobs: list[Any], runs: int, trt_cache: Path
) -> tuple[dict[str, Any], InferenceRunner | None]:
    started = time.perf_counter()
    try:
        runner = InferenceRunner(
            model, RunnerOptions(providers=preference, trt_cache_dir=trt_cache)
        )
    except EdgeAgentError as exc:
        return {"error": str(exc)}, None
    load_s = time.perf_counter() - started
    reload: dict[str, Any] = {}
    if preference[0] == "TensorrtExecutionProvider" and runner.provider == preference[0]:
        # The first load built the engine (what OTA staging pays once per version and GPU);
        # a restart or a rollback loads it from the version's engine folder.
        started = time.perf_counter()
        again = InferenceRunner(model, RunnerOptions(providers=preference, trt_cache_dir=trt_cache))
        reload = {
            "reload_with_cached_engine_s": round(time.perf_counter() - started, 3),
            "engine_files": sorted(p.name for p in trt_cache.rglob("*.engine")),
        }
        again.close()
    latencies = []
    for i in range(runs):
        t0 = time.perf_counter()
        runner.run(blobs[i % len(blobs)])
        latencies.append(time.perf_counter() - t0)
    values = np.asarray(latencies) * 1000.0
    return {
        "provider": runner.provider,
        "load_and_warmup_s": round(load_s, 3),
        **reload,
        "run_p50_ms": round(float(np.quantile(values, 0.5)), 3),
        "run_p99_ms": round(float(np.quantile(values, 0.99)), 3),
    }, runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument(
        "--trt-cache",
        type=Path,
        default=None,
        help="engine folder root (default: a fresh one, so the first load builds the engine)",
    )
    args = parser.parse_args()
    if args.trt_cache is None:
        args.trt_cache = Path(tempfile.mkdtemp(prefix="linefleet-trt-"))

    import onnxruntime as ort

    probe = InferenceRunner(args.model)
    info = probe.info
    images = [f.image for f in SyntheticLine(seed=3).frames(args.frames)]
    blobs = [letterbox([image], info.input_height, info.input_width)[0] for image in images]
    report: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "model": args.model.name,
        "imgsz": [info.input_height, info.input_width],
        "preferences": {},
    }
    reference = [probe.run(blob) for blob in blobs]
    reference_dets = [probe.decode(raw)[0] for raw in reference]
    cpu_p50 = None
    for name, preference in PREFERENCES.items():
        result, runner = measure(args.model, preference, blobs, args.runs, args.trt_cache)
        if runner is not None:
            outputs = [runner.run(blob) for blob in blobs]
            diffs = [float(np.abs(a - b).max()) for a, b in zip(outputs, reference, strict=True)]
            matched = total = 0
            for raw, expected in zip(outputs, reference_dets, strict=True):
                got = runner.decode(raw)[0]
                total += max(len(got), len(expected))
                matched += count_matches(got, expected, 0.99)
            result["max_abs_diff_vs_cpu"] = round(max(diffs), 5)
            result["box_agreement_vs_cpu"] = round(matched / total, 4) if total else 1.0
            if name == "cpu":
                cpu_p50 = result["run_p50_ms"]
            elif cpu_p50:
                result["speedup_vs_cpu"] = round(cpu_p50 / result["run_p50_ms"], 2)
            runner.close()
        report["preferences"][name] = result
    print(json.dumps(report))  # one object on the last line, as every benchmark


if __name__ == "__main__":
    main()
