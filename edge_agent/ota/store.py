"""Models on disk: ``versions/<n>/{model.onnx,manifest.json}`` and one atomic state file.

``state.json`` names the current version, the last version known good, and whether the
current one is still on probation. It is replaced with write-temp, fsync, rename, fsync-dir,
so after a power loss it is either the old or the new state, never a torn one. A version
directory is complete before the state can point at it. ``boot_attempts`` counts starts of a
version on probation: a model that crashes the agent on load is rolled back by the next
start, not retried forever.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from edge_agent.errors import EdgeAgentError
from edge_agent.inference.variants import variant_path
from shared.digests import file_sha256
from shared.manifest import ModelManifest

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class ModelStoreError(EdgeAgentError):
    """The model store on disk is unreadable or could not be written."""


@dataclass(frozen=True)
class StoreState:
    current: int | None = None
    previous_good: int | None = None
    probation: bool = False
    boot_attempts: int = 0
    # Versions that failed here: never installed again (unless explicitly rolled back to).
    rejected: tuple[int, ...] = ()
    # The good version before the current one, kept on disk: where the lifetime health
    # watch rolls back to once the current version has left probation.
    prior_good: int | None = None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class ModelStore:
    def __init__(self, root: Path, *, keep_versions: int = 3) -> None:
        self.root = root
        self.versions = root / "versions"
        self.downloads = root / "downloads"
        self.keep_versions = max(keep_versions, 2)
        try:
            self.versions.mkdir(parents=True, exist_ok=True)
            self.downloads.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelStoreError(f"cannot create the model store in {root}: {exc}") from exc
        self._state_path = root / "state.json"
        self._proven_path = root / "proven.json"

    # ----------------------------------------------------------------- state
    def state(self) -> StoreState:
        try:
            raw = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return StoreState()
        except (OSError, ValueError) as exc:
            raise ModelStoreError(f"model store state {self._state_path} is unreadable") from exc
        raw["rejected"] = tuple(raw.get("rejected", ()))
        return StoreState(**raw)

    def _write(self, state: StoreState) -> None:
        atomic_write(self._state_path, json.dumps(asdict(state)).encode())

    def version_dir(self, version: int) -> Path:
        return self.versions / str(version)

    def has(self, version: int) -> bool:
        return (self.version_dir(version) / MODEL_FILE).is_file() and (
            self.version_dir(version) / MANIFEST_FILE
        ).is_file()

    def holds(self, manifest: ModelManifest) -> bool:
        """The artifact ``manifest`` names is installed, byte for byte: same version, same
        digest in the stored manifest and of the file itself. A version number alone never
        identifies a model (a re-signed manifest may name other bytes; a file may rot)."""
        if not self.has(manifest.version):
            return False
        try:
            stored = self.manifest(manifest.version)
            path = self.model_path(manifest.version)
            return (
                stored.artifact.sha256 == manifest.artifact.sha256
                and path.stat().st_size == manifest.artifact.size_bytes
                and file_sha256(path) == manifest.artifact.sha256
            )
        except (ModelStoreError, OSError):
            return False

    # ----------------------------------------------------------------- proven models
    def record_proven(self, sha256: str, latency_s: float) -> None:
        """Remember that the artifact ``sha256`` ran well here, and its one-frame latency on
        this box's line: a signed rollback to it is measured against that, not against the
        model it replaces (which may be faster because it is broken)."""
        proven = self._proven()
        proven[sha256] = latency_s
        # Bounded: the newest entries are the ones a rollback can still target.
        kept = dict(list(proven.items())[-20:])
        atomic_write(self._proven_path, json.dumps(kept).encode())

    def proven_latency_s(self, sha256: str) -> float | None:
        return self._proven().get(sha256)

    def _proven(self) -> dict[str, float]:
        try:
            raw = json.loads(self._proven_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a lost record only makes a rollback meet the usual latency check
        if not isinstance(raw, dict):
            return {}
        return {
            str(k): float(v)
            for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        }

    def discard(self, version: int) -> None:
        """Delete a refused version's files (never the current or the fallback version)."""
        state = self.state()
        if version in (state.current, state.previous_good, state.prior_good):
            return
        shutil.rmtree(self.version_dir(version), ignore_errors=True)

    def manifest(self, version: int) -> ModelManifest:
        path = self.version_dir(version) / MANIFEST_FILE
        try:
            return ModelManifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise ModelStoreError(f"stored manifest {path} is unreadable: {exc}") from exc

    def model_path(self, version: int) -> Path:
        return self.version_dir(version) / MODEL_FILE

    # ----------------------------------------------------------------- changes
    def install(
        self,
        manifest: ModelManifest,
        artifact: Path,
        variants: Mapping[str, Path] | None = None,
    ) -> Path:
        """Move a verified artifact, and the verified variants fetched for this box
        (precision -> file), into ``versions/<n>/`` (complete before it is ever used)."""
        target = self.version_dir(manifest.version)
        staging = self.versions / f".staging-{manifest.version}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        artifact.replace(staging / MODEL_FILE)
        for precision, path in (variants or {}).items():
            path.replace(variant_path(staging / MODEL_FILE, precision))
        atomic_write(staging / MANIFEST_FILE, manifest.model_dump_json().encode())
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
        fsync_dir(self.versions)
        return target / MODEL_FILE

    def activate(self, version: int) -> StoreState:
        """Point at ``version``, on probation; the running one becomes the fallback."""
        state = self.state()
        fallback = state.current if state.current != version else state.previous_good
        if state.probation and state.previous_good is not None:
            fallback = state.previous_good  # never fall back to an unproven version
        new = replace(
            state, current=version, previous_good=fallback, probation=True, boot_attempts=0
        )
        self._write(new)
        return new

    def mark_good(self) -> StoreState:
        state = self.state()
        prior = state.previous_good if state.previous_good != state.current else state.prior_good
        new = replace(
            state,
            previous_good=state.current,
            probation=False,
            boot_attempts=0,
            prior_good=prior,
        )
        self._write(new)
        self.prune()
        return new

    def rollback(self) -> StoreState:
        """Back to the previous good version; the failed one is remembered as rejected."""
        state = self.state()
        rejected = state.rejected
        if state.current is not None and state.current != state.previous_good:
            rejected = tuple(sorted({*rejected, state.current}))[-50:]
        new = replace(
            state,
            current=state.previous_good,
            probation=False,
            boot_attempts=0,
            rejected=rejected,
        )
        self._write(new)
        return new

    def retreat(self) -> StoreState:
        """A proven version turned bad on the line: back to the good version before it
        (``prior_good``), and the current one is rejected."""
        state = self.state()
        if state.prior_good is None or state.current is None:
            raise ModelStoreError("no earlier good version on this box to go back to")
        new = replace(
            state,
            current=state.prior_good,
            previous_good=state.prior_good,
            probation=False,
            boot_attempts=0,
            rejected=tuple(sorted({*state.rejected, state.current}))[-50:],
            prior_good=None,
        )
        self._write(new)
        return new

    def clear_rejection(self, version: int) -> None:
        state = self.state()
        self._write(replace(state, rejected=tuple(v for v in state.rejected if v != version)))

    def record_boot(self) -> StoreState:
        """Count a start of the current version while it is on probation."""
        state = self.state()
        if not state.probation:
            return state
        new = replace(state, boot_attempts=state.boot_attempts + 1)
        self._write(new)
        return new

    def prune(self) -> None:
        state = self.state()
        keep = {v for v in (state.current, state.previous_good, state.prior_good) if v is not None}
        installed = sorted(
            (int(p.name) for p in self.versions.iterdir() if p.name.isdigit()), reverse=True
        )
        for version in installed[self.keep_versions :]:
            if version not in keep:
                shutil.rmtree(self.version_dir(version), ignore_errors=True)
