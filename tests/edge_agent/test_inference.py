from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.errors import (
    InferenceError,
    ModelIncompatibleError,
    ModelLoadError,
    RunCancelledError,
)
from edge_agent.inference import (
    CancelToken,
    InferenceRunner,
    RunnerOptions,
    decode_yolo_raw,
    letterbox,
    nms,
)
from edge_agent.inference.ort_backend import CPU, select_providers
from edge_agent.inference.preprocess import letterbox_image
from edge_agent.inference.runner import parse_class_names
from shared.detections import Detections
from tests.edge_agent.onnx_models import (
    brightness_detector,
    nms_in_graph_model,
    wrong_rank_model,
)

NAMES = ("bolt", "nut", "washer", "bracket", "defect")


def square_image(x: int, y: int, side: int = 16, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    image = np.zeros((*size, 3), np.uint8)
    image[y : y + side, x : x + side] = 255
    return image


# ----------------------------------------------------------------- letterbox
def test_letterbox_matches_ultralytics_rounding_and_inverts() -> None:
    image = np.full((480, 640, 3), 200, np.uint8)
    blob, maps = letterbox([image], 320, 320)
    assert blob.shape == (1, 3, 320, 320) and blob.dtype == np.float32
    m = maps[0]
    assert (m.scale_x, m.scale_y) == pytest.approx((0.5, 0.5)) and (m.pad_x, m.pad_y) == (0, 40)
    assert blob[0, :, 0, 0] == pytest.approx([114 / 255] * 3)  # padding grey
    assert blob[0, :, 160, 160] == pytest.approx([200 / 255] * 3)
    back = m.to_source(Detections([[0, 40, 320, 280]], [0.9], [0]))
    np.testing.assert_allclose(back.xyxy, [[0, 0, 640, 480]])


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(333, 1000, 320), (1000, 333, 320), (2048, 2448, 320), (2048, 2448, 640), (479, 641, 320)],
)
def test_boxes_map_back_exactly_on_uneven_aspect_ratios(height: int, width: int, size: int) -> None:
    """A region of the source, carried into the letterboxed image by the very resize and
    padding applied to it, comes back to the same source pixels (one scale for both axes
    was off by up to 2.2 px on these shapes)."""
    _, mapping = letterbox_image(np.zeros((height, width, 3), np.uint8), size, size)
    gain = min(size / height, size / width)
    resized_w, resized_h = round(width * gain), round(height * gain)  # what cv2.resize made
    truth = np.array([[0.1 * width, 0.2 * height, 0.9 * width, 0.95 * height]], np.float32)
    forward = truth.copy()
    forward[:, [0, 2]] = forward[:, [0, 2]] * resized_w / width + mapping.pad_x
    forward[:, [1, 3]] = forward[:, [1, 3]] * resized_h / height + mapping.pad_y
    back = mapping.to_source(Detections(forward, [0.9], [0]))
    np.testing.assert_allclose(back.xyxy, truth, atol=0.01)


def test_boxes_are_clipped_to_the_source_image() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    _, maps = letterbox([image], 320, 320)
    back = maps[0].to_source(Detections([[-5, 30, 330, 300]], [0.9], [0]))
    np.testing.assert_allclose(back.xyxy, [[0, 0, 640, 480]])


def test_letterbox_swaps_bgr_to_rgb() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    blob, _ = letterbox([image], 32, 32)
    assert blob[0, 2, 0, 0] == 1.0 and blob[0, 0, 0, 0] == 0.0


def test_letterbox_rejects_non_images() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox([np.zeros((10, 10), np.uint8)], 32, 32)


# ----------------------------------------------------------------- decode + NMS
def test_nms_suppresses_overlaps_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5)
    assert keep.tolist() == [0, 2]


def test_decode_is_class_aware() -> None:
    # Two identical boxes of different classes both survive; a same-class duplicate does not.
    raw = np.zeros((1, 4 + 2, 3), np.float32)
    raw[0, :4, :] = np.array([[50, 50, 20, 20]] * 3, np.float32).T
    raw[0, 4, 0], raw[0, 5, 1], raw[0, 4, 2] = 0.9, 0.8, 0.6
    (det,) = decode_yolo_raw(raw, conf_threshold=0.25, iou_threshold=0.5)
    assert sorted(det.class_id.tolist()) == [0, 1]
    np.testing.assert_allclose(det.xyxy[0], [40, 40, 60, 60])


def test_decode_threshold_and_max_detections() -> None:
    raw = np.zeros((2, 5, 4), np.float32)
    raw[:, :4, :] = np.array([[10, 10, 4, 4], [30, 30, 4, 4], [50, 50, 4, 4], [70, 70, 4, 4]]).T
    raw[0, 4] = [0.9, 0.8, 0.1, 0.7]
    first, second = decode_yolo_raw(raw, conf_threshold=0.25, max_detections=2)
    assert first.confidence.tolist() == pytest.approx([0.9, 0.8])
    assert len(second) == 0


