"""The contenders of ``benchmarks/pipeline.py``, each served from its own process.

A contender loads once, reports its cold start, then answers ``run SECONDS`` commands on
stdin with the frames it finished in that slice, and ``close`` with its peak memory and
whatever else it collected. The orchestrator alternates short slices of every contender, so
a slow phase of this shared machine (the same ``session.run`` measured 13 ms and 19 ms a
minute apart) hits all of them alike and the per-slice ratios stay meaningful.

Throughput in a slice counts frames *finished* between ``SETTLE_S`` after the slice opened
and its end: for the pipeline that is what its sinks received, so queues filling or draining
at the edges of a slice are not counted as work.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

SETTLE_S = 0.2


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. Not ru_maxrss: on Linux it survives
    exec, so a child would report its (torch-loaded) parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def window_fps(stamps: list[float], opened: float, closed: float) -> tuple[int, float]:
    """Frames finished in ``[opened + SETTLE_S, closed]`` and their rate (first to last)."""
    inside = [s for s in stamps if opened + SETTLE_S <= s <= closed]
    if len(inside) < 2:
        return len(inside), 0.0
    return len(inside), (len(inside) - 1) / (inside[-1] - inside[0])


def run_loop(
    step: Callable[[], None], seconds: float, latencies: list[float], *, threads: int = 1
) -> dict[str, Any]:
    """``step`` back to back for ``seconds`` (in ``threads`` threads at once: ``step`` must
    then be thread-safe): the slice's throughput; latencies after the settling time are
    appended to ``latencies``."""
    stamps: list[float] = []
    lock = threading.Lock()
    opened = time.perf_counter()
    closed = opened + seconds

    def loop() -> None:
        while (now := time.perf_counter()) < closed:
            step()
            done = time.perf_counter()
            with lock:
                stamps.append(done)
                if done - opened >= SETTLE_S:
                    latencies.append(done - now)

    if threads == 1:
        loop()
    else:
        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    frames, fps = window_fps(sorted(stamps), opened, closed)
    return {"frames": frames, "fps": fps}


def read_jpeg(path: str) -> NDArray[np.uint8]:
    import cv2

    image = cv2.imread(path)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return np.asarray(image, dtype=np.uint8)


def providers(name: str) -> tuple[str, ...]:
    return {
        "cpu": ("CPUExecutionProvider",),
        "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
        "tensorrt": (
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ),
    }[name]


def agent_runner(args: argparse.Namespace, intra_op_threads: int, **options: Any) -> Any:
    """The runner the agent would run, and what runs it (the provider, and the precision when
    a variant won). ``--runtime auto`` chooses as the agent does at a start
    (edge_agent.model_loading.load_model_choosing): every installed runtime, with the
    variants a ``manifest.json`` beside the model lists for this box, or the choice
    ``--choice-cache`` remembers for the same files, box and settings (a restart); any other
    value pins that runtime and runs the fp32 model."""
    from edge_agent.inference import InferenceRunner, RunnerOptions
    from edge_agent.inference.choice_cache import ChoiceCache
    from edge_agent.model_loading import Choosing, load_model_choosing, read_local_manifest

    base = RunnerOptions(
        providers=providers(args.provider), intra_op_threads=intra_op_threads, **options
    )
    path = Path(args.model)
    if args.runtime == "auto":
        model = load_model_choosing(
            path,
            base,
            read_local_manifest(path),
            Choosing("auto", "auto"),
            cache=ChoiceCache(Path(args.choice_cache)) if args.choice_cache else None,
            reuse=True,
        )
        suffix = "" if model.precision == "fp32" else f" {model.precision}"
        return model.runner, model.runner.provider + suffix
    runner = InferenceRunner(path, dataclasses.replace(base, runtime=args.runtime))
    return runner, runner.provider


class Contender(Protocol):
    def run_for(self, seconds: float) -> dict[str, Any]: ...

    def close(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------- bare model calls
class BareLoop:
    """A model called in a bare loop on pre-letterboxed tensors (no camera, no decoding, no
    events); subclasses say which call. The ceilings the pipeline is held to."""

    provider: str

    def __init__(
        self,
        args: argparse.Namespace,
        frames: list[list[str]],
        runner: Any,
        provider: str | None = None,
    ) -> None:
        from edge_agent.inference import letterbox

        info = runner.info
        self.provider = provider or info.provider
        self.blobs: list[NDArray[np.floating]] = [
            letterbox(
                [read_jpeg(path)], info.input_height, info.input_width, dtype=info.input_dtype
            )[0]
            for path in frames[0]
        ]
        self.latencies: list[float] = []
        self.indices = itertools.count()  # next() is atomic: safe from threads
        self.call(self.blobs[0])
        self.cold_start_s = time.time() - args.spawned

    def call(self, blob: NDArray[np.floating]) -> None:
        raise NotImplementedError

    def run_for(self, seconds: float) -> dict[str, Any]:
        return run_loop(self._run_one, seconds, self.latencies)

    def _run_one(self) -> None:
        self.call(self.blobs[next(self.indices) % len(self.blobs)])

    def close(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": peak_rss_mb(),
            "provider": self.provider,
            "infer_p50_ms": percentile_ms(self.latencies, 0.5),
            "infer_p99_ms": percentile_ms(self.latencies, 0.99),
        }


class RawOrt(BareLoop):
    """onnxruntime's ``session.run`` as it comes (threads spinning)."""

    def __init__(self, args: argparse.Namespace, frames: list[list[str]]) -> None:
        from edge_agent.inference import InferenceRunner, RunnerOptions

        runner = InferenceRunner(
            Path(args.model),
            RunnerOptions(providers=providers(args.provider), thread_spinning=True),
        )
        self.session = runner._backend.session  # the bare session: no validation, no decoding
        self.input_name = runner.info.input_name
        super().__init__(args, frames, runner)

    def call(self, blob: NDArray[np.floating]) -> None:
        self.session.run(None, {self.input_name: blob})


