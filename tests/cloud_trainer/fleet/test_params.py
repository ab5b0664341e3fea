"""The rollout request vocabulary shared by the CLI and the API (pure validation)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from cloud_trainer.fleet.params import (
    RolloutAction,
    RolloutParams,
    RolloutRequest,
    RolloutTargets,
    new_rollout_id,
)


def test_waves_must_increase_to_the_whole_target() -> None:
    with pytest.raises(ValidationError, match="strictly increase"):
        RolloutParams(waves=[0.5, 0.2, 1.0])
    with pytest.raises(ValidationError, match="last wave"):
        RolloutParams(waves=[0.5])
    with pytest.raises(ValidationError, match="must not be empty"):
        RolloutParams(waves=[])
    assert RolloutParams(waves=[0.01, 0.1, 0.5, 1.0]).waves[-1] == 1.0


def test_a_request_needs_a_target_and_a_version() -> None:
    with pytest.raises(ValidationError, match="whole_fleet, groups or devices"):
        RolloutRequest(version=2, targets=RolloutTargets())
    with pytest.raises(ValidationError, match="version"):
        RolloutRequest.model_validate({"version": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        RolloutRequest.model_validate({"version": 2, "wave": [1.0]})
    assert RolloutRequest(version=2).targets.whole_fleet


def test_actions_and_the_id_format() -> None:
    assert [a.value for a in RolloutAction] == ["pause", "resume", "abort", "rollback"]
    with pytest.raises(ValueError, match="'start' is not a valid RolloutAction"):
        RolloutAction("start")
    now = datetime(2026, 12, 1, 1, 2, 3, 456789, tzinfo=UTC)
    assert new_rollout_id(now) == "rollout-20261201T010203456789Z"
