"""The layering rule, read from the source: shared <- edge_agent <- cloud_trainer, and product
code never imports the ``testing`` harnesses.

The trainer may use the agent only through ``edge_agent.inference`` (its public API): the gate
must measure a candidate through the very code that will run it on the box, and nothing else of
the agent belongs in the trainer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("shared", "edge_agent", "cloud_trainer")
# What each product package may import from the others: None, the whole package; otherwise the
# names a package exports at its top (``from edge_agent.inference import InferenceRunner``), not
# its inner modules.
ALLOWED: dict[str, dict[str, tuple[str, ...] | None]] = {
    "shared": {},
    "edge_agent": {"shared": None},
    "cloud_trainer": {"shared": None, "edge_agent": ("edge_agent.inference",)},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _is_public_name(name: str, packages: tuple[str, ...], root: Path) -> bool:
    """``name`` is ``<package>.<exported name>``, and not one of the package's own modules."""
    parent, _, leaf = name.rpartition(".")
    if parent not in packages:
        return False
    folder = root.joinpath(*parent.split("."))
    return not ((folder / f"{leaf}.py").exists() or (folder / leaf).is_dir())


def _violations(package: str, root: Path = REPO) -> list[str]:
    allowed = ALLOWED[package]
    problems = []
    for path in sorted((root / package).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".", 1)[0]
            if top == package or top not in {*PRODUCT, "testing"}:
                continue
            where = f"{path.relative_to(root)}:{line} imports {name}"
            if top not in allowed:
                problems.append(where)
                continue
            public = allowed[top]
            if public is not None and not _is_public_name(name, public, root):
                problems.append(where)
    return problems


@pytest.mark.parametrize("package", PRODUCT)
def test_product_packages_respect_the_layers(package: str) -> None:
    assert _violations(package) == []


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: upward, harness and non-public imports are all found."""
    (tmp_path / "edge_agent").mkdir()
    (tmp_path / "edge_agent" / "bad.py").write_text(
        "from cloud_trainer.release import gate\nimport testing.local_services\n"
        "from shared.messages import Heartbeat\n",
        "utf-8",
    )
    (tmp_path / "cloud_trainer").mkdir()
    (tmp_path / "cloud_trainer" / "bad.py").write_text(
        "from edge_agent.ota.store import ModelStore\nfrom edge_agent.inference import letterbox\n"
        "from edge_agent.inference.runner import RunnerOptions\n",
        "utf-8",
    )
    assert _violations("edge_agent", tmp_path) == [
        "edge_agent/bad.py:1 imports cloud_trainer.release.gate",
        "edge_agent/bad.py:2 imports testing.local_services",
    ]
    (tmp_path / "edge_agent" / "inference").mkdir()
    (tmp_path / "edge_agent" / "inference" / "runner.py").write_text("", "utf-8")
    assert _violations("cloud_trainer", tmp_path) == [
        "cloud_trainer/bad.py:1 imports edge_agent.ota.store.ModelStore",
        "cloud_trainer/bad.py:3 imports edge_agent.inference.runner.RunnerOptions",
    ]
