"""``cloud-trainer models register``: put an existing model (the bootstrap, or one trained
elsewhere) into the registry as the next version, signed like any retrained one."""

from __future__ import annotations

from pathlib import Path

from cloud_trainer.config import TrainerConfig
from cloud_trainer.errors import ExportError
from cloud_trainer.release.export import ExportResult
from cloud_trainer.release.model_registry import ModelRegistry, PublishFiles
from cloud_trainer.retrain import publish_export

# The agent's own inference path: what the gate measures is exactly what runs on the box.
from edge_agent.inference import InferenceRunner, RunnerOptions
from shared.manifest import EvalMetrics, Lineage, ModelManifest
from shared.signing import SigningKey


def describe_onnx(path: Path) -> ExportResult:
    """What an ONNX file is, read through the agent's own loader (which refuses bad models)."""
    import onnx  # noqa: PLC0415

    runner = InferenceRunner(path, RunnerOptions(warmup_runs=1))
    info = runner.info
    runner.close()
    if info.input_height != info.input_width:
        raise ExportError(
            f"{path}: only square inputs are supported, got {info.input_height}x{info.input_width}"
        )
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(
        onnx=path,
        opset=opset,
        batch=-1 if info.batch is None else info.batch,
        imgsz=info.input_height,
        class_names=info.class_names,
        parity_max_abs_diff=0.0,
        parity_images=0,
    )


def register_model(
    config: TrainerConfig,
    registry: ModelRegistry,
    signer: SigningKey,
    *,
    onnx: Path,
    weights: Path | None,
    metrics: EvalMetrics | None = None,
    dataset_version: str | None = None,
    notes: str = "",
) -> ModelManifest:
    export = describe_onnx(onnx)
    if list(export.class_names) != list(config.model_line.classes):
        raise ExportError(
            f"{onnx} predicts {list(export.class_names)}, the model line has "
            f"{list(config.model_line.classes)}"
        )
    return publish_export(
        registry,
        export,
        PublishFiles(onnx=onnx, weights=weights),
        signer,
        metrics=metrics,
        lineage=Lineage(dataset_version=dataset_version, backend="bootstrap"),
        ttl_days=config.signing.manifest_ttl_days,
        note=notes or "registered",
        notes=notes,
    )
