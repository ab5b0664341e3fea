"""Samplers from the ``mining`` config section (one place that knows both)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from edge_agent.config import MiningSection, SamplerSection
from edge_agent.sinks.mining.rate_limit import RateLimiter
from edge_agent.sinks.mining.samplers import (
    ClassSampler,
    ConfidenceBandSampler,
    CountAnomalySampler,
    DisagreementSampler,
    DriftSampler,
    FlickerSampler,
    RandomSampler,
    Sampler,
)


def build_samplers(
    config: MiningSection,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> list[Sampler]:
    """``clock`` drives the rate limits and ``rng`` the random sampler: a benchmark replays
    a recorded or synthetic stream at camera time, with a fixed seed."""

    def _limits(section: SamplerSection) -> RateLimiter:
        return RateLimiter(
            section.per_minute,
            section.per_hour,
            section.per_day,
            min_interval_s=section.min_interval_s,
            clock=clock,
        )

    samplers: list[Sampler] = []
    c = config.confidence_band
    if c.enabled:
        samplers.append(
            ConfidenceBandSampler("confidence_band", c.priority, _limits(c), low=c.low, high=c.high)
        )
    k = config.classes
    if k.enabled and k.classes:
        samplers.append(ClassSampler("class", k.priority, _limits(k), classes=frozenset(k.classes)))
    a = config.count_anomaly
    if a.enabled:
        samplers.append(
            CountAnomalySampler(
                "count_anomaly", a.priority, _limits(a), z=a.z, min_delta=a.min_delta
            )
        )
    f = config.flicker
    if f.enabled:
        samplers.append(
            FlickerSampler("flicker", f.priority, _limits(f), iou_threshold=f.iou_threshold)
        )
    d = config.disagreement
    if d.enabled:
        samplers.append(
            DisagreementSampler(
                "disagreement",
                d.priority,
                _limits(d),
                every_n=d.every_n,
                max_agreement=d.max_agreement,
            )
        )
    w = config.drift
    if w.enabled:
        samplers.append(
            DriftSampler(
                "drift",
                w.priority,
                _limits(w),
                shift=w.shift,
                count_change=w.count_change,
                probability=w.probability,
                fast_s=w.fast_s,
                slow_s=w.slow_s,
                warmup_s=w.warmup_s,
                rng=random.Random(rng.random()) if rng is not None else random.Random(),
            )
        )
    r = config.random
    if r.enabled and r.probability > 0:
        samplers.append(
            RandomSampler(
                "random",
                r.priority,
                _limits(r),
                probability=r.probability,
                rng=rng or random.Random(),
            )
        )
    return samplers
