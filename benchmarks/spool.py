"""Spool accept rate, uploader vs a plain boto3 loop, and the cost of mining on the pipeline.

    python benchmarks/spool.py [--quick] [--onnx model.onnx]

- accept: 640x640 synthetic JPEGs with sidecars into the durable spool (examples/s);
- upload: the same examples (3 objects each) to an S3 server started here (moto), by the
  agent's uploader and by a plain ``upload_fileobj`` loop; the ratio is the result;
- mining: with ``--onnx``, pipeline fps with and without mining 5% of frames.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from edge_agent.upload.spool import Spool  # noqa: E402
from edge_agent.upload.uploader import Uploader  # noqa: E402
from shared.infra.s3 import S3Target, make_s3_client  # noqa: E402
from shared.synth import SyntheticLine  # noqa: E402
from testing.local_services import MotoS3Process  # noqa: E402


def make_examples(count: int) -> list[tuple[str, bytes, str, str]]:
    line = SyntheticLine(seed=5)
    examples = []
    for frame in line.frames(count):
        ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        base = f"hard-examples/bench/edge-01/2026/11/23/f{frame.index:06d}"
        sidecar = json.dumps({"records": frame.truth.to_records()})
        prelabel = "\n".join(frame.truth.to_yolo_lines(640, 640)) + "\n"
        examples.append((base, jpeg.tobytes(), sidecar, prelabel))
    return examples


def bench_accept(examples: list[tuple[str, bytes, str, str]], directory: Path) -> float:
    spool = Spool(directory, min_free_bytes=0)
    started = time.perf_counter()
    for base, jpeg, sidecar, prelabel in examples:
        spool.accept(base, jpeg=jpeg, sidecar=sidecar, prelabel=prelabel, priority=1.0)
    elapsed = time.perf_counter() - started
    spool.close()
    return len(examples) / elapsed


def bench_uploader(directory: Path, target: S3Target, concurrency: int, total_bytes: int) -> float:
    spool = Spool(directory, min_free_bytes=0)
    stop = threading.Event()
    uploader = Uploader(spool, target, stop, concurrency=concurrency)
    started = time.perf_counter()
    uploader.start()
    while spool.stats().depth > 0:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    uploader.join()
    spool.close()
    return total_bytes / elapsed


def bench_plain(examples: list[tuple[str, bytes, str, str]], client: Any, bucket: str) -> float:
    total = 0
    started = time.perf_counter()
    for base, jpeg, sidecar, prelabel in examples:
        for key, body in (
            (f"{base}.jpg", jpeg),
            (f"{base}.txt", prelabel.encode()),
            (f"{base}.json", sidecar.encode()),
        ):
            client.upload_fileobj(io.BytesIO(body), bucket, key)
            total += len(body)
    return total / (time.perf_counter() - started)


def bench_mining(onnx: Path, seconds: float, work: Path) -> dict[str, float]:
    """Pipeline fps on the synthetic line, alternating without and with 5% mining."""
    from edge_agent.camera import CameraWorker, FrameHub, SyntheticSource
    from edge_agent.frame_path import ActiveModel, ModelSlot
    from edge_agent.inference import InferenceRunner
    from edge_agent.pipeline import Pipeline
    from edge_agent.sinks.mining import HardExamplePolicy, RandomSampler
    from shared.synth import LineConfig

    runner = InferenceRunner(onnx)
    results: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(2):
        for mode in ("off", "on"):
            stop = threading.Event()
            hub = FrameHub()
            pipeline = Pipeline(hub, ModelSlot(ActiveModel(runner, "bench", 1)), stop)
            policy = None
            if mode == "on":
                spool = Spool(work / f"mining-{round_}", min_free_bytes=0)
                policy = HardExamplePolicy(
                    [RandomSampler("random", probability=0.05)],
                    spool,
                    stop,
                    fleet="bench",
                    device_id="edge-01",
                )
                pipeline.add_sink(policy)
                policy.start()
            camera = CameraWorker(
                "cam0", SyntheticSource(LineConfig(seed=round_)), hub, stop, lossless=True
            )
            pipeline.start()
            camera.start()
            time.sleep(1.0)  # warm-up
            before = pipeline.stats.processed
            time.sleep(seconds)
            results[mode].append((pipeline.stats.processed - before) / seconds)
            stop.set()
            pipeline.join()
            if policy is not None:
                policy.join()
    off = sum(results["off"]) / len(results["off"])
    on = sum(results["on"]) / len(results["on"])
    return {
        "fps_without_mining": round(off, 2),
        "fps_with_mining_5pct": round(on, 2),
        "mining_fps_drop": round(1 - on / off, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--onnx", type=Path, help="a real detector for the mining-overhead part")
    args = parser.parse_args()
    count = 120 if args.quick else 600
    work = Path(tempfile.mkdtemp(prefix="lf-spool-bench-"))
    examples = make_examples(count)
    total_bytes = sum(len(j) + len(s.encode()) + len(p.encode()) for _, j, s, p in examples)
    report: dict[str, Any] = {
        "examples": count,
        "mean_jpeg_kb": round(sum(len(e[1]) for e in examples) / count / 1024, 1),
    }
    report["spool_accept_per_s"] = round(bench_accept(examples, work / "accept"), 1)
    with MotoS3Process(work / "moto") as server:
        target = S3Target(
            bucket="bench",
            endpoint_url=server.endpoint_url,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        client = make_s3_client(target)
        client.create_bucket(Bucket="bench")
        plain = bench_plain(examples, client, "bench")
        for concurrency in (1, 2):
            directory = work / f"upload-c{concurrency}"
            spool = Spool(directory, min_free_bytes=0)
            for base, jpeg, sidecar, prelabel in examples:
                spool.accept(base, jpeg=jpeg, sidecar=sidecar, prelabel=prelabel, priority=1.0)
            spool.close()
            rate = bench_uploader(directory, target, concurrency, total_bytes)
            report[f"uploader_c{concurrency}_bytes_per_s"] = round(rate)
        report["uploader_bytes_per_s"] = report["uploader_c2_bytes_per_s"]
        report["plain_boto3_bytes_per_s"] = round(plain)
        report["uploader_vs_boto3"] = round(report["uploader_bytes_per_s"] / plain, 3)
        report["uploader_c1_vs_boto3"] = round(report["uploader_c1_bytes_per_s"] / plain, 3)
    if args.onnx:
        report.update(bench_mining(args.onnx, 4.0 if args.quick else 10.0, work))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
