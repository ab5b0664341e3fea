"""What the camera path costs: N RTSP streams of 1080p25 H.264 from a real local RTSP server
(GStreamer, serving synthetic-line clips without encoding) into the agent's camera workers,
model stubbed, against ``ffmpeg`` decoding the same streams as the floor.

    python benchmarks/cameras.py [--streams 4] [--rounds 3] [--slice-s 15] [--quick]

Contenders, in alternating slices (each slice opens fresh connections, so probing and the
connection's first burst count for every contender alike):
- ``ffmpeg``: ``ffmpeg -threads 1 -rtsp_transport tcp -i URL -f null -``, one process per
  stream: libavcodec decoding and nothing else, single-threaded (its cheapest CPU per frame);
- ``linefleet``: the agent's capture (``PyAVSource`` + ``CameraWorker`` + ``FrameHub``) with a
  consumer that takes every frame as it comes (a pipeline that asks for all of them) and makes
  the model's canvas of it as the pipeline does (``letterbox_frame``, from the YUV planes;
  ``--imgsz``, 320 as the bootstrap model), work that ffmpeg's null output does not do;
- ``linefleet_paced``: the same, with a consumer that asks each camera for ``--ask-fps``
  frames a second (a model slower than the cameras): the rest are decoded, never converted;
- ``opencv``: the same workers and canvas on OpenCV's capture (``OpenCVSource``, RTSP over
  TCP, OpenCV's default decoder threads; the canvas from its BGR frame): the capture the
  agent used before; ``opencv_paced`` with the paced consumer (OpenCV converts every frame
  it reads, taken or not).

Figures: frames delivered per second (all streams), CPU-seconds per decoded frame and its ratio
to ffmpeg's, frame age at pickup (camera read -> taken by the consumer) p50/p99 in ``latest``
mode, and a stall: one stream stops sending with its connection open; the time until the
camera reports it (default read timeout) and until frames flow again once the server resumes.
One JSON object is printed last. Say which machine a figure comes from.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from edge_agent.camera import (  # noqa: E402
    CameraState,
    CameraWorker,
    FrameHub,
    FrameSource,
    OpenCVSource,
    PyAVSource,
)
from edge_agent.pipeline import letterbox_frame  # noqa: E402
from testing.rtsp_camera import RtspServer, encode_clip, rtsp_available  # noqa: E402

WARMUP_S = 2.0  # connection, probing and the first burst: excluded from the rates
FRAME_INTERVAL_S = 1 / 25


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    """CPU of the children that ended and were waited for (the RTSP server still runs, so its
    CPU is not in here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ffmpeg(urls: list[str], slice_s: float) -> dict[str, float]:
    """One ffmpeg per stream for ``slice_s`` of wall time."""
    cpu_before = children_cpu_s()
    processes = [
        subprocess.Popen(
            [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1",
                "-rtsp_transport", "tcp", "-i", url,
                "-f", "null", "-", "-progress", "pipe:1", "-nostats",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]  # fmt: skip
    time.sleep(slice_s)
    frames = 0
    for process in processes:
        process.terminate()  # ffmpeg ends cleanly on SIGTERM and prints its last progress
        output, _ = process.communicate(timeout=30)
        counts = re.findall(r"^frame=(\d+)$", output, flags=re.MULTILINE)
        frames += int(counts[-1]) if counts else 0
    return {"frames": frames, "cpu_s": children_cpu_s() - cpu_before, "wall_s": slice_s}


def run_workers(
    sources: list[FrameSource], slice_s: float, ask_fps: float | None = None, imgsz: int = 640
) -> dict[str, Any]:
    """Camera workers for ``slice_s``; a consumer takes every frame (and so converts it), or
    with ``ask_fps`` the newest frame of each camera that many times a second (a model
    slower than the cameras)."""
    hub, stop = FrameHub(), threading.Event()
    workers = [CameraWorker(f"cam{i}", s, hub, stop) for i, s in enumerate(sources)]
    ages: list[float] = []
    delivered: list[float] = []

    arrivals: dict[str, list[float]] = {}

    def consume() -> None:
        next_due = time.monotonic()
        while not stop.is_set():
            if ask_fps is not None:
                next_due += 1 / ask_fps
                if stop.wait(max(0.0, next_due - time.monotonic())):
                    break
            for frame in hub.take(len(sources), timeout=0.1):
                # What the pipeline does with a frame before the model: its canvas.
                letterbox_frame(frame, imgsz, imgsz)
                now = time.monotonic()
                ages.append(now - frame.captured_mono)
                delivered.append(now)
                arrivals.setdefault(frame.camera_id, []).append(frame.captured_mono)

    consumer = threading.Thread(target=consume, daemon=True)
    started = time.monotonic()
    cpu_before = process_cpu_s()
    for worker in workers:
        worker.start()
    consumer.start()
    stop.wait(WARMUP_S)
    read_at_warm = sum(w.stats.frames_read for w in workers)
    warm = time.monotonic()
    stop.wait(slice_s - WARMUP_S)
    read_at_end = sum(w.stats.frames_read for w in workers)
    ended = time.monotonic()
    cpu = process_cpu_s() - cpu_before
    stop.set()
    for worker in workers:
        worker.join(timeout=15)
    consumer.join(timeout=5)
    frames_read = sum(w.stats.frames_read for w in workers)
    steady = [t for t in delivered if warm <= t <= ended]
    steady_ages = [a for a, t in zip(ages, delivered, strict=True) if warm <= t <= ended]
    return {
        "frames": frames_read,
        "cpu_s": cpu,
        "wall_s": time.monotonic() - started,
        "delivered_fps": len(steady) / (ended - warm),
        "read_fps": (read_at_end - read_at_warm) / (ended - warm),
        "ages": steady_ages,
        "errors": sum(w.stats.read_errors + w.stats.corrupt_frames for w in workers),
        # Gaps between frames of one camera as they came out of the decoder: the stream's own
        # jitter (server, network, scheduling), which bounds a frame's age from below.
        "gaps": [
            b - a
            for times in arrivals.values()
            for a, b in itertools.pairwise(times)
            if warm <= a <= ended
        ],
    }


def measure_stall(server: RtspServer, read_timeout_s: float) -> dict[str, float]:
    """Stall stream 0 with its connection open; resume it as soon as the camera reports the
    stall (a camera whose encoder recovers): detection and recovery times from the stall."""
    hub, stop = FrameHub(), threading.Event()
    worker = CameraWorker(
        "cam0", PyAVSource(server.url("cam0"), read_timeout_s=read_timeout_s), hub, stop
    )
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while worker.state is not CameraState.STREAMING and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        server.stall("cam0")
        stalled_at = time.monotonic()
        while worker.state is not CameraState.STALLED:
            if time.monotonic() - stalled_at > read_timeout_s + 30:
                raise RuntimeError("the stall was never detected")
            hub.take(1, timeout=0.01)
        detected_s = time.monotonic() - stalled_at
        server.resume("cam0")
        while True:
            frames = hub.take(1, timeout=0.05)
            if frames and frames[0].captured_mono > stalled_at + detected_s:
                break
            if time.monotonic() - stalled_at > read_timeout_s + 60:
                raise RuntimeError("the camera never recovered")
        return {"stall_detect_s": detected_s, "stall_recovery_s": time.monotonic() - stalled_at}
    finally:
        stop.set()
        worker.join(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--bitrate", default="4M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slice-s", type=float, default=15.0)
    parser.add_argument("--read-timeout-s", type=float, default=10.0)
    parser.add_argument(
        "--ask-fps", type=float, default=10.0, help="per camera, for the paced consumer"
    )
    parser.add_argument("--clips-dir", type=Path, default=Path("/tmp/linefleet-bench-clips"))
    parser.add_argument("--quick", action="store_true", help="1 round of 8 s slices")
    parser.add_argument(
        "--imgsz", type=int, default=320, help="the model input the canvas is made for"
    )
    parser.add_argument(
        "--hwaccel", default=None, help="decode linefleet's streams on e.g. cuda (a GPU box)"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.slice_s = 1, 8.0
    missing = rtsp_available()
    if missing:
        raise SystemExit(f"cannot run: {missing}")
    args.clips_dir.mkdir(parents=True, exist_ok=True)
    clip = encode_clip(
        args.clips_dir, width=args.width, height=args.height, frames=250, bitrate=args.bitrate
    )
    mounts = {f"cam{i}": clip for i in range(args.streams)}
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    slices: dict[str, list[dict[str, Any]]] = {
        "ffmpeg": [],
        "linefleet": [],
        "linefleet_paced": [],
        "opencv": [],
        "opencv_paced": [],
    }
    with RtspServer(mounts) as server:
        urls = [server.url(name) for name in mounts]
        for round_index in range(args.rounds):
            slices["ffmpeg"].append(run_ffmpeg(urls, args.slice_s))
            slices["linefleet"].append(run_workers([PyAVSource(u) for u in urls], args.slice_s))
            slices["linefleet_paced"].append(
                run_workers(
                    [PyAVSource(u, hwaccel=args.hwaccel) for u in urls],
                    args.slice_s,
                    args.ask_fps,
                    imgsz=args.imgsz,
                )
            )
            slices["opencv"].append(
                run_workers([OpenCVSource(u) for u in urls], args.slice_s, imgsz=args.imgsz)
            )
            slices["opencv_paced"].append(
                run_workers(
                    [OpenCVSource(u) for u in urls], args.slice_s, args.ask_fps, imgsz=args.imgsz
                )
            )
            print(
                f"[round {round_index}] "
                + json.dumps({k: _brief(v[-1]) for k, v in slices.items()}),
                file=sys.stderr,
                flush=True,
            )
        stall = measure_stall(server, args.read_timeout_s)

    def per_frame(name: str) -> float:
        return statistics.median(cpu_per_frame(s) for s in slices[name])

    def vs_ffmpeg(name: str) -> float:
        """Median over rounds of the ratio to ffmpeg's slice of the same round."""
        return statistics.median(
            cpu_per_frame(ours) / cpu_per_frame(floor)
            for ours, floor in zip(slices[name], slices["ffmpeg"], strict=True)
        )

    ours = slices["linefleet"]
    ages = np.asarray([a for s in ours for a in s["ages"]]) * 1000.0
    summary = {
        "machine": describe_machine(),
        "streams": args.streams,
        "hwaccel": args.hwaccel or "none",
        "imgsz": args.imgsz,
        "resolution": f"{args.width}x{args.height}",
        "source_fps": 25,
        "bitrate": args.bitrate,
        "rounds": args.rounds,
        "slice_s": args.slice_s,
        "delivered_fps": round(statistics.median(s["delivered_fps"] for s in ours), 2),
        "delivered_fraction": round(
            statistics.median(s["delivered_fps"] for s in ours) / (25 * args.streams), 3
        ),
        "cpu_ms_per_frame": {name: round(per_frame(name) * 1000, 3) for name in slices},
        "cpu_per_frame_vs_ffmpeg": round(vs_ffmpeg("linefleet"), 3),
        "opencv_cpu_per_frame_vs_ffmpeg": round(vs_ffmpeg("opencv"), 3),
        # A pipeline that asks each camera for ask_fps frames: the others are decoded (they
        # must be: inter frames) but never converted.
        "paced": {
            "ask_fps_per_camera": args.ask_fps,
            "delivered_fps": round(
                statistics.median(s["delivered_fps"] for s in slices["linefleet_paced"]), 2
            ),
            "cpu_per_frame_vs_ffmpeg": round(vs_ffmpeg("linefleet_paced"), 3),
            "opencv_cpu_per_frame_vs_ffmpeg": round(vs_ffmpeg("opencv_paced"), 3),
            "frame_age_p99_ms": round(
                float(
                    np.percentile(
                        [a * 1000 for s in slices["linefleet_paced"] for a in s["ages"]], 99
                    )
                ),
                2,
            ),
        },
        "opencv_delivered_fps": round(
            statistics.median(s["delivered_fps"] for s in slices["opencv"]), 2
        ),
        "frame_age_p50_ms": round(float(np.percentile(ages, 50)), 2),
        "frame_age_p99_ms": round(float(np.percentile(ages, 99)), 2),
        "frame_age_p99_intervals": round(float(np.percentile(ages, 99)) / 40.0, 2),
        "arrival_gap_p99_ms": round(
            float(np.percentile([g * 1000 for s in ours for g in s["gaps"]], 99)), 2
        ),
        "read_timeout_s": args.read_timeout_s,
        "stall_detect_s": round(stall["stall_detect_s"], 2),
        "stall_recovery_s": round(stall["stall_recovery_s"], 2),
        "errors": sum(s["errors"] for s in ours),
    }
    print(json.dumps(summary))


def cpu_per_frame(result: dict[str, Any]) -> float:
    """CPU-seconds per decoded frame of one slice."""
    return float(result["cpu_s"]) / max(int(result["frames"]), 1)


def _brief(result: dict[str, Any]) -> dict[str, float]:
    return {
        "cpu_ms_per_frame": round(cpu_per_frame(result) * 1000, 3),
        "frames": result["frames"],
        **(
            {"delivered_fps": round(result["delivered_fps"], 1)}
            if "delivered_fps" in result
            else {}
        ),
    }


if __name__ == "__main__":
    main()
