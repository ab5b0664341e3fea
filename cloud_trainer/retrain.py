"""``cloud-trainer retrain``: hard examples -> dataset -> fine-tune -> export -> gate -> publish.

Every run leaves ``runs/{run_id}/report.json`` with its verdict, figures and stage timings,
whether it published, was rejected by the gate, found nothing to train on, or failed.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from cloud_trainer.config import TrainerConfig
from cloud_trainer.data.dataset import BuildRequest, DatasetBuilder
from cloud_trainer.data.labeling import make_label_source
from cloud_trainer.errors import (
    EmptySelectionError,
    RegistryError,
    StorageError,
    TrainerConfigError,
    TrainerError,
)
from cloud_trainer.fleet.db import open_database
from cloud_trainer.labelstudio.reviews import ClassQuality, ReviewLedger
from cloud_trainer.release.evaluate import evaluate_onnx
from cloud_trainer.release.export import ExportResult, export_and_check
from cloud_trainer.release.gate import GateVerdict, judge
from cloud_trainer.release.model_registry import ModelRegistry, PublishFiles
from cloud_trainer.release.variants import VariantVerdict, make_variants
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.finetune import (
    EpochReport,
    LocalTrainer,
    TrainResult,
    TrainSpec,
    resolve_device,
    save_spec,
)
from cloud_trainer.training.inspector import InspectorReport, train_inspector
from shared.errors import LinefleetError
from shared.manifest import (
    ArtifactRef,
    ClassInfo,
    EvalMetrics,
    InputSpec,
    Lineage,
    ModelManifest,
    ModelVariant,
)
from shared.messages import utc_now
from shared.object_keys import run_prefix
from shared.signing import SigningKey

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    """How a retrain run ended (also the CLI's exit code: see ``cloud_trainer.cli``)."""

    PUBLISHED = "published"
    REJECTED = "rejected"  # the gate refused the candidate
    SKIPPED = "skipped"  # not enough new data to train on
    FAILED = "failed"


class RunReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    model_name: str
    status: RunStatus = RunStatus.FAILED
    reason: str = ""
    failed_stage: str | None = None  # the step that failed first, when the run failed
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    parent_version: int | None = None
    dataset_version: str | None = None
    dataset_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    # labeler (or "replay") -> images: how many new labels the run cost.
    dataset_sources: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, int] = Field(default_factory=dict)
    # How much people corrected the production model's pre-labels in Label Studio, per
    # class: the fleet's real error rate, as people saw it (empty without pulled labels).
    label_quality: list[ClassQuality] = Field(default_factory=list)
    training: TrainResult | None = None
    # The part inspector fused into the export (None: the detector alone).
    inspector: InspectorReport | None = None
    parity_max_abs_diff: float | None = None
    gate: GateVerdict | None = None
    # Each lower-precision variant against the published fp32 model: published or why not.
    variants: list[VariantVerdict] = Field(default_factory=list)
    published_version: int | None = None
    cost_usd: float = 0.0


def report_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/report.json"


def new_run_id(model_name: str) -> str:
    return f"{model_name[:40]}-{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def load_signing_key(config: TrainerConfig) -> SigningKey:
    """Read the key before any work, so a missing key fails in seconds, not after training."""
    signing = config.signing
    if not signing.key_id:
        raise TrainerConfigError("signing.key_id is not set: the trainer cannot sign models")
    if signing.key_pem is not None:
        return SigningKey.from_pem(signing.key_id, signing.key_pem.get_secret_value().encode())
    if signing.key_file is not None:
        return SigningKey.from_file(signing.key_id, signing.key_file)
    raise TrainerConfigError(
        "no signing key: set signing.key_file, or LINEFLEET_TRAINER_SIGNING__KEY_PEM"
    )


