from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.errors import ObjectKeyError
from shared.object_keys import (
    dataset_prefix,
    hard_example_keys,
    label_key,
    model_artifact_key,
    model_index_key,
    model_manifest_key,
    parse_hard_example_key,
    run_prefix,
    validate_object_key,
)


def test_hard_example_layout_and_parse() -> None:
    when = datetime(2026, 3, 4, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 04:30 UTC next day
    keys = hard_example_keys("plant1", "edge-01", when, "cam0-000123")
    assert keys.image == "hard-examples/plant1/edge-01/2026/03/05/cam0-000123.jpg"
    assert keys.sidecar.endswith("cam0-000123.json")
    assert keys.prelabel.endswith("cam0-000123.txt")
    parsed = parse_hard_example_key(keys.image)
    assert (parsed.fleet, parsed.device, parsed.day, parsed.frame_id) == (
        "plant1",
        "edge-01",
        "2026/03/05",
        "cam0-000123",
    )
    assert label_key("plant1", "edge-01", parsed.day, parsed.frame_id) == (
        "labels/plant1/edge-01/2026/03/05/cam0-000123.txt"
    )


def test_same_frame_same_key() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert hard_example_keys("f", "d", when, "x") == hard_example_keys("f", "d", when, "x")


def test_model_and_dataset_layout() -> None:
    assert model_artifact_key("det", 4) == "models/det/4/model.onnx"
    assert model_manifest_key("det", 4) == "models/det/4/manifest.json"
    assert model_index_key("det") == "models/det/index.json"
    assert dataset_prefix("line", "v0003") == "datasets/line/v0003"
    assert run_prefix("run-1") == "runs/run-1"


@pytest.mark.parametrize(
    "call",
    [
        lambda: hard_example_keys("../x", "d", datetime.now(UTC), "f"),
        lambda: hard_example_keys("f", "d/e", datetime.now(UTC), "f"),
        lambda: hard_example_keys("f", "d", datetime.now(UTC), ".."),
        lambda: hard_example_keys("f", "d", datetime(2026, 1, 1), "f"),  # naive time
        lambda: model_artifact_key("det", 0),
        lambda: label_key("f", "d", "2026/1/1", "x"),
        lambda: run_prefix("a/../../b"),
    ],
)
def test_builders_refuse_unsafe_input(call: object) -> None:
    with pytest.raises(ObjectKeyError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    "key",
    [
        "../secret",
        "a/../../b",
        "/abs",
        "a//b",
        "a/./b",
        "a\\b",
        "a/b\x00",
        "a/ü",
        "x" * 1025,
        "a/.hidden",
        "trailing/",
    ],
)
def test_validate_rejects_hostile_keys(key: str) -> None:
    with pytest.raises(ObjectKeyError):
        validate_object_key(key)


def test_parse_rejects_other_keys() -> None:
    with pytest.raises(ObjectKeyError, match="not a hard-example key"):
        parse_hard_example_key("models/det/1/model.onnx")
    with pytest.raises(ObjectKeyError):
        parse_hard_example_key("hard-examples/f/d/2026/01/01/x.exe")
