"""Rollout parameters: validated, no I/O (the config and the controller both use them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.messages import check_wave_fractions


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
        if not waves:
            raise ValueError("waves must not be empty, e.g. [0.1, 0.5, 1.0]")
        return check_wave_fractions(waves)
