"""TensorRT engines: keyed by GPU, TensorRT and onnxruntime version, kept with the model
version, built at load (profiles for dynamic models). No GPU here: the probes run against a
stand-in ``nvidia-smi`` on PATH, and the provider options are checked as onnxruntime reads
them; the engine build itself is measured by ``benchmarks/gpu.sh`` on an NVIDIA box."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent.inference import RunnerOptions, choice_cache, ort_backend, tensorrt_engines
from edge_agent.inference.tensorrt_engines import (
    GpuIdentity,
    engine_dir,
    gpu_name,
    profile_shapes,
    version_from_nvinfer,
)
from edge_agent.inference.variants import ModelFile
from tests.edge_agent.onnx_models import brightness_detector

H200 = GpuIdentity("NVIDIA H200", "10.9.0", "1.22.0")


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_the_gpu_name_comes_from_the_driver_and_is_unknown_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_name() == "unknown"  # no nvidia-smi at all
    _fake_nvidia_smi(tmp_path, 'echo "NVIDIA H200"\necho "NVIDIA H200"')
    assert gpu_name() == "NVIDIA H200"
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    assert gpu_name() == "unknown"
    _fake_nvidia_smi(tmp_path, "exit 0")
    assert gpu_name() == "unknown"


def test_tensorrt_library_versions_read_as_release_numbers() -> None:
    assert version_from_nvinfer(100900) == "10.9.0"
    assert version_from_nvinfer(101302) == "10.13.2"
    assert version_from_nvinfer(8601) == "8.6.1"


def test_engines_are_kept_with_the_version_and_keyed_by_gpu_tensorrt_and_onnxruntime(
    tmp_path: Path,
) -> None:
    model = tmp_path / "versions" / "7" / "model.onnx"
    folder = engine_dir(model, None, H200)
    assert folder == model.parent / "tensorrt" / "nvidia-h200_trt10.9.0_ort1.22.0"
    others = {
        engine_dir(model, None, GpuIdentity("NVIDIA L4", "10.9.0", "1.22.0")),
        engine_dir(model, None, GpuIdentity("NVIDIA H200", "10.13.2", "1.22.0")),
        engine_dir(model, None, GpuIdentity("NVIDIA H200", "10.9.0", "1.23.0")),
    }
    assert folder not in others and len(others) == 3
    # A configured folder keeps each model's engines apart.
    root = tmp_path / "engines"
    seven = engine_dir(model, root, H200)
    eight = engine_dir(tmp_path / "versions" / "8" / "model.onnx", root, H200)
    assert seven.is_relative_to(root) and eight.is_relative_to(root) and seven != eight


def test_a_hostile_gpu_name_stays_one_path_component(tmp_path: Path) -> None:
    odd = GpuIdentity("../../etc/passwd GPU", "10/9", "1.22.0")
    folder = engine_dir(tmp_path / "model.onnx", None, odd)
    assert folder.parent == tmp_path / "tensorrt"
    assert folder.name == "etc-passwd-gpu_trt10-9_ort1.22.0"


def test_dynamic_inputs_get_profiles_from_one_to_the_largest_batch() -> None:
    assert profile_shapes("images", (1, 3, 320, 320), max_batch=4, size=None) == {}
    dynamic_batch = profile_shapes("images", (None, 3, 320, 320), max_batch=4, size=None)
    assert dynamic_batch == {
        "trt_profile_min_shapes": "images:1x3x320x320",
        "trt_profile_opt_shapes": "images:1x3x320x320",
        "trt_profile_max_shapes": "images:4x3x320x320",
    }
    all_dynamic = profile_shapes("images", (None, 3, None, None), max_batch=2, size=(640, 480))
    assert all_dynamic["trt_profile_max_shapes"] == "images:2x3x640x480"
    # A fixed batch stays fixed while the size is dynamic.
    fixed_batch = profile_shapes("images", (1, 3, None, None), max_batch=4, size=(320, 320))
    assert fixed_batch["trt_profile_max_shapes"] == "images:1x3x320x320"


@pytest.mark.parametrize("dynamic", [False, True])
def test_tensorrt_options_point_at_the_keyed_folder_and_build_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dynamic: bool
) -> None:
    monkeypatch.setattr(ort_backend, "gpu_identity", lambda: H200)
    (tmp_path / "versions" / "3").mkdir(parents=True)
    model = brightness_detector(
        tmp_path / "versions" / "3" / "model.onnx", size=64, dynamic_batch=dynamic
    )
    options = ort_backend._tensorrt_options(model, RunnerOptions(max_batch=4, trt_fp16=True))
    folder = model.parent / "tensorrt" / H200.folder_name()
    assert folder.is_dir()
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(folder)
    assert options["trt_timing_cache_path"] == str(folder)
    assert options["trt_fp16_enable"] is True
    if dynamic:
        assert options["trt_profile_max_shapes"] == "images:4x3x64x64"
    else:
        assert "trt_profile_max_shapes" not in options


def test_an_engine_folder_that_cannot_be_made_refuses_the_model_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "engines"
    blocker.write_text("a file where the folder goes")  # refused even to root
    monkeypatch.setattr(ort_backend, "gpu_identity", lambda: H200)
    model = brightness_detector(tmp_path / "model.onnx", size=64)
    with pytest.raises(ort_backend.ModelLoadError, match="TensorRT engine folder"):
        ort_backend._tensorrt_options(model, RunnerOptions(trt_cache_dir=blocker / "x"))


def test_a_runtime_choice_on_a_gpu_box_is_remembered_per_gpu_and_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [(ModelFile("fp32", tmp_path / "model.onnx"), "ab" * 32)]
    gpu_options = RunnerOptions(providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    settings = {"runtimes": ["onnxruntime"]}
    monkeypatch.setattr(choice_cache, "gpu_identity", lambda: H200)
    on_h200 = choice_cache.choice_key(files, gpu_options, settings)
    cpu_only = choice_cache.choice_key(files, RunnerOptions(), settings)
    monkeypatch.setattr(
        choice_cache, "gpu_identity", lambda: GpuIdentity("NVIDIA L4", "10.9.0", "1.22.0")
    )
    assert choice_cache.choice_key(files, gpu_options, settings) != on_h200
    assert choice_cache.choice_key(files, RunnerOptions(), settings) == cpu_only  # never probed


def test_the_identity_is_probed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(tensorrt_engines, "gpu_name", lambda: calls.append(1) or "NVIDIA H200")
    tensorrt_engines.gpu_identity.cache_clear()
    try:
        first = tensorrt_engines.gpu_identity()
        assert tensorrt_engines.gpu_identity() is first
        assert first.gpu == "NVIDIA H200" and calls == [1]
    finally:
        tensorrt_engines.gpu_identity.cache_clear()
