"""Trainer configuration: a YAML file, overridden by ``LINEFLEET_TRAINER_*`` environment variables.

Same rules as the agent's config: unknown keys are errors and validation does no I/O (key files
are read when a command needs them). Nested env overrides use ``__``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cloud_trainer.errors import TrainerConfigError
from cloud_trainer.fleet.params import RolloutParams
from shared.errors import ConfigError
from shared.hard_examples import SamplerTag
from shared.identifiers import Identifier
from shared.infra.config import (
    MqttConnectionSection,
    S3Section,
    config_error,
    read_secret_file,
    read_yaml,
    with_secret_files,
)
from shared.infra.config import Section as _Section
from shared.manifest import ClassName
from shared.synth import CLASS_NAMES


class StorageSection(S3Section):
    """The bucket holding hard examples, labels, datasets, runs and the model registry. Longer
    timeouts than the agent's: datasets and checkpoints are large objects."""

    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    read_timeout_s: float = Field(default=120.0, gt=0, le=3600)


class ModelLineSection(_Section):
    """One model line: a fleet's detector, versioned 1, 2, 3 ... in the registry."""

    name: Identifier = "line-detector"
    fleet: Identifier = "demo"
    classes: list[ClassName] = Field(default_factory=lambda: list(CLASS_NAMES), min_length=1)
    imgsz: int = Field(default=320, ge=32, le=4096, multiple_of=32)


class SelectionSection(_Section):
    """Which hard examples a run takes."""

    devices: list[Identifier] = Field(default_factory=list, description="empty: all devices")
    since: AwareDatetime | None = None
    reasons: list[SamplerTag] = Field(default_factory=list, description="empty: any sampler")
    max_examples: int | None = Field(default=None, ge=1)
    max_per_class: int | None = Field(
        default=None, ge=1, description="cap on training images containing each class"
    )
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)


class LabelStudioSection(_Section):
    """A self-hosted Label Studio where people label the hard examples (``labels push`` /
    ``labels pull``). Its pulled labels land under labels/, read by ``yolo_import``."""

    url: str | None = Field(default=None, examples=["http://label-studio.plant.local:8080"])
    # A personal access token (Account & Settings; a JWT, refreshed for short access tokens)
    # or a legacy token where the organisation enabled them.
    token: SecretStr | None = None
    token_file: Path | None = None
    project_title: str | None = Field(
        default=None, max_length=50, description="default: 'linefleet {fleet} {model}'"
    )
    # Label Studio Community has no review step: a reviewer accepts an annotation by marking
    # it ground truth (the star). With this set, only such annotations become labels.
    require_review: bool = False
    # The S3 endpoint as Label Studio's server reaches it, when it differs from the trainer's.
    storage_endpoint_url: str | None = None
    presign_ttl_minutes: int = Field(default=15, ge=1, le=1440)
    batch_size: int = Field(default=250, ge=1, le=5000, description="tasks per import request")
    page_size: int = Field(default=100, ge=1, le=1000, description="tasks per listing page")
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)

    @field_validator("url", "storage_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value


class LabelingSection(_Section):
    """Where labels come from: people (YOLO files under labels/, imported or pulled from
    Label Studio), a teacher, or the synthetic line's exact truth (demo and tests)."""

    source: Literal["yolo_import", "teacher", "synthetic"] = "yolo_import"
    teacher_model: Path | None = None
    teacher_confidence: float = Field(default=0.5, gt=0.0, lt=1.0)
    label_studio: LabelStudioSection = LabelStudioSection()

    @model_validator(mode="after")
    def _teacher_needs_model(self) -> LabelingSection:
        if self.source == "teacher" and self.teacher_model is None:
            raise ValueError("labeling.source 'teacher' needs labeling.teacher_model")
        return self


class DatasetSection(_Section):
    # Held-out membership is a pure function of the example's key: the same example is held
    # out in every dataset version of the model line and never enters training.
    holdout_percent: float = Field(default=20.0, gt=0.0, lt=100.0)
    val_percent: float = Field(default=15.0, gt=0.0, lt=100.0)
    replay_previous: bool = Field(
        default=True, description="also train on the production model's dataset (no forgetting)"
    )
    replay_max_train_images: int | None = Field(
        default=None, ge=0, description="cap on replayed training images (None: all)"
    )
    min_train_images: int = Field(default=8, ge=1)
    min_holdout_images: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _room_for_training(self) -> DatasetSection:
        if self.holdout_percent + self.val_percent >= 90.0:
            raise ValueError("holdout_percent + val_percent must leave >= 10% for training")
        return self


class AcceleratorOption(_Section):
    """A GPU SkyPilot may pick, with the hourly price the operator budgets for it."""

    name: str = Field(pattern=r"^[A-Za-z0-9-]+(:[1-8])?$", examples=["T4:1", "L4:1", "A10G:1"])
    price_per_hour_usd: float = Field(gt=0.0, le=1000.0)


class SkyPilotSection(_Section):
    accelerators: list[AcceleratorOption] = Field(
        default_factory=lambda: [
            AcceleratorOption(name="T4:1", price_per_hour_usd=0.35),
            AcceleratorOption(name="L4:1", price_per_hour_usd=0.70),
        ],
        min_length=1,
    )
    use_spot: bool = True
    max_price_per_hour_usd: float = Field(default=1.0, gt=0.0)
    max_restarts_on_errors: int = Field(default=3, ge=0, le=100)
    autostop_idle_minutes: int = Field(default=10, ge=1, le=1440)
    disk_size_gb: int = Field(default=64, ge=16, le=4096)
    cloud: str | None = None
    region: str | None = None
    setup: str = "pip install 'linefleet[trainer]'"
    poll_interval_s: float = Field(default=30.0, gt=0.0)
    timeout_s: float = Field(default=6 * 3600.0, gt=0.0)


class TrainingSection(_Section):
    backend: Literal["local", "skypilot"] = "local"
    # 40 epochs at lr0 3e-4 (AdamW): the recipe benchmarks/learning_loop.py chose for a
    # fine-tune on about a hundred new labels (README, "Learning loop"). AdamW at 3e-4, not
    # ultralytics' own choice (AdamW at 0.0011 for 10 epochs recovered 0.79-0.87 on the
    # lighting drift and the gate refused every candidate for bolts forgotten); 40 epochs, not
    # 20: at 20 a new supplier's parts under a failed lamp taught one new look or the other,
    # not both (black bolts found on one seed of three, mAP50 0.61-0.74); at 40 both, on the
    # two seeds measured (0.82 and 0.89), and every other scenario gained too, at 330-380
    # CPU-seconds a fine-tune on 2 cores (the target: 8 minutes).
    epochs: int = Field(default=40, ge=1, le=1000)
    batch: int = Field(default=16, ge=1, le=1024)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|\d+(,\d+)*)$")
    require_gpu: bool = False
    seed: int = 0
    workers: int = Field(default=0, ge=0, le=64)
    patience: int = Field(default=0, ge=0, description="0: no early stopping")
    close_mosaic: int = Field(default=3, ge=0)
    warmup_epochs: float = Field(default=0.5, ge=0.0, le=10.0)
    # The fine-tuning recipe (benchmarks/learning_loop.py measures it): the first `freeze`
    # layers keep the parent's weights (YOLOv8's backbone is layers 0-9; frozen, the lighting
    # drift recovered 0.64 instead of 0.87); `lr0` None lets ultralytics pick (with optimizer
    # "auto": AdamW at about 0.001 for short runs, which forgot bolts).
    freeze: int = Field(default=0, ge=0, le=22)
    optimizer: Literal["auto", "SGD", "AdamW", "Adam"] = "auto"
    lr0: float | None = Field(default=3e-4, gt=0.0, le=1.0)
    cpu_price_per_hour_usd: float = Field(default=0.0, ge=0.0)
    gpu_price_per_hour_usd: float = Field(default=0.35, ge=0.0)
    max_cost_usd: float | None = Field(
        default=None, gt=0.0, description="training stops after the epoch that crosses it"
    )


