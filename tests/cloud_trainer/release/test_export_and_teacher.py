"""Export options and the teacher labeler, on the committed bootstrap model (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cloud_trainer.config import ExportSection
from cloud_trainer.data.labeling import ExampleForLabeling, TeacherModel
from cloud_trainer.errors import ExportError, LabelError
from cloud_trainer.release.export import export_and_check
from edge_agent.inference.runner import InferenceRunner
from shared.detections import count_matches
from shared.hard_examples import HardExampleSidecar
from shared.messages import utc_now
from shared.synth import CLASS_NAMES, SyntheticLine, write_yolo_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = write_yolo_dataset(tmp_path_factory.mktemp("parity"), train=0, val=4, seed=5).parent
    return sorted((root / "images" / "val").glob("*.jpg"))


def test_a_dynamic_batch_export_passes_parity(
    bootstrap_model: tuple[Path, Path], images: list[Path], tmp_path: Path
) -> None:
    weights = tmp_path / "weights.pt"
    shutil.copyfile(bootstrap_model[0], weights)
    result = export_and_check(
        weights,
        tmp_path / "out",
        imgsz=320,
        config=ExportSection(dynamic_batch=True, parity_images=4),
        parity_images=images,
        expected_classes=CLASS_NAMES,
    )
    assert result.batch == -1 and result.opset == 18
    assert result.parity_max_abs_diff < 0.01
    assert InferenceRunner(result.onnx).info.batch is None  # the agent sees a dynamic batch


def test_export_refuses_mismatched_classes_missing_images_and_a_broken_parity(
    bootstrap_model: tuple[Path, Path], images: list[Path], tmp_path: Path
) -> None:
    weights = tmp_path / "weights.pt"
    shutil.copyfile(bootstrap_model[0], weights)
    with pytest.raises(ExportError, match="differ from"):
        export_and_check(
            weights,
            tmp_path / "out",
            imgsz=320,
            config=ExportSection(),
            parity_images=images[:1],
            expected_classes=["a", "b"],
        )
    with pytest.raises(ExportError, match="no image"):
        export_and_check(
            weights,
            tmp_path / "out2",
            imgsz=320,
            config=ExportSection(),
            parity_images=[],
            expected_classes=CLASS_NAMES,
        )
    # A bound below float rounding: refused, naming where the outputs differ most.
    with pytest.raises(ExportError, match=r"worst at \w+\.jpg, \w+ of anchor \d+"):
        export_and_check(
            weights,
            tmp_path / "out3",
            imgsz=320,
            config=ExportSection(parity_max_abs_diff=1e-12),
            parity_images=images[:2],
            expected_classes=CLASS_NAMES,
        )


def example(image: object) -> ExampleForLabeling:
    sidecar = HardExampleSidecar(
        fleet="f",
        device_id="d",
        camera_id="c",
        frame_id="x",
        captured_at=utc_now(),
        captured_monotonic_s=0.0,
        image_width=640,
        image_height=640,
        reasons=["random"],
        priority=1.0,
        predictions=[],
    )
    return ExampleForLabeling("2026/11/23", sidecar, image)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["onnx", "pt"])
def test_teacher_labels_agree_with_the_truth_on_the_line_it_knows(
    bootstrap_model: tuple[Path, Path], kind: str
) -> None:
    weights, onnx = bootstrap_model
    teacher = TeacherModel(onnx if kind == "onnx" else weights, CLASS_NAMES, confidence=0.5)
    # The line it knows: parts without defects (the bootstrap calls a defective part by its
    # type; learning defects is the loop's job, artifacts/README.md).
    frame = SyntheticLine(seed=21, defect_probability=0.0).random_scene(3)
    labels = teacher.label(example(frame.image))
    assert len(labels) > 0 and (labels.confidence >= 0.5).all()
    assert count_matches(labels, frame.truth, 0.5) >= len(labels) - 1


def test_teacher_must_match_the_model_line(
    bootstrap_model: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(LabelError, match="differ from the model line"):
        TeacherModel(bootstrap_model[1], ["bolt", "nut"], confidence=0.5)
    with pytest.raises(LabelError, match="does not exist"):
        TeacherModel(tmp_path / "none.onnx", CLASS_NAMES, confidence=0.5)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(LabelError, match=r"\.onnx or \.pt"):
        TeacherModel(tmp_path / "model.tflite", CLASS_NAMES, confidence=0.5)
