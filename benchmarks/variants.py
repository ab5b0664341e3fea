"""INT8 variants of a detector on this box: which nodes must stay float, what accuracy is left,
and what speed each runtime makes of them. The evidence for the variants of issue 18.

    python benchmarks/variants.py [--model model_320.onnx | --weights best.pt] [--quick]

From the fp32 ONNX export (the reference the gate measured), static INT8 (QDQ, per-channel
weights, MinMax calibration on frames of the synthetic line, standing in for a fleet's hard
examples and the replay set) is built three ways:

- ``int8_all``: the whole graph;
- ``int8_no_head``: the detect head (``/model.22/``: box distribution, class scores, decode)
  kept float;
- ``int8_no_head_sensitive``: also the ``--sensitive`` activations whose quantization loses
  the most signal (lowest SQNR of the quantize/dequantize step, from onnxruntime's
  ``qdq_loss_debug`` on the calibration frames) kept float, with their producers and
  consumers.

Each variant is scored like the gate scores a model, through the agent's own inference
path (``InferenceRunner``: letterbox, run, decode, NMS): mAP50 and recall per class on
held-out frames of the synthetic line, against fp32. Speed: the model call alone, in
onnxruntime and in OpenVINO (which runs a QDQ model as INT8), in alternating slices; ratios
against onnxruntime fp32 in the same run. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from numpy.typing import NDArray  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.qdq_loss_debug import (  # noqa: E402
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    modify_model_output_intermediate_tensors,
)
from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.release.evaluate import EVAL_CONFIDENCE, MetricsAccumulator  # noqa: E402
from edge_agent.errors import EdgeAgentError  # noqa: E402
from edge_agent.inference import InferenceRunner, RunnerOptions, letterbox  # noqa: E402
from shared.synth import CLASS_NAMES, SyntheticLine  # noqa: E402

HEAD_PREFIX = "/model.22/"
CALIBRATION_SEED, TEST_SEED = 4242, 777


class Blobs(CalibrationDataReader):
    """The calibration frames, letterboxed as the agent feeds the model."""

    def __init__(self, blobs: list[NDArray[np.float32]], input_name: str) -> None:
        self.blobs, self.input_name = blobs, input_name
        self._next: Iterator[NDArray[np.float32]] = iter(blobs)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        blob = next(self._next, None)
        return None if blob is None else {self.input_name: blob}

    def rewind(self) -> None:
        self._next = iter(self.blobs)


def calibration_blobs(count: int, size: int) -> list[NDArray[np.float32]]:
    line = SyntheticLine(seed=CALIBRATION_SEED)
    return [
        letterbox([line.random_scene(i).image], size, size, dtype=np.float32)[0]
        for i in range(count)
    ]


def quantize(
    prepared: Path, out: Path, blobs: list[NDArray[np.float32]], exclude: list[str]
) -> Path:
    quantize_static(
        str(prepared),
        str(out),
        Blobs(blobs, "images"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude,
    )
    return out


def sensitive_nodes(
    prepared: Path, whole: Path, blobs: list[NDArray[np.float32]], count: int, work: Path
) -> tuple[list[str], list[dict[str, Any]]]:
    """The nodes around the ``count`` activations whose quantization loses the most signal
    (lowest SQNR, dB) in the whole-graph INT8 model, outside the head (kept float anyway)."""
    augmented_float, augmented_qdq = work / "float.aug.onnx", work / "qdq.aug.onnx"
    modify_model_output_intermediate_tensors(str(prepared), str(augmented_float))
    modify_model_output_intermediate_tensors(str(whole), str(augmented_qdq))
    reader = Blobs(blobs[:16], "images")
    float_acts = collect_activations(str(augmented_float), reader)
    reader.rewind()
    qdq_acts = collect_activations(str(augmented_qdq), reader)
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    graph = onnx.load(str(prepared)).graph
    producers = {out: node.name for node in graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    ranked = sorted(
        (
            (float(err["qdq_err"]), tensor)
            for tensor, err in errors.items()
            if tensor in producers and not producers[tensor].startswith(HEAD_PREFIX)
        ),
    )[:count]
    nodes: set[str] = set()
    for _, tensor in ranked:
        nodes.add(producers[tensor])
        nodes.update(consumers.get(tensor, []))
    worst = [{"tensor": t, "sqnr_db": round(e, 2)} for e, t in ranked]
    return sorted(nodes), worst


def score(model: Path, runtime: str, size: int, frames: int) -> dict[str, Any]:
    """mAP50 and recall per class through the agent's inference path, as the gate scores."""
    runner = InferenceRunner(
        model,
        RunnerOptions(
            runtime=runtime,  # type: ignore[arg-type]
            conf_threshold=EVAL_CONFIDENCE,
            max_detections=300,
            warmup_runs=1,
            openvino_precision="f32",
        ),
        class_names=CLASS_NAMES,
    )
    accumulator = MetricsAccumulator(CLASS_NAMES)
    line = SyntheticLine(seed=TEST_SEED)
    try:
        for i in range(frames):
            scene = line.random_scene(i)
            accumulator.add(scene.truth, runner.detect([scene.image])[0])
    finally:
        runner.close()
    metrics = accumulator.metrics()
    return {"map50": round(metrics.map50, 4), "recall": metrics.per_class_recall}