class InspectorSection(_Section):
    """The part inspector (cloud_trainer.training.inspector): a crop classifier for an
    attribute of parts, trained after the detector and fused into its export. The detector
    alone left ``defect`` recall at 0.04-0.13 after a fine-tune on 150 frames, whatever the
    recipe; with the inspector (and the detector on typed labels) the learning loop found
    0.92-0.98 at 105 labels (README, "Learning loop")."""

    # The class that is a part with an attribute (a defective part); None: no inspector.
    attribute_class: str | None = "defect"
    crop: int = Field(default=32, ge=16, le=128, description="crop side in input pixels")
    epochs: int = Field(default=30, ge=1, le=500)
    # Anchors looked at a frame, highest scores first; each part among them is cropped once,
    # so this is also the most parts a frame can have inspected.
    top_k: int = Field(default=64, ge=1, le=1000)
    # Parts needed with and without the attribute, each, to train one.
    min_examples: int = Field(default=10, ge=1)


class GateSection(_Section):
    """The candidate publishes only if not worse than production beyond these tolerances."""

    map50_tolerance: float = Field(default=0.01, ge=0.0, le=1.0)
    map50_95_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    class_recall_tolerance: float = Field(default=0.05, ge=0.0, le=1.0)
    # A class's fall in recall beyond the tolerance rejects only when the held-out set's boxes
    # of that class make it evidence of a fall at this one-sided confidence (0: any fall
    # beyond the tolerance rejects). At 105 labels the holdout holds 10-30 boxes a class,
    # where one box is 0.03-0.10 of recall: benchmarks/learning_loop.py saw the strict rule
    # refuse updates that recovered 0.86-0.96 of mAP50 over one to three boxes
    # (cloud_trainer/release/gate.py).
    class_recall_confidence: float = Field(default=0.95, ge=0.0, lt=1.0)
    operating_confidence: float = Field(default=0.25, gt=0.0, lt=1.0)


