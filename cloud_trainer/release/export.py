"""Export fine-tuned weights to ONNX (pinned opset, fixed or dynamic batch) and prove the export
computes what the torch model computes before anything is signed. Lower-precision variants are
made from this export: :mod:`cloud_trainer.release.variants`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cloud_trainer.config import ExportSection
from cloud_trainer.errors import ExportError
from cloud_trainer.release.inspected import export_inspected, inspected_torch_model, raw_head

# The agent's own inference path: what the gate measures is exactly what runs on the box.
from edge_agent.inference import InferenceRunner, RunnerOptions, letterbox

if TYPE_CHECKING:
    from cloud_trainer.training.inspector import TrainedInspector


@dataclass(frozen=True)
class ExportResult:
    onnx: Path
    opset: int
    batch: int  # -1: dynamic
    imgsz: int
    class_names: tuple[str, ...]
    parity_max_abs_diff: float
    parity_images: int


def _export(weights: Path, imgsz: int, config: ExportSection) -> Path:
    from ultralytics import YOLO  # noqa: PLC0415 - trainer only

    try:
        path = YOLO(str(weights)).export(
            format="onnx",
            imgsz=imgsz,
            opset=config.opset,
            dynamic=config.dynamic_batch,
            simplify=True,
            nms=False,
            device="cpu",
        )
    except Exception as exc:
        raise ExportError(f"ONNX export of {weights} failed: {str(exc)[:500]}") from exc
    return Path(path)


@dataclass(frozen=True)
class Parity:
    worst: float  # max |onnx - torch| over every output value
    where: str  # the image, output row and anchor of the worst, for the error
    class_names: tuple[str, ...]


def outputs_differ(
    net: Any, model: Path, images: Iterable[tuple[str, NDArray[np.uint8]]], imgsz: int
) -> Parity:
    """Max |onnx - torch| over the raw head on named ``images``, both fed the agent's
    letterbox; where it is, for a refusal's message."""
    import torch  # noqa: PLC0415

    runner = InferenceRunner(model, RunnerOptions(warmup_runs=1))
    worst, where = 0.0, ""
    try:
        names = runner.info.class_names
        rows = ("x", "y", "w", "h", *names)
        for name, image in images:
            blob, _ = letterbox([image], imgsz, imgsz, dtype=np.float32)
            with torch.no_grad():
                expected = raw_head(net(torch.from_numpy(blob))).numpy()
            actual = runner.run(blob)
            if actual.shape != expected.shape:
                raise ExportError(
                    f"ONNX output shape {actual.shape} differs from torch {expected.shape}"
                )
            differ = np.abs(actual - expected)
            index = int(differ.argmax())
            if float(differ.flat[index]) > worst:
                worst = float(differ.flat[index])
                _, row, anchor = np.unravel_index(index, differ.shape)
                label = rows[row] if row < len(rows) else f"row {row}"
                where = f"{name}, {label} of anchor {anchor}"
    finally:
        runner.close()
    return Parity(worst, where, names)


def _read(paths: Sequence[Path]) -> Iterator[tuple[str, NDArray[np.uint8]]]:
    """The parity images, named by file, read one at a time as the check reaches them."""
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ExportError(f"parity image {path} is unreadable")
        yield path.name, np.asarray(image, np.uint8)


def export_and_check(
    weights: Path,
    out_dir: Path,
    *,
    imgsz: int,
    config: ExportSection,
    parity_images: Sequence[Path],
    expected_classes: Sequence[str],
    inspector: TrainedInspector | None = None,
) -> ExportResult:
    """Export (with ``inspector`` fused in, when given), then refuse the export unless it
    matches torch within the configured bound."""
    from ultralytics import YOLO  # noqa: PLC0415 - trainer only

    if not parity_images:
        raise ExportError("no image to check ONNX parity on")
    out_dir.mkdir(parents=True, exist_ok=True)
    detector = _export(weights, imgsz, config)
    if inspector is None:
        fp32 = detector.replace(out_dir / "model.onnx")
        net = YOLO(str(weights)).model.float().eval()
    else:
        fp32 = export_inspected(
            weights, inspector, detector, out_dir / "model.onnx", imgsz=imgsz, config=config
        )
        net = inspected_torch_model(weights, inspector)
    images = list(parity_images)[: config.parity_images]
    parity = outputs_differ(net, fp32, _read(images), imgsz)
    names = parity.class_names
    if names != tuple(expected_classes):
        raise ExportError(f"exported classes {list(names)} differ from {list(expected_classes)}")
    if parity.worst > config.parity_max_abs_diff:
        raise ExportError(
            f"ONNX and torch outputs differ by up to {parity.worst:.4g} on {len(images)} "
            f"held-out images (bound {config.parity_max_abs_diff}; worst at {parity.where}): "
            "refusing the export"
        )
    return ExportResult(
        onnx=fp32,
        opset=config.opset,
        batch=-1 if config.dynamic_batch else 1,
        imgsz=imgsz,
        class_names=names,
        parity_max_abs_diff=round(parity.worst, 6),
        parity_images=len(images),
    )
