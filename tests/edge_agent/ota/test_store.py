"""The model store's state machine on a real folder: fallbacks, rejection, identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.ota.store import ModelStore, ModelStoreError
from tests.edge_agent.ota.helpers import make_manifest


def install(store: ModelStore, tmp_path: Path, version: int, data: bytes) -> None:
    artifact = tmp_path / f"download-{version}"
    artifact.write_bytes(data)
    store.install(make_manifest(data, version), artifact)


def test_the_good_version_before_the_current_one_is_kept_for_a_later_rollback(
    tmp_path: Path,
) -> None:
    store = ModelStore(tmp_path / "models", keep_versions=2)
    for version in (2, 3, 4):
        install(store, tmp_path, version, f"model {version}".encode())
        store.activate(version)
        store.mark_good()
    state = store.state()
    assert (state.current, state.previous_good, state.prior_good) == (4, 4, 3)
    assert store.has(3), "the prior good version survives pruning"
    back = store.retreat()
    assert (back.current, back.previous_good, back.prior_good) == (3, 3, None)
    assert 4 in back.rejected
    with pytest.raises(ModelStoreError, match="no earlier good version"):
        store.retreat()


def test_a_state_file_from_before_prior_good_still_loads(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    old = {"current": 2, "previous_good": 2, "probation": False, "boot_attempts": 0}
    (tmp_path / "models" / "state.json").write_text(json.dumps({**old, "rejected": [5]}))
    state = store.state()
    assert state.current == 2 and state.prior_good is None and state.rejected == (5,)


def test_a_version_is_held_only_with_the_manifests_bytes(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    install(store, tmp_path, 2, b"first bytes")
    assert store.holds(make_manifest(b"first bytes", 2))
    assert not store.holds(make_manifest(b"other bytes", 2))
    store.model_path(2).write_bytes(b"first bytez")  # the file rotted on disk
    assert not store.holds(make_manifest(b"first bytes", 2))
