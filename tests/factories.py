"""Builders for valid contract objects; tests change one field at a time from these."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shared.manifest import (
    ArtifactRef,
    ClassInfo,
    EvalMetrics,
    InputSpec,
    ModelManifest,
    ModelVariant,
)
from shared.messages import DesiredState, DesiredTarget
from shared.synth import CLASS_NAMES

ZH_NAMES = ("螺栓", "螺母", "垫圈", "支架", "缺陷")
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_manifest(**overrides: Any) -> ModelManifest:
    name = overrides.pop("model_name", "line-detector")
    version = overrides.pop("version", 3)
    fields: dict[str, Any] = {
        "model_name": name,
        "version": version,
        "created_at": NOW,
        "expires_at": NOW + timedelta(days=365),
        "artifact": ArtifactRef(
            key="models/line-detector/3/model.onnx", sha256="ab" * 32, size_bytes=12_345
        ),
        "onnx_opset": 18,
        "input": InputSpec(height=320, width=320),
        "output_format": "yolo_raw",
        "classes": [
            ClassInfo(id=i, name=n, localized={"zh": z})
            for i, (n, z) in enumerate(zip(CLASS_NAMES, ZH_NAMES, strict=True))
        ],
    }
    fields.update(overrides)
    return ModelManifest(**fields)


def make_desired(manifest: ModelManifest | None = None, **overrides: Any) -> DesiredState:
    fields: dict[str, Any] = {
        "fleet": "plant1",
        "target": DesiredTarget.device("edge-01"),
        "rollout_id": "r-0001",
        "sequence": 1,
        "issued_at": NOW,
        "manifest": manifest or make_manifest(),
    }
    fields.update(overrides)
    return DesiredState(**fields)


def make_variant(precision: str = "int8", **overrides: Any) -> ModelVariant:
    fields: dict[str, Any] = {
        "precision": precision,
        "accelerator": "gpu" if precision == "fp16" else "cpu",
        "artifact": ArtifactRef(
            key=f"models/line-detector/3/model.{precision}.onnx",
            sha256="cd" * 32,
            size_bytes=4_321,
        ),
        "metrics": EvalMetrics(map50=0.76, map50_95=0.5, per_class_recall={"bolt": 0.9}),
        "runtimes": ["onnxruntime"],
    }
    fields.update(overrides)
    return ModelVariant(**fields)
