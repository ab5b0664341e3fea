"""Rollout parameters: validated, no I/O (the config and the controller both use them)."""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RolloutParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    waves: list[float] = Field(default_factory=lambda: [0.1, 0.5, 1.0])
    min_canary_devices: int = Field(default=1, ge=0)
    soak_s: float = Field(default=60.0, ge=0.0)
    max_failures: int = Field(default=1, ge=0)
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    device_timeout_s: float | None = Field(
        default=600.0, gt=0.0, description="None: wait for offline devices forever"
    )
    min_fps_ratio: float = Field(default=0.8, ge=0.0, le=1.0)

    @field_validator("waves")
    @classmethod
    def _waves_increase_to_one(cls, waves: list[float]) -> list[float]:
        if not waves or any(not 0.0 < w <= 1.0 for w in waves):
            raise ValueError("waves must be fractions in (0, 1], e.g. [0.1, 0.5, 1.0]")
        if any(b <= a for a, b in itertools.pairwise(waves)) or waves[-1] != 1.0:
            raise ValueError("wave fractions must strictly increase and end at 1.0")
        return waves
