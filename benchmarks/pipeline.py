"""Agent pipeline vs raw onnxruntime vs ultralytics predict(), on the same model and frames.

Each contender runs in a fresh process, so start-up time and peak memory are its own:
  raw          session.run on pre-letterboxed tensors: the ceiling for (b)
  pipeline     the agent's cameras -> hub -> prepare/infer/finish -> events sink
               (JPEG decode + letterbox + inference + decode/NMS + event JSON)
  ultralytics  YOLO(model.onnx).predict(jpeg_path) frame after frame
Ratios, not absolute times, are the result: the machine is shared and noisy.

    python benchmarks/pipeline.py --weights best.pt [--quick]

needs the trainer extra (ultralytics, to export the ONNX files and as the peer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------- helpers
def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Not ru_maxrss: on Linux it survives
    exec, so a child would report its (torch-loaded) parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(values), q)) * 1000.0, 3) if values else 0.0


def write_frames(directory: Path, count: int, seed: int, cameras: int) -> list[list[str]]:
    """``count`` synthetic JPEG frames per camera (640x640), seeded."""
    import cv2

    from shared.synth import SyntheticLine

    lists = []
    for cam in range(cameras):
        line = SyntheticLine(seed=seed + cam)
        paths = []
        for frame in line.frames(count):
            path = directory / f"cam{cam}_{frame.index:05d}.jpg"
            cv2.imwrite(str(path), frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(str(path))
        lists.append(paths)
    return lists


def agreement(a: list[dict[str, Any]], b: list[dict[str, Any]], iou_min: float = 0.99) -> float:
    """Share of boxes (over the larger set per frame) matched by class with IoU >= iou_min."""
    from shared.detections import Detections, count_matches

    matched = total = 0
    for dets_a, dets_b in zip(a, b, strict=True):
        total += max(len(dets_a["cls"]), len(dets_b["cls"]))
        if dets_a["cls"] and dets_b["cls"]:
            first = Detections(dets_a["xyxy"], [1.0] * len(dets_a["cls"]), dets_a["cls"])
            second = Detections(dets_b["xyxy"], [1.0] * len(dets_b["cls"]), dets_b["cls"])
            matched += count_matches(first, second, iou_min)
    return 1.0 if total == 0 else matched / total


# ----------------------------------------------------------------- workers (child processes)
def worker_raw(args: argparse.Namespace, frames: list[list[str]], spawned: float) -> dict[str, Any]:
    import cv2

    from edge_agent.inference import InferenceRunner, letterbox

    runner = InferenceRunner(Path(args.model))
    info = runner.info
    blobs = [letterbox([cv2.imread(p)], info.input_height, info.input_width)[0] for p in frames[0]]
    session = runner._session  # the bare session: no validation, no decoding
    cold = time.time() - spawned
    session.run(None, {info.input_name: blobs[0]})
    times = []
    started = time.perf_counter()
    for blob in blobs[1:]:
        t0 = time.perf_counter()
        session.run(None, {info.input_name: blob})
        times.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {
        "fps": (len(blobs) - 1) / elapsed,
        "cold_start_s": cold,
        "peak_rss_mb": peak_rss_mb(),
        "infer_p50_ms": percentile_ms(times, 0.5),
        "infer_p99_ms": percentile_ms(times, 0.99),
    }


def worker_pipeline(
    args: argparse.Namespace, frames: list[list[str]], spawned: float
) -> dict[str, Any]:
    import cv2

    from edge_agent.camera import CameraWorker, FrameHub, FrameSource
    from edge_agent.config import MqttSection
    from edge_agent.events import EventsSink
    from edge_agent.inference import InferenceRunner
    from edge_agent.metrics import AgentMetrics
    from edge_agent.mqtt_link import MqttLink
    from edge_agent.pipeline import ActiveModel, DetectionResult, ModelSlot, Pipeline
    from shared.topics import Topics

    class JpegFiles(FrameSource):
        live = False

        def __init__(self, paths: list[str]) -> None:
            self.paths = list(paths)

        @property
        def description(self) -> str:
            return "jpeg files"

        def open(self) -> None:
            pass

        def read(self):  # type: ignore[no-untyped-def]
            if not self.paths:
                return None
            return cv2.imread(self.paths.pop(0)), None

    stop = threading.Event()
    hub = FrameHub()
    model = ActiveModel(InferenceRunner(Path(args.model)), "bench", 1)
    metrics = AgentMetrics()
    total = sum(len(f) for f in frames)
    done = threading.Event()
    first_result: list[float] = []
    stamps: list[float] = []
    stage_samples: dict[str, list[float]] = {s: [] for s in ("prepare", "infer", "finish", "total")}
    detections: list[dict[str, Any]] = []

    def record(result: DetectionResult) -> None:
        now = time.perf_counter()
        if not first_result:
            first_result.append(time.time())
        stamps.append(now)
        for stage, seconds in result.latency_s.items():
            stage_samples[stage].append(seconds)
        if result.frame.camera_id == "cam0":
            detections.append(
                {
                    "xyxy": result.detections.xyxy.tolist(),
                    "cls": result.detections.class_id.tolist(),
                }
            )
        if len(stamps) >= total:
            done.set()

    pipeline = Pipeline(
        hub, ModelSlot(model), stop, max_batch=args.max_batch, observe_latency=metrics.observe_stage
    )
    link = None
    if args.mqtt_port:
        link = MqttLink(
            MqttSection(host="127.0.0.1", port=args.mqtt_port),
            "bench",
            Topics("bench"),
            agent_version="0.1.0",
        )
        link.start()
        link.wait_connected(10)
        pipeline.add_sink(EventsSink(link, Topics("bench"), "bench", metrics, max_per_s=1000.0))
    pipeline.add_sink(record)
    pipeline.start()
    workers = [
        CameraWorker(f"cam{i}", JpegFiles(paths), hub, stop, lossless=True)
        for i, paths in enumerate(frames)
    ]
    for worker in workers:
        worker.start()
    done.wait(600)
    stop.set()
    pipeline.join()
    if link is not None:
        link.stop()
    # Steady state: from the first result to the last, excluding the first (warm-up) frame.
    fps = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    # p50/p99 per stage over every frame; "total" is capture to sinks, including the wait in
    # the hub (with lossless file reading a frame waits there for the model by design).
    stages = {
        stage: {"p50_ms": percentile_ms(samples, 0.5), "p99_ms": percentile_ms(samples, 0.99)}
        for stage, samples in stage_samples.items()
    }
    return {
        "fps": fps,
        "cold_start_s": first_result[0] - spawned,
        "peak_rss_mb": peak_rss_mb(),
        "stages": stages,
        "events_published": link.stats.published if link else 0,
        "dropped": sum(hub.dropped.values()),
        "detections": detections[: args.agreement_frames],
    }


def worker_ultralytics(
    args: argparse.Namespace, frames: list[list[str]], spawned: float
) -> dict[str, Any]:
    from cloud_trainer.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(Path(args.work_dir))
    from ultralytics import YOLO

    model = YOLO(args.model, task="detect")
    order = [p for group in zip(*frames, strict=True) for p in group]  # round-robin cameras
    kwargs = {"imgsz": args.imgsz, "conf": 0.25, "iou": 0.7, "verbose": False, "device": "cpu"}
    first = model.predict(order[0], **kwargs)[0]
    cold = time.time() - spawned
    detections = []
    times = []
    started = time.perf_counter()
    for path in order[1:]:
        t0 = time.perf_counter()
        result = model.predict(path, **kwargs)[0]
        times.append(time.perf_counter() - t0)
        if Path(path).name.startswith("cam0") and len(detections) < args.agreement_frames:
            detections.append(
                {
                    "xyxy": result.boxes.xyxy.numpy().tolist(),
                    "cls": result.boxes.cls.numpy().astype(int).tolist(),
                }
            )
    elapsed = time.perf_counter() - started
    first_det = {
        "xyxy": first.boxes.xyxy.numpy().tolist(),
        "cls": first.boxes.cls.numpy().astype(int).tolist(),
    }
    return {
        "fps": (len(order) - 1) / elapsed,
        "cold_start_s": cold,
        "peak_rss_mb": peak_rss_mb(),
        "p50_ms": percentile_ms(times, 0.5),
        "p99_ms": percentile_ms(times, 0.99),
        "detections": [first_det, *detections][: args.agreement_frames],
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its other figures come with it)."""
    ordered = sorted(runs, key=lambda r: r["fps"])
    return ordered[len(ordered) // 2]


WORKERS = {"raw": worker_raw, "pipeline": worker_pipeline, "ultralytics": worker_ultralytics}


def run_child(
    kind: str,
    model: Path,
    frames_file: Path,
    imgsz: int,
    work_dir: Path,
    *,
    max_batch: int = 1,
    mqtt_port: int = 0,
    agreement_frames: int = 20,
) -> dict[str, Any]:
    spawned = time.time()
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--model",
        str(model),
        "--frames-file",
        str(frames_file),
        "--imgsz",
        str(imgsz),
        "--work-dir",
        str(work_dir),
        "--spawned",
        repr(spawned),
        "--max-batch",
        str(max_batch),
        "--mqtt-port",
        str(mqtt_port),
        "--agreement-frames",
        str(agreement_frames),
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- orchestration
def export_models(weights: Path, out: Path, sizes: list[int]) -> dict[str, Path]:
    from cloud_trainer.offline import prepare_offline_ultralytics

    prepare_offline_ultralytics(out)
    from ultralytics import YOLO

    models: dict[str, Path] = {}
    for size in sizes:
        for dynamic in (False, True):
            target = out / f"model_{size}{'_dyn' if dynamic else ''}.onnx"
            if not target.exists():
                exported = YOLO(str(weights)).export(
                    format="onnx", imgsz=size, opset=18, simplify=True, dynamic=dynamic, batch=1
                )
                Path(exported).rename(target)
            models[f"{size}{'_dyn' if dynamic else ''}"] = target
    return models


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, help="ultralytics .pt to export (trainer extra)")
    parser.add_argument("--quick", action="store_true", help="fewer frames: under 60 s")
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="runs per contender, interleaved (default 3; 1 with --quick)",
    )
    # worker mode (internal)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--model")
    parser.add_argument("--frames-file")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--work-dir", default=tempfile.gettempdir())
    parser.add_argument("--spawned", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--mqtt-port", type=int, default=0)
    parser.add_argument("--agreement-frames", type=int, default=20)
    args = parser.parse_args()

    if args.worker:
        frames = json.loads(Path(args.frames_file).read_text())
        print(json.dumps(WORKERS[args.worker](args, frames, args.spawned)))
        return

    if args.weights is None:
        parser.error("--weights is required (an ultralytics .pt, e.g. from the bootstrap trainer)")
    from shared.local_services import MosquittoProcess, ServiceError

    sizes = [int(s) for s in args.sizes.split(",")]
    count = args.frames or (24 if args.quick else 150)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-"))
    models = export_models(args.weights, work, sizes)
    single = write_frames(work, count, seed=7, cameras=1)
    # Each camera gets the full count: short multi-camera runs proved too noisy to compare.
    multi = write_frames(work, count, seed=100, cameras=args.cameras) if args.cameras > 1 else None
    (work / "single.json").write_text(json.dumps(single))
    try:
        broker = MosquittoProcess(work / "mosquitto").start()
        port = broker.port
    except ServiceError:
        broker, port = None, 0
    report: dict[str, Any] = {
        "frames": count,
        # --quick checks that everything runs (< 60 s); 24 frames are too few for the ratios
        # to mean anything on a noisy machine: compare full runs only.
        "quick": args.quick,
        "sizes": {},
        "events_to_broker": bool(port),
    }
    try:
        repeats = args.repeats or (1 if args.quick else 3)
        for size in sizes:
            model = models[str(size)]
            runs: dict[str, list[dict[str, Any]]] = {"raw": [], "pipeline": [], "ultralytics": []}
            for _ in range(repeats):  # interleaved, so slow phases of the machine hit all three
                runs["raw"].append(run_child("raw", model, work / "single.json", size, work))
                runs["pipeline"].append(
                    run_child("pipeline", model, work / "single.json", size, work, mqtt_port=port)
                )
                runs["ultralytics"].append(
                    run_child("ultralytics", model, work / "single.json", size, work)
                )
            raw, pipe, ultra = (median_run(runs[k]) for k in ("raw", "pipeline", "ultralytics"))
            vs_raw = [
                p["fps"] / r["fps"] for p, r in zip(runs["pipeline"], runs["raw"], strict=True)
            ]
            vs_ultra = [
                p["fps"] / u["fps"]
                for p, u in zip(runs["pipeline"], runs["ultralytics"], strict=True)
            ]
            report["sizes"][str(size)] = {
                "repeats": repeats,
                "raw_ort_fps": round(raw["fps"], 2),
                "pipeline_fps": round(pipe["fps"], 2),
                "ultralytics_fps": round(ultra["fps"], 2),
                # Median of per-run ratios: each run's contenders ran back to back.
                "pipeline_vs_raw": round(statistics.median(vs_raw), 3),
                "pipeline_vs_ultralytics": round(statistics.median(vs_ultra), 3),
                "pipeline_vs_ultralytics_per_run": [
                    round(p["fps"] / u["fps"], 3)
                    for p, u in zip(runs["pipeline"], runs["ultralytics"], strict=True)
                ],
                "rss_vs_ultralytics": round(pipe["peak_rss_mb"] / ultra["peak_rss_mb"], 3),
                "cold_start_vs_ultralytics": round(pipe["cold_start_s"] / ultra["cold_start_s"], 3),
                "box_agreement": round(agreement(pipe["detections"], ultra["detections"]), 4),
                "pipeline_peak_rss_mb": round(pipe["peak_rss_mb"], 1),
                "ultralytics_peak_rss_mb": round(ultra["peak_rss_mb"], 1),
                "pipeline_cold_start_s": round(pipe["cold_start_s"], 2),
                "ultralytics_cold_start_s": round(ultra["cold_start_s"], 2),
                "raw_infer_p50_ms": raw["infer_p50_ms"],
                "raw_infer_p99_ms": raw["infer_p99_ms"],
                "ultralytics_p50_ms": ultra["p50_ms"],
                "ultralytics_p99_ms": ultra["p99_ms"],
                "pipeline_stages": pipe["stages"],
                "events_published": pipe["events_published"],
            }
        if multi is not None:
            size = sizes[0]
            (work / "multi.json").write_text(json.dumps(multi))
            multi_runs: dict[str, list[dict[str, Any]]] = {
                "batched": [],
                "interleaved": [],
                "ultralytics": [],
            }
            for _ in range(repeats):
                multi_runs["batched"].append(
                    run_child(
                        "pipeline",
                        models[f"{size}_dyn"],
                        work / "multi.json",
                        size,
                        work,
                        max_batch=args.cameras,
                        mqtt_port=port,
                    )
                )
                multi_runs["interleaved"].append(
                    run_child(
                        "pipeline",
                        models[str(size)],
                        work / "multi.json",
                        size,
                        work,
                        max_batch=1,
                        mqtt_port=port,
                    )
                )
                multi_runs["ultralytics"].append(
                    run_child("ultralytics", models[str(size)], work / "multi.json", size, work)
                )
            batched, interleaved, ultra = (
                median_run(multi_runs[k]) for k in ("batched", "interleaved", "ultralytics")
            )
            per_run = [
                max(b["fps"], i["fps"]) / u["fps"]
                for b, i, u in zip(
                    multi_runs["batched"],
                    multi_runs["interleaved"],
                    multi_runs["ultralytics"],
                    strict=True,
                )
            ]
            report["multi_camera"] = {
                "cameras": args.cameras,
                "imgsz": size,
                "repeats": repeats,
                "pipeline_batched_fps": round(batched["fps"], 2),
                "pipeline_interleaved_fps": round(interleaved["fps"], 2),
                "ultralytics_fps": round(ultra["fps"], 2),
                "pipeline_vs_ultralytics": round(statistics.median(per_run), 3),
                "batched_vs_ultralytics_per_run": [
                    round(b["fps"] / u["fps"], 3)
                    for b, u in zip(multi_runs["batched"], multi_runs["ultralytics"], strict=True)
                ],
                "batched_vs_interleaved": round(batched["fps"] / interleaved["fps"], 3),
            }
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