def test_decode_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match="4\\+nc"):
        decode_yolo_raw(np.zeros((1, 3, 10), np.float32))


# ----------------------------------------------------------------- runner
@pytest.fixture
def detector(tmp_path: Path) -> Path:
    return brightness_detector(tmp_path / "det.onnx", names=list(NAMES))


def test_runner_reads_metadata_and_detects(detector: Path) -> None:
    runner = InferenceRunner(detector)
    info = runner.info
    assert (info.input_height, info.input_width, info.num_classes) == (64, 64, 5)
    assert info.class_names == NAMES and info.output_format == "yolo_raw"
    assert info.provider == "CPUExecutionProvider"
    (det,) = runner.detect([square_image(32, 16)])
    assert det.class_id.tolist() == [0]
    np.testing.assert_allclose(det.xyxy[0], [32, 16, 48, 32])


def test_runner_maps_boxes_back_to_source_pixels(detector: Path) -> None:
    runner = InferenceRunner(detector)
    big = cv2.resize(square_image(32, 16), (128, 128), interpolation=cv2.INTER_NEAREST)
    (det,) = runner.detect([big])
    np.testing.assert_allclose(det.xyxy[0], [64, 32, 96, 64])


def test_runner_batches_on_fixed_batch_models(detector: Path) -> None:
    runner = InferenceRunner(detector)
    results = runner.detect(
        [square_image(0, 0), square_image(48, 48), np.zeros((64, 64, 3), np.uint8)]
    )
    assert [len(r) for r in results] == [1, 1, 0]


def test_runner_dynamic_batch(tmp_path: Path) -> None:
    path = brightness_detector(tmp_path / "dyn.onnx", dynamic_batch=True)
    runner = InferenceRunner(path)
    assert runner.info.batch is None
    assert [len(r) for r in runner.detect([square_image(0, 0)] * 4)] == [1, 1, 1, 1]


def test_nms_in_graph_model(tmp_path: Path) -> None:
    path = nms_in_graph_model(tmp_path / "nms.onnx", [[4, 4, 20, 20, 0.9, 1], [0, 0, 8, 8, 0.1, 0]])
    runner = InferenceRunner(path)
    assert runner.info.output_format == "nms_in_graph"
    (det,) = runner.detect([np.zeros((64, 64, 3), np.uint8)])
    assert det.class_id.tolist() == [1]


def test_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match="onnxruntime refused"):
        InferenceRunner(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        InferenceRunner(tmp_path / "absent.onnx")


def test_wrong_rank_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelIncompatibleError, match="rank 3"):
        InferenceRunner(wrong_rank_model(tmp_path / "rank.onnx"))


def test_class_count_mismatch_is_refused(detector: Path) -> None:
    with pytest.raises(ModelIncompatibleError, match="differ"):
        InferenceRunner(detector, class_names=("a", "b", "c", "d", "e"))
    with pytest.raises(ModelIncompatibleError, match="5 classes but 2"):
        InferenceRunner(
            brightness_detector(detector.parent / "nometa.onnx", with_metadata=False),
            class_names=("a", "b"),
        )


def test_input_size_mismatch_with_manifest_is_refused(detector: Path) -> None:
    with pytest.raises(ModelIncompatibleError, match="64x64 but the manifest says 320x320"):
        InferenceRunner(detector, expected_input=(320, 320))


def test_nan_output_is_refused_at_warm_up(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="NaN"):
        InferenceRunner(brightness_detector(tmp_path / "nan.onnx", poison_nan=True))


def test_a_cancelled_run_stops_mid_way_and_the_runner_goes_on(tmp_path: Path) -> None:
    slow = InferenceRunner(brightness_detector(tmp_path / "slow.onnx", busy_nodes=300))
    blob = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)
    whole = time.perf_counter()
    expected = slow.run(blob)
    whole = time.perf_counter() - whole
    token = CancelToken()
    timer = threading.Timer(0.002, token.cancel)
    timer.start()
    with pytest.raises(RunCancelledError, match="live frame"):
        slow.run(blob, cancel=token)
    timer.join()
    assert token.cancelled
    already = CancelToken()
    already.cancel()
    with pytest.raises(RunCancelledError):
        slow.warm_up(1, cancel=already)
    # Not a fault of the model: the same session runs to the end afterwards.
    np.testing.assert_array_equal(slow.run(blob, cancel=CancelToken()), expected)
    assert whole > 0.004, "the model must run long enough to be cancelled mid-way"


