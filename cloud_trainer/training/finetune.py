"""Fine-tune the production model on a frozen dataset with ultralytics, resumable from the bucket.

The run's spec is stored at ``runs/{run_id}/spec.json`` so the same code runs here (backend
``local``) or on a rented spot GPU (``skypilot``: the VM runs ``cloud-trainer train-run``).
After every epoch ``last.pt`` and ``progress.json`` go to ``runs/{run_id}/``; a preempted
run restarted anywhere resumes from them. ``result.json`` marks the run finished.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_trainer.data.dataset import DatasetBuilder
from cloud_trainer.errors import GpuRequiredError, ObjectNotFoundError, TrainingError
from cloud_trainer.store import ObjectStore
from cloud_trainer.training.offline import prepare_offline_ultralytics
from cloud_trainer.training.part_types import typed_labels
from shared.digests import file_sha256
from shared.identifiers import Identifier
from shared.object_keys import run_prefix

log = logging.getLogger(__name__)

MAX_RUN_DOC_BYTES = 4 * 1024 * 1024


class TrainSpec(BaseModel):
    """Everything a training process needs, wherever it runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: Identifier
    model_name: Identifier
    dataset_name: Identifier
    dataset_version: Identifier
    parent_version: int = Field(ge=1)
    parent_weights_key: str
    parent_weights_sha256: str
    imgsz: int
    epochs: int = Field(ge=1)
    batch: int = Field(ge=1)
    seed: int
    device: str
    require_gpu: bool
    workers: int
    patience: int
    close_mosaic: int
    warmup_epochs: float
    freeze: int = 0
    optimizer: Literal["auto", "SGD", "AdamW", "Adam"] = "auto"
    lr0: float | None = None
    cpu_price_per_hour_usd: float = 0.0
    gpu_price_per_hour_usd: float = 0.0
    max_cost_usd: float | None = None
    # A class the part inspector learns instead of the detector: the detector trains on its
    # boxes as their part type (cloud_trainer.training.part_types).
    attribute_class: str | None = None


def recipe_arguments(spec: TrainSpec) -> dict[str, Any]:
    """ultralytics' arguments for the recipe; nothing where the spec keeps its defaults, so
    a run without a recipe trains exactly as before. ultralytics ignores ``lr0`` under
    optimizer "auto", so a learning rate alone means AdamW at that rate. An optimizer named
    explicitly would start the biases' warm-up at lr 0.1 (ultralytics' default, meant for
    training from scratch; "auto" sets it to 0): a fine-tune starts it at 0 too."""
    arguments: dict[str, Any] = {}
    if spec.freeze:
        arguments["freeze"] = spec.freeze
    optimizer = spec.optimizer
    if spec.lr0 is not None:
        arguments["lr0"] = spec.lr0
        optimizer = "AdamW" if optimizer == "auto" else optimizer
    if optimizer != "auto":
        arguments["optimizer"] = optimizer
        arguments["warmup_bias_lr"] = 0.0
    return arguments


class EpochReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    epoch: int
    epochs: int
    seconds: float
    box_loss: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    cost_usd: float = 0.0


class TrainProgress(BaseModel):
    """Persisted after each epoch: what survives a preemption besides the checkpoint."""

    model_config = ConfigDict(extra="forbid")

    run_id: Identifier
    epochs_done: int = 0
    compute_seconds: float = 0.0
    epochs: list[EpochReport] = Field(default_factory=list)
    resumes: int = 0


class TrainResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: Identifier
    device: str
    gpu_count: int
    epochs_done: int
    compute_seconds: float
    gpu_seconds: float
    cost_usd: float
    stopped_by_budget: bool
    resumes: int
    best_key: str
    best_sha256: str
    epochs: list[EpochReport]


def spec_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/spec.json"


def result_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/result.json"


def _progress_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/progress.json"


def _checkpoint_key(run_id: str, name: Literal["last", "best"]) -> str:
    return f"{run_prefix(run_id)}/checkpoints/{name}.pt"


