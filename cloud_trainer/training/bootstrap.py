"""Train the first detector of a line on the synthetic line, offline, and export it to ONNX.

No permissively licensed detector ships its weights on PyPI, and nothing may be downloaded,
so the project trains its own bootstrap model from a YAML architecture.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloud_trainer.training.offline import prepare_offline_ultralytics
from shared.synth import write_yolo_dataset


@dataclass(frozen=True)
class BootstrapResult:
    weights: str
    onnx: str
    imgsz: int
    epochs: int
    seed: int
    train_images: int
    map50: float
    map50_95: float
    train_seconds: float


def train_bootstrap(
    out_dir: Path,
    *,
    train_images: int = 240,
    val_images: int = 60,
    epochs: int = 25,
    imgsz: int = 320,
    seed: int = 0,
    architecture: str = "yolov8n.yaml",
    device: str = "cpu",
) -> BootstrapResult:
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_offline_ultralytics(out_dir)
    from ultralytics import YOLO  # noqa: PLC0415 - after the offline set-up

    data = write_yolo_dataset(
        out_dir / "dataset", train=train_images, val=val_images, seed=seed, drifts=("none",)
    )
    model = YOLO(architecture)
    started = time.monotonic()
    model.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=16,
        workers=0,
        device=device,
        seed=seed,
        deterministic=True,
        amp=False,
        plots=False,
        project=str(out_dir / "runs"),
        name="bootstrap",
        exist_ok=True,
        verbose=False,
        close_mosaic=max(1, epochs // 3),
        patience=0,
    )
    train_seconds = time.monotonic() - started
    best = out_dir / "runs" / "bootstrap" / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics: Any = trained.val(
        data=str(data), imgsz=imgsz, batch=16, workers=0, device=device, plots=False, verbose=False
    )
    onnx_path = Path(
        trained.export(format="onnx", imgsz=imgsz, opset=18, simplify=True, dynamic=False)
    )
    result = BootstrapResult(
        weights=str(best),
        onnx=str(onnx_path),
        imgsz=imgsz,
        epochs=epochs,
        seed=seed,
        train_images=train_images,
        map50=float(metrics.box.map50),
        map50_95=float(metrics.box.map),
        train_seconds=round(train_seconds, 1),
    )
    (out_dir / "bootstrap.json").write_text(json.dumps(asdict(result), indent=2))
    return result