class ExportSection(_Section):
    opset: int = Field(default=18, ge=11, le=21)
    dynamic_batch: bool = False
    # Lower-precision variants published beside the fp32 reference when each passes
    # ``variant_*_tolerance`` against it on the held-out set (cloud_trainer.release.variants).
    variants: tuple[Literal["int8", "fp16"], ...] = ("int8", "fp16")
    variant_map50_tolerance: float = Field(default=0.01, ge=0.0, le=1.0)
    variant_class_recall_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    # Training images (hard examples and replay) INT8's activation ranges are measured on.
    int8_calibration_images: int = Field(default=64, ge=8, le=1024)
    parity_max_abs_diff: float = Field(
        default=0.05, gt=0.0, description="bound on |onnx - torch| of the raw head (pixels, scores)"
    )
    parity_images: int = Field(default=8, ge=1, le=256)


class SigningSection(_Section):
    key_id: str | None = None
    key_file: Path | None = None
    # PEM text, for secret managers that inject env vars; never logged or printed.
    key_pem: SecretStr | None = None
    manifest_ttl_days: int | None = Field(default=None, ge=1)


class ScheduleSection(_Section):
    """Triggers of ``cloud-trainer serve``."""

    cron: str | None = Field(default=None, examples=["0 3 * * *"])
    min_new_examples: int | None = Field(default=None, ge=1)
    # Retrain when this many examples got new labels (people's, pulled from Label Studio or
    # imported) since the last run: waits for people rather than for uploads.
    min_new_labels: int | None = Field(default=None, ge=1)
    # Retrain when this many online devices say a camera's line drifts under the model (the
    # agents' drift sampler, from their heartbeats) and the drift has brought
    # drift_min_new_examples new hard examples since the last run.
    drift_devices: int | None = Field(default=None, ge=1)
    drift_min_new_examples: int = Field(default=50, ge=1)
    check_interval_s: float = Field(default=300.0, ge=1.0)


class ControlApiSection(_Section):
    """The control-plane HTTP API and dashboard of ``cloud-trainer serve``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    token: SecretStr | None = None
    token_file: Path | None = None


class FleetSection(_Section):
    """The control plane: device registry database, MQTT identity, rollout defaults."""

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///{work_dir}/fleet.db"
    )
    controller_id: Identifier = "control-plane"
    share_group: Identifier = "linefleet-control"
    tick_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    settle_s: float = Field(
        default=1.0, ge=0.0, le=60.0, description="time to take in retained state at start"
    )
    # Each device's heartbeats kept for its console page and drift charts: one every
    # history_interval_s, for history_keep_h (5,000 devices a minute for 48 h: 14 M rows).
    history_interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    history_keep_h: float = Field(default=48.0, gt=0.0, le=24.0 * 366)
    rollout: RolloutParams = RolloutParams()
    api: ControlApiSection = ControlApiSection()

    def url(self, work_dir: Path) -> str:
        return self.database_url or f"sqlite:///{(work_dir / 'fleet.db').resolve()}"


class TrainerConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LINEFLEET_TRAINER_", env_nested_delimiter="__", extra="forbid"
    )

    storage: StorageSection = StorageSection()
    model_line: ModelLineSection = ModelLineSection()
    selection: SelectionSection = SelectionSection()
    labeling: LabelingSection = LabelingSection()
    dataset: DatasetSection = DatasetSection()
    training: TrainingSection = TrainingSection()
    skypilot: SkyPilotSection = SkyPilotSection()
    inspector: InspectorSection = InspectorSection()
    gate: GateSection = GateSection()
    export: ExportSection = ExportSection()
    signing: SigningSection = SigningSection()
    schedule: ScheduleSection = ScheduleSection()
    mqtt: MqttConnectionSection = MqttConnectionSection()
    fleet: FleetSection = FleetSection()
    work_dir: Path = Path("linefleet-work")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


def load_trainer_config(path: Path | None) -> TrainerConfig:
    """Config from ``path`` (or defaults) plus env overrides, with its secret files read;
    :class:`TrainerConfigError` if anything is wrong."""
    try:
        data = read_yaml(path) if path is not None else {}
        try:
            config = TrainerConfig(**data)
        except ValidationError as exc:
            raise config_error(exc, str(path or "defaults")) from exc
        config = config.model_copy(update=with_secret_files(config.mqtt, config.storage))
        studio = config.labeling.label_studio
        if studio.token_file is not None:
            token = read_secret_file(studio.token_file, "labeling.label_studio.token_file")
            labeling = config.labeling.model_copy(
                update={"label_studio": studio.model_copy(update={"token": token})}
            )
            config = config.model_copy(update={"labeling": labeling})
        api = config.fleet.api
        if api.token_file is not None:
            token = read_secret_file(api.token_file, "fleet.api.token_file")
            fleet = config.fleet.model_copy(update={"api": api.model_copy(update={"token": token})})
            config = config.model_copy(update={"fleet": fleet})
    except TrainerConfigError:
        raise
    except ConfigError as exc:
        raise TrainerConfigError(str(exc)) from exc
    return config
