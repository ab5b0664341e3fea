"""The part inspector on this box: what it finds and what it costs a frame.

    python benchmarks/inspector.py [--train 150] [--frames 150] [--quick]

The committed bootstrap detector (which calls a defective part by its type) is the peer: it
is what a detector alone gives, and the fused model is that same detector with an inspector
trained on ``--train`` labelled frames of the synthetic line (``cloud_trainer.training.
inspector``; no detector fine-tune here: ``benchmarks/learning_loop.py`` measures the whole
loop). Both are exported as the trainer exports (fp32 ONNX, and the INT8 variant the agents
choose on CPU) and scored through the agent's ``InferenceRunner`` on held-out frames of the
undrifted line: mAP50, defect recall and precision at the agent's threshold. Latency: the
model call alone (one frame, the agent's letterbox), detector and fused model alternately on
the same frames; ratios in the same run. Parity: the worst |ONNX - torch| of each fp32
export on the held-out frames (the detector's is the floor: its own rounding), and how often
the fused output moves by more than the export's parity bound when the detector's output is
jittered by rounding-sized noise (the fused graph makes decisions: which anchors form a
part, which box is cropped; they must not hang on a rounding error, or the parity check
refuses good models). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.learning_loop import TEST_SEED, score  # noqa: E402
from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.config import ExportSection, InspectorSection  # noqa: E402
from cloud_trainer.data.dataset import labelled_folder  # noqa: E402
from cloud_trainer.release.export import export_and_check, outputs_differ  # noqa: E402
from cloud_trainer.release.inspected import inspected_torch_model, raw_head  # noqa: E402
from cloud_trainer.release.variants import build_int8  # noqa: E402
from cloud_trainer.training.inspector import TrainedInspector, train_inspector  # noqa: E402
from cloud_trainer.training.offline import prepare_offline_ultralytics  # noqa: E402
from edge_agent.inference import InferenceRunner, RunnerOptions, letterbox  # noqa: E402
from shared.detections import Detections  # noqa: E402
from shared.synth import CLASS_NAMES, SyntheticLine, write_yolo_dataset  # noqa: E402
from testing.bootstrap_model import BOOTSTRAP_PT  # noqa: E402

IMGSZ = 320
JITTER_DRAWS = 5


def accuracy(onnx: Path, frames: list[tuple[Any, Detections]]) -> dict[str, Any]:
    measured = score(onnx, frames)  # the learning loop's scoring, through the agent's runner
    return {
        "map50": measured.map50,
        "defect_recall": measured.recall["defect"],
        "defect_precision": measured.precision.get("defect"),  # none when it calls no defect
        "recall": measured.recall,
    }


def latency_ms(models: dict[str, Path], frames: list[Any], rounds: int) -> dict[str, float]:
    """Median model-call time of each model, alternating model by model on each frame."""
    runners = {
        name: InferenceRunner(path, RunnerOptions(warmup_runs=3)) for name, path in models.items()
    }
    blobs = [letterbox([image], IMGSZ, IMGSZ)[0] for image in frames]
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for _ in range(rounds):
            for blob in blobs:
                for name, runner in runners.items():
                    started = time.perf_counter()
                    runner.run(blob)
                    times[name].append(time.perf_counter() - started)
    finally:
        for runner in runners.values():
            runner.close()
    return {name: round(statistics.median(values) * 1000, 3) for name, values in times.items()}


def parity_figures(
    models: dict[str, Path], inspector: TrainedInspector, frames: list[Any], bound: float
) -> dict[str, Any]:
    """Worst |ONNX - torch| of the fp32 exports on ``frames`` (measured as the export's own
    check measures it), and the fused graph's steadiness: per jitter scale, the frames on
    which some fused output moved by more than ``bound`` in one of :data:`JITTER_DRAWS`
    draws of noise on the detector's output (that scale on the class scores, 100x on box
    pixels)."""
    import torch

    fused = inspected_torch_model(BOOTSTRAP_PT, inspector)
    detector = fused.detector

    class Jittered(torch.nn.Module):  # type: ignore[misc]  # torch is Any here
        def __init__(self, scale: float, seed: int) -> None:
            super().__init__()
            self.scale = scale
            self.generator = torch.Generator().manual_seed(seed)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raw = raw_head(detector(images)).clone()
            noise = torch.randn(raw.shape, generator=self.generator) * self.scale
            noise[:, :4] *= 100.0
            return raw + noise

    named = [(f"frame {index}", image) for index, image in enumerate(frames)]
    worst = {
        name: outputs_differ(reference, models[name], named, IMGSZ).worst
        for name, reference in (("detector_fp32", detector), ("fused_fp32", fused))
    }
    moved = {scale: 0 for scale in (1e-6, 1e-5)}
    for index, image in enumerate(frames):
        tensor = torch.from_numpy(letterbox([image], IMGSZ, IMGSZ, dtype=np.float32)[0])
        with torch.no_grad():
            steady = fused(tensor)
            for scale in moved:
                for draw in range(JITTER_DRAWS):
                    fused.detector = Jittered(scale, index * JITTER_DRAWS + draw)
                    jittered = fused(tensor)
                    fused.detector = detector
                    if float((jittered - steady)[:, 4:].abs().max()) > bound:
                        moved[scale] += 1
                        break
    return {
        "frames": len(frames),
        "worst_abs_diff": {name: round(value, 6) for name, value in worst.items()},
        "bound": bound,
        "jitter_draws": JITTER_DRAWS,
        "frames_moved_over_bound": {f"{scale:g}": count for scale, count in moved.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=150, help="labelled frames it learns from")
    parser.add_argument("--frames", type=int, default=150, help="held-out frames scored")
    parser.add_argument("--rounds", type=int, default=3, help="latency passes over 50 frames")
    parser.add_argument("--quick", action="store_true", help="60 frames to learn, 60 to score")
    args = parser.parse_args()
    if args.quick:
        args.train, args.frames, args.rounds = 60, 60, 1
    work = Path(tempfile.mkdtemp(prefix="lf-bench-inspector-"))
    prepare_offline_ultralytics(work)
    data = write_yolo_dataset(work / "data", train=args.train, val=8, seed=4242).parent
    started = time.monotonic()
    inspector = train_inspector(
        labelled_folder(data, "train"), CLASS_NAMES, InspectorSection(), imgsz=IMGSZ, seed=0
    )
    if inspector is None:
        raise SystemExit("too few parts with and without a defect to train the inspector")
    parity = sorted((data / "images" / "val").glob("*.jpg"))
    models: dict[str, Path] = {}
    for name, fused in (("detector", None), ("fused", inspector)):
        folder = work / name
        weights = folder / "weights.pt"
        folder.mkdir()
        weights.write_bytes(BOOTSTRAP_PT.read_bytes())
        exported = export_and_check(
            weights,
            folder / "out",
            imgsz=IMGSZ,
            config=ExportSection(),
            parity_images=parity,
            expected_classes=CLASS_NAMES,
            inspector=fused,
        )
        models[f"{name}_fp32"] = exported.onnx
        models[f"{name}_int8"] = build_int8(
            exported.onnx,
            folder / "int8.onnx",
            sorted((data / "images" / "train").glob("*.jpg"))[:64],
            size=IMGSZ,
            input_name="images",
        )
    line = SyntheticLine(seed=TEST_SEED)
    frames = [(f.image, f.truth) for f in (line.random_scene(i) for i in range(args.frames))]
    scores = {name: accuracy(path, frames) for name, path in models.items()}
    times = latency_ms(models, [image for image, _ in frames[:50]], args.rounds)
    steadiness = parity_figures(
        models, inspector, [image for image, _ in frames], ExportSection().parity_max_abs_diff
    )
    result = {
        "benchmark": "inspector",
        "machine": describe_machine(),
        "train_frames": args.train,
        "test_frames": args.frames,
        "inspector": inspector.report.model_dump(),
        "seconds_to_export": round(time.monotonic() - started, 1),
        "accuracy": scores,
        "latency_ms": times,
        "latency_ratio_fp32": round(times["fused_fp32"] / times["detector_fp32"], 3),
        "latency_ratio_int8": round(times["fused_int8"] / times["detector_int8"], 3),
        "defect_recall_gain": round(
            scores["fused_int8"]["defect_recall"] - scores["detector_int8"]["defect_recall"], 4
        ),
        "parity": steadiness,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
