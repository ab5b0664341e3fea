"""Why the bootstrap never finds ``defect``, and what a fine-tune on full labels reaches.

The bootstrap is fine-tuned with the trainer's recipe (AdamW at ``TrainingSection().lr0``) on
fully labelled frames of the undrifted line (a quarter of the parts carry a defect, so the
data is there) at each input size, and scored per class on held-out frames by ultralytics'
own validator. ``anchor_coverage`` counts the defect boxes that hold no anchor centre of the
finest grid at each size (the task-aligned assigner never makes those positive).

History (``benchmarks/results/defect_resolution-2core-cpu.json``): while the line labelled a
defect as its 10-16 px mark, recall stayed 0 at 320 and 640, with a stride-4 head, and with
an assigner that made the mark a positive sample; the line now labels the defective part.

    python benchmarks/defect_resolution.py [--sizes 320,640] [--train 240] [--epochs 20]

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
from cloud_trainer.config import TrainingSection  # noqa: E402
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

    # A fine-tune uses the trainer's recipe (cloud_trainer.training.finetune.recipe_arguments);
    # an architecture from scratch ultralytics' own.
    recipe: dict[str, Any] = (
        {}
        if architecture
        else {"lr0": TrainingSection().lr0, "optimizer": "AdamW", "warmup_bias_lr": 0.0}
    )
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
        **recipe,
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
    parser.add_argument("--epochs", type=int, default=TrainingSection().epochs)
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
