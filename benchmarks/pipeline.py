"""Agent pipeline vs raw onnxruntime vs ultralytics predict(), on the same model and frames.

Each contender runs in its own process, so start-up time and peak memory are its own
(``pipeline_contenders.py``):
  raw          onnxruntime's session.run on pre-letterboxed tensors
  limit        the runtime the agent chose (``--runtime``, default auto: as the agent
               chooses at first start) in a bare loop on pre-letterboxed tensors, every
               core on each run; ``limit_parallel`` the same with one loop per infer
               worker: the better of the two is the box's limit, which the pipeline is
               held to
  pipeline     the agent's cameras -> hub -> prepare/infer/finish -> events sink
               (JPEG decode + letterbox + inference + decode/NMS + event JSON), in the
               runtime the agent chose, with one infer worker per core on CPU (throughput
               mode) and with one (latency mode)
  ultralytics  YOLO(model.onnx).predict(jpeg_path) frame after frame
  ultralytics_openvino
               the same on ultralytics' own OpenVINO export (``format=openvino``): what
               ultralytics advises for CPUs, the peer a user would pick on a CPU box
  ultralytics_tensorrt
               with ``--provider cuda|tensorrt``: ultralytics on its TensorRT fp16 engine
               (``format=engine, half=True``), the peer a user would pick on an NVIDIA box
With ``--runtime auto`` the agent's contenders start twice: the first start on a box chooses
its runtime and model file (every candidate loaded and timed) and remembers it; the second is a
restart, as a box in service starts (``cold_start``; the first is ``first_start``).
All contenders stay loaded and run in alternating slices of a few seconds, the order
flipping every round; each ratio is the median of per-round ratios. On this shared machine
the same session.run took 13 ms and 19 ms a minute apart, so contenders run minutes apart
(as an earlier version of this benchmark did) compared phases of the machine, not code.

    python benchmarks/pipeline.py --weights best.pt [--quick] [--provider cuda]

needs the trainer extra (ultralytics, to export the ONNX files and as the peer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------- helpers
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
    common = min(len(a), len(b))  # both list the same frames in order; one may have seen fewer
    for dets_a, dets_b in zip(a[:common], b[:common], strict=True):
        total += max(len(dets_a["cls"]), len(dets_b["cls"]))
        if dets_a["cls"] and dets_b["cls"]:
            first = Detections(dets_a["xyxy"], [1.0] * len(dets_a["cls"]), dets_a["cls"])
            second = Detections(dets_b["xyxy"], [1.0] * len(dets_b["cls"]), dets_b["cls"])
            matched += count_matches(first, second, iou_min)
    return 1.0 if total == 0 else matched / total


# ----------------------------------------------------------------- contenders (child processes)
class Contender:
    """One contender process (``pipeline_contenders.py``), driven over its stdin/stdout."""

    def __init__(self, kind: str, model: Path, frames_file: Path, **options: Any) -> None:
        self.kind = kind
        spawned = time.time()
        command = [
            sys.executable,
            str(ROOT / "benchmarks" / "pipeline_contenders.py"),
            "--worker",
            kind,
            "--model",
            str(model),
            "--frames-file",
            str(frames_file),
            "--spawned",
            repr(spawned),
        ]
        for key, value in options.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - kept for the process
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
                YOLO_OFFLINE="1",
            ),
        )
        self.cold_start_s = float(self._receive()["cold_start_s"])

    def _receive(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(10)
            self._stderr.seek(0)
            raise RuntimeError(
                f"{self.kind} contender exited ({self._process.returncode}):\n"
                f"{self._stderr.read()[-3000:]}"
            )
        return dict(json.loads(line))

    def _send(self, command: str) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return self._receive()

    def run_for(self, seconds: float) -> dict[str, Any]:
        return self._send(f"run {seconds}")

    def close(self) -> dict[str, Any]:
        try:
            return self._send("close")
        finally:
            self._process.wait(30)
            self._stderr.close()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)


def compare(
    contenders: dict[str, tuple[Path, dict[str, Any]]],
    frames_file: Path,
    *,
    rounds: int,
    slice_s: float,
) -> dict[str, dict[str, Any]]:
    """Start each contender in turn (so cold starts do not overlap), then run them in
    alternating slices, ``rounds`` times; the order flips every round."""
    started: dict[str, Contender] = {}
    first_starts: dict[str, float] = {}
    try:
        for name, (model, options) in contenders.items():
            settings = dict(options)  # the caller's dict stays as it was
            kind = settings.pop("worker", name)
            if settings.get("choice_cache"):
                # The agent's first start on this box chooses (and remembers); what is
                # compared is the restart, as a box in service starts.
                first = Contender(kind, model, frames_file, **settings)
                first_starts[name] = first.cold_start_s
                first.close()
            started[name] = Contender(kind, model, frames_file, **settings)
        slices: dict[str, list[dict[str, Any]]] = {name: [] for name in started}
        names = list(started)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                slices[name].append(started[name].run_for(slice_s))
        results = {}
        for name, contender in started.items():
            summary = contender.close()
            summary["cold_start_s"] = contender.cold_start_s
            if name in first_starts:
                summary["first_start_s"] = first_starts[name]
            summary["slices"] = slices[name]
            summary["fps"] = statistics.median(s["fps"] for s in slices[name])
            results[name] = summary
        return results
    finally:
        for contender in started.values():
            contender.kill()


def best_of_ratio(
    first: dict[str, Any], second: dict[str, Any], denominator: dict[str, Any]
) -> list[float]:
    """Per round: the better of two modes of the agent (e.g. throughput and latency, batched
    and interleaved) over ``denominator``, all three slices of a round seconds apart."""
    return best_over_best(first, second, denominator, denominator)


def best_over_best(
    first: dict[str, Any],
    second: dict[str, Any],
    third: dict[str, Any],
    fourth: dict[str, Any],
) -> list[float]:
    """Per round: the better of two modes of the agent over the better of two modes of the
    denominator (e.g. the limit's one run with every core, and a run per worker)."""
    return [
        max(a["fps"], b["fps"]) / max(c["fps"], d["fps"])
        for a, b, c, d in zip(
            first["slices"], second["slices"], third["slices"], fourth["slices"], strict=True
        )
        if max(c["fps"], d["fps"]) > 0
    ]


def paired_ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> list[float]:
    """Per-round throughput ratios: both slices of a round ran seconds apart."""
    return [
        a["fps"] / b["fps"]
        for a, b in zip(numerator["slices"], denominator["slices"], strict=True)
        if b["fps"] > 0
    ]


def peer_name(provider: str) -> str:
    """ultralytics' best export for the hardware: OpenVINO on a CPU, TensorRT on a GPU."""
    return "ultralytics_openvino" if provider == "cpu" else "ultralytics_tensorrt"


def add_peer(
    contenders: dict[str, tuple[Path, dict[str, Any]]],
    models: dict[str, Path],
    peer_options: dict[str, Any],
) -> None:
    """ultralytics on its best export for this hardware joins ``contenders``, when that export
    exists (``peer_options['worker']`` names it)."""
    kind = peer_options["worker"].removeprefix("ultralytics_")
    export = models.get(f"{peer_options['imgsz']}_{kind}")
    if export is not None:
        contenders[peer_options["worker"]] = (export, {**peer_options, "worker": "ultralytics"})


def peer_figures(
    pipe: dict[str, Any], one: dict[str, Any], peer: dict[str, Any] | None, name: str
) -> dict[str, Any]:
    """The pipeline (its better mode, per round) against ultralytics on its best export for
    this hardware (``name``); nothing when that export could not be made."""
    if peer is None:
        return {name: "not measured: the export failed (openvino / tensorrt not installed?)"}
    best = best_of_ratio(pipe, one, peer)
    return {
        f"{name}_fps": round(peer["fps"], 2),
        f"pipeline_vs_{name}": round(statistics.median(best), 3),
        f"pipeline_vs_{name}_per_round": [round(r, 3) for r in best],
        f"rss_vs_{name}": round(pipe["peak_rss_mb"] / peer["peak_rss_mb"], 3),
        f"cold_start_vs_{name}": round(pipe["cold_start_s"] / peer["cold_start_s"], 3),
        f"{name}_p50_ms": peer["p50_ms"],
    }


# ----------------------------------------------------------------- orchestration
def export_models(
    weights: Path | None, out: Path, sizes: list[int], provider: str = "cpu"
) -> dict[str, Path]:
    """Static and dynamic-batch exports per size, and ultralytics' own export for the peer
    (OpenVINO on a CPU; a TensorRT fp16 engine on a GPU); files already in ``out`` are
    reused."""
    models: dict[str, Path] = {}
    for size in sizes:
        for dynamic in (False, True):
            target = out / f"model_{size}{'_dyn' if dynamic else ''}.onnx"
            if not target.exists():
                if weights is None:
                    raise SystemExit(f"{target} is missing and no --weights to export it from")
                from cloud_trainer.training.offline import prepare_offline_ultralytics

                prepare_offline_ultralytics(out)
                from ultralytics import YOLO

                exported = YOLO(str(weights)).export(
                    format="onnx", imgsz=size, opset=18, simplify=True, dynamic=dynamic, batch=1
                )
                Path(exported).rename(target)
            models[f"{size}{'_dyn' if dynamic else ''}"] = target
        engine = out / f"model_{size}.engine"
        if provider != "cpu" and not engine.exists() and weights is not None:
            from ultralytics import YOLO

            exported = YOLO(str(weights)).export(
                format="engine", imgsz=size, half=True, batch=1, device=0
            )
            Path(exported).rename(engine)
        if engine.exists():
            models[f"{size}_tensorrt"] = engine
        openvino = out / f"model_{size}_openvino_model"
        if provider == "cpu" and not openvino.exists() and weights is not None:
            from ultralytics import YOLO

            exported = YOLO(str(weights)).export(format="openvino", imgsz=size, batch=1)
            Path(exported).rename(openvino)
        if openvino.exists():
            models[f"{size}_openvino"] = openvino
    return models


def with_variants(model: Path, size: int, out: Path, precisions: tuple[str, ...]) -> Path:
    """``model`` beside its variants, made and gated exactly as the trainer does
    (cloud_trainer.release.variants; frames of the synthetic line stand in for the fleet's
    examples and the held-out set), with the signed-shape ``manifest.json`` an agent reads
    beside a configured model. Returns the folder's ``model.onnx``."""
    from cloud_trainer.config import ExportSection
    from cloud_trainer.release.evaluate import evaluate_onnx
    from cloud_trainer.release.variants import make_variants
    from shared.digests import file_sha256
    from shared.manifest import ArtifactRef, ClassInfo, InputSpec, ModelManifest
    from shared.messages import utc_now
    from shared.object_keys import model_artifact_key, model_variant_key
    from shared.synth import CLASS_NAMES

    folder = out / f"variants_{size}"
    folder.mkdir(exist_ok=True)
    reference = folder / "model.onnx"
    reference.write_bytes(model.read_bytes())
    calibration = [path for path, _ in _scenes(folder / "calibration", VARIANT_SEEDS[0], 64)]
    holdout = _holdout(folder)
    reference_metrics = evaluate_onnx(reference, holdout, CLASS_NAMES)
    variants, verdicts = make_variants(
        reference,
        folder,
        config=ExportSection(variants=precisions),  # type: ignore[arg-type]
        reference=reference_metrics,
        holdout=holdout,
        calibration=calibration,
        class_names=CLASS_NAMES,
        imgsz=size,
        operating_confidence=0.25,
    )
    for verdict in verdicts:
        print(f"[pipeline] {size}: {verdict.model_dump_json()}", file=sys.stderr)

    def ref(path: Path, key: str) -> ArtifactRef:
        return ArtifactRef(key=key, sha256=file_sha256(path), size_bytes=path.stat().st_size)

    manifest = ModelManifest(
        schema_version=2 if variants else 1,
        model_name="bench",
        version=1,
        created_at=utc_now(),
        artifact=ref(reference, model_artifact_key("bench", 1)),
        onnx_opset=18,
        input=InputSpec(height=size, width=size),
        output_format="yolo_raw",
        classes=[ClassInfo(id=i, name=n) for i, n in enumerate(CLASS_NAMES)],
        metrics=reference_metrics,
        variants=[
            v.manifest_entry(ref(v.path, model_variant_key("bench", 1, v.precision)))
            for v in variants
        ],
    )
    (folder / "manifest.json").write_text(manifest.model_dump_json())
    return reference


VARIANT_SEEDS = (4242, 777)  # calibration, held-out


def _scenes(folder: Path, seed: int, count: int) -> list[tuple[Path, Any]]:
    import cv2

    from shared.synth import SyntheticLine

    folder.mkdir(exist_ok=True)
    line = SyntheticLine(seed=seed)
    scenes = []
    for i in range(count):
        scene = line.random_scene(i)
        path = folder / f"{i}.jpg"
        cv2.imwrite(str(path), scene.image)
        scenes.append((path, scene.truth))
    return scenes


def _holdout(folder: Path) -> list[Any]:
    from cloud_trainer.release.evaluate import LabelledImage

    return [
        LabelledImage(image_path=path, truth=truth)
        for path, truth in _scenes(folder / "holdout", VARIANT_SEEDS[1], 200)
    ]


def variant_figures(reference: Path, limit_provider: str) -> dict[str, Any]:
    """What the limit (as the agent chose) runs, and its mAP50 through the agent's runner in
    that runtime against fp32 on onnxruntime, on the same held-out frames."""
    from cloud_trainer.release.evaluate import evaluate_onnx
    from edge_agent.inference.variants import variant_path
    from shared.synth import CLASS_NAMES

    precision = limit_provider.rsplit(" ", 1)[1] if " " in limit_provider else "fp32"
    runtime = "openvino" if limit_provider.startswith("OpenVINO") else "onnxruntime"
    holdout = _holdout(reference.parent)
    fp32 = evaluate_onnx(reference, holdout, CLASS_NAMES).map50
    chosen = reference if precision == "fp32" else variant_path(reference, precision)
    measured = evaluate_onnx(chosen, holdout, CLASS_NAMES, runtime=runtime).map50  # type: ignore[arg-type]
    return {
        "variant": precision,
        "variant_runtime": runtime,
        "variant_map50": round(measured, 4),
        "fp32_map50": round(fp32, 4),
        "variant_map50_delta": round(measured - fp32, 4),
        "variant_scored_frames": len(holdout),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, help="ultralytics .pt to export (trainer extra)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="reuse model_{size}[_dyn].onnx exported here before (exports what is missing)",
    )
    parser.add_argument("--quick", action="store_true", help="short slices: under 60 s")
    parser.add_argument("--frames", type=int, default=0, help="distinct frames per camera")
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=0, help="slices per contender (10)")
    parser.add_argument("--slice-s", type=float, default=0.0, help="seconds per slice (2.0)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument(
        "--runtime",
        choices=("auto", "onnxruntime", "openvino"),
        default="auto",
        help="the pipeline's and the limit's runtime (default: chosen as the agent does)",
    )
    parser.add_argument(
        "--infer-workers",
        type=int,
        default=0,
        help="the pipeline's workers in its throughput mode (default: one per core on CPU, "
        "1 on a GPU); the one-worker (latency) mode is always measured beside it",
    )
    parser.add_argument(
        "--variants",
        default="int8",
        help="variants made and gated as the trainer does, for the agent to choose among "
        "(comma-separated: int8,fp16; 'none': the fp32 model only)",
    )
    args = parser.parse_args()
    if args.weights is None and args.models_dir is None:
        parser.error("--weights (an ultralytics .pt, e.g. the bootstrap) or --models-dir is needed")
    from testing.local_services import MosquittoProcess, ServiceError

    workers = args.infer_workers or ((os.cpu_count() or 1) if args.provider == "cpu" else 1)
    sizes = [int(s) for s in args.sizes.split(",")]
    count = args.frames or (16 if args.quick else 60)
    rounds = args.rounds or (2 if args.quick else 10)
    slice_s = args.slice_s or (0.75 if args.quick else 2.0)
    work = Path(tempfile.mkdtemp(prefix="lf-bench-"))
    models = export_models(args.weights, args.models_dir or work, sizes, args.provider)
    peer = peer_name(args.provider)
    precisions = tuple(p for p in args.variants.split(",") if p and p != "none")
    if precisions:  # the agent's contenders run the folder with the variants and manifest
        for size in sizes:
            models[f"{size}_agent"] = with_variants(models[str(size)], size, work, precisions)
    single = write_frames(work, count, seed=7, cameras=1)
    (work / "single.json").write_text(json.dumps(single))
    try:
        broker = MosquittoProcess(work / "mosquitto").start()
        port = broker.port
    except ServiceError:
        broker, port = None, 0
    report: dict[str, Any] = {
        "provider": args.provider,
        "infer_workers": workers,
        "frames": count,
        "rounds": rounds,
        "slice_s": slice_s,
        "quick": args.quick,
        "sizes": {},
        "events_to_broker": bool(port),
    }

    def options(size: int, **extra: Any) -> dict[str, Any]:
        return {"imgsz": size, "work_dir": work, "provider": args.provider, **extra}

    def agent(size: int, **extra: Any) -> dict[str, Any]:
        if args.runtime == "auto":
            extra["choice_cache"] = work / "runtime-choice.json"
        return options(size, runtime=args.runtime, **extra)

    try:
        for size in sizes:
            model = models[str(size)]
            agent_model = models.get(f"{size}_agent", model)
            contenders = {
                "raw": (model, options(size, worker="raw")),
                "limit": (agent_model, agent(size, worker="limit")),
                "limit_parallel": (agent_model, agent(size, worker="limit", infer_workers=workers)),
                "pipeline": (
                    agent_model,
                    agent(size, worker="pipeline", mqtt_port=port, infer_workers=workers),
                ),
                "one_worker": (agent_model, agent(size, worker="pipeline", mqtt_port=port)),
                "ultralytics": (model, options(size, worker="ultralytics")),
            }
            add_peer(contenders, models, options(size, worker=peer))
            results = compare(contenders, work / "single.json", rounds=rounds, slice_s=slice_s)
            raw, limit, pipe, one, ultra = (
                results[k] for k in ("raw", "limit", "pipeline", "one_worker", "ultralytics")
            )
            vs_raw = paired_ratio(pipe, raw)
            vs_ultra = paired_ratio(pipe, ultra)
            # Against the box's limit: the better of the pipeline's two modes over the better
            # of the bare loop's (one run with every core; a run per infer worker), per round.
            parallel = results["limit_parallel"]
            best_vs_limit = best_over_best(pipe, one, limit, parallel)
            peer_result = results.get(peer)
            report["sizes"][str(size)] = {
                "limit_runtime": limit["provider"],
                **(
                    variant_figures(agent_model, limit["provider"])
                    if agent_model != model
                    else {"variant": "fp32", "variant_map50_delta": 0.0}
                ),
                "limit_fps": round(max(limit["fps"], parallel["fps"]), 2),
                "limit_one_run_fps": round(limit["fps"], 2),
                "limit_parallel_fps": round(parallel["fps"], 2),
                "limit_infer_p50_ms": limit["infer_p50_ms"],
                "pipeline_vs_limit": round(statistics.median(best_vs_limit), 3),
                "pipeline_vs_limit_per_round": [round(r, 3) for r in best_vs_limit],
                "one_worker_vs_limit": round(statistics.median(paired_ratio(one, limit)), 3),
                # Against one bare loop with every core (the limit as a single loop).
                "pipeline_vs_one_run_limit": round(
                    statistics.median(best_of_ratio(pipe, one, limit)), 3
                ),
                **peer_figures(pipe, one, peer_result, peer),
                "raw_ort_fps": round(raw["fps"], 2),
                "pipeline_fps": round(pipe["fps"], 2),
                "ultralytics_fps": round(ultra["fps"], 2),
                # The same pipeline with one worker: all cores on each frame, lowest latency.
                "one_worker_fps": round(one["fps"], 2),
                "one_worker_vs_raw": round(statistics.median(paired_ratio(one, raw)), 3),
                "one_worker_vs_ultralytics": round(statistics.median(paired_ratio(one, ultra)), 3),
                "one_worker_stages": one["stages"],
                # Median of per-round ratios: the slices of a round ran seconds apart.
                "pipeline_vs_raw": round(statistics.median(vs_raw), 3),
                "pipeline_vs_ultralytics": round(statistics.median(vs_ultra), 3),
                "pipeline_vs_raw_per_round": [round(r, 3) for r in vs_raw],
                "pipeline_vs_ultralytics_per_round": [round(r, 3) for r in vs_ultra],
                "rss_vs_ultralytics": round(pipe["peak_rss_mb"] / ultra["peak_rss_mb"], 3),
                "cold_start_vs_ultralytics": round(pipe["cold_start_s"] / ultra["cold_start_s"], 3),
                # IoU 0.99: the same boxes (fp32); 0.5: the same objects (what a variant keeps).
                "box_agreement": round(agreement(pipe["detections"], ultra["detections"]), 4),
                "box_agreement_iou50": round(
                    agreement(pipe["detections"], ultra["detections"], iou_min=0.5), 4
                ),
                "agreement_frames": min(len(pipe["detections"]), len(ultra["detections"])),
                "pipeline_provider": pipe["provider"],
                "pipeline_peak_rss_mb": round(pipe["peak_rss_mb"], 1),
                "ultralytics_peak_rss_mb": round(ultra["peak_rss_mb"], 1),
                "pipeline_cold_start_s": round(pipe["cold_start_s"], 2),
                # The first start ever on this box: every candidate loaded and timed.
                "pipeline_first_start_s": round(pipe.get("first_start_s", pipe["cold_start_s"]), 2),
                "first_start_vs_ultralytics": round(
                    pipe.get("first_start_s", pipe["cold_start_s"]) / ultra["cold_start_s"], 3
                ),
                "ultralytics_cold_start_s": round(ultra["cold_start_s"], 2),
                "raw_infer_p50_ms": raw["infer_p50_ms"],
                "raw_infer_p99_ms": raw["infer_p99_ms"],
                "ultralytics_p50_ms": ultra["p50_ms"],
                "ultralytics_p99_ms": ultra["p99_ms"],
                "pipeline_stages": pipe["stages"],
                "events_published": pipe["events_published"],
            }
        if args.cameras > 1:
            size = sizes[0]
            multi = write_frames(work, count, seed=100, cameras=args.cameras)
            (work / "multi.json").write_text(json.dumps(multi))
            multi_contenders = {
                # One worker, the cameras' frames in one batch (dynamic-batch export).
                "batched": (
                    models[f"{size}_dyn"],
                    agent(size, worker="pipeline", max_batch=args.cameras, mqtt_port=port),
                ),
                # Frame by frame, ``workers`` at once.
                "interleaved": (
                    models.get(f"{size}_agent", models[str(size)]),
                    agent(size, worker="pipeline", mqtt_port=port, infer_workers=workers),
                ),
                "ultralytics": (models[str(size)], options(size, worker="ultralytics")),
            }
            add_peer(multi_contenders, models, options(size, worker=peer))
            results = compare(multi_contenders, work / "multi.json", rounds=rounds, slice_s=slice_s)
            batched, interleaved, ultra = (
                results[k] for k in ("batched", "interleaved", "ultralytics")
            )
            batched_vs = paired_ratio(batched, ultra)
            interleaved_vs = paired_ratio(interleaved, ultra)
            best_vs = best_of_ratio(batched, interleaved, ultra)  # the agent's better mode
            report["multi_camera"] = {
                "cameras": args.cameras,
                "imgsz": size,
                "pipeline_batched_fps": round(batched["fps"], 2),
                "pipeline_interleaved_fps": round(interleaved["fps"], 2),
                "ultralytics_fps": round(ultra["fps"], 2),
                "pipeline_vs_ultralytics": round(statistics.median(best_vs), 3),
                "batched_vs_ultralytics": round(statistics.median(batched_vs), 3),
                "interleaved_vs_ultralytics": round(statistics.median(interleaved_vs), 3),
                "batched_vs_ultralytics_per_round": [round(r, 3) for r in batched_vs],
                "batched_stages": batched["stages"],
                "batched_provider": batched["provider"],
            }
            peer_result = results.get(peer)
            if peer_result is not None:
                best_vs_peer = best_of_ratio(batched, interleaved, peer_result)
                report["multi_camera"][f"{peer}_fps"] = round(peer_result["fps"], 2)
                report["multi_camera"][f"pipeline_vs_{peer}"] = round(
                    statistics.median(best_vs_peer), 3
                )
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
