"""MQTT topic layout, built and parsed in one place.

``{prefix}/{fleet}/dev/{device}/{channel}`` for per-device topics,
``{prefix}/{fleet}/grp/{group}/desired`` for group defaults and
``{prefix}/{fleet}/ctl/{name}`` for control-plane commands. Ids are validated so no input can
inject a level separator or a wildcard into a topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.errors import ContractError, TopicError
from shared.identifiers import check_identifier

DEFAULT_PREFIX = "lf"


class Channel(StrEnum):
    DESIRED = "desired"
    REPORTED = "reported"
    HEARTBEAT = "heartbeat"
    ONLINE = "online"
    EVENTS = "events"
    ALERTS = "alerts"  # drift of a camera's line (DriftAlert)


class Scope(StrEnum):
    DEVICE = "dev"
    GROUP = "grp"
    CONTROL = "ctl"


DEVICE_CHANNELS = frozenset(Channel)
GROUP_CHANNELS = frozenset({Channel.DESIRED})


@dataclass(frozen=True)
class TopicAddress:
    fleet: str
    scope: Scope
    target: str
    channel: str


def _checked(value: str, what: str) -> str:
    try:
        return check_identifier(value, what=what)
    except ContractError as exc:
        raise TopicError(str(exc)) from exc


@dataclass(frozen=True)
class Topics:
    """Topic builder for one fleet under one prefix."""

    fleet: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        _checked(self.fleet, "fleet")
        for level in self.prefix.split("/"):
            _checked(level, "topic prefix level")

    @property
    def _root(self) -> str:
        return f"{self.prefix}/{self.fleet}"

    def device(self, device_id: str, channel: Channel) -> str:
        return f"{self._root}/{Scope.DEVICE}/{_checked(device_id, 'device id')}/{channel}"

    def group_desired(self, group: str) -> str:
        return f"{self._root}/{Scope.GROUP}/{_checked(group, 'group')}/{Channel.DESIRED}"

    def control(self, name: str) -> str:
        return f"{self._root}/{Scope.CONTROL}/{_checked(name, 'control topic name')}"

    def all_devices(self, channel: Channel) -> str:
        """Subscription filter for one channel of every device of the fleet."""
        return f"{self._root}/{Scope.DEVICE}/+/{channel}"

    def parse(self, topic: str) -> TopicAddress:
        """Split a concrete topic of this fleet; raises :class:`TopicError` for anything else."""
        root = self._root + "/"
        if not topic.startswith(root):
            raise TopicError(f"topic {topic!r} is not under {root!r}")
        levels = topic[len(root) :].split("/")
        if len(levels) == 2 and levels[0] == Scope.CONTROL:
            return TopicAddress(self.fleet, Scope.CONTROL, _checked(levels[1], "name"), "")
        if len(levels) != 3:
            raise TopicError(f"topic {topic!r} does not have the form scope/id/channel")
        scope_text, target, channel = levels
        try:
            scope = Scope(scope_text)
        except ValueError as exc:
            raise TopicError(f"unknown scope {scope_text!r} in topic {topic!r}") from exc
        allowed = DEVICE_CHANNELS if scope is Scope.DEVICE else GROUP_CHANNELS
        if channel not in {c.value for c in allowed}:
            raise TopicError(f"unknown channel {channel!r} for scope {scope_text!r}")
        return TopicAddress(self.fleet, scope, _checked(target, "topic id"), channel)
