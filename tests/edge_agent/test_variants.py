"""Which model files a box may run: variants by accelerator and pinned precision, and the
refusal of a file that is not the manifest's (pure file logic, no runtime)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_agent.inference import RunnerOptions
from edge_agent.inference.variants import ModelFile, box_accelerators, model_files, variant_path
from shared.manifest import ArtifactRef, ModelVariant
from tests.factories import make_manifest, make_variant


def _variant_on_disk(reference: Path, precision: str, data: bytes) -> ModelVariant:
    variant_path(reference, precision).write_bytes(data)
    return make_variant(
        precision,
        artifact=ArtifactRef(
            key=f"models/line-detector/3/model.{precision}.onnx",
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
        ),
    )


def test_a_cpu_box_takes_int8_only_and_a_pin_narrows_the_choice(tmp_path: Path) -> None:
    reference = tmp_path / "model.onnx"
    reference.write_bytes(b"fp32")
    variants = [_variant_on_disk(reference, "int8", b"int8"), make_variant("fp16")]
    manifest = make_manifest(schema_version=2, variants=variants)
    cpu = RunnerOptions()
    assert box_accelerators(cpu) == {"cpu"}
    files, refused = model_files(reference, manifest, cpu, "auto")
    assert [(f.precision, f.path.name, f.candidate, f.runtimes) for f in files] == [
        ("fp32", "model.onnx", True, None),
        ("int8", "model.int8.onnx", True, ("onnxruntime",)),
    ]
    assert files[1].vouched_for("onnxruntime") and not files[1].vouched_for("openvino")
    assert refused == {}
    # Pinned to INT8: fp32 is only the yardstick.
    pinned, _ = model_files(reference, manifest, cpu, "int8")
    assert [(f.precision, f.candidate) for f in pinned] == [("fp32", False), ("int8", True)]
    # Pinned to fp32: no variant is even looked at.
    assert model_files(reference, manifest, cpu, "fp32") == ([ModelFile("fp32", reference)], {})
    # Pinned to fp16 on a box without a GPU: fp32 runs, and the reason says why.
    files, refused = model_files(reference, manifest, cpu, "fp16")
    assert [f.precision for f in files] == ["fp32"] and files[0].candidate
    assert "no usable fp16 variant" in refused["fp16"]


def test_a_variant_file_that_is_not_the_manifests_is_refused_not_loaded(tmp_path: Path) -> None:
    reference = tmp_path / "model.onnx"
    reference.write_bytes(b"fp32")
    variant = _variant_on_disk(reference, "int8", b"int8")
    manifest = make_manifest(schema_version=2, variants=[variant])
    variant_path(reference, "int8").write_bytes(b"INT8")  # same size, other bytes
    files, refused = model_files(reference, manifest, RunnerOptions(), "auto")
    assert [f.precision for f in files] == ["fp32"]
    assert "sha256" in refused["int8"]
    variant_path(reference, "int8").write_bytes(b"int8 and more")
    assert "bytes" in model_files(reference, manifest, RunnerOptions(), "auto")[1]["int8"]
    variant_path(reference, "int8").unlink()
    assert "missing" in model_files(reference, manifest, RunnerOptions(), "auto")[1]["int8"]


def test_an_openvino_gpu_device_counts_as_a_gpu() -> None:
    assert box_accelerators(RunnerOptions(openvino_device="GPU.0")) == {"cpu", "gpu"}
