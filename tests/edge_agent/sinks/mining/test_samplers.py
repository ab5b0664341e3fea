from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_agent.camera import Frame
from edge_agent.config import MiningSection
from edge_agent.inference import InferenceRunner
from edge_agent.sinks.mining import (
    ClassSampler,
    ConfidenceBandSampler,
    CountAnomalySampler,
    DisagreementSampler,
    DriftSampler,
    FlickerSampler,
    HardExamplePolicy,
    MiningInput,
    NearDuplicateFilter,
    RandomSampler,
    RateLimiter,
    dhash,
)
from edge_agent.sinks.mining.factory import build_samplers
from edge_agent.sinks.mining.samplers import match_ratio
from edge_agent.upload.spool import Spool
from shared.detections import Detections
from tests.edge_agent.onnx_models import brightness_detector

NAMES = ("bolt", "nut", "washer", "bracket", "defect")


def item(
    boxes: list[list[float]] | None = None,
    conf: list[float] | None = None,
    cls: list[int] | None = None,
    *,
    seq: int = 0,
    camera: str = "cam0",
    image: np.ndarray | None = None,
    at: float | None = None,
    version: int | None = 1,
) -> MiningInput:
    boxes = boxes or []
    det = (
        Detections(boxes, conf or [0.9] * len(boxes), cls or [0] * len(boxes))
        if boxes
        else Detections.empty()
    )
    frame = Frame(
        camera,
        seq,
        image if image is not None else np.zeros((64, 64, 3), np.uint8),
        datetime.now(UTC),
        time.monotonic() if at is None else at,
    )
    return MiningInput(frame, det, "m", version, NAMES)


BOX = [10.0, 10.0, 30.0, 30.0]


def test_confidence_band() -> None:
    sampler = ConfidenceBandSampler("confidence_band", low=0.3, high=0.6)
    assert sampler.observe(item([BOX], [0.45])) is not None
    assert sampler.observe(item([BOX], [0.9])) is None
    assert sampler.observe(item([BOX], [0.6])) is None  # high is exclusive
    assert sampler.observe(item()) is None


def test_class_sampler_by_name() -> None:
    sampler = ClassSampler("class", classes=frozenset({"defect"}))
    assert sampler.observe(item([BOX], cls=[4])) is not None
    assert sampler.observe(item([BOX], cls=[1])) is None


def test_count_anomaly_against_baseline() -> None:
    sampler = CountAnomalySampler("count_anomaly", warmup_frames=20, min_delta=2.0)
    steady = [[BOX, [40, 40, 50, 50]]] * 40
    assert all(sampler.observe(item(b)) is None for b in steady)
    many = [[i, i, i + 5.0, i + 5.0] for i in range(0, 60, 6)]
    assert sampler.observe(item(many)) is not None, "10 objects where 2 are normal"
    assert sampler.observe(item()) is not None, "0 objects where 2 are normal"


def test_flicker_returns_the_middle_frame() -> None:
    sampler = FlickerSampler("flicker", iou_threshold=0.5)
    first = item([BOX], seq=0)
    missing = item([], seq=1)
    back = item([BOX], seq=2)
    assert sampler.observe(first) is None
    assert sampler.observe(missing) is None
    flagged = sampler.observe(back)
    assert flagged is missing
    steady = FlickerSampler("flicker")
    assert [steady.observe(item([BOX], seq=i)) for i in range(4)] == [None] * 4


def test_flicker_is_per_camera() -> None:
    sampler = FlickerSampler("flicker")
    sampler.observe(item([BOX], camera="a"))
    sampler.observe(item([], camera="b"))
    assert sampler.observe(item([BOX], camera="a")) is None


def test_disagreement_with_shadow_model(tmp_path: Path) -> None:
    shadow = InferenceRunner(brightness_detector(tmp_path / "s.onnx", names=list(NAMES)))
    sampler = DisagreementSampler("disagreement", every_n=1, shadow=shadow)
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:32, 32:48] = 255
    agree = item([[32, 16, 48, 32]], [0.9], [0], image=image)
    disagree = item([[0, 0, 10, 10]], [0.9], [2], image=image)
    assert sampler.observe(agree) is None
    assert sampler.observe(disagree) is not None
    assert DisagreementSampler("disagreement").observe(agree) is None, "no shadow: nothing"


