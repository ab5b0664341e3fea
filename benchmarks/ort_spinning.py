"""onnxruntime thread spinning on a line-paced agent: the model alone vs the whole line.

    python benchmarks/ort_spinning.py --onnx model.onnx [--quick] [--fps 30] [--cameras 1]

onnxruntime's pool threads spin after a run, waiting for the next one. Each mode runs the
agent's real pipeline (synthetic cameras at ``--fps`` -> prepare -> infer -> finish) in its
own interpreter, the modes alternating, one infer worker with a thread per core:

- ``spinning``: onnxruntime's default (``model.thread_spinning: true``);
- ``no_spinning``: the agent's default.

Figures per mode: cores busy (process CPU / wall), the model run alone (the pipeline's infer
stage) and the frame latency from capture to the end of post-processing, p50 and p99.
Ratios are no_spinning over spinning, the median of the rounds' own ratios (below 1
favours the default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
from edge_agent.camera import CameraWorker, FrameHub, SyntheticSource
from edge_agent.inference import InferenceRunner, RunnerOptions
from edge_agent.frame_path import ActiveModel, ModelSlot
from edge_agent.pipeline import Pipeline
from shared.synth import LineConfig

model, spinning, fps, cameras, seconds = (
    Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4]),
    float(sys.argv[5]),
)
runner = InferenceRunner(model, RunnerOptions(thread_spinning=spinning))
stop, hub, results = threading.Event(), FrameHub(), []
pipeline = Pipeline(hub, ModelSlot(ActiveModel(runner, "bench", 1)), stop,
                    sinks=[results.append])
pipeline.start()
for index in range(cameras):
    source = SyntheticSource(LineConfig(width=640, height=640, seed=index))
    CameraWorker(f"cam{index}", source, hub, stop, fps_limit=fps).start()
time.sleep(3.0)  # warm-up
first = len(results)
cpu0, wall0 = time.process_time(), time.monotonic()
time.sleep(seconds)
cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
measured = results[first:]
stop.set()
pipeline.join()
print(json.dumps({
    "cores_busy": cpu / wall,
    "fps": len(measured) / wall,
    "infer_s": [r.latency_s["infer"] for r in measured],
    "total_s": [r.latency_s["total"] for r in measured],
}))
"""

MODES = {"spinning": "1", "no_spinning": "0"}


def run_mode(
    spinning: str, model: Path, fps: float, cameras: int, seconds: float
) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), spinning, str(fps), str(cameras), str(seconds)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(data: dict[str, Any]) -> dict[str, float]:
    def as_list(value: Any) -> list[float]:
        return value if isinstance(value, list) else [value]

    infer, total = as_list(data["infer_s"]), as_list(data["total_s"])
    return {
        "cores_busy": round(statistics.mean(as_list(data["cores_busy"])), 2),
        "fps": round(statistics.mean(as_list(data["fps"])), 1),
        "model_run_ms_p50": round(1000 * statistics.median(infer), 2),
        "frame_latency_ms_p50": round(1000 * statistics.median(total), 2),
        "frame_latency_ms_p99": round(1000 * quantile(total, 0.99), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="a detector (e.g. yolov8n)")
    parser.add_argument("--fps", type=float, default=30.0, help="per camera")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per mode")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per round")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 s")
    args = parser.parse_args()
    rounds, seconds = (2, 5.0) if args.quick else (args.rounds, args.seconds)
    pooled: dict[str, dict[str, list[float]]] = {
        mode: {"cores_busy": [], "fps": [], "infer_s": [], "total_s": []} for mode in MODES
    }
    per_round: list[dict[str, dict[str, float]]] = []
    for round_index in range(rounds):
        order = list(MODES.items())
        if round_index % 2:
            order.reverse()
        this_round: dict[str, dict[str, float]] = {}
        for mode, flag in order:
            result = run_mode(flag, args.onnx, args.fps, args.cameras, seconds)
            for key in pooled[mode]:
                value = result[key]
                pooled[mode][key] += value if isinstance(value, list) else [value]
            this_round[mode] = summary(result)
        per_round.append(this_round)
    figures: dict[str, Any] = {
        "camera_fps": args.fps,
        "cameras": args.cameras,
        "rounds": rounds,
        "seconds_per_round": seconds,
    }
    for mode, data in pooled.items():
        figures[mode] = summary(data)
    # The machine's phases move both modes: the median of the rounds' own ratios.
    figures["no_spinning_vs_spinning"] = {
        key: round(
            statistics.median(r["no_spinning"][key] / r["spinning"][key] for r in per_round), 3
        )
        for key in figures["spinning"]
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"# {time.monotonic() - started:.0f} s", file=sys.stderr)
