"""Write synthetic scenes as a YOLO dataset folder that ultralytics trains on directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2

from shared.synth.line import CLASS_NAMES, LineConfig, SyntheticLine


def write_yolo_dataset(
    root: Path,
    *,
    train: int,
    val: int,
    seed: int = 0,
    drifts: Sequence[str] = ("none",),
    config: LineConfig | None = None,
    jpeg_quality: int = 90,
) -> Path:
    """Write ``images/{train,val}`` + ``labels/{train,val}`` + ``data.yaml``; return data.yaml.

    Scenes cycle through ``drifts`` so one dataset can mix line conditions. Train and val
    use disjoint scene indices, so no image is in both.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise ValueError("train and val must be >= 0 and not both zero")
    base = config or LineConfig()
    lines = [SyntheticLine(base, seed=seed, drift=name) for name in drifts]
    root.mkdir(parents=True, exist_ok=True)
    index = 0
    for split, count in (("train", train), ("val", val)):
        images = root / "images" / split
        labels = root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            line = lines[index % len(lines)]
            frame = line.random_scene(index)
            stem = f"{split}_{index:06d}"
            if not cv2.imwrite(
                str(images / f"{stem}.jpg"), frame.image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
            ):
                raise OSError(f"could not write {images / f'{stem}.jpg'}")
            height, width = frame.image.shape[:2]
            rows = frame.truth.to_yolo_lines(width, height)
            (labels / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
            index += 1
    data_yaml = root / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASS_NAMES))
    data_yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return data_yaml
