"""Named drift presets: the ways a real line changes under a deployed model.

Each preset is a small, frozen set of render parameters, so a drift is reproducible by name
in tests, benchmarks and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ContractError


@dataclass(frozen=True)
class DriftPreset:
    name: str
    description: str
    brightness: float = 1.0
    # Per-channel gain in BGR order (a warm lamp raises red).
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Strength of a left-to-right lighting fall-off, 0 = even lighting.
    gradient: float = 0.0
    # Motion-blur length in pixels along the belt (0 = sharp).
    motion_blur: int = 0
    # Perspective tilt: the camera is no longer square to the belt (fraction of width).
    tilt: float = 0.0
    # A new supplier's parts: other colours and shapes for the same classes.
    new_variant: bool = False


DRIFT_PRESETS: dict[str, DriftPreset] = {
    preset.name: preset
    for preset in (
        DriftPreset("none", "the line as the bootstrap model was trained on it"),
        DriftPreset(
            "lighting",
            "a lamp failed: darker, warmer, uneven light",
            brightness=0.6,
            tint=(0.75, 0.95, 1.3),
            gradient=0.45,
        ),
        DriftPreset(
            "new_variant",
            "a new supplier: brass square nuts, black-oxide bolts, yellow-zinc washers",
            new_variant=True,
        ),
        DriftPreset(
            "blur_angle",
            "the camera was knocked: tilted view and motion blur from a faster belt",
            motion_blur=9,
            tilt=0.16,
        ),
        DriftPreset(
            "new_variant_lighting",
            "new supplier parts under the failed lamp",
            brightness=0.7,
            tint=(0.8, 0.95, 1.2),
            gradient=0.3,
            new_variant=True,
        ),
    )
}


def get_drift(name: str) -> DriftPreset:
    try:
        return DRIFT_PRESETS[name]
    except KeyError as exc:
        raise ContractError(
            f"unknown drift preset {name!r}; choose one of {sorted(DRIFT_PRESETS)}"
        ) from exc