def build_manifest(
    *,
    name: str,
    version: int,
    artifact: ArtifactRef,
    weights: ArtifactRef | None,
    export: ExportResult,
    metrics: EvalMetrics | None,
    lineage: Lineage,
    ttl_days: int | None,
    notes: str = "",
    variants: list[ModelVariant] | None = None,
) -> ModelManifest:
    created = utc_now()
    return ModelManifest(
        schema_version=2 if variants else 1,
        model_name=name,
        version=version,
        created_at=created,
        expires_at=created + timedelta(days=ttl_days) if ttl_days else None,
        artifact=artifact,
        weights=weights,
        onnx_opset=export.opset,
        precision="fp32",
        input=InputSpec(batch=export.batch, height=export.imgsz, width=export.imgsz),
        output_format="yolo_raw",
        classes=[ClassInfo(id=i, name=n) for i, n in enumerate(export.class_names)],
        metrics=metrics,
        variants=variants or [],
        lineage=lineage,
        notes=notes,
    )


def publish_export(
    registry: ModelRegistry,
    export: ExportResult,
    files: PublishFiles,
    signer: SigningKey,
    *,
    metrics: EvalMetrics | None,
    lineage: Lineage,
    ttl_days: int | None,
    note: str,
    notes: str = "",
) -> ModelManifest:
    """Publish an exported model as the registry's next version, signed."""
    return registry.publish(
        lambda version, artifact, weights, variants: build_manifest(
            name=registry.name,
            version=version,
            artifact=artifact,
            weights=weights,
            export=export,
            metrics=metrics,
            lineage=lineage,
            ttl_days=ttl_days,
            notes=notes,
            variants=variants,
        ),
        files,
        signer,
        lineage=lineage,
        note=note,
    )


class Stages:
    """Wall time per stage, for the report and the benchmark."""

    def __init__(self, report: RunReport, announce: Callable[[str], None]) -> None:
        self.report = report
        self.announce = announce

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.announce(f"[{name}] ...")
        started = time.monotonic()
        try:
            yield
        except BaseException:
            if self.report.failed_stage is None:
                self.report.failed_stage = name
            raise
        finally:
            seconds = round(time.monotonic() - started, 3)
            self.report.stage_seconds[name] = seconds
            self.announce(f"[{name}] {seconds:.1f} s")