def test_random_sampler_rate() -> None:
    sampler = RandomSampler("random", probability=0.05, rng=random.Random(3))
    hits = sum(sampler.observe(item()) is not None for _ in range(4000))
    assert 140 < hits < 260


def test_match_ratio() -> None:
    a = Detections([BOX, [50, 50, 60, 60]], [0.9, 0.9], [0, 1])
    assert match_ratio(a, a, 0.5) == 1.0
    assert match_ratio(a, a[[0]], 0.5) == 0.5
    assert match_ratio(Detections.empty(), Detections.empty(), 0.5) == 1.0
    assert match_ratio(a, Detections.empty(), 0.5) == 0.0


def test_rate_limiter_windows() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=2, per_hour=3, clock=lambda: now[0])
    assert limiter.allow() and limiter.allow() and not limiter.allow()
    now[0] = 61.0
    assert limiter.allow()
    assert not limiter.allow(), "hourly cap of 3"
    now[0] = 3700.0
    assert limiter.allow()
    assert RateLimiter(per_minute=0).allow() is False
    assert all(RateLimiter().allow() for _ in range(100)), "no limits: always allowed"


def test_picks_of_one_camera_are_spaced_and_cameras_do_not_share_the_spacing() -> None:
    """30 a minute must not mean 30 consecutive frames of one scene."""
    now = [0.0]
    limiter = RateLimiter(per_minute=30, min_interval_s=2.0, clock=lambda: now[0])
    assert limiter.allow("cam1")
    assert not limiter.allow("cam1"), "the next frame of the same belt"
    assert limiter.allow("cam2"), "another camera is another scene"
    now[0] = 1.9
    assert not limiter.allow("cam1")
    now[0] = 2.0
    assert limiter.allow("cam1")
    assert MiningSection().confidence_band.min_interval_s == 2.0