def resolve_device(requested: str, *, require_gpu: bool) -> tuple[str, int]:
    """(ultralytics device string, number of GPUs used)."""
    import torch  # noqa: PLC0415 - trainer only

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cpu":
        if require_gpu:
            raise GpuRequiredError("training.device is 'cpu' but training.require_gpu is true")
        return "cpu", 0
    if requested == "auto":
        if gpus == 0:
            if require_gpu:
                raise GpuRequiredError(
                    "training.require_gpu is true but torch sees no CUDA device on this machine: "
                    "use the skypilot backend, or set require_gpu: false to train on CPU"
                )
            return "cpu", 0
        return "0", 1
    wanted = [int(i) for i in requested.split(",")]
    if gpus == 0 or max(wanted) >= gpus:
        raise GpuRequiredError(f"training.device {requested!r} asks for GPUs; torch sees {gpus}")
    return requested, len(wanted)


@dataclass
class _Ledger:
    spec: TrainSpec
    gpu_count: int
    progress: TrainProgress

    def cost(self) -> float:
        hourly = (
            self.spec.gpu_price_per_hour_usd * self.gpu_count
            if self.gpu_count
            else self.spec.cpu_price_per_hour_usd
        )
        return self.progress.compute_seconds * hourly / 3600.0


def _metric(values: dict[str, Any], name: str) -> float | None:
    value = values.get(name)
    return round(float(value), 5) if value is not None else None


