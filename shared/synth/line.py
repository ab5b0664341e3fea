"""Procedural conveyor frames with exact ground truth.

Parts are polygons in belt coordinates; their boxes are the bounds of the very points that
are drawn (after any camera warp), so labels are exact by construction. Everything random
comes from one seeded generator, so a (seed, drift) pair always yields the same frames.

Speed matters: this is the agent's default camera at 30 FPS. The belt texture, lighting map
and noise bank are computed once; a frame is a slice, a few ``fillPoly`` calls and
saturating OpenCV arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.detections import Detections
from shared.synth.drift import DriftPreset, get_drift

CLASS_NAMES: tuple[str, ...] = ("bolt", "nut", "washer", "bracket", "defect")
PART_CLASS_IDS: tuple[int, ...] = (0, 1, 2, 3)
DEFECT_CLASS_ID = 4

Image = NDArray[np.uint8]
Points = NDArray[np.float32]

# BGR colours: (regular, new variant).
_PART_COLOURS: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    0: ((150, 152, 158), (48, 46, 50)),  # bolt: steel / black oxide
    1: ((190, 172, 150), (50, 150, 205)),  # nut: zinc / brass
    2: ((212, 212, 208), (60, 190, 225)),  # washer: silver / yellow zinc
    3: ((30, 125, 230), (30, 125, 230)),  # bracket: orange paint either way
}
_DEFECT_COLOUR = (20, 50, 140)  # rust / burn mark
# Where a defect sits on each part (relative to its size); (0, 0) means "on the ring".
_DEFECT_ANCHORS: dict[int, tuple[float, float]] = {
    0: (0.22, 0.0),
    1: (0.0, 0.0),
    2: (0.0, 0.0),
    3: (0.12, -0.3),
}
_HOLE_COLOUR = (40, 40, 42)
_BELT_TOP = 56
_RAIL_COLOUR = (120, 118, 112)


class LineConfig(BaseModel):
    """How the line looks and moves; validated, no I/O."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(default=640, ge=128, le=4096)
    height: int = Field(default=640, ge=128, le=4096)
    fps: float = Field(default=30.0, gt=0, le=240)
    belt_speed_px: float = Field(default=6.0, ge=0.0, le=200.0, description="pixels per frame")
    min_parts: int = Field(default=2, ge=0, le=32)
    max_parts: int = Field(default=7, ge=1, le=32)
    part_size: tuple[int, int] = (56, 104)
    defect_probability: float = Field(default=0.25, ge=0.0, le=1.0)
    noise_level: int = Field(default=6, ge=0, le=64)
    seed: int = 0
    drift: str = "none"

    @model_validator(mode="after")
    def _parts_fit_the_belt(self) -> LineConfig:
        low, high = self.part_size
        if not 8 <= low <= high:
            raise ValueError("part_size must be (min, max) with 8 <= min <= max")
        if self.height - 2 * _BELT_TOP < high or self.width < high:
            raise ValueError(
                f"a {self.width}x{self.height} frame cannot hold parts up to {high} px between "
                f"the rails ({_BELT_TOP} px each): lower part_size or raise the frame size"
            )
        if self.min_parts > self.max_parts:
            raise ValueError("min_parts must not exceed max_parts")
        return self


@dataclass(frozen=True)
class SynthFrame:
    """One frame: BGR image (like a camera), exact labels, and where it came from."""

    index: int
    image: Image
    truth: Detections
    drift: str
    seed: int


@dataclass
class _Part:
    class_id: int
    x: float
    y: float
    size: float
    angle: float
    shade: float
    defect: tuple[float, float, float, float] | None  # dx, dy, rx, ry relative to size
    defect_seed: int = 0


@dataclass
class _Shape:
    """Polygons of one object in image coordinates: filled body, holes drawn over it.
    ``class_id`` None: drawn but not labelled (a defect's mark, labelled through its part)."""

    class_id: int | None
    body: list[Points]
    holes: list[Points] = field(default_factory=list)
    colour: tuple[int, int, int] = (0, 0, 0)
    outlined: bool = True


def _regular_polygon(sides: int, radius: float, phase: float = 0.0) -> Points:
    angles = np.arange(sides, dtype=np.float32) * (2 * math.pi / sides) + phase
    return np.stack([np.cos(angles) * radius, np.sin(angles) * radius], axis=1).astype(np.float32)


def _transform(points: Points, part: _Part) -> Points:
    c, s = math.cos(part.angle), math.sin(part.angle)
    rot = np.array([[c, -s], [s, c]], dtype=np.float32)
    return points @ rot.T + np.array([part.x, part.y], dtype=np.float32)