class RawLimit(BareLoop):
    """The runtime the agent chose (``--runtime``) in a bare loop: the box's limit. With
    ``--infer-workers N``, N loops at once with the cores shared out between them (on 2
    cores two one-thread runs finish 1.6-1.7x the frames of one two-thread run), so the
    pipeline's throughput mode is held to the same concurrency."""

    def __init__(self, args: argparse.Namespace, frames: list[list[str]]) -> None:
        from edge_agent.inference import intra_op_threads

        self.workers = max(1, args.infer_workers)
        runner, provider = agent_runner(
            args, intra_op_threads(0, workers=self.workers), thread_spinning=True
        )
        self.backend = runner._backend  # the runtime's own call: no validation, no decoding
        super().__init__(args, frames, runner, provider)

    def call(self, blob: NDArray[np.floating]) -> None:
        self.backend.run(blob, None)

    def run_for(self, seconds: float) -> dict[str, Any]:
        return run_loop(self._run_one, seconds, self.latencies, threads=self.workers)


# ----------------------------------------------------------------- the agent pipeline
class AgentPipeline:
    """The agent's cameras -> hub -> prepare/infer/finish -> events sink, on looping JPEGs
    (JPEG decode + letterbox + inference + decode/NMS + event JSON), one camera per list."""

    def __init__(self, args: argparse.Namespace, frames: list[list[str]]) -> None:
        import cv2

        from edge_agent.camera import CameraWorker, FrameHub, FrameSource
        from edge_agent.config import MqttSection
        from edge_agent.frame_path import ActiveModel, DetectionResult, ModelSlot
        from edge_agent.inference import intra_op_threads
        from edge_agent.metrics import AgentMetrics
        from edge_agent.pipeline import Pipeline
        from edge_agent.sinks.events import EventsSink
        from shared.infra.mqtt_link import MqttLink
        from shared.topics import Channel, Topics

        gate = threading.Event()
        stop = threading.Event()

        class GatedJpegLoop(FrameSource):
            """Reads its JPEGs in a loop, only while the slice's gate is open."""

            live = False  # read on demand: the camera never outruns the model

            def __init__(self, paths: list[str]) -> None:
                self.paths = paths
                self.next = 0

            @property
            def description(self) -> str:
                return "looping jpeg files"

            def open(self) -> None:
                pass

            def read(self):  # type: ignore[no-untyped-def]
                while not gate.wait(0.05):
                    if stop.is_set():
                        return None
                image = cv2.imread(self.paths[self.next % len(self.paths)])
                self.next += 1
                return image, None

        self.gate, self.stop = gate, stop
        self.stamps: list[float] = []
        self.stage_samples: dict[str, list[float]] = {
            s: [] for s in ("prepare", "infer", "finish", "total")
        }
        self.detections: list[dict[str, Any]] = []
        self.agreement_frames = args.agreement_frames
        self.sampling = False
        # As the agent does: threads per inference = cores / workers.
        runner, self.provider = agent_runner(args, intra_op_threads(0, workers=args.infer_workers))
        metrics = AgentMetrics()
        hub = FrameHub()

        def record(result: DetectionResult) -> None:
            self.stamps.append(time.perf_counter())
            if self.sampling:
                for stage, seconds in result.latency_s.items():
                    self.stage_samples[stage].append(seconds)
            if result.frame.camera_id == "cam0" and len(self.detections) < self.agreement_frames:
                self.detections.append(
                    {
                        "xyxy": result.detections.xyxy.tolist(),
                        "cls": result.detections.class_id.tolist(),
                    }
                )

        self.pipeline = Pipeline(
            hub,
            ModelSlot(ActiveModel(runner, "bench", 1)),
            stop,
            max_batch=args.max_batch,
            infer_workers=args.infer_workers,
            observe_latency=metrics.observe_stage,
        )
        self.link = None
        if args.mqtt_port:
            self.link = MqttLink(
                MqttSection(host="127.0.0.1", port=args.mqtt_port),
                "bench",
                presence_topic=Topics("bench").device("bench", Channel.ONLINE),
                agent_version="0.1.0",
            )
            self.link.start()
            self.link.wait_connected(10)
            self.pipeline.add_sink(
                EventsSink(self.link, Topics("bench"), "bench", metrics, max_per_s=1000.0)
            )
        self.pipeline.add_sink(record)
        self.pipeline.start()
        self.cameras = [
            CameraWorker(
                f"cam{i}", GatedJpegLoop(paths), hub, stop, lossless=True, stall_timeout_s=3600
            )
            for i, paths in enumerate(frames)
        ]
        for camera in self.cameras:
            camera.start()
        gate.set()  # cold start: spawn to the first detection
        while not self.stamps:
            time.sleep(0.001)
        self.cold_start_s = time.time() - args.spawned
        gate.clear()
        self._drain()

    def _drain(self, quiet_s: float = 0.25, limit_s: float = 10.0) -> None:
        """Wait until the frames read before the gate closed have gone through."""
        deadline = time.perf_counter() + limit_s
        seen = len(self.stamps)
        while time.perf_counter() < deadline:
            time.sleep(quiet_s)
            if len(self.stamps) == seen:
                return
            seen = len(self.stamps)

    def run_for(self, seconds: float) -> dict[str, Any]:
        opened = time.perf_counter()
        self.sampling = True
        self.gate.set()
        time.sleep(seconds)
        self.gate.clear()
        self.sampling = False
        closed = time.perf_counter()
        self._drain()
        frames, fps = window_fps(self.stamps, opened, closed)
        return {"frames": frames, "fps": fps}

    def close(self) -> dict[str, Any]:
        self.stop.set()
        self.gate.set()
        self.pipeline.join()
        if self.link is not None:
            self.link.stop()
        return {
            "peak_rss_mb": peak_rss_mb(),
            "provider": self.provider,
            "stages": {
                stage: {
                    "p50_ms": percentile_ms(samples, 0.5),
                    "p99_ms": percentile_ms(samples, 0.99),
                }
                for stage, samples in self.stage_samples.items()
            },
            "events_published": self.link.stats.published if self.link else 0,
            "detections": self.detections,
        }


