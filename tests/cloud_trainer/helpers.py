"""Paths of the trainer tests' fixtures."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP_PT = REPO / "artifacts" / "bootstrap-yolov8n-320.pt"
