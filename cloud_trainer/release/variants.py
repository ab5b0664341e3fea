"""The lower-precision variants of a version, each gated against its fp32 reference.

Why these two, and built this way (evidence in ``benchmarks/variants.py``):

- ``int8``: static QDQ quantization (per-channel weights, MinMax activation ranges measured on
  the training set's own images: the fleet's hard examples and the replay set). The detect
  head, the last ``/model.N/`` module of an ultralytics export (box distribution, class
  scores, decode), stays float: quantized, its outputs lose the score resolution NMS needs
  (the whole graph in INT8 scored mAP50 0.0; with the head float, -0.0002). onnxruntime runs
  it with its INT8 kernels on any CPU, OpenVINO as INT8 where the CPU has VNNI/AMX.
- ``fp16``: the fp32 graph converted with float32 inputs and outputs kept, so the agent feeds
  it as it feeds the reference; for GPUs (CUDA, TensorRT), where half precision is faster.

Each is scored on the held-out set through the agent's own inference path (what the gate
measured for fp32) and published only within ``variant_map50_tolerance`` of fp32's mAP50 and
``variant_class_recall_tolerance`` of its recall on every class. A refused variant is left out
with its reasons in the run report; the version publishes without it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from cloud_trainer.config import ExportSection, GateSection
from cloud_trainer.errors import ExportError
from cloud_trainer.release.evaluate import LabelledImage, evaluate_onnx
from cloud_trainer.release.gate import judge

# The agent's own letterbox: calibration sees the model's input exactly as the box feeds it.
from edge_agent.inference import (
    RUNTIMES,
    InferenceError,
    ModelLoadError,
    Runtime,
    letterbox,
)
from shared.manifest import ArtifactRef, EvalMetrics, ModelVariant, VariantPrecision

log = logging.getLogger(__name__)

ACCELERATOR: dict[VariantPrecision, Literal["cpu", "gpu"]] = {"int8": "cpu", "fp16": "gpu"}
# An ultralytics export names its nodes "/model.N/..."; with the part inspector fused in
# (cloud_trainer.release.inspected) the detector's are "/detector/model.N/...".
_MODULE = re.compile(r"^(/detector)?/model\.(\d+)/")


@dataclass(frozen=True)
class VariantFile:
    """A variant that passed: published beside the reference."""

    precision: VariantPrecision
    path: Path
    metrics: EvalMetrics  # on onnxruntime
    runtimes: tuple[Runtime, ...]  # where it is within tolerance of fp32

    def manifest_entry(self, artifact: ArtifactRef) -> ModelVariant:
        """Its entry in the signed manifest, once its file is stored as ``artifact``."""
        return ModelVariant(
            precision=self.precision,
            accelerator=ACCELERATOR[self.precision],
            artifact=artifact,
            metrics=self.metrics,
            runtimes=list(self.runtimes),
        )


class VariantVerdict(BaseModel):
    """One variant's outcome, for the run report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: VariantPrecision
    published: bool
    map50: float | None = None
    map50_delta: float | None = None
    worst_class_recall_delta: float | None = None
    runtimes: list[Runtime] = []
    reasons: list[str]


def float_nodes(model_path: Path) -> list[str]:
    """The nodes INT8 keeps float: the detect head (the last numbered module of an ultralytics
    export) and everything outside the detector's modules (a fused part inspector's crops,
    verdicts and score sharing, whose few operations gain nothing from 8 bits)."""
    import onnx  # noqa: PLC0415 - trainer only

    nodes = onnx.load(str(model_path), load_external_data=False).graph.node
    modules = [int(m.group(2)) for n in nodes if (m := _MODULE.match(n.name))]
    if not modules:
        raise ExportError(
            f"{model_path}: no '/model.N/' node names, so the detect head (kept float in INT8) "
            "cannot be found; export with ultralytics, or leave int8 out of export.variants"
        )
    head = str(max(modules))
    return [n.name for n in nodes if (m := _MODULE.match(n.name)) is None or m.group(2) == head]


def calibration_blobs(images: Sequence[Path], size: int) -> list[NDArray[np.float32]]:
    blobs = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ExportError(f"calibration image {path} is unreadable")
        blobs.append(letterbox([np.asarray(image, np.uint8)], size, size, dtype=np.float32)[0])
    if not blobs:
        raise ExportError("no image to calibrate INT8 on")
    return blobs


