"""Synthetic line speed at 640x640 on one core, per drift preset.

    python benchmarks/synth.py [--quick]

The peer in the same run is decoding the same frames from JPEG, i.e. what a file camera of
the same content would cost; ``vs_jpeg_decode`` > 1 means generating is cheaper than reading.
``vs_30fps_budget`` is frames/s over 30 (>= 1: it can feed a 30 FPS camera on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from shared.synth import DRIFT_PRESETS, SyntheticLine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core
    count = 60 if args.quick else 300
    report: dict[str, dict[str, float]] = {}
    for drift in sorted(DRIFT_PRESETS):
        line = SyntheticLine(seed=3, drift=drift)
        line.next_frame()
        started = time.perf_counter()
        frames = [line.next_frame().image for _ in range(count)]
        synth_fps = count / (time.perf_counter() - started)
        jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for f in frames]
        started = time.perf_counter()
        for data in jpegs:
            cv2.imdecode(data, cv2.IMREAD_COLOR)
        decode_fps = count / (time.perf_counter() - started)
        report[drift] = {
            "frames_per_s": round(synth_fps, 1),
            "ms_per_frame": round(1000 / synth_fps, 2),
            "vs_30fps_budget": round(synth_fps / 30.0, 2),
            "vs_jpeg_decode": round(synth_fps / decode_fps, 3),
        }
    print(json.dumps({"size": "640x640", "threads": 1, "drifts": report}))


if __name__ == "__main__":
    main()
