"""The model registry in the bucket: ``models/{name}/{version}/`` plus ``models/{name}/index.json``.

Publishing never leaves a half-published model visible: a version is first *claimed* in the
index (status ``publishing``, conditional write), then the artifacts and the signed manifest
are uploaded, then the entry flips to ``published`` (conditional write again). Readers only
trust ``published`` entries. Every index write is an If-Match/If-None-Match write retried on a
lost race, so concurrent publishers never erase each other's entries.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from cloud_trainer.errors import (
    ModelNotFoundError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RegistryError,
)
from cloud_trainer.release.variants import VariantFile
from cloud_trainer.store import ObjectStore
from shared.digests import file_sha256
from shared.identifiers import Identifier
from shared.manifest import ArtifactRef, Lineage, ModelManifest, ModelVariant
from shared.messages import utc_now
from shared.object_keys import (
    MODELS,
    model_artifact_key,
    model_index_key,
    model_manifest_key,
    model_variant_key,
    model_weights_key,
)
from shared.signing import SigningKey, Verifier

log = logging.getLogger(__name__)

MAX_INDEX_BYTES = 8 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
INDEX_WRITE_ATTEMPTS = 20


class PublishStatus(StrEnum):
    """A registry entry's state: a version number is claimed (publishing) before its files are
    written, so two publishers never take the same number."""

    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"


class IndexEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    status: PublishStatus
    created_at: AwareDatetime
    updated_at: AwareDatetime
    manifest_key: str | None = None
    artifact_sha256: str | None = None
    map50: float | None = None
    map50_95: float | None = None
    training_run: Identifier | None = None
    dataset_version: Identifier | None = None
    parent_version: int | None = None
    note: str = Field(default="", max_length=500)


class RegistryIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    model_name: Identifier
    entries: list[IndexEntry] = Field(default_factory=list)

    def entry(self, version: int) -> IndexEntry | None:
        return next((e for e in self.entries if e.version == version), None)

    def published(self) -> list[IndexEntry]:
        return sorted(
            (e for e in self.entries if e.status is PublishStatus.PUBLISHED),
            key=lambda e: e.version,
        )

    def next_version(self) -> int:
        return max((e.version for e in self.entries), default=0) + 1


# (version, artifact, weights, variants) -> the manifest to sign
ManifestBuilder = Callable[
    [int, ArtifactRef, ArtifactRef | None, list[ModelVariant]], ModelManifest
]


@dataclass(frozen=True)
class PublishFiles:
    onnx: Path
    weights: Path | None = None
    # Variants that passed their gate against ``onnx`` (cloud_trainer.release.variants).
    variants: tuple[VariantFile, ...] = ()


@dataclass(frozen=True)
class FetchedModel:
    manifest: ModelManifest
    onnx: Path
    weights: Path | None


class ModelRegistry:
    def __init__(self, store: ObjectStore, name: str, *, verifier: Verifier | None = None) -> None:
        self.store = store
        self.name = name
        self.index_key = model_index_key(name)
        self._verifier = verifier
        self._conditional_checked = False

    # ----------------------------------------------------------------- index
    def read_index(self) -> tuple[RegistryIndex, str | None]:
        """The index and its ETag (None when it does not exist yet)."""
        try:
            body, etag = self.store.get(self.index_key, max_bytes=MAX_INDEX_BYTES)
        except ObjectNotFoundError:
            return RegistryIndex(model_name=self.name), None
        try:
            index = RegistryIndex.model_validate_json(body)
        except ValidationError as exc:
            raise RegistryError(
                f"s3://{self.store.bucket}/{self.index_key} is not a valid registry index: "
                f"{exc.error_count()} problem(s), first: {exc.errors()[0]['msg']}"
            ) from exc
        if index.model_name != self.name:
            raise RegistryError(f"{self.index_key} names model {index.model_name!r}")
        return index, etag

    def update_index(self, change: Callable[[RegistryIndex], None]) -> RegistryIndex:
        """Apply ``change`` to the latest index and write it conditionally; on a lost race,
        re-read and re-apply (``change`` must be idempotent on a fresh copy)."""
        for attempt in range(INDEX_WRITE_ATTEMPTS):
            index, etag = self.read_index()
            change(index)
            body = index.model_dump_json(indent=2).encode()
            try:
                if etag is None:
                    self.store.put(
                        self.index_key, body, content_type="application/json", if_none_match=True
                    )
                else:
                    self.store.put(
                        self.index_key, body, content_type="application/json", if_match=etag
                    )
            except PreconditionFailedError:
                time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
                continue
            return index
        raise RegistryError(
            f"could not update {self.index_key} after {INDEX_WRITE_ATTEMPTS} attempts: "
            "too many concurrent writers"
        )

    def _warn_if_unconditional(self) -> None:
        if self._conditional_checked:
            return
        self._conditional_checked = True
        if not self.store.supports_conditional_writes(f"{MODELS}/{self.name}/write-probe"):
            log.warning(
                "s3://%s ignores conditional writes (If-Match/If-None-Match): concurrent "
                "publishers of %s could overwrite each other's index entries; run one at a time",
                self.store.bucket,
                self.name,
            )

    # ----------------------------------------------------------------- reading models
    def latest_published(self) -> IndexEntry:
        published = self.read_index()[0].published()
        if not published:
            raise ModelNotFoundError(
                f"model line {self.name!r} has no published version in s3://{self.store.bucket}/"
                f"{MODELS}/{self.name}/: register a bootstrap model first "
                "(cloud-trainer models register)"
            )
        return published[-1]

    def manifest(self, version: int) -> ModelManifest:
        entry = self.read_index()[0].entry(version)
        if entry is None or entry.status is not PublishStatus.PUBLISHED:
            raise ModelNotFoundError(f"model {self.name!r} has no published version {version}")
        try:
            body, _ = self.store.get(
                model_manifest_key(self.name, version), max_bytes=MAX_MANIFEST_BYTES
            )
        except ObjectNotFoundError as exc:
            raise RegistryError(
                f"index lists {self.name} v{version} as published but its manifest is missing"
            ) from exc
        try:
            manifest = ModelManifest.model_validate_json(body)
        except ValidationError as exc:
            raise RegistryError(f"manifest of {self.name} v{version} is invalid: {exc}") from exc
        if self._verifier is not None:
            self._verifier.verify(manifest)
        return manifest

    def fetch(self, version: int, into: Path) -> FetchedModel:
        """Download a published version's ONNX (and .pt weights when present), sha256-checked."""
        manifest = self.manifest(version)
        folder = into / self.name / str(version)
        onnx = self.store.download(
            manifest.artifact.key, folder / "model.onnx", sha256=manifest.artifact.sha256
        )
        weights = None
        if manifest.weights is not None:
            weights = self.store.download(
                manifest.weights.key, folder / "model.pt", sha256=manifest.weights.sha256
            )
        return FetchedModel(manifest=manifest, onnx=onnx, weights=weights)

    # ----------------------------------------------------------------- publishing
    def publish(
        self,
        build: ManifestBuilder,
        files: PublishFiles,
        signer: SigningKey,
        *,
        lineage: Lineage,
        note: str = "",
    ) -> ModelManifest:
        """Claim the next version, upload, sign and mark published; returns the signed manifest.

        ``build`` makes the manifest once the version and uploaded artifacts are known. On any
        failure the claimed entry is marked ``failed`` and the error re-raised: nothing
        half-published is ever listed as published.
        """
        self._warn_if_unconditional()
        claimed: list[int] = []

        def claim(index: RegistryIndex) -> None:
            version = index.next_version()
            now = utc_now()
            index.entries.append(
                IndexEntry(
                    version=version,
                    status=PublishStatus.PUBLISHING,
                    created_at=now,
                    updated_at=now,
                    training_run=lineage.training_run,
                    dataset_version=lineage.dataset_version,
                    parent_version=lineage.parent_version,
                    note=note,
                )
            )
            claimed[:] = [version]

        self.update_index(claim)
        version = claimed[0]
        try:
            signed = self._upload_version(build, files, signer, version)
        except BaseException as exc:
            self._mark(version, PublishStatus.FAILED, note=f"publish failed: {str(exc)[:300]}")
            raise
        self._mark(version, PublishStatus.PUBLISHED, manifest=signed)
        log.info("published %s v%d", self.name, version)
        return signed

    def _upload_version(
        self, build: ManifestBuilder, files: PublishFiles, signer: SigningKey, version: int
    ) -> ModelManifest:
        artifact = self._upload_file(files.onnx, model_artifact_key(self.name, version))
        weights = None
        if files.weights is not None:
            weights = self._upload_file(files.weights, model_weights_key(self.name, version))
        variants = [
            variant.manifest_entry(
                self._upload_file(
                    variant.path, model_variant_key(self.name, version, variant.precision)
                )
            )
            for variant in files.variants
        ]
        manifest = build(version, artifact, weights, variants)
        if manifest.model_name != self.name or manifest.version != version:
            raise RegistryError(
                f"manifest builder made {manifest.model_name} v{manifest.version}, "
                f"expected {self.name} v{version}"
            )
        signed = signer.sign(manifest)
        self.store.put(
            model_manifest_key(self.name, version),
            json.dumps(signed.model_dump(mode="json"), indent=2).encode(),
            content_type="application/json",
        )
        return signed

    def _upload_file(self, path: Path, key: str) -> ArtifactRef:
        size = path.stat().st_size
        digest = file_sha256(path)
        self.store.upload(path, key)
        return ArtifactRef(key=key, sha256=digest, size_bytes=size)

    def _mark(
        self,
        version: int,
        status: PublishStatus,
        *,
        manifest: ModelManifest | None = None,
        note: str | None = None,
    ) -> None:
        def change(index: RegistryIndex) -> None:
            entry = index.entry(version)
            if entry is None:  # someone deleted our claim; put it back
                entry = IndexEntry(
                    version=version,
                    status=PublishStatus.PUBLISHING,
                    created_at=utc_now(),
                    updated_at=utc_now(),
                )
                index.entries.append(entry)
            entry.status = status
            entry.updated_at = utc_now()
            if note is not None:
                entry.note = note[:500]
            if manifest is not None:
                entry.manifest_key = model_manifest_key(self.name, version)
                entry.artifact_sha256 = manifest.artifact.sha256
                if manifest.metrics is not None:
                    entry.map50 = manifest.metrics.map50
                    entry.map50_95 = manifest.metrics.map50_95
            index.entries.sort(key=lambda e: e.version)

        self.update_index(change)


def describe(entry: IndexEntry) -> str:
    created: datetime = entry.created_at
    metrics = (
        f"mAP50 {entry.map50:.3f} mAP50-95 {entry.map50_95:.3f}"
        if entry.map50 is not None and entry.map50_95 is not None
        else "no metrics"
    )
    return (
        f"v{entry.version:<4} {entry.status:<10} {created:%Y-%m-%d %H:%M}Z  {metrics}"
        f"  run {entry.training_run or '-'}  dataset {entry.dataset_version or '-'}"
    )