class Retrainer:
    def __init__(
        self,
        config: TrainerConfig,
        store: ObjectStore,
        *,
        announce: Callable[[str], None] = lambda line: log.info("%s", line),
        on_epoch: Callable[[EpochReport], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.announce = announce
        self.on_epoch = on_epoch
        self.work_dir = config.work_dir.resolve()
        self.registry = ModelRegistry(store, config.model_line.name)

    def run(self, run_id: str | None = None) -> RunReport:
        line = self.config.model_line
        report = RunReport(
            run_id=run_id or new_run_id(line.name), model_name=line.name, started_at=utc_now()
        )
        try:
            self._run(report)
        except EmptySelectionError as exc:
            report.status, report.reason = RunStatus.SKIPPED, str(exc)
        except LinefleetError as exc:
            stage = f"[{report.failed_stage}] " if report.failed_stage else ""
            report.status = RunStatus.FAILED
            report.reason = f"{stage}{type(exc).__name__}: {exc}"
        finally:
            report.finished_at = utc_now()
            self._save_report(report)
        self.announce(f"run {report.run_id}: {report.status} ({report.reason})")
        return report

    def _save_report(self, report: RunReport) -> None:
        """The report goes to the bucket; when the bucket is what failed, it stays in the
        work directory and the run's own failure (the first one) is what the caller sees."""
        body = json.dumps(report.model_dump(mode="json"), indent=1).encode()
        local = self.work_dir / "runs" / report.run_id / "report.json"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(body)
        try:
            self.store.put(report_key(report.run_id), body, content_type="application/json")
        except StorageError as exc:
            self.announce(f"report kept in {local}: the bucket refused it ({exc})")
            if report.status is not RunStatus.FAILED:
                raise

    def _label_quality(self, version: int) -> list[ClassQuality]:
        """People's corrections of ``version`` from the review ledger; a ledger that cannot
        be read is announced and does not stop the run (labels are in the bucket)."""
        config = self.config
        try:
            ledger = ReviewLedger(open_database(config.fleet.url(self.work_dir)))
            return ledger.quality(
                config.model_line.fleet, model_name=config.model_line.name, model_version=version
            )
        except (TrainerError, SQLAlchemyError) as exc:
            self.announce(f"  label quality unavailable: {exc}")
            return []

    def _run(self, report: RunReport) -> None:
        config, line = self.config, self.config.model_line
        signer = load_signing_key(config)
        if config.training.backend == "local":  # fail before building anything
            resolve_device(config.training.device, require_gpu=config.training.require_gpu)
        stages = Stages(report, self.announce)
        with stages.stage("production model"):  # the first read of the bucket
            production_entry = self.registry.latest_published()
            production = self.registry.manifest(production_entry.version)
        report.parent_version = production.version
        report.label_quality = self._label_quality(production.version)
        if production.weights is None:
            raise RegistryError(
                f"{line.name} v{production.version} has no .pt weights in the registry: "
                "fine-tuning needs them (register the model with --weights)"
            )
        builder = DatasetBuilder(self.store, self.work_dir)
        labeler = make_label_source(
            config.labeling.source,
            store=self.store,
            class_names=line.classes,
            teacher_model=config.labeling.teacher_model,
            teacher_confidence=config.labeling.teacher_confidence,
        )
        request = BuildRequest(
            name=line.name,
            fleet=line.fleet,
            class_names=list(line.classes),
            selection=config.selection,
            dataset=config.dataset,
            labeler=labeler,
            parent=production.lineage.dataset_version,
        )
        with stages.stage("select"):
            selection = builder.select(request)
            self.announce(f"  {len(selection.examples)} hard example(s) match the filters")
        with stages.stage("build"):
            dataset = builder.build(request, selection)
        manifest = dataset.manifest
        report.dataset_version = manifest.version
        report.dataset_counts = manifest.counts
        report.dataset_sources = manifest.sources
        report.skipped = manifest.skipped
        self.announce(
            f"  dataset {manifest.version}: "
            + ", ".join(f"{s} {c['images']}" for s, c in manifest.counts.items())
            + (f"; skipped {manifest.skipped}" if manifest.skipped else "")
        )
        training = config.training
        spec = TrainSpec(
            run_id=report.run_id,
            model_name=line.name,
            dataset_name=manifest.name,
            dataset_version=manifest.version,
            parent_version=production.version,
            parent_weights_key=production.weights.key,
            parent_weights_sha256=production.weights.sha256,
            imgsz=line.imgsz,
            epochs=training.epochs,
            batch=training.batch,
            seed=training.seed,
            device=training.device,
            require_gpu=training.require_gpu,
            workers=training.workers,
            patience=training.patience,
            close_mosaic=training.close_mosaic,
            warmup_epochs=training.warmup_epochs,
            freeze=training.freeze,
            optimizer=training.optimizer,
            lr0=training.lr0,
            cpu_price_per_hour_usd=training.cpu_price_per_hour_usd,
            gpu_price_per_hour_usd=training.gpu_price_per_hour_usd,
            max_cost_usd=training.max_cost_usd,
            attribute_class=(
                config.inspector.attribute_class
                if config.inspector.attribute_class in line.classes
                else None
            ),
        )
        save_spec(self.store, spec)
        with stages.stage("train"):
            result = self._train(spec)
        report.training = result
        report.cost_usd = result.cost_usd
        holdout = dataset.labelled("holdout")
        with stages.stage("inspector"):
            inspector = train_inspector(
                dataset.labelled("train"),
                line.classes,
                config.inspector,
                imgsz=line.imgsz,
                seed=training.seed,
            )
        if inspector is not None:
            report.inspector = inspector.report
            self.announce(
                f"  inspector: {inspector.report.with_attribute} of {inspector.report.crops} "
                f"training parts are {inspector.report.attribute_class}; "
                f"{inspector.report.seconds:.0f} s"
            )
        with stages.stage("export"):
            best = self.store.download(
                result.best_key,
                self.work_dir / "runs" / spec.run_id / "best.pt",
                sha256=result.best_sha256,
            )
            exported = export_and_check(
                best,
                self.work_dir / "runs" / spec.run_id / "export",
                imgsz=line.imgsz,
                config=config.export,
                parity_images=[i.image_path for i in holdout],
                expected_classes=line.classes,
                inspector=inspector,
            )
        report.parity_max_abs_diff = exported.parity_max_abs_diff
        with stages.stage("evaluate"):
            current = self.registry.fetch(production.version, self.work_dir / "models")
            gate_conf = config.gate.operating_confidence
            candidate_metrics = evaluate_onnx(
                exported.onnx, holdout, line.classes, operating_confidence=gate_conf
            )
            production_metrics = evaluate_onnx(
                current.onnx, holdout, line.classes, operating_confidence=gate_conf
            )
            verdict = judge(
                candidate_metrics,
                production_metrics,
                config.gate,
                support=manifest.boxes_per_class("holdout"),
            )
        report.gate = verdict
        self.announce(
            f"  gate on {len(holdout)} held-out images: candidate mAP50 "
            f"{candidate_metrics.map50:.3f} vs production {production_metrics.map50:.3f} -> "
            f"{'PASS' if verdict.passed else 'REJECT'}: {'; '.join(verdict.reasons)}"
        )
        for note in verdict.within_noise:
            self.announce(f"  gate: {note}")
        if not verdict.passed:
            report.status, report.reason = RunStatus.REJECTED, "; ".join(verdict.reasons)
            return
        with stages.stage("variants"):
            variants, report.variants = make_variants(
                exported.onnx,
                self.work_dir / "runs" / spec.run_id / "export",
                config=config.export,
                reference=candidate_metrics,
                holdout=holdout,
                calibration=dataset.image_paths("train"),
                class_names=line.classes,
                imgsz=line.imgsz,
                operating_confidence=gate_conf,
            )
        for outcome in report.variants:
            self.announce(
                f"  variant {outcome.precision}: "
                + (
                    f"mAP50 {outcome.map50:.3f} ({outcome.map50_delta:+.4f} vs fp32) -> "
                    if outcome.map50 is not None and outcome.map50_delta is not None
                    else ""
                )
                + ("published" if outcome.published else "left out: " + "; ".join(outcome.reasons))
            )
        lineage = Lineage(
            parent_version=production.version,
            dataset_version=manifest.version,
            training_run=report.run_id,
            gpu_seconds=result.gpu_seconds,
            cost_usd=result.cost_usd,
            backend=training.backend,
        )
        with stages.stage("publish"):
            signed = publish_export(
                self.registry,
                exported,
                PublishFiles(onnx=exported.onnx, weights=best, variants=tuple(variants)),
                signer,
                metrics=candidate_metrics,
                lineage=lineage,
                ttl_days=config.signing.manifest_ttl_days,
                note=f"run {report.run_id}",
            )
        report.published_version = signed.version
        report.status = RunStatus.PUBLISHED
        report.reason = f"published {line.name} v{signed.version}"

    def _train(self, spec: TrainSpec) -> TrainResult:
        if self.config.training.backend == "skypilot":
            from cloud_trainer.training.skypilot import SkyPilotBackend  # noqa: PLC0415

            return SkyPilotBackend(self.config, self.store).train(spec, announce=self.announce)
        return LocalTrainer(self.store, self.work_dir, on_epoch=self.on_epoch).run(spec)


def describe_report(report: RunReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=1)