class LocalTrainer:
    """Runs a :class:`TrainSpec` on this machine's GPU (or CPU)."""

    def __init__(
        self,
        store: ObjectStore,
        work_dir: Path,
        on_epoch: Callable[[EpochReport], None] | None = None,
    ) -> None:
        self.store = store
        self.work_dir = work_dir.resolve()
        self.on_epoch = on_epoch

    def finished(self, run_id: str) -> TrainResult | None:
        try:
            body, _ = self.store.get(result_key(run_id), max_bytes=MAX_RUN_DOC_BYTES)
        except ObjectNotFoundError:
            return None
        return TrainResult.model_validate_json(body)

    def run(self, spec: TrainSpec) -> TrainResult:
        done = self.finished(spec.run_id)
        if done is not None:
            log.info("run %s already finished; nothing to train", spec.run_id)
            return done
        device, gpu_count = resolve_device(spec.device, require_gpu=spec.require_gpu)
        dataset = DatasetBuilder(self.store, self.work_dir).fetch(
            spec.dataset_name, spec.dataset_version
        )
        run_dir = self.work_dir / "runs" / spec.run_id
        weights_dir = run_dir / "train" / "weights"
        progress = self._load_progress(spec.run_id)
        resume_from: Path | None = None
        if progress.epochs_done > 0:
            try:
                resume_from = self.store.download(
                    _checkpoint_key(spec.run_id, "last"), weights_dir / "last.pt"
                )
                progress.resumes += 1
            except ObjectNotFoundError:
                progress = TrainProgress(run_id=spec.run_id)
        parent = self.store.download(
            spec.parent_weights_key,
            self.work_dir / "parents" / spec.model_name / f"{spec.parent_version}.pt",
            sha256=spec.parent_weights_sha256,
        )
        prepare_offline_ultralytics(self.work_dir)
        from ultralytics import YOLO  # noqa: PLC0415 - after the offline set-up

        data_yaml = dataset.data_yaml
        if spec.attribute_class is not None and spec.attribute_class in dataset.manifest.classes:
            data_yaml = typed_labels(
                dataset.root,
                list(dataset.manifest.classes),
                spec.attribute_class,
                run_dir / "typed",
                imgsz=spec.imgsz,
                seed=spec.seed,
            ).data_yaml
        ledger = _Ledger(spec, gpu_count, progress)
        model = YOLO(str(resume_from or parent))
        model.add_callback("on_fit_epoch_end", self._epoch_end_callback(ledger))
        model.add_callback("on_model_save", self._save_callback(ledger))
        common: dict[str, Any] = {
            "data": str(data_yaml),
            "device": device,
            "workers": spec.workers,
        }
        try:
            if resume_from is not None:
                log.info("resuming run %s after epoch %d", spec.run_id, progress.epochs_done)
                model.train(resume=True, **common)
            else:
                model.train(
                    **common,
                    epochs=spec.epochs,
                    imgsz=spec.imgsz,
                    batch=spec.batch,
                    seed=spec.seed,
                    deterministic=True,
                    amp=False,
                    plots=False,
                    project=str(run_dir),
                    name="train",
                    exist_ok=True,
                    verbose=False,
                    patience=spec.patience or 10_000,
                    close_mosaic=spec.close_mosaic,
                    warmup_epochs=spec.warmup_epochs,
                    save=True,
                    **recipe_arguments(spec),
                )
        except GpuRequiredError:
            raise
        except Exception as exc:
            log.exception("ultralytics training failed")
            raise TrainingError(
                f"ultralytics training failed: {type(exc).__name__}: {str(exc)[:500]}"
            ) from exc
        best = weights_dir / "best.pt"
        if not best.is_file():
            raise TrainingError(f"training ended without {best}")
        return self._finish(spec, ledger, device, best)

    # ------------------------------------------------------------------ bookkeeping
    def _load_progress(self, run_id: str) -> TrainProgress:
        try:
            body, _ = self.store.get(_progress_key(run_id), max_bytes=MAX_RUN_DOC_BYTES)
        except ObjectNotFoundError:
            return TrainProgress(run_id=run_id)
        return TrainProgress.model_validate_json(body)

    def _epoch_end_callback(self, ledger: _Ledger) -> Callable[[Any], None]:
        last_tick = [time.monotonic()]

        def on_fit_epoch_end(trainer: Any) -> None:
            if int(trainer.epoch) + 1 > int(trainer.epochs):
                return  # ultralytics' final validation of best.pt, not an epoch
            now = time.monotonic()
            seconds, last_tick[0] = now - last_tick[0], now
            ledger.progress.compute_seconds += seconds
            metrics = dict(getattr(trainer, "metrics", {}) or {})
            tloss = getattr(trainer, "tloss", None)
            losses = trainer.label_loss_items(tloss, prefix="train") if tloss is not None else {}
            report = EpochReport(
                epoch=int(trainer.epoch) + 1,
                epochs=int(trainer.epochs),
                seconds=round(seconds, 2),
                box_loss=_metric(losses, "train/box_loss"),
                map50=_metric(metrics, "metrics/mAP50(B)"),
                map50_95=_metric(metrics, "metrics/mAP50-95(B)"),
                cost_usd=round(ledger.cost(), 4),
            )
            ledger.progress.epochs.append(report)
            ledger.progress.epochs_done = report.epoch
            cap = ledger.spec.max_cost_usd
            if cap is not None and ledger.cost() >= cap:
                log.warning(
                    "run %s reached its cost cap of $%.2f; stopping", ledger.spec.run_id, cap
                )
                trainer.stop = True
            # After on_model_save uploaded this epoch's checkpoint: progress never points
            # past the checkpoint it belongs to.
            self.store.put(
                _progress_key(ledger.spec.run_id),
                ledger.progress.model_dump_json().encode(),
                content_type="application/json",
            )
            if self.on_epoch is not None:
                self.on_epoch(report)

        return on_fit_epoch_end

    def _save_callback(self, ledger: _Ledger) -> Callable[[Any], None]:
        def on_model_save(trainer: Any) -> None:
            self.store.upload(Path(trainer.last), _checkpoint_key(ledger.spec.run_id, "last"))

        return on_model_save

    def _finish(self, spec: TrainSpec, ledger: _Ledger, device: str, best: Path) -> TrainResult:
        best_key = _checkpoint_key(spec.run_id, "best")
        self.store.upload(best, best_key)
        progress = ledger.progress
        result = TrainResult(
            run_id=spec.run_id,
            device=device,
            gpu_count=ledger.gpu_count,
            epochs_done=progress.epochs_done,
            compute_seconds=round(progress.compute_seconds, 2),
            gpu_seconds=round(progress.compute_seconds * ledger.gpu_count, 2),
            cost_usd=round(ledger.cost(), 4),
            stopped_by_budget=spec.max_cost_usd is not None and ledger.cost() >= spec.max_cost_usd,
            resumes=progress.resumes,
            best_key=best_key,
            best_sha256=file_sha256(best),
            epochs=progress.epochs,
        )
        self.store.put(
            result_key(spec.run_id),
            json.dumps(result.model_dump(mode="json"), indent=1).encode(),
            content_type="application/json",
        )
        return result


def save_spec(store: ObjectStore, spec: TrainSpec) -> None:
    store.put(
        spec_key(spec.run_id),
        spec.model_dump_json(indent=1).encode(),
        content_type="application/json",
    )


def load_spec(store: ObjectStore, run_id: str) -> TrainSpec:
    body, _ = store.get(spec_key(run_id), max_bytes=MAX_RUN_DOC_BYTES)
    return TrainSpec.model_validate_json(body)
