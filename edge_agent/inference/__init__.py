"""ONNX detection: letterbox, runtimes, YOLO decoding and NMS, and the errors a runner raises
(a model that cannot load, a run that fails)."""

from edge_agent.errors import InferenceError, ModelLoadError
from edge_agent.inference.backend import RUNTIMES, CancelToken, Runtime
from edge_agent.inference.decode import decode_nms_in_graph, decode_yolo_raw, nms
from edge_agent.inference.preprocess import (
    Letterbox,
    blob_from_canvases,
    letterbox,
    letterbox_i420,
    letterbox_image,
)
from edge_agent.inference.runner import (
    InferenceRunner,
    ModelInfo,
    RunnerOptions,
    intra_op_threads,
)

__all__ = [
    "RUNTIMES",
    "CancelToken",
    "InferenceError",
    "InferenceRunner",
    "Letterbox",
    "ModelInfo",
    "ModelLoadError",
    "RunnerOptions",
    "Runtime",
    "blob_from_canvases",
    "decode_nms_in_graph",
    "decode_yolo_raw",
    "intra_op_threads",
    "letterbox",
    "letterbox_i420",
    "letterbox_image",
    "nms",
]
