"""The part inspector: when it trains, what the fused graph computes, that the fused export
finds the defects the bootstrap detector cannot (through the agent's runtime, offline), and
the detector's typed labels (a defective part as its type)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.config import ExportSection, InspectorSection
from cloud_trainer.data.dataset import labelled_folder
from cloud_trainer.release.evaluate import evaluate_onnx
from cloud_trainer.release.export import export_and_check
from cloud_trainer.release.inspected import _module
from cloud_trainer.training.inspector import (
    InspectorReport,
    TrainedInspector,
    build_network,
    train_inspector,
)
from cloud_trainer.training.part_types import _attribute_rows, _retyped, typed_labels
from shared.synth import CLASS_NAMES, LineConfig, write_yolo_dataset

DEFECT = CLASS_NAMES.index("defect")


@pytest.fixture(scope="module")
def line_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yolo_dataset(tmp_path_factory.mktemp("line"), train=60, val=4, seed=31).parent


def test_no_inspector_without_the_class_or_without_both_kinds_of_part(
    tmp_path: Path, line_data: Path
) -> None:
    items = labelled_folder(line_data, "train")
    names_without = ("bolt", "nut", "washer", "bracket", "scratch")
    assert train_inspector(items, names_without, InspectorSection(), imgsz=320, seed=0) is None
    off = InspectorSection(attribute_class=None)
    assert train_inspector(items, CLASS_NAMES, off, imgsz=320, seed=0) is None
    clean = write_yolo_dataset(
        tmp_path, train=6, val=0, seed=3, config=LineConfig(defect_probability=0.0)
    ).parent
    no_defect = labelled_folder(clean, "train")
    assert train_inspector(no_defect, CLASS_NAMES, InspectorSection(), imgsz=320, seed=0) is None


def forced(verdict: float) -> TrainedInspector:
    """An inspector that says ``verdict`` (probability of the attribute) for every crop."""
    import torch

    network = build_network(32).eval()
    head = network[-1]
    with torch.no_grad():
        head.weight.zero_()
        logit = float(np.log(verdict / (1 - verdict)))
        head.bias.copy_(torch.tensor([0.0, logit]))
    report = InspectorReport(
        attribute_class="defect", crops=0, with_attribute=0, epochs=0, seconds=0, train_accuracy=0
    )
    return TrainedInspector(network, DEFECT, 32, 16, report)


class FixedDetector:
    """A raw head: two overlapping boxes of one part (a bolt) and one far away (a nut)."""

    def __init__(self) -> None:
        import torch

        raw = torch.zeros(1, 4 + len(CLASS_NAMES), 3)
        raw[0, :4, 0] = torch.tensor([100.0, 100.0, 40.0, 40.0])
        raw[0, :4, 1] = torch.tensor([102.0, 101.0, 40.0, 42.0])
        raw[0, :4, 2] = torch.tensor([250.0, 250.0, 30.0, 30.0])
        raw[0, 4 + 0, :2] = torch.tensor([0.9, 0.6])  # bolt
        raw[0, 4 + 1, :2] = torch.tensor([0.3, 0.2])  # nut, weaker
        raw[0, 4 + 1, 2] = 0.8  # the nut
        self.raw = raw

    def __call__(self, images: object) -> tuple[object, None]:
        return self.raw, None


@pytest.mark.parametrize("verdict", [0.001, 0.999])
def test_the_fused_graph_shares_each_confidence_between_type_and_attribute(verdict: float) -> None:
    import torch

    detector = FixedDetector()
    model = _module(detector, forced(verdict))
    out = model(torch.zeros(1, 3, 320, 320))
    raw = detector.raw
    assert out.shape == raw.shape
    assert torch.equal(out[:, :4], raw[:, :4])  # boxes untouched
    confidence = raw[0, 4:].sum(dim=0).clamp(max=1.0)  # a part, whatever its class
    assert torch.allclose(out[0, 4 + DEFECT], confidence * verdict, atol=1e-4)
    # The type the detector scored highest keeps the rest; weaker types in proportion.
    rest = confidence * (1 - verdict)
    assert torch.allclose(out[0, 4 + 0, :2], rest[:2], atol=1e-4)  # bolt 0.9+0.3, 0.6+0.2
    assert torch.allclose(out[0, 4 + 1, 2], rest[2], atol=1e-4)  # the nut
    assert torch.allclose(out[0, 4 + 1, :2], rest[:2] * torch.tensor([0.3 / 0.9, 0.2 / 0.6]))


def test_each_part_is_cropped_once_and_its_anchors_share_its_verdict() -> None:
    """Two images (dark, bright) with the same two parts, the bolt seen by two anchors: four
    crops, not six, and each image's anchors take the verdict of their own image's part."""
    import torch

    class BrightnessInspector(torch.nn.Module):  # type: ignore[misc]
        """Says "defect" for a bright crop, not for a dark one; counts the crops it sees."""

        def __init__(self) -> None:
            super().__init__()
            self.crops_seen = 0

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            self.crops_seen += len(crops)
            brightness = crops.mean(dim=(1, 2, 3))
            return torch.stack([torch.zeros_like(brightness), 10.0 * (brightness - 0.5)], 1)

    detector = FixedDetector()
    detector.raw = detector.raw.expand(2, -1, -1).clone()
    inspector = BrightnessInspector()
    model = _module(detector, forced(0.5))
    model.inspector = inspector
    images = torch.stack([torch.zeros(3, 320, 320), torch.ones(3, 320, 320)])
    out = model(images)
    assert inspector.crops_seen == 4
    confidence = detector.raw[:, 4:].sum(dim=1).clamp(max=1.0)
    dark, bright = torch.sigmoid(torch.tensor(-5.0)), torch.sigmoid(torch.tensor(5.0))
    assert torch.allclose(out[0, 4 + DEFECT], confidence[0] * dark, atol=1e-4)
    assert torch.allclose(out[1, 4 + DEFECT], confidence[1] * bright, atol=1e-4)


def test_a_part_is_cropped_the_same_whatever_the_order_of_its_anchors() -> None:
    """A confident part has several anchors whose scores sum past 1 (a confidence of exactly
    1.0 for each): torch and onnxruntime order such ties differently, so a graph that picked
    the crop by clamped confidence cropped another box in each, and the verdict moved (0.72 on
    a CI machine, refusing the export). On an image whose brightness rises left to right, with
    an inspector that reads brightness, the output must not move when the anchors are listed
    in another order."""
    import torch

    class BrightnessInspector(torch.nn.Module):  # type: ignore[misc]
        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            brightness = crops.mean(dim=(1, 2, 3))
            return torch.stack([torch.zeros_like(brightness), 50.0 * (brightness - 0.5)], 1)

    raw = torch.zeros(1, 4 + len(CLASS_NAMES), 4)
    for anchor, (x, bolt, nut) in enumerate([(150, 0.95, 0.3), (156, 0.9, 0.4), (146, 0.8, 0.55)]):
        raw[0, :4, anchor] = torch.tensor([float(x), 160.0, 40.0, 40.0])
        raw[0, 4 + 0, anchor], raw[0, 4 + 1, anchor] = bolt, nut  # sums 1.25, 1.3, 1.35
    raw[0, :4, 3] = torch.tensor([260.0, 60.0, 30.0, 30.0])
    raw[0, 4 + 1, 3] = 0.7  # a nut elsewhere
    image = torch.linspace(0.0, 1.0, 320).expand(1, 3, 320, 320).contiguous()
    detector = FixedDetector()
    model = _module(detector, forced(0.5))
    model.inspector = BrightnessInspector()
    for order in ([0, 1, 2, 3], [2, 1, 0, 3], [1, 2, 0, 3], [3, 0, 2, 1]):
        detector.raw = raw[:, :, order]
        out = model(image)[:, :, torch.argsort(torch.tensor(order))]
        if order == [0, 1, 2, 3]:
            first = out
            verdict = out[0, 4 + DEFECT, 0]
            assert 0.05 < verdict < 0.95  # the crop's place matters to this inspector
        assert torch.allclose(out, first, atol=1e-5), order


def test_the_fused_export_finds_the_defects_the_detector_misses(
    bootstrap_model: tuple[Path, Path], line_data: Path, tmp_path: Path
) -> None:
    """60 labelled frames teach the inspector; on 40 frames of other scenes the bootstrap
    (which calls a defective part by its type) finds no defect, the fused export most."""
    inspector = train_inspector(
        labelled_folder(line_data, "train"), CLASS_NAMES, InspectorSection(), imgsz=320, seed=0
    )
    assert inspector is not None
    assert inspector.report.with_attribute >= 10 and inspector.report.train_accuracy > 0.9
    weights = tmp_path / "weights.pt"
    shutil.copyfile(bootstrap_model[0], weights)
    parity = sorted((line_data / "images" / "val").glob("*.jpg"))
    result = export_and_check(
        weights,
        tmp_path / "out",
        imgsz=320,
        config=ExportSection(dynamic_batch=True, parity_images=4),
        parity_images=parity,
        expected_classes=CLASS_NAMES,
        inspector=inspector,
    )
    assert result.class_names == CLASS_NAMES  # the detector's metadata came along
    assert result.parity_max_abs_diff < 0.01
    held_out = labelled_folder(
        write_yolo_dataset(tmp_path / "held-out", train=0, val=40, seed=77).parent, "val"
    )

    def defect_recall(model: Path) -> float:  # as the gate measures it
        return evaluate_onnx(model, held_out, CLASS_NAMES).per_class_recall["defect"]

    assert defect_recall(bootstrap_model[1]) == 0.0
    assert defect_recall(result.onnx) >= 0.8


def test_only_well_formed_attribute_rows_are_retyped() -> None:
    lines = [
        "4 0.5 0.5 0.2 0.2",
        "1 0.1 0.1 0.05 0.05",
        "4 0.9 0.9",
        "x 1 1 1 1",
        "4 0.2 0.2 0.1 0.1",
    ]
    rows = _attribute_rows(lines, DEFECT)
    assert rows == [0, 4]
    assert _retyped(lines, rows, [0, 2]) == [
        "0 0.5 0.5 0.2 0.2",
        "1 0.1 0.1 0.05 0.05",
        "4 0.9 0.9",
        "x 1 1 1 1",
        "2 0.2 0.2 0.1 0.1",
    ]


def test_hidden_types_come_back_on_a_drifted_line_the_parent_never_saw(tmp_path: Path) -> None:
    """New supplier parts under the failed lamp: the bootstrap names them wrongly or not at
    all, the classifier of the run's own clean parts names them. A quarter of the clean parts
    are relabelled ``defect`` here, so their true type is known."""
    root = write_yolo_dataset(
        tmp_path / "line",
        train=40,
        val=4,
        seed=5,
        drifts=("new_variant_lighting",),
        config=LineConfig(defect_probability=0.0),
    ).parent
    hidden: dict[tuple[str, int], int] = {}
    for split in ("train", "val"):
        for label in (root / "labels" / split).glob("*.txt"):
            lines = label.read_text().splitlines()
            for row in range(0, len(lines), 4):
                hidden[(f"{split}/{label.name}", row)] = int(lines[row].split()[0])
                lines[row] = " ".join([str(DEFECT), *lines[row].split()[1:]])
            label.write_text("\n".join(lines) + "\n")
    typed = typed_labels(root, list(CLASS_NAMES), "defect", tmp_path / "typed", imgsz=320)
    assert (typed.relabelled, typed.kept) == (len(hidden), 0)
    right = sum(
        (tmp_path / "typed" / "labels" / name).read_text().splitlines()[row].split()[0]
        == str(type_id)
        for (name, row), type_id in hidden.items()
    )
    assert right >= 0.9 * len(hidden), (right, len(hidden))


def test_without_clean_parts_of_two_types_the_attribute_boxes_stay(tmp_path: Path) -> None:
    root = write_yolo_dataset(tmp_path / "line", train=2, val=1, seed=2).parent
    typed = typed_labels(root, list(CLASS_NAMES), "defect", tmp_path / "typed", imgsz=320)
    assert typed.relabelled == 0
    before = sorted(p.read_text() for p in (root / "labels" / "train").glob("*.txt"))
    after = sorted(p.read_text() for p in (tmp_path / "typed" / "labels" / "train").glob("*.txt"))
    assert after == before


def test_the_detector_trains_on_typed_copies_and_the_dataset_is_untouched(
    line_data: Path, tmp_path: Path
) -> None:
    before = {p: p.read_bytes() for p in (line_data / "labels").rglob("*.txt")}
    typed = typed_labels(line_data, list(CLASS_NAMES), "defect", tmp_path / "typed", imgsz=320)
    assert {p: p.read_bytes() for p in (line_data / "labels").rglob("*.txt")} == before
    defects = sum(
        line.startswith(f"{DEFECT} ")
        for text in before.values()
        for line in text.decode().splitlines()
    )
    assert typed.relabelled == defects > 20
    copied = (tmp_path / "typed" / "labels" / "train").glob("*.txt")
    remaining = sum(
        line.startswith(f"{DEFECT} ") for p in copied for line in p.read_text().splitlines()
    )
    assert remaining == typed.kept
    # ultralytics, reading the copy's data.yaml, takes the typed labels (it resolves folders,
    # so a linked folder would have led it back to the dataset's own).
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    found = sorted(str(p) for p in Path(check_det_dataset(str(typed.data_yaml))["train"]).glob("*"))
    assert len(found) == 60
    assert all(Path(p).is_relative_to(tmp_path / "typed") for p in img2label_paths(found))
