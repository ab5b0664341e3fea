"""ONNX detection: letterbox, onnxruntime session, YOLO decoding and NMS."""

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
    "InferenceRunner",
    "Letterbox",
    "ModelInfo",
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
