"""The JSON sidecar stored next to every hard-example image: the agent writes it, the
trainer's dataset builder reads it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from shared.identifiers import Identifier
from shared.messages import DetectionRecord

SamplerTag = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class HardExampleSidecar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    fleet: Identifier
    device_id: Identifier
    camera_id: Identifier
    frame_id: Identifier
    captured_at: AwareDatetime
    captured_monotonic_s: float
    image_width: int = Field(gt=0, le=16384)
    image_height: int = Field(gt=0, le=16384)
    model_name: Identifier | None = None
    model_version: int | None = Field(default=None, ge=1)
    reasons: list[SamplerTag] = Field(min_length=1, max_length=16)
    priority: float = Field(ge=0.0, le=1000.0)
    predictions: list[DetectionRecord] = Field(max_length=1000)
    # Exact labels, present only for frames of the synthetic line: the demo's "labeler".
    synthetic_truth: list[DetectionRecord] | None = Field(default=None, max_length=1000)