def median_run_ms(
    runners: dict[str, InferenceRunner], blobs: list[NDArray[np.float32]], rounds: int
) -> dict[str, float]:
    """The model call alone, alternating slices of five runs per contender."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds):
        names = list(runners) if round_index % 2 == 0 else list(runners)[::-1]
        for name in names:
            for i in range(5):
                blob = blobs[(round_index * 5 + i) % len(blobs)]
                started = time.perf_counter()
                runners[name].run(blob)
                times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(v) * 1000.0, 3) for name, v in times.items()}


def export(weights: Path, size: int, out: Path) -> Path:
    from cloud_trainer.training.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(out)
    from ultralytics import YOLO

    exported = YOLO(str(weights)).export(format="onnx", imgsz=size, opset=18, simplify=True)
    return Path(exported).replace(out / "model.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="the fp32 ONNX export (batch 1)")
    parser.add_argument("--weights", type=Path, default=ROOT / "artifacts/bootstrap-yolov8n-320.pt")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--frames", type=int, default=200, help="held-out frames scored")
    parser.add_argument("--sensitive", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds")
    args = parser.parse_args()
    frames, rounds = (40, 4) if args.quick else (args.frames, args.rounds)
    size = args.imgsz

    with tempfile.TemporaryDirectory(prefix="lf-bench-variants-") as tmp:
        work = Path(tmp)
        fp32 = args.model or export(args.weights, size, work)
        prepared = work / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        blobs = calibration_blobs(args.calibration, size)
        head = [
            n.name for n in onnx.load(str(prepared)).graph.node if n.name.startswith(HEAD_PREFIX)
        ]
        started = time.perf_counter()
        variants = {"int8_all": quantize(prepared, work / "int8_all.onnx", blobs, [])}
        quantize_s = time.perf_counter() - started
        variants["int8_no_head"] = quantize(prepared, work / "int8_no_head.onnx", blobs, head)
        sensitive, worst = sensitive_nodes(
            prepared, variants["int8_all"], blobs, args.sensitive, work
        )
        variants["int8_no_head_sensitive"] = quantize(
            prepared, work / "int8_no_head_sensitive.onnx", blobs, head + sensitive
        )

        contenders: dict[str, tuple[Path, str]] = {
            "fp32/onnxruntime": (fp32, "onnxruntime"),
            "fp32/openvino": (fp32, "openvino"),
        }
        for name, path in variants.items():
            contenders[f"{name}/onnxruntime"] = (path, "onnxruntime")
            contenders[f"{name}/openvino"] = (path, "openvino")
        results: dict[str, dict[str, Any]] = {}
        runners: dict[str, InferenceRunner] = {}
        for name, (path, runtime) in contenders.items():
            try:
                results[name] = score(path, runtime, size, frames)
                runners[name] = InferenceRunner(
                    path,
                    RunnerOptions(runtime=runtime, openvino_precision="f32"),  # type: ignore[arg-type]
                    class_names=CLASS_NAMES,
                )
            except EdgeAgentError as exc:
                results[name] = {"refused": str(exc)[:300]}
        timing = median_run_ms(runners, calibration_blobs(16, size), rounds)
        for runner in runners.values():
            runner.close()

    reference = results["fp32/onnxruntime"]
    base_ms = timing["fp32/onnxruntime"]
    for name, figures in results.items():
        if name not in timing:
            continue
        figures["run_ms"] = timing[name]
        figures["speed_vs_ort_fp32"] = round(base_ms / timing[name], 3)
        figures["map50_delta"] = round(figures["map50"] - reference["map50"], 4)
        figures["worst_class_recall_delta"] = round(
            min(figures["recall"].get(c, 0.0) - r for c, r in reference["recall"].items()), 4
        )
    print(
        json.dumps(
            {
                "benchmark": "variants",
                "machine": describe_machine(),
                "imgsz": size,
                "calibration_frames": args.calibration,
                "scored_frames": frames,
                "quantize_s": round(quantize_s, 2),
                "head_nodes_float": len(head),
                "sensitive_nodes_float": len(sensitive),
                "most_sensitive_activations": worst,
                "contenders": results,
                "command": "python " + " ".join(sys.argv),
            }
        )
    )


if __name__ == "__main__":
    main()