def test_provider_selection_falls_back_to_cpu() -> None:
    chosen, skipped = select_providers(
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        ["CPUExecutionProvider"],
    )
    assert chosen == ["CPUExecutionProvider"]
    assert len(skipped) == 2 and "not available" in skipped[0]
    runner_opts = RunnerOptions(providers=("CUDAExecutionProvider",))
    assert select_providers(runner_opts.providers, ["CUDAExecutionProvider"])[0] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_a_gpu_provider_that_cannot_start_leaves_the_runner_on_cpu_quietly(
    detector: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """onnxruntime's own fallback prints a banner on stdout, where the agent's JSON log is
    not, and at run time would rebuild the session on CPU on the hot path. Ours logs, and
    the runner says it runs on CPU."""
    real_session = ort.InferenceSession
    calls: list[tuple[list[str], object]] = []

    def session(path: str, **kwargs: Any) -> ort.InferenceSession:
        calls.append((list(kwargs["providers"]), kwargs.get("enable_fallback")))
        if "CUDAExecutionProvider" in kwargs["providers"]:  # as on a box with a broken driver
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real_session(path, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", CPU])
    options = RunnerOptions(providers=("CUDAExecutionProvider", CPU))
    with caplog.at_level(logging.WARNING, logger="edge_agent.inference.ort_backend"):
        runner = InferenceRunner(detector, options)
    assert runner.info.provider == CPU
    assert calls == [(["CUDAExecutionProvider", CPU], 0), ([CPU], 0)]
    (warning,) = [r for r in caplog.records if r.getMessage() == "provider failed, using CPU"]
    assert "no CUDA-capable device" in warning.reason  # type: ignore[attr-defined]
    assert capsys.readouterr().out == ""
    assert getattr(runner._backend.session, "_enable_fallback", False) is False  # no silent switch
    # ... and says why, for the OTA report.
    assert runner.fallback is not None
    assert runner.fallback.startswith(f"running on {CPU}, not CUDAExecutionProvider")
    assert "no CUDA-capable device" in runner.fallback
    (det,) = runner.detect([square_image(32, 16)])
    assert det.class_id.tolist() == [0]
    # A model CPU refuses too is refused, not retried forever.
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"onnxruntime refused junk\.onnx"):
        InferenceRunner(junk, options)


def test_a_configured_provider_missing_from_onnxruntime_is_reported_not_hidden(
    detector: Path,
) -> None:
    options = RunnerOptions(providers=("TensorrtExecutionProvider", CPU))
    runner = InferenceRunner(detector, options)
    assert runner.provider == CPU
    assert runner.fallback is not None and "TensorrtExecutionProvider not available" in (
        runner.fallback
    )
    assert InferenceRunner(detector, RunnerOptions()).fallback is None  # CPU as configured


def test_a_tensorrt_engine_that_fails_to_build_leaves_cpu_running_and_says_why(
    detector: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.inference import ort_backend
    from edge_agent.inference.tensorrt_engines import GpuIdentity

    real_session = ort.InferenceSession

    def session(path: str, **kwargs: Any) -> ort.InferenceSession:
        if "TensorrtExecutionProvider" in kwargs["providers"]:
            raise RuntimeError("TensorRT EP failed to build engine: out of memory")
        return real_session(path, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", CPU])
    monkeypatch.setattr(ort_backend, "gpu_identity", lambda: GpuIdentity("NVIDIA L4", "10.9", "1"))
    runner = InferenceRunner(detector, RunnerOptions(providers=("TensorrtExecutionProvider", CPU)))
    assert runner.provider == CPU
    assert runner.fallback is not None and "failed to build engine" in runner.fallback
    assert (detector.parent / "tensorrt" / "nvidia-l4_trt10.9_ort1").is_dir()


@pytest.mark.parametrize(
    "raw",
    ["__import__('os').system('true')", "{1: 'a'}", "{0: 'a', 2: 'b'}", "x" * 300_000, "[1, ", ""],
)
def test_hostile_names_metadata_is_ignored(raw: str) -> None:
    assert parse_class_names({"names": raw}) is None


def test_names_metadata_forms() -> None:
    assert parse_class_names({"names": "{0: 'a', 1: 'b'}"}) == ("a", "b")
    assert parse_class_names({"names": "['a', 'b']"}) == ("a", "b")


IDLE_CPU_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
from edge_agent.inference import InferenceRunner, RunnerOptions
runner = InferenceRunner(Path(sys.argv[1]), RunnerOptions(intra_op_threads=2))
blob = np.full((1, 3, 64, 64), 0.5, dtype=np.float32)
idle = []
for _ in range(5):
    runner.run(blob)
    start = time.process_time()
    time.sleep(0.05)
    idle.append(time.process_time() - start)
print(max(idle))
"""


def test_sessions_do_not_spin_between_runs(tmp_path: Path) -> None:
    """onnxruntime's pool threads spin after a run by default (20-50 ms of CPU measured):
    at 30 fps one of them never slept and took a core from the rest of the agent. In a fresh
    interpreter, so no other thread of the test run is counted."""
    model = brightness_detector(tmp_path / "busy.onnx", busy_nodes=50)
    out = subprocess.run(
        [sys.executable, "-c", IDLE_CPU_SCRIPT, str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    worst_idle_cpu_s = float(out.stdout.strip().splitlines()[-1])
    assert worst_idle_cpu_s < 0.01, f"{worst_idle_cpu_s * 1000:.0f} ms of CPU in 50 ms idle"
