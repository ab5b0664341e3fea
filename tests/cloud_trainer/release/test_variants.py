"""INT8 and fp16 variants of the bootstrap model: built, scored through the agent's inference
path and judged against fp32 (offline, no store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cloud_trainer.config import ExportSection
from cloud_trainer.errors import ExportError
from cloud_trainer.release.evaluate import LabelledImage, evaluate_onnx
from cloud_trainer.release.variants import float_nodes, make_variants
from edge_agent.inference import InferenceRunner
from shared.manifest import EvalMetrics
from shared.synth import CLASS_NAMES, SyntheticLine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[LabelledImage]:
    import cv2

    folder = tmp_path_factory.mktemp("variant-frames")
    line = SyntheticLine(seed=31)
    items = []
    for i in range(24):
        scene = line.random_scene(i)
        path = folder / f"{i}.jpg"
        cv2.imwrite(str(path), scene.image)
        items.append(LabelledImage(image_path=path, truth=scene.truth))
    return items


def test_int8_keeps_the_head_float_and_both_variants_are_judged_against_fp32(
    bootstrap_model: tuple[Path, Path], frames: list[LabelledImage], tmp_path: Path
) -> None:
    onnx_path = bootstrap_model[1]
    reference = evaluate_onnx(onnx_path, frames, CLASS_NAMES)
    config = ExportSection(
        int8_calibration_images=8,
        variant_map50_tolerance=1.0,
        variant_class_recall_tolerance=1.0,
    )
    published, verdicts = make_variants(
        onnx_path,
        tmp_path,
        config=config,
        reference=reference,
        holdout=frames,
        calibration=[f.image_path for f in frames[:12]],
        class_names=CLASS_NAMES,
        imgsz=320,
        operating_confidence=0.25,
    )
    assert [v.precision for v in published] == ["int8", "fp16"]
    assert all(v.published and v.map50 is not None for v in verdicts)
    # Measured on each runtime installed here (OpenVINO with the edge-openvino extra).
    assert all(v.runtimes == ("onnxruntime", "openvino") for v in published)
    assert all(any(r.startswith("openvino: mAP50") for r in v.reasons) for v in verdicts)
    graph = onnx.load(str(published[0].path)).graph
    float_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    head = [n for n in convs if n.name.startswith("/model.22/")]
    body = [n for n in convs if not n.name.startswith("/model.22/")]
    assert head and body
    # The head's convolutions keep float weights; the body's are INT8 behind DequantizeLinear.
    assert all(n.input[1] in float_weights for n in head)
    assert not any(n.input[1] in float_weights for n in body)
    # The agent loads each variant as it loads the reference: float32 in, the same classes.
    for variant in published:
        runner = InferenceRunner(variant.path, class_names=CLASS_NAMES)
        assert runner.info.input_dtype == np.float32
        runner.close()
        assert variant.metrics.images == len(frames)


def test_a_variant_worse_than_fp32_beyond_the_tolerance_is_left_out_with_the_reason(
    bootstrap_model: tuple[Path, Path], frames: list[LabelledImage], tmp_path: Path
) -> None:
    onnx_path = bootstrap_model[1]
    reference = evaluate_onnx(onnx_path, frames, CLASS_NAMES)
    # A reference a variant cannot reach: every class found, mAP50 1.
    perfect = reference.model_copy(
        update={"map50": 1.0, "per_class_recall": dict.fromkeys(CLASS_NAMES, 1.0)}
    )
    published, verdicts = make_variants(
        onnx_path,
        tmp_path,
        config=ExportSection(variants=("fp16",)),
        reference=perfect,
        holdout=frames,
        calibration=[],
        class_names=CLASS_NAMES,
        imgsz=320,
        operating_confidence=0.25,
    )
    assert published == []
    (verdict,) = verdicts
    assert not verdict.published and verdict.map50_delta is not None
    assert any("below fp32's" in reason for reason in verdict.reasons)


def test_int8_of_a_graph_without_a_known_head_is_refused_not_guessed(
    frames: list[LabelledImage], tmp_path: Path
) -> None:
    """An ONNX file not exported by ultralytics (no '/model.N/' names): INT8 would have to
    guess which nodes stay float, so it is refused with the reason; fp16 is still made."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["output0"], name="relu")],
        "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(plain))
    with pytest.raises(ExportError, match="detect head"):
        float_nodes(plain)
    published, verdicts = make_variants(
        plain,
        tmp_path,
        config=ExportSection(variants=("int8",)),
        reference=EvalMetrics(map50=0.5, map50_95=0.3),
        holdout=frames[:2],
        calibration=[f.image_path for f in frames[:2]],
        class_names=CLASS_NAMES,
        imgsz=32,
        operating_confidence=0.25,
    )
    assert published == []
    assert "detect head" in verdicts[0].reasons[0]
