from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.manifest import ArtifactRef, ClassInfo, ModelManifest
from tests.factories import NOW, make_manifest


def test_round_trip_json() -> None:
    manifest = make_manifest()
    again = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.class_names[:2] == ["bolt", "nut"]
    assert again.classes[0].localized["zh"] == "螺栓"


def test_expiry() -> None:
    manifest = make_manifest(expires_at=NOW + timedelta(hours=1))
    assert not manifest.is_expired(NOW)
    assert manifest.is_expired(NOW + timedelta(hours=2))
    assert not make_manifest(expires_at=None).is_expired()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_name": "../evil"}, "model_name"),
        ({"model_name": "a" * 65}, "model_name"),
        ({"version": 0}, "version"),
        ({"expires_at": NOW - timedelta(days=1)}, "expires_at must be after"),
        ({"created_at": NOW.replace(tzinfo=None)}, "created_at"),
        ({"classes": [ClassInfo(id=1, name="x")]}, "0..N-1"),
        ({"classes": [ClassInfo(id=0, name="x"), ClassInfo(id=1, name="x")]}, "unique"),
        ({"classes": []}, "classes"),
        ({"output_format": "yolo_v99"}, "output_format"),
        ({"notes": "x" * 10_000}, "notes"),
        ({"unexpected": 1}, "Extra inputs"),
    ],
)
def test_rejects_invalid(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_manifest(**overrides)


@pytest.mark.parametrize(
    "key",
    ["../models/x/model.onnx", "/abs/model.onnx", "models//x", "models/./x", "a\\b", "mödel", ""],
)
def test_artifact_key_must_be_safe(key: str) -> None:
    with pytest.raises(ValidationError):
        ArtifactRef(key=key, sha256="ab" * 32, size_bytes=1)


def test_artifact_hash_and_size_checked() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ArtifactRef(key="models/a/1/model.onnx", sha256="XYZ", size_bytes=1)
    with pytest.raises(ValidationError, match="size_bytes"):
        ArtifactRef(key="models/a/1/model.onnx", sha256="ab" * 32, size_bytes=0)


def test_wrong_types_rejected() -> None:
    document = make_manifest().model_dump(mode="json")
    document["version"] = "three"
    with pytest.raises(ValidationError, match="version"):
        ModelManifest.model_validate(document)
    document = make_manifest().model_dump(mode="json")
    document["input"]["height"] = 10**9
    with pytest.raises(ValidationError, match="height"):
        ModelManifest.model_validate(document)
