"""Hard-example mining: named samplers with their own rate limits, near-duplicate
suppression, and the policy that feeds the spool off the frame path."""

from edge_agent.sinks.mining.dedup import NearDuplicateFilter, dhash
from edge_agent.sinks.mining.policy import HardExamplePolicy
from edge_agent.sinks.mining.rate_limit import RateLimiter
from edge_agent.sinks.mining.samplers import (
    ClassSampler,
    ConfidenceBandSampler,
    CountAnomalySampler,
    DisagreementSampler,
    DriftSampler,
    FlickerSampler,
    MiningInput,
    RandomSampler,
    Sampler,
)

__all__ = [
    "ClassSampler",
    "ConfidenceBandSampler",
    "CountAnomalySampler",
    "DisagreementSampler",
    "DriftSampler",
    "FlickerSampler",
    "HardExamplePolicy",
    "MiningInput",
    "NearDuplicateFilter",
    "RandomSampler",
    "RateLimiter",
    "Sampler",
    "dhash",
]