def _part_shapes(part: _Part, variant: bool) -> list[_Shape]:
    """The polygons of a part and of its defect's mark.

    A part that carries a defect is labelled ``defect`` with the part's own box: the sorter
    rejects *parts*, so that box is what a defect event must carry. The mark itself (5-8
    pixels at the detector's 320 input) was once its own label; no model ever found it
    (``benchmarks/defect_resolution.py``: a box that small cannot be located to IoU 0.5 at
    320, and ultralytics' assigner gives it no positive sample), while a defective part is an
    object the size of any other, told apart by the mark on it."""
    s = part.size
    base = _PART_COLOURS[part.class_id][1 if variant else 0]
    r, g, b = (int(min(255, max(0, ch * part.shade))) for ch in base)
    colour = (r, g, b)
    body: list[Points]
    holes: list[Points] = []
    if part.class_id == 0:  # bolt: hex head + shaft
        head_r = 0.24 if variant else 0.18
        shaft = np.array(
            [[-0.45, -0.08], [0.5, -0.08], [0.5, 0.08], [-0.45, 0.08]], dtype=np.float32
        )
        head = _regular_polygon(6, head_r) + np.array([-0.5, 0.0], dtype=np.float32)
        body = [shaft * s, head * s]
    elif part.class_id == 1:  # nut: hexagon (square when new variant) with a bore
        outer = _regular_polygon(4, 0.38, math.pi / 4) if variant else _regular_polygon(6, 0.36)
        body = [outer * s]
        holes = [_regular_polygon(16, 0.15) * s]
    elif part.class_id == 2:  # washer: ring
        body = [_regular_polygon(28, 0.34) * s]
        holes = [_regular_polygon(20, 0.16) * s]
    else:  # bracket: L profile with two holes
        body = [
            np.array(
                [
                    [-0.42, -0.42],
                    [0.42, -0.42],
                    [0.42, -0.18],
                    [-0.18, -0.18],
                    [-0.18, 0.42],
                    [-0.42, 0.42],
                ],
                dtype=np.float32,
            )
            * s
        ]
        holes = [
            (_regular_polygon(12, 0.06) + np.array([0.25, -0.3], dtype=np.float32)) * s,
            (_regular_polygon(12, 0.06) + np.array([-0.3, 0.25], dtype=np.float32)) * s,
        ]
    shapes = [
        _Shape(
            DEFECT_CLASS_ID if part.defect is not None else part.class_id,
            [_transform(p, part) for p in body],
            [_transform(h, part) for h in holes],
            colour,
        )
    ]
    if part.defect is not None:
        dx, dy, rx, ry = part.defect
        rng = np.random.default_rng(part.defect_seed)
        angles = np.linspace(0, 2 * math.pi, 11, endpoint=False, dtype=np.float32)
        radii = rng.uniform(0.65, 1.0, size=angles.shape).astype(np.float32)
        ring = np.stack([np.cos(angles) * rx * radii, np.sin(angles) * ry * radii], axis=1)
        blob: Points = ((ring + np.array([dx, dy])) * s).astype(np.float32)
        shapes.append(_Shape(None, [_transform(blob, part)], [], _DEFECT_COLOUR, outlined=False))
    return shapes


def _belt_texture(width: int, height: int, period: int, rng: np.random.Generator) -> Image:
    """A belt strip one seam period wider than the frame, so scrolling is a slice."""
    tex = np.empty((height, width + period, 3), dtype=np.uint8)
    grain = cv2.GaussianBlur(
        rng.normal(0, 4, size=(height, width + period)).astype(np.float32), (0, 0), 1.2
    )
    tex[...] = np.clip(72 + grain, 0, 255).astype(np.uint8)[..., None]
    for x in range(0, width + period, period):
        cv2.line(tex, (x, 0), (x, height - 1), (58, 58, 58), 2)
    tex[:_BELT_TOP] = _RAIL_COLOUR
    tex[height - _BELT_TOP :] = _RAIL_COLOUR
    cv2.line(tex, (0, _BELT_TOP), (width + period, _BELT_TOP), (90, 90, 88), 2)
    cv2.line(tex, (0, height - _BELT_TOP), (width + period, height - _BELT_TOP), (90, 90, 88), 2)
    return tex


