"""LiveTrial's bookkeeping (pure logic); the pipeline side is in test_pipeline.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.frame_path import ActiveModel
from edge_agent.inference import InferenceRunner
from edge_agent.live_trial import LiveTrial, TrialFailedError
from tests.edge_agent.onnx_models import brightness_detector


@pytest.fixture
def candidate(tmp_path: Path) -> ActiveModel:
    return ActiveModel(InferenceRunner(brightness_detector(tmp_path / "c.onnx", size=64)), "d", 2)


def test_hands_out_exactly_the_frames_asked_for(candidate: ActiveModel) -> None:
    trial = LiveTrial(candidate, 2, run_limit_s=None)
    assert trial.claim() and trial.claim()
    assert not trial.claim(), "a third frame stays with the running model"
    trial.succeeded(0.01)
    trial.succeeded(0.02)
    assert trial.wait(1.0) == [0.01, 0.02]


def test_a_failure_ends_the_trial_and_reaches_the_waiter(candidate: ActiveModel) -> None:
    trial = LiveTrial(candidate, 3, run_limit_s=None)
    assert trial.claim()
    trial.failed("model output contains NaN or infinity")
    assert not trial.claim(), "no candidate run after a failure"
    with pytest.raises(TrialFailedError, match="NaN"):
        trial.wait(1.0)


def test_a_line_that_brings_too_few_frames_gives_what_it_has(candidate: ActiveModel) -> None:
    trial = LiveTrial(candidate, 3, run_limit_s=None)
    assert trial.claim()
    trial.succeeded(0.01)
    assert trial.wait(0.05) == [0.01]
    assert not trial.claim(), "closed once the waiter gave up"


def test_wait_lets_a_claimed_run_finish_before_returning(candidate: ActiveModel) -> None:
    # The waiter may close the candidate when wait returns: no worker may still be running it.
    trial = LiveTrial(candidate, 1, run_limit_s=None)
    assert trial.claim()
    finisher = threading.Timer(0.2, trial.succeeded, args=(0.03,))
    finisher.start()
    assert trial.wait(0.01) == [0.03], "the run claimed before the timeout still counts"
    finisher.join()


def test_a_trial_needs_a_frame(candidate: ActiveModel) -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        LiveTrial(candidate, 0, run_limit_s=None)
