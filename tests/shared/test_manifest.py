from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import SignatureError
from shared.manifest import ArtifactRef, ClassInfo, ModelManifest
from shared.signing import SigningKey, Verifier, signed_bytes
from tests.factories import NOW, make_manifest, make_variant


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


def test_a_manifest_without_variants_keeps_its_schema_1_bytes_and_signature() -> None:
    """Agents and signatures from before variants must not see a difference."""
    manifest = make_manifest()
    assert "variants" not in manifest.model_dump(mode="json")
    assert "variants" not in signed_bytes(manifest).decode()
    key = SigningKey.generate("k1")
    signed = key.sign(manifest)
    again = ModelManifest.model_validate_json(signed.model_dump_json())
    Verifier({"k1": key.private_key.public_key()}).verify(again)


def test_variants_round_trip_and_are_signed() -> None:
    manifest = make_manifest(
        schema_version=2, variants=[make_variant("int8"), make_variant("fp16")]
    )
    document = manifest.model_dump(mode="json")
    assert [v["precision"] for v in document["variants"]] == ["int8", "fp16"]
    again = ModelManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest
    assert again.variant("int8") == make_variant("int8")
    assert again.variant("fp16") is not None
    key = SigningKey.generate("k1")
    signed = key.sign(manifest)
    tampered = signed.model_copy(
        update={
            "variants": [
                make_variant(
                    "int8", metrics=make_variant().metrics.model_copy(update={"map50": 0.99})
                )
            ]
        }
    )
    with pytest.raises(SignatureError):
        Verifier({"k1": key.private_key.public_key()}).verify(tampered)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variants": [make_variant()]}, "schema_version 2"),
        ({"schema_version": 2, "variants": [make_variant(), make_variant()]}, "one variant per"),
        (
            {
                "schema_version": 2,
                "variants": [
                    make_variant(
                        artifact=ArtifactRef(
                            key="models/line-detector/3/model.onnx", sha256="cd" * 32, size_bytes=1
                        )
                    )
                ],
            },
            "its own artifact key",
        ),
        ({"schema_version": 2, "precision": "int8", "variants": [make_variant()]}, "fp32"),
        ({"schema_version": 2, "variants": [make_variant()] * 5}, "variants"),
        ({"schema_version": 3}, "schema_version"),
    ],
)
def test_bad_variants_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_manifest(**overrides)


def test_a_variant_outside_the_contract_is_refused() -> None:
    document = make_manifest(schema_version=2, variants=[make_variant()]).model_dump(mode="json")
    document["variants"][0]["precision"] = "int4"
    with pytest.raises(ValidationError, match="precision"):
        ModelManifest.model_validate(document)
    document["variants"][0].update(precision="int8", accelerator="npu")
    with pytest.raises(ValidationError, match="accelerator"):
        ModelManifest.model_validate(document)
    for runtimes, message in (
        ([], "runtimes"),
        (["tflite"], "runtimes"),
        (["openvino"] * 2, "distinct"),
    ):
        document["variants"][0].update(accelerator="cpu", runtimes=runtimes)
        with pytest.raises(ValidationError, match=message):
            ModelManifest.model_validate(document)
