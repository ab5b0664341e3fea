"""The model manifest: everything an agent needs to decide whether, and how, to run a model.

Signed by the trainer (see :mod:`shared.signing`); agents refuse anything that does not verify
against a trusted key. Validation here is structural and pure (no I/O): whether a manifest
fits a particular device is decided by the agent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from shared.identifiers import Identifier, SemVer, Sha256Hex, ShortText
from shared.object_keys import validate_object_key

MAX_ARTIFACT_BYTES = 2 * 1024**3
MAX_CLASSES = 1000
MAX_VARIANTS = 4

VariantPrecision = Literal["fp16", "int8"]
# The runtimes an agent runs ONNX files with (edge_agent.inference.backend.RUNTIMES).
RuntimeName = Literal["onnxruntime", "openvino"]

ClassName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
LanguageTag = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


class ArtifactRef(_Strict):
    """A file in the object store, pinned by content."""

    key: Annotated[str, StringConstraints(max_length=1024)]
    sha256: Sha256Hex
    size_bytes: int = Field(gt=0, le=MAX_ARTIFACT_BYTES)

    @field_validator("key")
    @classmethod
    def _safe_key(cls, value: str) -> str:
        return validate_object_key(value)


class InputSpec(_Strict):
    """The model's image input: NCHW, RGB, scaled to [0, 1], letterboxed to (height, width)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "images"
    batch: int = Field(default=1, ge=-1, le=64, description="-1 means dynamic batch")
    height: int = Field(ge=32, le=4096)
    width: int = Field(ge=32, le=4096)
    dtype: Literal["float32", "float16"] = "float32"
    color: Literal["rgb", "bgr"] = "rgb"

    @field_validator("batch")
    @classmethod
    def _batch_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("batch must be -1 (dynamic) or a positive size")
        return value


class ClassInfo(_Strict):
    id: int = Field(ge=0, lt=MAX_CLASSES)
    name: ClassName
    # Display names by language tag, e.g. {"zh": "螺栓"}.
    localized: dict[LanguageTag, ClassName] = Field(default_factory=dict, max_length=32)


class EvalMetrics(_Strict):
    map50: float = Field(ge=0.0, le=1.0)
    map50_95: float = Field(ge=0.0, le=1.0)
    per_class_recall: dict[ClassName, float] = Field(default_factory=dict, max_length=MAX_CLASSES)
    images: int = Field(default=0, ge=0)


class Lineage(_Strict):
    parent_version: int | None = Field(default=None, ge=1)
    dataset_version: Identifier | None = None
    training_run: Identifier | None = None
    gpu_seconds: float = Field(default=0.0, ge=0.0)
    cost_usd: float = Field(default=0.0, ge=0.0)
    backend: Literal["local", "skypilot", "bootstrap", "unknown"] = "unknown"


class ModelVariant(_Strict):
    """The same model at a lower precision, for the boxes whose runtimes run it faster.

    ``accelerator``: where it pays (``int8``: CPUs; ``fp16``: GPUs). ``metrics``: measured by
    the trainer on onnxruntime through the agent's own inference path, on the same held-out
    set as the manifest's ``metrics``. ``runtimes``: those the trainer found within its
    tolerance of the fp32 reference (a QDQ model is not computed alike by every runtime:
    OpenVINO runs more of it in integer arithmetic); a box tries the variant on those only,
    and still checks that its detections agree with fp32 on its own frames first.
    """

    precision: VariantPrecision
    accelerator: Literal["cpu", "gpu"]
    artifact: ArtifactRef
    metrics: EvalMetrics
    runtimes: list[RuntimeName] = Field(min_length=1, max_length=4)

    @field_validator("runtimes")
    @classmethod
    def _distinct(cls, value: list[RuntimeName]) -> list[RuntimeName]:
        if len(set(value)) != len(value):
            raise ValueError("runtimes must be distinct")
        return value


class ModelManifest(_Strict):
    """Schema 2 added ``variants``. A manifest without variants is schema 1 and serializes
    exactly as before (the empty list is left out), so its signature, and agents that predate
    variants, are unaffected; a schema-2 manifest is refused by those agents with a validation
    error naming the schema."""

    schema_version: Literal[1, 2] = 1
    model_name: Identifier
    version: int = Field(ge=1, le=10**9)
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    min_agent_version: SemVer = "0.1.0"
    artifact: ArtifactRef
    # The .pt weights the trainer fine-tunes from; agents never download them.
    weights: ArtifactRef | None = None
    onnx_opset: int = Field(ge=7, le=30)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    input: InputSpec
    output_format: Literal["yolo_raw", "nms_in_graph"]
    classes: list[ClassInfo] = Field(min_length=1, max_length=MAX_CLASSES)
    metrics: EvalMetrics | None = None
    # Lower-precision copies of ``artifact``; ``artifact`` (fp32) stays the reference.
    variants: list[ModelVariant] = Field(default_factory=list, max_length=MAX_VARIANTS)
    lineage: Lineage = Field(default_factory=Lineage)
    notes: ShortText = ""
    key_id: Identifier | None = None
    signature: Annotated[str, StringConstraints(max_length=256)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError("class ids must be 0..N-1 in order")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.variants and self.schema_version < 2:
            raise ValueError("variants need schema_version 2")
        if self.variants and self.precision != "fp32":
            raise ValueError("variants are copies of an fp32 reference artifact")
        precisions = [v.precision for v in self.variants]
        if len(set(precisions)) != len(precisions):
            raise ValueError("one variant per precision")
        keys = [self.artifact.key, *(v.artifact.key for v in self.variants)]
        if len(set(keys)) != len(keys):
            raise ValueError("each variant needs its own artifact key")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_variants(self, handler: SerializerFunctionWrapHandler) -> object:
        """Leave out an empty ``variants``: a schema-1 manifest's bytes, and so the
        signatures made before variants existed, stay what they were."""
        data = handler(self)
        if isinstance(data, dict) and not data.get("variants"):
            data.pop("variants", None)
        return data

    def variant(self, precision: VariantPrecision) -> ModelVariant | None:
        return next((v for v in self.variants if v.precision == precision), None)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at