class SyntheticLine:
    """A seeded conveyor. Use :meth:`frames` for a moving stream, :meth:`random_scene` for
    independent images (datasets)."""

    SEAM_PERIOD = 96

    def __init__(self, config: LineConfig | None = None, **overrides: object) -> None:
        base = config or LineConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        LineConfig.model_validate(self.config.model_dump())  # re-validate overrides
        self.drift: DriftPreset = get_drift(self.config.drift)
        cfg = self.config
        self._rng = np.random.default_rng(cfg.seed)
        self._belt = _belt_texture(cfg.width, cfg.height, self.SEAM_PERIOD, self._rng)
        self._gain = self._lighting_map()
        self._noise = self._noise_bank(4)
        self._homography = self._camera_homography()
        self._parts: list[_Part] = []
        self._index = 0
        self._offset = 0.0
        self._since_spawn = 1e9

    # ----------------------------------------------------------------- set-up
    def _lighting_map(self) -> Image | None:
        d = self.drift
        if d.brightness == 1.0 and d.tint == (1.0, 1.0, 1.0) and d.gradient == 0.0:
            return None
        w, h = self.config.width, self.config.height
        ramp = 1.0 - d.gradient * np.linspace(0.0, 1.0, w, dtype=np.float32)
        gain = np.empty((h, w, 3), dtype=np.float32)
        for ch in range(3):
            gain[..., ch] = ramp[None, :] * d.brightness * d.tint[ch]
        # Stored as uint8 in units of 1/128 so cv2.multiply(scale=1/128) applies it saturating.
        return cast(Image, np.clip(gain * 128.0, 0, 255).astype(np.uint8))

    def _noise_bank(self, count: int) -> list[tuple[Image, Image]]:
        level = self.config.noise_level
        if level == 0:
            return []
        bank = []
        shape = (self.config.height, self.config.width, 3)
        for _ in range(count):
            noise = self._rng.normal(0, level / 2, size=shape)
            bank.append(
                (
                    np.clip(noise, 0, 255).astype(np.uint8),
                    np.clip(-noise, 0, 255).astype(np.uint8),
                )
            )
        return bank

    def _camera_homography(self) -> NDArray[np.float64] | None:
        if self.drift.tilt == 0.0:
            return None
        w, h = self.config.width, self.config.height
        t = self.drift.tilt * w
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        dst = np.array([[t, t * 0.4], [w - t * 0.3, 0], [w, h], [0, h - t * 0.2]], dtype=np.float32)
        return cast(NDArray[np.float64], cv2.getPerspectiveTransform(src, dst))

    # ----------------------------------------------------------------- parts
    def _new_part(self, rng: np.random.Generator, x: float, y: float) -> _Part:
        lo, hi = self.config.part_size
        size = float(rng.uniform(lo, hi))
        defect = None
        class_id = int(rng.choice(PART_CLASS_IDS))
        if rng.random() < self.config.defect_probability:
            dx, dy = _DEFECT_ANCHORS[class_id]
            if dx == dy == 0.0:  # round parts: anywhere on the ring between bore and rim
                theta = float(rng.uniform(0, 2 * math.pi))
                dx, dy = 0.25 * math.cos(theta), 0.25 * math.sin(theta)
            defect = (
                dx,
                dy,
                float(rng.uniform(0.08, 0.11)),
                float(rng.uniform(0.06, 0.08)),
            )
        return _Part(
            class_id=class_id,
            x=x,
            y=y,
            size=size,
            angle=float(rng.uniform(0, 2 * math.pi)),
            shade=float(rng.uniform(0.85, 1.12)),
            defect=defect,
            defect_seed=int(rng.integers(0, 2**31)),
        )

    def _free_spot(self, part: _Part, others: list[_Part]) -> bool:
        return all(
            math.hypot(part.x - o.x, part.y - o.y) > 0.62 * (part.size + o.size) for o in others
        )

    def _lane(self, rng: np.random.Generator, margin: float) -> float:
        return float(rng.uniform(_BELT_TOP + margin, self.config.height - _BELT_TOP - margin))

    def _advance(self) -> None:
        cfg = self.config
        speed = cfg.belt_speed_px
        for part in self._parts:
            part.x += speed
        self._parts = [p for p in self._parts if p.x - p.size < cfg.width]
        self._offset = (self._offset + speed) % self.SEAM_PERIOD
        self._since_spawn += speed
        want_more = len(self._parts) < cfg.max_parts
        spacing = cfg.part_size[1] * 0.9
        if want_more and self._since_spawn >= spacing and self._rng.random() < 0.6:
            for _ in range(8):
                part = self._new_part(self._rng, -cfg.part_size[1] * 0.5, 0.0)
                part.y = self._lane(self._rng, part.size * 0.5)
                if self._free_spot(part, self._parts):
                    self._parts.append(part)
                    self._since_spawn = 0.0
                    break

    def _prime(self) -> None:
        """Fill the belt as if it had been running, so frame 0 is not empty."""
        cfg = self.config
        if cfg.belt_speed_px == 0:
            self._parts = self._scatter(self._rng)
            return
        steps = int(cfg.width / cfg.belt_speed_px) + 1
        for _ in range(steps):
            self._advance()

    def _scatter(self, rng: np.random.Generator) -> list[_Part]:
        cfg = self.config
        count = int(rng.integers(cfg.min_parts, cfg.max_parts + 1))
        parts: list[_Part] = []
        for _ in range(count * 10):
            if len(parts) >= count:
                break
            part = self._new_part(rng, 0.0, 0.0)
            half = part.size * 0.5
            part.x = float(rng.uniform(half, cfg.width - half))
            part.y = self._lane(rng, half)
            if self._free_spot(part, parts):
                parts.append(part)
        return parts

    # ----------------------------------------------------------------- render
    def _render(
        self, parts: list[_Part], offset: float, noise_index: int
    ) -> tuple[Image, Detections]:
        cfg = self.config
        x0 = int(offset)
        image = np.ascontiguousarray(self._belt[:, x0 : x0 + cfg.width])
        boxes: list[list[float]] = []
        classes: list[int] = []
        variant = self.drift.new_variant
        for part in parts:
            for shape in _part_shapes(part, variant):
                polys = [np.round(p * 16).astype(np.int32) for p in shape.body]
                cv2.fillPoly(image, polys, shape.colour, cv2.LINE_AA, shift=4)
                if shape.outlined:
                    edge = tuple(min(255, c + 40) for c in shape.colour)
                    cv2.polylines(image, polys, True, edge, 1, cv2.LINE_AA, shift=4)
                if shape.holes:
                    holes = [np.round(h * 16).astype(np.int32) for h in shape.holes]
                    cv2.fillPoly(image, holes, _HOLE_COLOUR, cv2.LINE_AA, shift=4)
                if shape.class_id is None:
                    continue
                points = np.concatenate(shape.body)
                if self._homography is not None:
                    warped = cv2.perspectiveTransform(points[None], self._homography)
                    points = cast(Points, warped[0])
                box = self._visible_box(points)
                if box is not None:
                    boxes.append(box)
                    classes.append(shape.class_id)
        image = self._apply_camera(image, noise_index)
        if not boxes:
            return image, Detections.empty()
        return image, Detections(boxes, np.ones(len(boxes), np.float32), classes)

    def _visible_box(self, points: Points) -> list[float] | None:
        w, h = self.config.width, self.config.height
        x1, y1 = points.min(axis=0)
        x2, y2 = points.max(axis=0)
        full = max(float((x2 - x1) * (y2 - y1)), 1e-6)
        cx1, cy1 = max(float(x1), 0.0), max(float(y1), 0.0)
        cx2, cy2 = min(float(x2), float(w)), min(float(y2), float(h))
        if cx2 - cx1 < 6 or cy2 - cy1 < 6:
            return None
        if (cx2 - cx1) * (cy2 - cy1) < 0.3 * full:
            return None
        return [cx1, cy1, cx2, cy2]

    def _apply_camera(self, image: Image, noise_index: int) -> Image:
        d = self.drift
        if self._homography is not None:
            image = cast(
                Image,
                cv2.warpPerspective(
                    image,
                    self._homography,
                    (self.config.width, self.config.height),
                    borderMode=cv2.BORDER_REPLICATE,
                ),
            )
        if d.motion_blur > 1:
            image = cast(Image, cv2.blur(image, (d.motion_blur, 1)))
        if self._gain is not None:
            image = cast(Image, cv2.multiply(image, self._gain, scale=1.0 / 128.0))
        if self._noise:
            plus, minus = self._noise[noise_index % len(self._noise)]
            cv2.add(image, plus, dst=image)
            cv2.subtract(image, minus, dst=image)
        return image

    # ----------------------------------------------------------------- public
    def next_frame(self) -> SynthFrame:
        """The next frame of the moving belt."""
        if self._index == 0:
            self._prime()
        else:
            self._advance()
        image, truth = self._render(self._parts, self._offset, self._index)
        frame = SynthFrame(self._index, image, truth, self.drift.name, self.config.seed)
        self._index += 1
        return frame

    def frames(self, count: int | None = None) -> Iterator[SynthFrame]:
        """Yield ``count`` consecutive frames (forever when ``None``)."""
        produced = 0
        while count is None or produced < count:
            yield self.next_frame()
            produced += 1

    def random_scene(self, index: int) -> SynthFrame:
        """An independent scene, a pure function of (seed, drift, index): for datasets."""
        rng = np.random.default_rng([self.config.seed, index, 0x5CE7E])
        parts = self._scatter(rng)
        offset = float(rng.uniform(0, self.SEAM_PERIOD))
        image, truth = self._render(parts, offset, int(rng.integers(0, 1 << 16)))
        return SynthFrame(index, image, truth, self.drift.name, self.config.seed)
