from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.detections import Detections
from shared.errors import ContractError
from shared.synth import (
    CLASS_NAMES,
    DEFECT_CLASS_ID,
    DRIFT_PRESETS,
    LineConfig,
    SyntheticLine,
    write_yolo_dataset,
)


def test_stream_is_reproducible_for_a_seed() -> None:
    a = [f.image for f in SyntheticLine(seed=11).frames(5)]
    b = [f.image for f in SyntheticLine(seed=11).frames(5)]
    c = [f.image for f in SyntheticLine(seed=12).frames(5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[-1], c[-1])


def test_frames_have_expected_shape_and_labels_inside() -> None:
    line = SyntheticLine(LineConfig(width=640, height=480), seed=3)
    seen: set[int] = set()
    for frame in line.frames(120):
        assert frame.image.shape == (480, 640, 3) and frame.image.dtype == np.uint8
        boxes = frame.truth.xyxy
        assert np.all(boxes[:, [0, 2]] >= 0) and np.all(boxes[:, [0, 2]] <= 640)
        assert np.all(boxes[:, [1, 3]] >= 0) and np.all(boxes[:, [1, 3]] <= 480)
        seen.update(frame.truth.class_id.tolist())
    assert seen == set(range(len(CLASS_NAMES))), "all part classes and defects appear"


def test_belt_moves_parts_between_frames() -> None:
    frames = list(SyntheticLine(seed=4).frames(2))
    moved = frames[1].truth.xyxy[:, 0].mean() - frames[0].truth.xyxy[:, 0].mean()
    assert moved != 0


def test_a_defective_part_is_labelled_defect_with_its_own_box_and_shows_the_mark() -> None:
    """The sorter rejects parts: a defect's label is its part's box, and the mark that tells
    it apart (rust red, no outline) is inside that box and nowhere else."""
    every = SyntheticLine(seed=5, defect_probability=1.0, noise_level=0).random_scene(0)
    none = SyntheticLine(seed=5, defect_probability=0.0, noise_level=0).random_scene(0)
    assert len(every.truth) > 0 and len(none.truth) > 0
    assert set(every.truth.class_id.tolist()) == {DEFECT_CLASS_ID}
    assert DEFECT_CLASS_ID not in none.truth.class_id
    rust = np.all(np.abs(every.image.astype(int) - (20, 50, 140)) < 25, axis=-1)
    assert not np.any(np.all(np.abs(none.image.astype(int) - (20, 50, 140)) < 25, axis=-1))
    for x1, y1, x2, y2 in every.truth.xyxy.astype(int):
        assert rust[y1 : y2 + 1, x1 : x2 + 1].any()


def test_labels_match_pixels() -> None:
    """Every labelled part differs from the empty belt inside its box."""
    line = SyntheticLine(seed=9, noise_level=0, max_parts=3)
    frame = line.random_scene(1)
    empty = SyntheticLine(seed=9, noise_level=0, min_parts=0, max_parts=1)
    belt = empty._belt  # the same texture for the same seed
    for box in frame.truth.xyxy.astype(int):
        x1, y1, x2, y2 = box
        patch = frame.image[y1:y2, x1:x2].astype(int)
        assert patch.size > 0
        assert np.abs(patch - belt[y1:y2, x1:x2].astype(int)).mean() > 5


@pytest.mark.parametrize("drift", sorted(DRIFT_PRESETS))
def test_each_drift_renders_and_differs(drift: str) -> None:
    base = SyntheticLine(seed=7).random_scene(2)
    frame = SyntheticLine(seed=7, drift=drift).random_scene(2)
    assert frame.drift == drift
    if drift == "none":
        assert np.array_equal(base.image, frame.image)
    else:
        # Compare where the parts are: a new variant changes only them, not the belt.
        mask = np.zeros(base.image.shape[:2], bool)
        for x1, y1, x2, y2 in frame.truth.xyxy.astype(int):
            mask[y1:y2, x1:x2] = True
        diff = np.abs(base.image.astype(int) - frame.image.astype(int))[mask]
        assert diff.mean() > 10


def test_frame_too_small_for_parts_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="cannot hold parts"):
        LineConfig(width=160, height=160)
    LineConfig(width=160, height=160, part_size=(20, 40))


def test_unknown_drift_is_a_clear_error() -> None:
    with pytest.raises(ContractError, match="unknown drift preset"):
        SyntheticLine(drift="earthquake")


def test_write_yolo_dataset(tmp_path: Path) -> None:
    data = write_yolo_dataset(tmp_path / "ds", train=6, val=3, seed=1, drifts=("none", "lighting"))
    text = data.read_text()
    assert "train: images/train" in text and "4: defect" in text
    train_images = sorted((tmp_path / "ds/images/train").glob("*.jpg"))
    val_images = sorted((tmp_path / "ds/images/val").glob("*.jpg"))
    assert len(train_images) == 6 and len(val_images) == 3
    assert not {p.stem for p in train_images} & {p.stem for p in val_images}
    for image_path in train_images + val_images:
        label = (
            image_path.parent.parent.parent
            / "labels"
            / image_path.parent.name
            / (image_path.stem + ".txt")
        )
        image = cv2.imread(str(image_path))
        assert image is not None
        h, w = image.shape[:2]
        det = Detections.from_yolo_lines(label.read_text().splitlines(), w, h, num_classes=5)
        assert len(det) >= 1


def test_dataset_needs_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both zero"):
        write_yolo_dataset(tmp_path, train=0, val=0)
