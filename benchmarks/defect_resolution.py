"""Why the bootstrap never finds ``defect``: data, or input size?

The bootstrap is fine-tuned on fully labelled frames of the undrifted line (a quarter of the
parts carry a defect, so the data is there) at each input size, same epochs and recipe, and
scored per class on held-out frames by ultralytics' own validator. If the defect stays at
recall 0 at 320 and not at 640, the cause is the defect's size in the model's input, not the
labels or the mining. ``anchor_coverage`` counts the defects the assigner can never learn
from at each size (8-15 pixels on a 640 frame: 4-7 at 320, against a stride-8 grid).

    python benchmarks/defect_resolution.py [--sizes 320,640] [--train 240] [--epochs 6]

needs the trainer extra. The last line printed is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.training.offline import prepare_offline_ultralytics  # noqa: E402
from shared.synth import DEFECT_CLASS_ID, write_yolo_dataset  # noqa: E402

BOOTSTRAP = ROOT / "artifacts" / "bootstrap-yolov8n-320.pt"


def anchor_coverage(labels: Path, sizes: list[int], stride: int = 8) -> dict[str, Any]:
    """For each input size, the share of defect boxes that contain no anchor centre of the
    finest grid YOLOv8 predicts on (stride 8): its task-aligned assigner only takes anchors
    whose centres lie inside a box, so such a defect is never a positive sample."""
    rows = [
        [float(v) for v in line.split()[1:]]
        for path in sorted(labels.glob("*.txt"))
        for line in path.read_text().splitlines()
        if line.split()[:1] == [str(DEFECT_CLASS_ID)]
    ]
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    coverage: dict[str, Any] = {"defects": len(boxes)}
    for size in sizes:
        centres = np.arange(stride / 2, size, stride)

        def inside(centre: Any, extent: Any, size: int = size, centres: Any = centres) -> Any:
            low, high = (centre - extent / 2) * size, (centre + extent / 2) * size
            return ((centres > low[:, None]) & (centres < high[:, None])).sum(axis=1)

        anchors = inside(boxes[:, 0], boxes[:, 2]) * inside(boxes[:, 1], boxes[:, 3])
        coverage[str(size)] = {
            "no_anchor_inside": round(float((anchors == 0).mean()), 3) if len(boxes) else 0.0,
            "median_anchors": float(np.median(anchors)) if len(boxes) else 0.0,
        }
    return coverage


def fine_tune_and_score(
    data: Path, work: Path, imgsz: int, epochs: int, architecture: str | None
) -> dict[str, Any]:
    """The bootstrap fine-tuned, or ``architecture`` (an ultralytics model YAML) trained from
    scratch, then scored per class on the validation split."""
    from ultralytics import YOLO  # after the offline set-up

    started = time.monotonic()
    YOLO(architecture or str(BOOTSTRAP)).train(
        data=str(data),
        imgsz=imgsz,
        epochs=epochs,
        batch=16,
        workers=0,
        device="cpu",
        seed=0,
        deterministic=True,
        amp=False,
        plots=False,
        project=str(work / "runs"),
        name=f"s{imgsz}",
        exist_ok=True,
        verbose=False,
        patience=0,
        close_mosaic=2,
    )
    train_s = time.monotonic() - started
    tuned = YOLO(str(work / "runs" / f"s{imgsz}" / "weights" / "last.pt"))
    result: Any = tuned.val(
        data=str(data), imgsz=imgsz, batch=16, workers=0, device="cpu", plots=False, verbose=False
    )
    per_class = {
        result.names[int(c)]: {
            "recall": round(float(result.box.r[i]), 3),
            "precision": round(float(result.box.p[i]), 3),
            "map50": round(float(result.box.ap50[i]), 3),
        }
        for i, c in enumerate(result.box.ap_class_index)
    }
    return {"train_s": round(train_s), "map50": round(float(result.box.map50), 4), **per_class}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="320,640")
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--architecture",
        default=None,
        help="train this ultralytics model YAML from scratch instead of fine-tuning the "
        "bootstrap (e.g. yolov8n-p2.yaml: a stride-4 head for small objects)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lf-defects-"))
    prepare_offline_ultralytics(work)
    data = write_yolo_dataset(work / "dataset", train=args.train, val=args.val, seed=11)
    coverage = anchor_coverage(work / "dataset" / "labels" / "train", [320, 480, 640, 960])
    print(json.dumps({"anchor_coverage": coverage}), file=sys.stderr, flush=True)
    sizes = {}
    for size in (int(s) for s in args.sizes.split(",")):
        sizes[str(size)] = fine_tune_and_score(data, work, size, args.epochs, args.architecture)
        print(json.dumps({size: sizes[str(size)]}), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "defect_resolution",
                "machine": describe_machine(),
                "train_images": args.train,
                "val_images": args.val,
                "epochs": args.epochs,
                "model": args.architecture or "bootstrap fine-tuned",
                "anchor_coverage": coverage,
                "sizes": sizes,
            }
        )
    )


if __name__ == "__main__":
    main()
