"""The control plane's vocabulary: rollout states, a device's state within a rollout, and what
the fleet registry did with a message. Stored in the database and shown by the API, the CLI and
the dashboard as these values; code compares the enums, never the strings."""

from __future__ import annotations

from enum import StrEnum


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"  # stopped, touched devices re-targeted to their previous version
    ROLLED_BACK = "rolled_back"  # rolled back on request after the fact


class DeviceState(StrEnum):
    """A device's state within one rollout."""

    PENDING = "pending"  # in a later wave
    TARGETED = "targeted"  # desired state sent, waiting for its report
    ACTIVE = "active"  # running the version, proven
    FAILED = "failed"
    TIMED_OUT = "timed_out"  # offline or silent past the deadline; still retained, not failed
    RETARGETED = "retargeted"  # sent back to its previous version


class IngestOutcome(StrEnum):
    """What the fleet registry did with one MQTT message (counted per outcome)."""

    APPLIED = "applied"
    STALE = "stale"  # older than what the registry holds (a duplicate or out-of-order copy)
    IGNORED = "ignored"  # not a channel the registry keeps
    DEFERRED = "deferred"  # the database is down: held until it answers
    REJECTED_TOPIC = "rejected_topic"
    REJECTED_PAYLOAD = "rejected_payload"
    REJECTED_FORGED = "rejected_forged"  # claims another device or fleet than its topic
    REFUSED_BY_DATABASE = "refused_by_database"
    DROPPED_DATABASE_DOWN = "dropped_database_down"  # held too many while the database was down


TERMINAL_IN_WAVE = frozenset({DeviceState.ACTIVE, DeviceState.FAILED, DeviceState.TIMED_OUT})
LIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})
