"""The install promises of the README: the edge extra stays light."""

from __future__ import annotations

import re
from importlib.metadata import requires

HEAVY = {"torch", "torchvision", "ultralytics"}


def _extra_requirements(extra: str) -> set[str]:
    names = set()
    for requirement in requires("linefleet") or []:
        if f'extra == "{extra}"' in requirement:
            names.add(re.split(r"[\s<>=!\[;]", requirement, maxsplit=1)[0].lower())
    return names


def test_edge_extras_pull_no_torch() -> None:
    for extra in ("edge", "edge-gpu"):
        names = _extra_requirements(extra)
        assert names, f"extra {extra} not found in the installed metadata"
        assert not names & HEAVY, f"{extra} pulls {names & HEAVY}"


def test_gpu_extra_does_not_also_install_cpu_onnxruntime() -> None:
    names = _extra_requirements("edge-gpu")
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_trainer_pins_the_torch_on_this_disk() -> None:
    pins = [r for r in requires("linefleet") or [] if r.startswith(("torch", "torchvision"))]
    assert any("torch==2.14.1" in p for p in pins)
    assert any("torchvision==0.29.1" in p for p in pins)
