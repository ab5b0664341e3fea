"""The linefleet cloud trainer: hard examples in, gated and signed models out, staged rollouts."""

from shared import __version__

__all__ = ["__version__"]