def test_near_duplicates_suppressed_per_camera() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    noisy = np.clip(image.astype(int) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    dedup = NearDuplicateFilter(max_distance=4)
    assert not dedup.is_duplicate("a", image)
    assert dedup.is_duplicate("a", noisy), "sensor noise on a stopped belt"
    assert not dedup.is_duplicate("a", other)
    assert not dedup.is_duplicate("b", image), "per camera"
    assert dedup.suppressed == 1
    assert isinstance(dhash(image), int) and dhash(image) < 2**64


def test_samplers_from_config_follow_the_given_clock_and_seed() -> None:
    """A replayed stream runs at camera time: rate limits count camera seconds, and the
    random sampler repeats with its seed."""
    now = [0.0]
    config = MiningSection(
        confidence_band={"per_minute": 2, "per_hour": None, "per_day": None, "min_interval_s": 0},  # type: ignore[arg-type]
        random={"probability": 0.5},  # type: ignore[arg-type]
    )
    band = next(
        s for s in build_samplers(config, clock=lambda: now[0]) if s.tag == "confidence_band"
    )
    assert band.limiter.allow() and band.limiter.allow() and not band.limiter.allow()
    now[0] = 60.0
    assert band.limiter.allow(), "a camera minute later"

    def picks(seed: int) -> list[bool]:
        (sampler,) = [
            s for s in build_samplers(config, rng=random.Random(seed)) if s.tag == "random"
        ]
        return [sampler.observe(item()) is not None for _ in range(50)]

    assert picks(7) == picks(7) and picks(7) != picks(8)


def test_drift_sampler_samples_the_changed_line_while_the_models_reports_moved() -> None:
    """A minute of a steady line (a bolt and a nut a frame), then new parts: the model calls
    everything a bracket. Quiet on the steady line and while the fast average moves, then
    about ``probability`` of the changed line's frames, on each camera by itself."""
    sampler = DriftSampler(
        "drift", probability=0.2, fast_s=10.0, warmup_s=30.0, rng=random.Random(1)
    )
    fps, other = 10.0, [50.0, 50.0, 70.0, 70.0]
    steady = [
        sampler.observe(item([BOX, other], [0.9, 0.9], [0, 1], at=i / fps)) for i in range(600)
    ]
    assert not any(steady), "a steady line is not a drift"
    changed = [
        sampler.observe(item([BOX, other], [0.9, 0.9], [3, 3], at=60 + i / fps)) for i in range(600)
    ]
    assert not any(changed[:20]), "the fast average takes a few seconds to move"
    hits = sum(flag is not None for flag in changed[100:])
    assert 70 < hits < 130, hits  # about 0.2 of 500 frames
    assert sampler.drifting("cam0") and not sampler.drifting("other")
    assert sampler.observe(item(camera="other", at=120.0)) is None, "its own warm-up"


def test_drift_sampler_sees_a_line_gone_blind() -> None:
    """A failed lamp: the model's detections drop from four a frame to none or one."""
    sampler = DriftSampler("drift", probability=1.0, fast_s=10.0, warmup_s=30.0)
    boxes = [BOX, [50.0, 50.0, 70.0, 70.0], [80.0, 10.0, 99.0, 30.0], [10.0, 80.0, 30.0, 99.0]]
    for i in range(300):
        assert sampler.observe(item(boxes, [0.9] * 4, [0, 1, 2, 3], at=i / 10)) is None
    dark = [sampler.observe(item(boxes[: i % 2], at=30 + i / 10)) for i in range(300)]
    flagged = [i for i, flag in enumerate(dark) if flag is not None]
    # From when the fast average has halved (about 0.7 of its 10 s) to the end.
    assert 50 < flagged[0] < 100 and len(flagged) == 300 - flagged[0]
    assert not DriftSampler("drift").drifting("cam0"), "nothing seen, nothing said"


def test_drift_sampler_measures_against_the_running_models_own_baseline() -> None:
    """After an OTA update the new model reports the line differently (that is the point of
    it): its first frames start a new baseline and warm-up instead of reading as a drift."""
    other = [50.0, 50.0, 70.0, 70.0]
    kept, updated = (DriftSampler("drift", fast_s=10.0, warmup_s=30.0) for _ in range(2))
    for sampler in (kept, updated):
        for i in range(600):
            sampler.observe(item([BOX, other], [0.9, 0.9], [0, 1], at=i / 10))
    # The same change of reports from 60 s on: under the old model, and under an update.
    for i in range(900):
        kept.observe(item([BOX, other], [0.9, 0.9], [3, 3], at=60 + i / 10))
        updated.observe(item([BOX, other], [0.9, 0.9], [3, 3], at=60 + i / 10, version=2))
    assert not updated.drifting("cam0"), "the updated model's steady reports are its new normal"
    assert kept.drifting("cam0"), "the same reports under the old model are a drift"


def test_drift_sampler_is_built_from_config() -> None:
    config = MiningSection(drift={"shift": 0.8, "count_change": 0.3})  # type: ignore[arg-type]
    (drift,) = [s for s in build_samplers(config) if isinstance(s, DriftSampler)]
    assert (drift.shift, drift.count_change, drift.priority) == (0.8, 0.3, 3.5)
    off = MiningSection(drift={"enabled": False})  # type: ignore[arg-type]
    assert not [s for s in build_samplers(off) if isinstance(s, DriftSampler)]
    with pytest.raises(ValueError, match="fast_s must be below slow_s"):
        MiningSection(drift={"fast_s": 60, "slow_s": 30})  # type: ignore[arg-type]


def test_the_policy_says_which_cameras_drift(tmp_path: Path) -> None:
    """What the heartbeat reports per camera: the drift sampler's view, camera by camera."""
    drift = DriftSampler("drift", probability=0.0, fast_s=10.0, warmup_s=30.0)
    spool = Spool(tmp_path / "spool")
    policy = HardExamplePolicy([drift], spool, threading.Event(), fleet="f", device_id="d")
    for i in range(600):
        policy.process(item([BOX], [0.9], [0], camera="cam0", at=i / 10))
        policy.process(item([BOX], [0.9], [0], camera="cam1", at=i / 10))
    for i in range(300):  # cam1's parts now all look like brackets to the model
        policy.process(item([BOX], [0.9], [0], camera="cam0", at=60 + i / 10))
        policy.process(item([BOX], [0.9], [3], camera="cam1", at=60 + i / 10))
    assert policy.drifting_cameras() == {"cam1"}
    spool.close()
