"""The linefleet edge agent: cameras in, detections out, hard examples up, models in over OTA."""

from shared import __version__

__all__ = ["__version__"]
