"""Which runtime runs the model fastest on this box, and whether its detections keep the
accuracy: onnxruntime (the agent's default) against OpenVINO, both through the agent's own
``InferenceRunner`` (same letterbox, decode and NMS), in alternating slices in one process.

    python benchmarks/runtimes.py --weights artifacts/bootstrap-yolov8n-320.pt [--quick]

Contenders (each a ``model.runtime`` / precision the agent's config can choose):
- ``ort``: onnxruntime fp32, threads not spinning (the agent's default);
- ``ort_spinning``: onnxruntime as it comes, threads spinning (``model.thread_spinning``);
- ``openvino``: OpenVINO, its own precision choice (bf16 on CPUs with AVX-512 BF16/AMX);
- ``openvino_f32``: OpenVINO pinned to fp32.
Figures per input size: model-run latency p50/p99 over letterboxed synthetic-line frames, the
ratio to ``ort`` (>1: faster), box agreement with ``ort`` at IoU 0.9, and mAP50 / defect recall
against the synthetic line's exact labels, with the delta to ``ort``. One JSON object is
printed last. Say which machine a figure comes from (``lscpu`` flags are recorded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.release.evaluate import MetricsAccumulator  # noqa: E402
from edge_agent.inference import InferenceRunner, RunnerOptions, letterbox  # noqa: E402
from edge_agent.inference.selection import agreement  # noqa: E402
from shared.synth import CLASS_NAMES, LineConfig, SyntheticLine  # noqa: E402

CONTENDERS: dict[str, RunnerOptions] = {
    "ort": RunnerOptions(),
    "ort_spinning": RunnerOptions(thread_spinning=True),
    "openvino": RunnerOptions(runtime="openvino"),
    "openvino_f32": RunnerOptions(runtime="openvino", openvino_precision="f32"),
}


def export(weights: Path, size: int, out: Path) -> Path:
    target = out / f"model_{size}.onnx"
    if target.exists():
        return target
    from cloud_trainer.training.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(out)
    from ultralytics import YOLO

    exported = YOLO(str(weights)).export(
        format="onnx", imgsz=size, opset=18, simplify=True, dynamic=False, batch=1
    )
    Path(exported).rename(target)
    return target


def latency_slices(
    runners: dict[str, InferenceRunner], blobs: list[Any], rounds: int, per_slice: int
) -> dict[str, list[float]]:
    """Alternating slices: each contender runs ``per_slice`` frames in turn, ``rounds`` times,
    so drift in the shared machine's load falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds):
        order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
        for name in order:
            runner = runners[name]
            for i in range(per_slice):
                blob = blobs[(round_index * per_slice + i) % len(blobs)]
                started = time.perf_counter()
                runner.run(blob)
                times[name].append(time.perf_counter() - started)
    return times


def accuracy(
    runner: InferenceRunner, frames: list[Any], truths: list[Any]
) -> tuple[float, float, list[Any]]:
    metrics = MetricsAccumulator(list(CLASS_NAMES))
    outputs = []
    for image, truth in zip(frames, truths, strict=True):
        (detections,) = runner.detect([image])
        outputs.append(detections)
        metrics.add(truth, detections)
    result = metrics.metrics()
    return result.map50, result.per_class_recall.get("defect", 0.0), outputs


def measure_size(model: Path, args: argparse.Namespace) -> dict[str, Any]:
    line = SyntheticLine(LineConfig(width=640, height=640, seed=11))
    frames, truths = [], []
    for _ in range(args.frames):
        frame = line.next_frame()
        frames.append(frame.image)
        truths.append(frame.truth)
    runners: dict[str, InferenceRunner] = {}
    load_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, options in CONTENDERS.items():
        started = time.perf_counter()
        try:
            runners[name] = InferenceRunner(model, options)
        except Exception as exc:  # noqa: BLE001 - a runtime missing here is a figure too
            errors[name] = str(exc)[:300]
            continue
        load_s[name] = time.perf_counter() - started
    info = runners["ort"].info
    blobs = [letterbox([f], info.input_height, info.input_width)[0] for f in frames]
    times = latency_slices(runners, blobs, args.rounds, args.per_slice)
    reference = None
    figures: dict[str, Any] = {}
    for name, runner in runners.items():
        map50, defect_recall, outputs = accuracy(runner, frames, truths)
        if name == "ort":
            reference = (map50, outputs)
        values = np.asarray(times[name]) * 1000.0
        figures[name] = {
            "device": runner.provider,
            "load_and_warmup_s": round(load_s[name], 3),
            "run_p50_ms": round(float(np.percentile(values, 50)), 3),
            "run_p99_ms": round(float(np.percentile(values, 99)), 3),
            "map50": round(map50, 4),
            "defect_recall": round(defect_recall, 4),
            "_outputs": outputs,
        }
    assert reference is not None
    base_p50 = figures["ort"]["run_p50_ms"]
    for entry in figures.values():
        outputs = entry.pop("_outputs")
        entry["speed_vs_ort"] = round(base_p50 / entry["run_p50_ms"], 3)
        entry["map50_delta_vs_ort"] = round(entry["map50"] - reference[0], 4)
        entry["box_agreement_vs_ort_iou90"] = round(agreement(outputs, reference[1], 0.9), 4)
    fastest = max(figures, key=lambda n: figures[n]["speed_vs_ort"])
    return {
        "model": model.name,
        "contenders": figures,
        "unavailable": errors,
        "fastest": fastest,
        "fastest_speed_vs_ort": figures[fastest]["speed_vs_ort"],
        "fastest_map50_delta": figures[fastest]["map50_delta_vs_ort"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=ROOT / "artifacts/bootstrap-yolov8n-320.pt")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/linefleet-runtimes"))
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-slice", type=int, default=25)
    parser.add_argument("--frames", type=int, default=120)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_slice, args.frames = 4, 10, 40
    args.models_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for size in sizes:
        model = export(args.weights, size, args.models_dir)
        results[str(size)] = measure_size(model, args)
        print(f"[{size}] " + json.dumps(results[str(size)]), file=sys.stderr, flush=True)
    import onnxruntime
    import openvino

    summary = {
        "machine": describe_machine(),
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "rounds": args.rounds,
        "per_slice": args.per_slice,
        "frames": args.frames,
        "sizes": results,
        "fastest_by_size": {s: r["fastest"] for s, r in results.items()},
        "median_fastest_speed_vs_ort": statistics.median(
            r["fastest_speed_vs_ort"] for r in results.values()
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
