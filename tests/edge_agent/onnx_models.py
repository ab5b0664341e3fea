"""Small hand-built ONNX models with the layouts of ultralytics exports, for fast tests.

``brightness_detector``: a real (if simple) detector. The image is average-pooled into
16x16-pixel cells; each cell proposes a 16x16 box, and class 0 scores high where the cell
is bright. A white square on black therefore yields a class-0 box where the square is.
The output is the raw YOLO head layout ``[B, 4+nc, N]`` (cx, cy, w, h, class scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CELL = 16
OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def brightness_detector(
    path: Path,
    *,
    size: int = 64,
    num_classes: int = 5,
    names: list[str] | None = None,
    dynamic_batch: bool = False,
    poison_nan: bool = False,
    nan_when_bright: bool = False,
    nan_when_dark: bool = False,
    with_metadata: bool = True,
    busy_nodes: int = 0,
    box_size: int = CELL,
) -> Path:
    """``busy_nodes``: a side chain of that many MatMuls (outputs unchanged; ~0.3 ms each on
    one core), for a model whose run is long enough to be cancelled mid-way. ``box_size``: the
    side of each proposed box (another size: the same detections, other boxes)."""
    grid = size // CELL
    n = grid * grid
    batch: int | str = "batch" if dynamic_batch else 1
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])
    output = helper.make_tensor_value_info(
        "output0", TensorProto.FLOAT, [batch, 4 + num_classes, n]
    )
    # Class 0 follows brightness (mean of RGB, steep sigmoid around 0.5); others stay low.
    weight = np.zeros((num_classes, 3, 1, 1), np.float32)
    weight[0, :, 0, 0] = 20.0 / 3.0
    bias = np.full((num_classes,), -8.0, np.float32)
    bias[0] = -10.0
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    boxes = np.stack(
        [
            (xs.reshape(-1) + 0.5) * CELL,
            (ys.reshape(-1) + 0.5) * CELL,
            np.full(n, box_size, np.float32),
            np.full(n, box_size, np.float32),
        ]
    ).astype(np.float32)[None]
    inits = [
        numpy_helper.from_array(weight, "W"),
        numpy_helper.from_array(bias, "B"),
        numpy_helper.from_array(boxes, "anchor_boxes"),
        numpy_helper.from_array(np.array([0, num_classes, n], np.int64), "score_shape"),
        numpy_helper.from_array(np.array([0, 1, n], np.int64), "one_shape"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array([np.nan if poison_nan else 0.0], np.float32), "poison"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", ["images"], ["pooled"], kernel_shape=[CELL, CELL], strides=[CELL, CELL]
        ),
        helper.make_node("Conv", ["pooled", "W", "B"], ["logits"]),
        helper.make_node("Reshape", ["logits", "score_shape"], ["logits_flat"]),
        helper.make_node("Sigmoid", ["logits_flat"], ["scores"]),
        helper.make_node("ReduceMean", ["pooled"], ["mean"], axes=[1], keepdims=1)
        if OPSET < 18
        else helper.make_node("ReduceMean", ["pooled"], ["mean"], keepdims=1),
        helper.make_node("Reshape", ["mean", "one_shape"], ["mean_flat"]),
        helper.make_node("Mul", ["mean_flat", "zero"], ["batch_zero"]),
        helper.make_node("Add", ["batch_zero", "anchor_boxes"], ["boxes_b"]),
        helper.make_node("Concat", ["boxes_b", "scores"], ["raw"], axis=1),
        helper.make_node("Add", ["raw", "poison"], ["poisoned"]),
    ]
    head = "poisoned"
    if busy_nodes:
        inits += [
            numpy_helper.from_array(np.array([-1, 64], np.int64), "rows_shape"),
            numpy_helper.from_array(np.array([16, 1], np.int64), "busy_repeats"),
            numpy_helper.from_array(np.eye(64, dtype=np.float32), "identity"),
        ]
        nodes += [
            helper.make_node("Reshape", ["images", "rows_shape"], ["busy_rows"]),
            helper.make_node("Tile", ["busy_rows", "busy_repeats"], ["busy0"]),
        ]
        nodes += [
            helper.make_node("MatMul", [f"busy{i}", "identity"], [f"busy{i + 1}"])
            for i in range(busy_nodes)
        ]
        nodes += [
            helper.make_node("ReduceMean", [f"busy{busy_nodes}"], ["busy_mean"], keepdims=0),
            helper.make_node("Mul", ["busy_mean", "zero"], ["busy_zero"]),
            helper.make_node("Add", [head, "busy_zero"], ["busy_out"]),
        ]
        head = "busy_out"
    if nan_when_bright or nan_when_dark:
        # sqrt(0.6 - mean) is NaN where a cell is bright, sqrt(mean - 0.2) where it is dark:
        # both pass warm-up (grey 0.45) and fail only on some real input.
        limit = 0.6 if nan_when_bright else 0.2
        inits.append(numpy_helper.from_array(np.array([limit], np.float32), "limit"))
        order = ["limit", "mean_flat"] if nan_when_bright else ["mean_flat", "limit"]
        nodes += [
            helper.make_node("Sub", order, ["headroom"]),
            helper.make_node("Sqrt", ["headroom"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
            helper.make_node("Add", [head, "nan_or_zero"], ["output0"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [head], ["output0"]))
    graph = helper.make_graph(nodes, "brightness_detector", [images], [output], inits)
    names = names or [f"c{i}" for i in range(num_classes)]
    metadata = (
        {
            "names": repr(dict(enumerate(names))),
            "imgsz": repr([size, size]),
            "task": "detect",
        }
        if with_metadata
        else {}
    )
    return _save(graph, path, metadata)


def nms_in_graph_model(path: Path, rows: list[list[float]], *, size: int = 64, k: int = 10) -> Path:
    """Outputs fixed ``[1, k, 6]`` rows (x1, y1, x2, y2, score, class), zero-padded."""
    table = np.zeros((1, k, 6), np.float32)
    for i, row in enumerate(rows):
        table[0, i] = row
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, k, 6])
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["table", "z"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "nms_table", [images], [output], inits)
    return _save(graph, path, {"names": repr({0: "a", 1: "b"})})


def wrong_rank_model(path: Path) -> Path:
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 64])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])], "rank3", [images], [output]
    )
    return _save(graph, path)
