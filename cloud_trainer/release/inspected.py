"""The detector with its part inspector fused in, exported as one ONNX file with the detector's
own raw output (``[B, 4 + classes, anchors]``) and metadata: the agent's runtime, the gate,
the variants and OTA need nothing new.

Inside the graph: the ``top_k`` anchors with the highest summed class score are grouped into
parts (non-maximum suppression at :data:`SAME_PART_IOU`); each part's mean box is cropped
from the input (``RoiAlign``) and classified; every anchor takes the verdict of the part its
box overlaps most (IoU >= :data:`SAME_PART_IOU`, so all anchors of one part agree before the
agent's NMS). An anchor's confidence ``s`` is then shared out: ``s * p`` to the attribute
class, ``s * (1 - p)`` to the part type the detector scored highest, in proportion to the
detector's type scores.

Why one crop per part: a part has several anchors among the top ones (on the synthetic line
4-7 parts fill the 64 top anchors), and cropping each of them was most of the inspector's cost
(the model call took 1.65x the detector's, ``RoiAlign``, the crops' convolutions and the
anchors-to-crops IoU its largest shares; 1.18x with one crop a part, accuracy unchanged:
benchmarks/inspector.py). The inspector costs one crop of ``crop`` px per part seen, at most
``top_k``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_trainer.config import ExportSection
from cloud_trainer.errors import ExportError
from cloud_trainer.training.inspector import TrainedInspector, crop_boxes

if TYPE_CHECKING:
    import torch

# An anchor takes a top anchor's verdict when their boxes overlap at least this much.
SAME_PART_IOU = 0.5


def raw_head(output: Any) -> Any:
    """The raw head ``[B, 4 + classes, anchors]`` of a detector's forward (ultralytics returns
    it first in a tuple in eval mode)."""
    return output[0] if isinstance(output, list | tuple) else output


def _membership(iou: torch.Tensor) -> torch.Tensor:
    """How much a box belongs to a part it overlaps by ``iou``: 0 up to :data:`SAME_PART_IOU`,
    rising to 1 at IoU 1. Continuous, so a box at the threshold cannot jump in or out."""
    return ((iou - SAME_PART_IOU) / (1.0 - SAME_PART_IOU)).clamp(min=0.0)


def _part_boxes(
    boxes: torch.Tensor, evidence: torch.Tensor, image: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """The box to crop for each part NMS ``kept``: the mean of the boxes of its image that
    belong to it, weighted by ``evidence`` and :func:`_membership`.

    Why not the kept box itself: of two anchors of a part that score within a rounding error
    of each other, torch and onnxruntime can keep different ones, and a crop a few pixels
    off can move the verdict (by 0.03 in a demo run); the mean barely moves."""
    from torchvision.ops import box_iou  # noqa: PLC0415

    same_image = (image[:, None] == image[kept][None, :]).to(boxes.dtype)  # [N, P]
    weight = _membership(box_iou(boxes, boxes[kept])) * same_image
    weight = weight * evidence.clamp(min=1e-6)[:, None]  # the kept box always counts
    return (weight.transpose(0, 1) @ boxes) / weight.sum(dim=0)[:, None]


def _module(detector: Any, inspector: TrainedInspector) -> torch.nn.Module:
    import torch  # noqa: PLC0415
    from torchvision.ops import batched_nms, box_convert, box_iou  # noqa: PLC0415

    class InspectedDetector(torch.nn.Module):  # type: ignore[misc]  # torch is Any here
        def __init__(self) -> None:
            super().__init__()
            self.detector = detector
            self.inspector = inspector.network
            self.attribute = inspector.attribute_class_id
            self.crop = inspector.crop
            self.top_k = inspector.top_k

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            raw = raw_head(self.detector(images))  # [B, 4 + nc, A]
            boxes, scores = raw[:, :4], raw[:, 4:]
            batch, classes, anchors = scores.shape
            # How sure the detector is of a part there, whatever its class: the sum, as a
            # fine-tuned detector torn between a type and the attribute splits its score
            # between them (a clean bolt at 0.2 bolt and 0.2 defect is a part at 0.4).
            # Parts are ranked by the unclamped sum: clamped, every confident anchor ties
            # at 1.0, and torch and onnxruntime break ties in different orders.
            evidence = scores.sum(dim=1)  # [B, A]
            confidence = evidence.clamp(max=1.0)
            xyxy = box_convert(boxes.transpose(1, 2), "cxcywh", "xyxy")  # [B, A, 4]
            k = min(self.top_k, anchors)
            top = evidence.topk(k, dim=1)  # [B, K]
            top_boxes = xyxy.gather(1, top.indices[..., None].expand(batch, k, 4)).reshape(-1, 4)
            top_image = torch.arange(batch, device=images.device).repeat_interleave(k)
            # One box a part; NMS keeps each image's best anchor, so every image has a part.
            parts = batched_nms(top_boxes, top.values.reshape(-1), top_image, SAME_PART_IOU)
            part_image = top_image[parts]  # [P]
            part_boxes = _part_boxes(top_boxes, top.values.reshape(-1), top_image, parts)
            crops = crop_boxes(images, part_boxes, part_image, self.crop)
            verdict = self.inspector(crops).softmax(dim=1)[:, 1]  # [P]
            anchor_image = torch.arange(batch, device=images.device).repeat_interleave(anchors)
            overlap = box_iou(xyxy.reshape(-1, 4), part_boxes)  # [B * A, P]
            overlap = overlap * (anchor_image[:, None] == part_image[None, :]).to(overlap.dtype)
            best, nearest = overlap.max(dim=1)
            p = verdict[nearest] * (best >= SAME_PART_IOU).to(verdict.dtype)
            p = p.reshape(batch, anchors)
            is_attribute = torch.zeros(classes, dtype=torch.bool, device=images.device)
            is_attribute[self.attribute] = True
            types = scores.masked_fill(is_attribute[None, :, None], 0.0)
            share = types / types.max(dim=1, keepdim=True).values.clamp(min=1e-6)
            as_type = share * (confidence * (1.0 - p))[:, None]
            as_attribute = (confidence * p)[:, None].expand(batch, classes, anchors)
            out = torch.where(is_attribute[None, :, None], as_attribute, as_type)
            return torch.cat([boxes, out], dim=1)

    return InspectedDetector().eval()


def inspected_torch_model(weights: Path, inspector: TrainedInspector) -> torch.nn.Module:
    """The fused model in torch, as exported (for the export's parity check)."""
    from ultralytics import YOLO  # noqa: PLC0415 - trainer only

    detector = YOLO(str(weights)).model.float().eval()
    return _module(detector, inspector)


def export_inspected(
    weights: Path,
    inspector: TrainedInspector,
    detector_onnx: Path,
    out: Path,
    *,
    imgsz: int,
    config: ExportSection,
) -> Path:
    """Export the fused model to ``out`` with the metadata of ``detector_onnx`` (ultralytics'
    export of the same weights: class names, input size, stride), which the agent reads."""
    import onnx  # noqa: PLC0415
    import torch  # noqa: PLC0415

    model = inspected_torch_model(weights, inspector)
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    dynamic = {"images": {0: "batch"}, "output0": {0: "batch"}} if config.dynamic_batch else None
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (dummy,),
                str(out),
                opset_version=config.opset,
                input_names=["images"],
                output_names=["output0"],
                dynamic_axes=dynamic,
                dynamo=False,
            )
        fused = onnx.load(str(out))
        source = onnx.load(str(detector_onnx), load_external_data=False)
        del fused.metadata_props[:]
        fused.metadata_props.extend(source.metadata_props)
        # The crops' TopK hides the output's shape from the tracer; the agent reads
        # [batch, 4 + classes, anchors] from the graph, as the detector declares it.
        fused.graph.output[0].type.CopyFrom(source.graph.output[0].type)
        onnx.save(fused, str(out))
    except Exception as exc:
        raise ExportError(f"ONNX export of {weights} with its inspector failed: {exc}") from exc
    return out
