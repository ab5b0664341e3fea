"""Letterbox preprocessing, bit-compatible with ultralytics' so boxes agree with its predict().

Resize keeping the aspect ratio, pad with grey 114 centred, BGR->RGB, HWC->NCHW, /255. The
inverse mapping brings boxes back to source pixels. ``cv2.dnn.blobFromImage`` does the
colour swap, transpose and scaling in one C++ pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.detections import Detections

PAD_VALUE = 114


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How one source image was fitted into the model input, to undo it on the boxes.

    The resize rounds each side to whole pixels, so the factors the image was really scaled
    by differ slightly per axis (1000x333 to 320: 0.32 across, 107/333 = 0.3213 down); the
    inverse uses the real ones. One factor for both axes (as ultralytics' ``scale_boxes``
    does) shifted boxes by up to 2.2 px on a 2448x2048 camera at 320.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    source_width: int
    source_height: int

    def to_source(self, detections: Detections) -> Detections:
        if len(detections) == 0:
            return detections
        boxes = detections.xyxy.copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale_x
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale_y
        # Assign, not clip(out=...): boxes[:, [0, 2]] is a copy (fancy indexing).
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, self.source_width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, self.source_height)
        return Detections(boxes, detections.confidence, detections.class_id)


@dataclass(frozen=True, slots=True)
class _Fit:
    new_w: int
    new_h: int
    top: int
    bottom: int
    left: int
    right: int


def _fit(src_h: int, src_w: int, height: int, width: int) -> _Fit:
    """Ultralytics' rounding: the resized size and the centred padding."""
    scale = min(height / src_h, width / src_w)
    new_w, new_h = round(src_w * scale), round(src_h * scale)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    return _Fit(new_w, new_h, round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))


def _pad(image: NDArray[np.uint8], fit: _Fit) -> NDArray[np.uint8]:
    if fit.top or fit.bottom or fit.left or fit.right:
        return cast(
            NDArray[np.uint8],
            cv2.copyMakeBorder(
                image,
                fit.top,
                fit.bottom,
                fit.left,
                fit.right,
                cv2.BORDER_CONSTANT,
                value=(PAD_VALUE,) * 3,
            ),
        )
    return image


def _mapping(fit: _Fit, src_h: int, src_w: int) -> Letterbox:
    return Letterbox(fit.new_w / src_w, fit.new_h / src_h, fit.left, fit.top, src_w, src_h)


def letterbox_image(
    image: NDArray[np.uint8], height: int, width: int
) -> tuple[NDArray[np.uint8], Letterbox]:
    """The padded BGR canvas and the mapping (ultralytics' rounding, centred padding)."""
    src_h, src_w = image.shape[:2]
    fit = _fit(src_h, src_w, height, width)
    if (fit.new_w, fit.new_h) != (src_w, src_h):
        image = cast(
            NDArray[np.uint8],
            cv2.resize(image, (fit.new_w, fit.new_h), interpolation=cv2.INTER_LINEAR),
        )
    return _pad(image, fit), _mapping(fit, src_h, src_w)


def letterbox_i420(
    planes: tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]],
    height: int,
    width: int,
) -> tuple[NDArray[np.uint8], Letterbox] | None:
    """The padded BGR canvas made from a decoded YUV 4:2:0 picture: the planes are resized
    first and converted at the model's size. From 1080p to 320 this costs 0.4 ms instead of
    1.7-2.6 ms for converting the whole picture and resizing it (2-core EPYC); the canvas
    differs by less than one grey level on average, so it is not bit-identical to
    ultralytics' path, which converts first. ``None`` when the resized size is odd (4:2:0
    needs even sides): use :func:`letterbox_image` on the BGR image then."""
    y, u, v = planes
    src_h, src_w = y.shape[:2]
    fit = _fit(src_h, src_w, height, width)
    if fit.new_w % 2 or fit.new_h % 2:
        return None
    half = (fit.new_w // 2, fit.new_h // 2)
    parts: list[NDArray[np.uint8]] = [y, u, v]
    if (fit.new_w, fit.new_h) != (src_w, src_h):
        sizes = ((fit.new_w, fit.new_h), half, half)
        parts = [
            cast(NDArray[np.uint8], cv2.resize(p, size, interpolation=cv2.INTER_LINEAR))
            for p, size in zip(parts, sizes, strict=True)
        ]
    i420 = np.concatenate([np.ascontiguousarray(p).ravel() for p in parts])
    bgr = cv2.cvtColor(i420.reshape(fit.new_h * 3 // 2, fit.new_w), cv2.COLOR_YUV2BGR_I420)
    return _pad(cast(NDArray[np.uint8], bgr), fit), _mapping(fit, src_h, src_w)


def blob_from_canvases(
    canvases: list[NDArray[np.uint8]], *, dtype: type = np.float32
) -> NDArray[np.floating]:
    """Letterboxed BGR canvases -> NCHW RGB tensor in [0, 1]."""
    blob = cast(NDArray[np.floating], cv2.dnn.blobFromImages(canvases, swapRB=True))
    # Divide (as ultralytics does) rather than multiply by 1/255: the two differ by one ulp
    # for some pixels, enough to flip boxes that sit exactly at a threshold.
    np.divide(blob, np.float32(255.0), out=blob)
    if dtype is not np.float32:
        blob = blob.astype(dtype)
    return blob


def letterbox(
    images: list[NDArray[np.uint8]], height: int, width: int, *, dtype: type = np.float32
) -> tuple[NDArray[np.floating], list[Letterbox]]:
    """Batch of BGR uint8 images -> NCHW RGB tensor in [0, 1] plus per-image mappings."""
    canvases = []
    boxes = []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.shape} {image.dtype}")
        canvas, mapping = letterbox_image(image, height, width)
        canvases.append(canvas)
        boxes.append(mapping)
    return blob_from_canvases(canvases, dtype=dtype), boxes
