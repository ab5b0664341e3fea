"""Why the bootstrap never finds ``defect``: data, or input size?

The bootstrap is fine-tuned on fully labelled frames of the undrifted line (a quarter of the
parts carry a defect, so the data is there) at each input size, same epochs and recipe, and
scored per class on held-out frames by ultralytics' own validator. If the defect stays at
recall 0 at 320 and not at 640, the cause is the defect's size in the model's input
(10-16 x 7-11 pixels on a 640 frame: 5-8 x 3-5 at 320, under the stride-8 grid the smallest
YOLO head predicts on), not the labels or the mining.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402
from cloud_trainer.training.offline import prepare_offline_ultralytics  # noqa: E402
from shared.synth import write_yolo_dataset  # noqa: E402

BOOTSTRAP = ROOT / "artifacts" / "bootstrap-yolov8n-320.pt"


def fine_tune_and_score(data: Path, work: Path, imgsz: int, epochs: int) -> dict[str, Any]:
    from ultralytics import YOLO  # after the offline set-up

    started = time.monotonic()
    YOLO(str(BOOTSTRAP)).train(
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
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lf-defects-"))
    prepare_offline_ultralytics(work)
    data = write_yolo_dataset(work / "dataset", train=args.train, val=args.val, seed=11)
    sizes = {}
    for size in (int(s) for s in args.sizes.split(",")):
        sizes[str(size)] = fine_tune_and_score(data, work, size, args.epochs)
        print(json.dumps({size: sizes[str(size)]}), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "defect_resolution",
                "machine": describe_machine(),
                "train_images": args.train,
                "val_images": args.val,
                "epochs": args.epochs,
                "sizes": sizes,
            }
        )
    )


if __name__ == "__main__":
    main()
