"""What operators ask of the rollout controller, one vocabulary for the CLI, the API and the
dashboard: the targets, the parameters, a start request, the actions on a running rollout and
the rollout id format. Validated, no I/O (the config and the controller both use them)."""

from __future__ import annotations

import itertools
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.identifiers import Identifier


def check_wave_fractions(waves: list[float]) -> list[float]:
    """Cumulative wave fractions: each in (0, 1], strictly increasing, the last 1.0 (the whole
    target)."""
    if not waves:
        raise ValueError("waves must not be empty, e.g. [0.1, 0.5, 1.0]")
    if any(not 0.0 < w <= 1.0 for w in waves):
        raise ValueError("wave fractions must lie in (0, 1]")
    if any(b <= a for a, b in itertools.pairwise(waves)):
        raise ValueError("wave fractions must strictly increase")
    if waves[-1] != 1.0:
        raise ValueError("the last wave must be 1.0 (the whole target)")
    return waves


class RolloutParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Cumulative fractions of the targets per wave, e.g. [0.01, 0.1, 0.5, 1.0].
    waves: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0], max_length=20)
    min_canary_devices: int = Field(default=1, ge=0)
    soak_s: float = Field(default=60.0, ge=0.0, le=7 * 86400)
    max_failures: int = Field(default=1, ge=0)
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    device_timeout_s: float | None = Field(
        default=600.0, gt=0.0, description="None: wait for offline devices forever"
    )
    min_fps_ratio: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("waves")
    @classmethod
    def _waves_increase_to_one(cls, waves: list[float]) -> list[float]:
        return check_wave_fractions(waves)


class RolloutTargets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: list[Identifier] = Field(default_factory=list, max_length=1000)
    devices: list[Identifier] = Field(default_factory=list, max_length=100_000)
    whole_fleet: bool = False

    @model_validator(mode="after")
    def _some_target(self) -> RolloutTargets:
        if not (self.whole_fleet or self.groups or self.devices):
            raise ValueError("a rollout needs whole_fleet, groups or devices")
        return self


class RolloutRequest(BaseModel):
    """Start a rollout of ``version`` of the model line (``POST /api/rollouts``, ``cloud-trainer
    rollout start``). The configured defaults apply to every parameter ``params`` leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    rollout_id: Identifier | None = None
    targets: RolloutTargets = RolloutTargets(whole_fleet=True)
    params: RolloutParams | None = None


class RolloutAction(StrEnum):
    """What can be done to a rollout once it exists."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


def new_rollout_id(now: datetime) -> str:
    """The one id format for rollouts nobody named: sortable, unique to the microsecond."""
    return f"rollout-{now:%Y%m%dT%H%M%S%fZ}"