def _evenly(items: Sequence[Path], count: int) -> list[Path]:
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def build_int8(
    fp32: Path, out: Path, calibration: Sequence[Path], *, size: int, input_name: str
) -> Path:
    """Static QDQ INT8 of ``fp32`` with the detect head float."""
    from onnxruntime.quantization import (  # noqa: PLC0415 - trainer only
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    blobs = calibration_blobs(calibration, size)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._next: Iterator[NDArray[np.float32]] = iter(blobs)

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            blob = next(self._next, None)
            return None if blob is None else {input_name: blob}

    prepared = out.with_name(out.stem + ".prepared.onnx")
    try:
        try:
            quant_pre_process(str(fp32), str(prepared))
        except Exception:  # noqa: BLE001 - its symbolic shapes stop at a fused inspector's TopK
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes(prepared),
        )
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime.quantization raises whatever its steps raise
        raise ExportError(f"INT8 quantization of {fp32} failed: {str(exc)[:300]}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    return out


def build_fp16(fp32: Path, out: Path) -> Path:
    """``fp32`` in half precision, float32 input and outputs kept."""
    import onnx  # noqa: PLC0415 - trainer only
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    try:
        half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(half, str(out))
    except Exception as exc:  # the converter raises whatever onnx raises
        raise ExportError(f"fp16 conversion of {fp32} failed: {str(exc)[:300]}") from exc
    return out


def make_variants(
    fp32: Path,
    out_dir: Path,
    *,
    config: ExportSection,
    reference: EvalMetrics,
    holdout: Sequence[LabelledImage],
    calibration: Sequence[Path],
    class_names: Sequence[str],
    imgsz: int,
    operating_confidence: float,
) -> tuple[list[VariantFile], list[VariantVerdict]]:
    """Build, score and judge each configured variant against ``reference`` (fp32's metrics
    on ``holdout``). Returns the variants to publish and every variant's verdict."""
    tolerance = GateSection(
        map50_tolerance=config.variant_map50_tolerance,
        map50_95_tolerance=1.0,  # mAP50 and per-class recall are the published promise
        class_recall_tolerance=config.variant_class_recall_tolerance,
        operating_confidence=operating_confidence,
    )
    passed: list[VariantFile] = []
    verdicts: list[VariantVerdict] = []
    for precision in dict.fromkeys(config.variants):
        out = out_dir / f"model.{precision}.onnx"
        try:
            if precision == "int8":
                build_int8(
                    fp32,
                    out,
                    _evenly(calibration, config.int8_calibration_images),
                    size=imgsz,
                    input_name="images",
                )
            else:
                build_fp16(fp32, out)
            metrics = evaluate_onnx(
                out, holdout, class_names, operating_confidence=operating_confidence
            )
        except (
            ExportError,
            ModelLoadError,
            InferenceError,
        ) as exc:  # e.g. a runtime that cannot load it
            verdicts.append(
                VariantVerdict(precision=precision, published=False, reasons=[str(exc)[:500]])
            )
            continue
        verdict = judge(metrics, reference, tolerance, reference_name="fp32")
        reasons = list(verdict.reasons)
        runtimes: list[Runtime] = ["onnxruntime"] if verdict.passed else []
        if verdict.passed:
            for runtime in RUNTIMES[1:]:
                passed_there, reason = _judge_on(
                    runtime,
                    out,
                    holdout=holdout,
                    class_names=class_names,
                    reference=reference,
                    tolerance=tolerance,
                )
                reasons.append(f"{runtime}: {reason}")
                if passed_there:
                    runtimes.append(runtime)
        worst = min(verdict.delta_class_recall.values(), default=0.0)
        verdicts.append(
            VariantVerdict(
                precision=precision,
                published=verdict.passed,
                map50=round(metrics.map50, 4),
                map50_delta=verdict.delta_map50,
                worst_class_recall_delta=worst,
                runtimes=runtimes,
                reasons=reasons,
            )
        )
        log.info(
            "variant %s: mAP50 %.4f (%+.4f vs fp32) -> %s",
            precision,
            metrics.map50,
            verdict.delta_map50,
            f"published for {runtimes}" if verdict.passed else "refused",
        )
        if verdict.passed:
            passed.append(VariantFile(precision, out, metrics, tuple(runtimes)))
    return passed, verdicts


def _judge_on(
    runtime: Runtime,
    model: Path,
    *,
    holdout: Sequence[LabelledImage],
    class_names: Sequence[str],
    reference: EvalMetrics,
    tolerance: GateSection,
) -> tuple[bool, str]:
    """The variant on another runtime than onnxruntime: whether it stays within tolerance of
    fp32 there, and what was found. A runtime not installed on the trainer is not vouched for."""
    try:
        metrics = evaluate_onnx(
            model,
            holdout,
            class_names,
            operating_confidence=tolerance.operating_confidence,
            runtime=runtime,
        )
    except (ModelLoadError, InferenceError) as exc:
        return False, f"not measured ({str(exc)[:200]})"
    verdict = judge(metrics, reference, tolerance, reference_name="fp32")
    if verdict.passed:
        return True, f"mAP50 {metrics.map50:.4f} ({verdict.delta_map50:+.4f}), within tolerance"
    return False, "; ".join(verdict.reasons)