# ----------------------------------------------------------------- ultralytics predict()
class UltralyticsPredict:
    """``YOLO(model).predict(jpeg_path)`` frame after frame, cameras round-robin; the model
    is ultralytics' ONNX export, or its OpenVINO export (a ``*_openvino_model`` folder: what
    ultralytics advises for Intel/AMD CPUs)."""

    def __init__(self, args: argparse.Namespace, frames: list[list[str]]) -> None:
        from cloud_trainer.training.offline import prepare_offline_ultralytics

        prepare_offline_ultralytics(Path(args.work_dir))
        from ultralytics import YOLO

        self.model = YOLO(args.model, task="detect")
        self.order = [p for group in zip(*frames, strict=True) for p in group]
        device = "cpu" if args.provider == "cpu" else "cuda:0"
        self.kwargs = {
            "imgsz": args.imgsz,
            "conf": 0.25,
            "iou": 0.7,
            "verbose": False,
            "device": device,
        }
        self.agreement_frames = args.agreement_frames
        self.detections: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.next = 0
        self._predict()
        self.cold_start_s = time.time() - args.spawned

    def _predict(self) -> None:
        path = self.order[self.next % len(self.order)]
        self.next += 1
        result = self.model.predict(path, **self.kwargs)[0]
        if Path(path).name.startswith("cam0") and len(self.detections) < self.agreement_frames:
            self.detections.append(
                {
                    "xyxy": result.boxes.xyxy.cpu().numpy().tolist(),
                    "cls": result.boxes.cls.cpu().numpy().astype(int).tolist(),
                }
            )

    def run_for(self, seconds: float) -> dict[str, Any]:
        return run_loop(self._predict, seconds, self.latencies)

    def close(self) -> dict[str, Any]:
        return {
            "peak_rss_mb": peak_rss_mb(),
            "p50_ms": percentile_ms(self.latencies, 0.5),
            "p99_ms": percentile_ms(self.latencies, 0.99),
            "detections": self.detections,
        }


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(values), q)) * 1000.0, 3) if values else 0.0


