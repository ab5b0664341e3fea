"""The project's own synthetic production line: seeded conveyor frames with exact labels.

It is the embedded default camera of the agent, the test data, and in the demo the
"labeler" that stands in for people labeling hard examples.
"""

from shared.synth.dataset import write_yolo_dataset
from shared.synth.drift import DRIFT_PRESETS, DriftPreset, get_drift
from shared.synth.line import CLASS_NAMES, DEFECT_CLASS_ID, LineConfig, SyntheticLine, SynthFrame

__all__ = [
    "CLASS_NAMES",
    "DEFECT_CLASS_ID",
    "DRIFT_PRESETS",
    "DriftPreset",
    "LineConfig",
    "SynthFrame",
    "SyntheticLine",
    "get_drift",
    "write_yolo_dataset",
]
