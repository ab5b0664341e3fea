from __future__ import annotations

import pytest

from shared.errors import TopicError
from shared.topics import Channel, Scope, TopicAddress, Topics


def test_builds_the_documented_layout() -> None:
    topics = Topics("plant1")
    assert topics.device("edge-01", Channel.DESIRED) == "lf/plant1/dev/edge-01/desired"
    assert topics.group_desired("line-a") == "lf/plant1/grp/line-a/desired"
    assert topics.all_devices(Channel.REPORTED) == "lf/plant1/dev/+/reported"
    assert topics.control("rollout") == "lf/plant1/ctl/rollout"
    assert Topics("p", prefix="acme/lf").device("d", Channel.ONLINE) == "acme/lf/p/dev/d/online"


def test_parse_round_trip() -> None:
    topics = Topics("plant1")
    for channel in Channel:
        address = topics.parse(topics.device("edge-01", channel))
        assert address == TopicAddress("plant1", Scope.DEVICE, "edge-01", channel.value)
    assert topics.parse(topics.group_desired("g")).scope is Scope.GROUP
    assert topics.parse(topics.control("rollout")).target == "rollout"


@pytest.mark.parametrize("device", ["a/b", "+", "#", "..", "a..b", "", "x" * 65, "a b", "é"])
def test_ids_cannot_escape_their_level(device: str) -> None:
    with pytest.raises(TopicError):
        Topics("plant1").device(device, Channel.EVENTS)


@pytest.mark.parametrize(
    "topic",
    [
        "lf/other/dev/e1/desired",
        "lf/plant1/dev/e1",
        "lf/plant1/dev/e1/desired/extra",
        "lf/plant1/xxx/e1/desired",
        "lf/plant1/grp/g/reported",
        "lf/plant1/dev/e1/firmware",
        "lf/plant1/dev/../desired",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics("plant1").parse(topic)


def test_bad_fleet_or_prefix() -> None:
    with pytest.raises(TopicError):
        Topics("plant/1")
    with pytest.raises(TopicError):
        Topics("plant1", prefix="lf/#")