CONTENDERS: dict[
    str, type[RawOrt] | type[RawLimit] | type[AgentPipeline] | type[UltralyticsPredict]
] = {
    "raw": RawOrt,
    "limit": RawLimit,
    "pipeline": AgentPipeline,
    "ultralytics": UltralyticsPredict,
    "ultralytics_openvino": UltralyticsPredict,
}


def serve(args: argparse.Namespace) -> None:
    """Load, say ready, then answer ``run SECONDS`` / ``close`` lines until closed."""
    frames = json.loads(Path(args.frames_file).read_text())
    contender: Contender = CONTENDERS[args.worker](args, frames)
    reply({"ready": True, "cold_start_s": contender.cold_start_s})  # type: ignore[attr-defined]
    for line in sys.stdin:
        command = line.split()
        if command and command[0] == "run":
            reply(contender.run_for(float(command[1])))
        elif command and command[0] == "close":
            reply(contender.close())
            return


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=sorted(CONTENDERS), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--frames-file", required=True)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--spawned", type=float, required=True)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--infer-workers", type=int, default=1)
    parser.add_argument("--mqtt-port", type=int, default=0)
    parser.add_argument("--agreement-frames", type=int, default=20)
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto")
    parser.add_argument("--choice-cache", default="", help="the agent's remembered choices")
    serve(parser.parse_args())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    main()
