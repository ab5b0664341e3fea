"""Registry against real S3 servers: conditional index writes, no half-published versions."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from cloud_trainer.config import StorageSection
from cloud_trainer.errors import ModelNotFoundError, RegistryError, StorageError
from cloud_trainer.release.model_registry import ModelRegistry, PublishFiles
from cloud_trainer.release.variants import VariantFile
from cloud_trainer.store import ObjectStore
from shared.manifest import ArtifactRef, EvalMetrics, Lineage, ModelManifest, ModelVariant
from shared.object_keys import model_artifact_key
from shared.signing import SigningKey, Verifier
from testing.local_services import NanioS3Process
from tests.factories import make_manifest

KEY = SigningKey.generate("reg-test")


def builder(name: str) -> object:
    def build(
        version: int,
        artifact: ArtifactRef,
        weights: ArtifactRef | None,
        variants: list[ModelVariant],
    ) -> ModelManifest:
        return make_manifest().model_copy(
            update={
                "schema_version": 2 if variants else 1,
                "model_name": name,
                "version": version,
                "artifact": artifact,
                "weights": weights,
                "variants": variants,
                "lineage": Lineage(training_run=f"run-{version}"),
            }
        )

    return build


def files(tmp_path: Path, tag: str) -> PublishFiles:
    onnx = tmp_path / f"{tag}.onnx"
    onnx.write_bytes(b"onnx-" + tag.encode())
    weights = tmp_path / f"{tag}.pt"
    weights.write_bytes(b"pt-" + tag.encode())
    return PublishFiles(onnx=onnx, weights=weights)


def test_publish_signs_uploads_and_lists(store: ObjectStore, tmp_path: Path) -> None:
    verifier = Verifier({"reg-test": KEY.private_key.public_key()})
    registry = ModelRegistry(store, "line-a", verifier=verifier)
    with pytest.raises(ModelNotFoundError, match="register a bootstrap model first"):
        registry.latest_published()
    signed = registry.publish(builder("line-a"), files(tmp_path, "a"), KEY, lineage=Lineage())
    assert signed.version == 1 and signed.key_id == "reg-test"
    assert registry.latest_published().version == 1
    assert registry.manifest(1) == signed  # verified on read
    fetched = registry.fetch(1, tmp_path / "cache")
    assert fetched.onnx.read_bytes() == b"onnx-a"
    assert fetched.weights is not None and fetched.weights.read_bytes() == b"pt-a"
    assert signed.schema_version == 1 and signed.variants == []


def test_variants_are_uploaded_beside_the_model_and_signed_with_it(
    store: ObjectStore, tmp_path: Path
) -> None:
    registry = ModelRegistry(
        store, "line-a", verifier=Verifier({"reg-test": KEY.private_key.public_key()})
    )
    int8 = tmp_path / "model.int8.onnx"
    int8.write_bytes(b"int8 bytes")
    metrics = EvalMetrics(map50=0.7, map50_95=0.4, per_class_recall={"bolt": 0.9}, images=40)
    with_variant = dataclasses.replace(
        files(tmp_path, "a"), variants=(VariantFile("int8", int8, metrics, ("onnxruntime",)),)
    )
    signed = registry.publish(builder("line-a"), with_variant, KEY, lineage=Lineage())
    (variant,) = registry.manifest(signed.version).variants  # verified on read
    assert (variant.precision, variant.accelerator, variant.metrics) == ("int8", "cpu", metrics)
    assert variant.runtimes == ["onnxruntime"]
    assert variant.artifact.key == "models/line-a/1/model.int8.onnx"
    assert store.get(variant.artifact.key)[0] == b"int8 bytes"
    assert variant.artifact.sha256 == hashlib.sha256(b"int8 bytes").hexdigest()


def test_concurrent_publishers_never_lose_or_share_a_version(
    store: ObjectStore, tmp_path: Path
) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def publish(tag: str) -> None:
        try:
            registry = ModelRegistry(store, "line-a")  # one registry object per writer
            manifest = registry.publish(
                builder("line-a"), files(tmp_path, tag), KEY, lineage=Lineage()
            )
            results.append(manifest.version)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    index, _ = ModelRegistry(store, "line-a").read_index()
    assert [e.version for e in index.published()] == [1, 2, 3, 4, 5, 6]


def test_a_failed_upload_is_marked_failed_and_never_published(
    store: ObjectStore, tmp_path: Path
) -> None:
    registry = ModelRegistry(store, "line-a")
    registry.publish(builder("line-a"), files(tmp_path, "ok"), KEY, lineage=Lineage())
    broken = PublishFiles(onnx=tmp_path / "ok.onnx", weights=tmp_path / "missing.pt")
    with pytest.raises((StorageError, OSError)):
        registry.publish(builder("line-a"), broken, KEY, lineage=Lineage())
    index, _ = registry.read_index()
    assert [(e.version, e.status) for e in index.entries] == [(1, "published"), (2, "failed")]
    assert registry.latest_published().version == 1
    with pytest.raises(ModelNotFoundError):
        registry.manifest(2)


def test_tampered_artifact_and_corrupt_index_are_refused(
    store: ObjectStore, tmp_path: Path
) -> None:
    registry = ModelRegistry(store, "line-a")
    registry.publish(builder("line-a"), files(tmp_path, "a"), KEY, lineage=Lineage())
    store.put(model_artifact_key("line-a", 1), b"swapped")
    with pytest.raises(StorageError, match="does not match"):
        registry.fetch(1, tmp_path / "cache")
    store.put(registry.index_key, b'{"schema_version": 1, "model_name": "line-a", "entries": 5}')
    with pytest.raises(RegistryError, match="not a valid registry index"):
        registry.read_index()


def test_stores_that_ignore_conditions_are_detected(
    nanio: NanioS3Process, nanio_client: Any
) -> None:
    nanio_client.create_bucket(Bucket="lf-cond")
    store = ObjectStore.from_config(
        StorageSection(
            bucket="lf-cond",
            endpoint_url=nanio.endpoint_url,
            access_key_id=nanio.access_key,
            secret_access_key=nanio.secret_key,  # type: ignore[arg-type]
        )
    )
    assert store.supports_conditional_writes("models/x/write-probe") is False


def test_moto_enforces_conditions(store: ObjectStore) -> None:
    assert store.supports_conditional_writes("models/x/write-probe") is True
