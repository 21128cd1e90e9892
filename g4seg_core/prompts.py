"""Coarse priors as annotators give them, and their rasterisation to a probability map.

A `Prompt` holds whatever the annotator drew, in image pixels: a mask, polygons, a box, positive
and negative points, scribbles. `rasterize_prompt` turns it into a float32 probability map at
image size; the refiner and the classic engines all start from that map. Hard shapes (mask,
polygon) give 0/1; a box or points alone say less about the object, so they give an uncertain
value that puts the whole region into the refiner's confusion area.

The image edge, one rule for every kind: a shape that touches or overshoots the edge is clipped
to the image (a polygon or a stroke geometrically, a box to the image's rectangle, a click is kept
when it lies on the image, edge included); a shape with nothing left inside the image is an error.
A box given with its corners reversed is put in order. `edge_notes` says, in words, what clipping
and ordering did, so every entry point (CLI, server, CVAT) can report it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from g4seg_core.errors import PromptError


@dataclass(frozen=True)
class PriorConfig:
    box_prob: float = 0.6  # inside a box: the object is probably there, but where exactly is open
    point_radius: float = 0.02  # disc around a clicked point, as a fraction of the image diagonal
    point_context_radius: float = 0.12  # uncertain region around positive points given alone
    point_context_prob: float = 0.6
    scribble_width: float = 0.01  # stroke width, fraction of the diagonal
    scribble_context_radius: float = 0.06  # uncertain halo around a scribble given alone


@dataclass
class Prompt:
    """An annotator's rough input for one object or class, in pixel coordinates (x right, y down)."""

    mask: np.ndarray | None = None  # HxW, bool or 0/255 or probabilities in [0,1]
    polygons: list[list[tuple[float, float]]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    positive_points: list[tuple[float, float]] = field(default_factory=list)
    negative_points: list[tuple[float, float]] = field(default_factory=list)
    scribbles: list[list[tuple[float, float]]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return (
            self.mask is None
            and not self.polygons
            and self.box is None
            and not self.positive_points
            and not self.scribbles
        )


def _as_probability(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.ndim != 2:
        raise PromptError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    if mask.shape != (height, width):
        raise PromptError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
    if mask.dtype == bool:
        return mask.astype(np.float32)
    m = mask.astype(np.float32)
    if m.max() > 1.0:  # 0/255 PNGs
        m = m / 255.0
    return np.clip(m, 0.0, 1.0)


def _coordinates(points, what: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(arr)):
        raise PromptError(f"{what} has non-finite coordinates")
    return arr


def _outside(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    return (arr[:, 0] < 0) | (arr[:, 0] > width) | (arr[:, 1] < 0) | (arr[:, 1] > height)


def _check_clicks(points, height: int, width: int, what: str) -> np.ndarray:
    """Clicks as an array; a click off the image has nothing to clip to and is an error."""
    arr = _coordinates(points, what)
    outside = _outside(arr, height, width)
    if outside.any():
        x, y = arr[outside][0]
        raise PromptError(f"{what} point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return arr


def clip_polygon(points, height: int, width: int) -> np.ndarray:
    """The polygon cut to the image rectangle (Sutherland-Hodgman; concave polygons keep their
    area inside, with zero-width seams along the edge that filling ignores). May be empty."""
    poly = list(map(tuple, _coordinates(points, "polygon")))
    for axis, bound, keep_below in ((0, 0.0, False), (0, float(width), True), (1, 0.0, False), (1, float(height), True)):
        if not poly:
            break
        inside = (lambda p: p[axis] <= bound) if keep_below else (lambda p: p[axis] >= bound)
        out = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            if inside(cur) != inside(prev):  # the edge crosses the bound: add the crossing point
                f = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = [prev[0] + f * (cur[0] - prev[0]), prev[1] + f * (cur[1] - prev[1])]
                cross[axis] = bound
                out.append(tuple(cross))
            if inside(cur):
                out.append(cur)
        poly = out
    return np.asarray(poly, dtype=np.float64).reshape(-1, 2)


def order_box(box) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 with x0 <= x1 and y0 <= y1 (the corners may be given in any order)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise PromptError("box has non-finite coordinates")
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def clip_box(box, height: int, width: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = order_box(box)
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise PromptError(f"box is empty or lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def edge_notes(prompt: "Prompt", height: int, width: int) -> list[str]:
    """What the image-edge rule does to this prompt, one sentence each (empty when nothing)."""
    notes = []
    for i, poly in enumerate(prompt.polygons):
        arr = _coordinates(poly, "polygon")
        if _outside(arr, height, width).any():
            notes.append(f"polygon {i + 1} reaches past the {width}x{height} image: clipped to it")
    for i, stroke in enumerate(prompt.scribbles):
        if _outside(_coordinates(stroke, "scribble"), height, width).any():
            notes.append(f"scribble {i + 1} reaches past the {width}x{height} image: clipped to it")
    if prompt.box is not None:
        x0, y0, x1, y1 = (float(v) for v in prompt.box)
        ordered = order_box(prompt.box)
        if (x0, y0, x1, y1) != ordered:
            notes.append(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has its corners reversed: put in order")
        if ordered[0] < 0 or ordered[1] < 0 or ordered[2] > width or ordered[3] > height:
            c = clip_box(prompt.box, height, width)
            notes.append(f"box reaches past the {width}x{height} image: clipped to ({c[0]:g}, {c[1]:g}, {c[2]:g}, {c[3]:g})")
    return notes


def polygon_area(points) -> float:
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = arr[:, 0], arr[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def rasterize_polygon(points, height: int, width: int) -> np.ndarray:
    """Filled polygon as a bool mask (OpenCV's fill: pixels the outline passes through count as
    inside), clipped to the image."""
    arr = _coordinates(points, "polygon")
    if len(arr) < 3:
        raise PromptError(f"polygon needs at least 3 points, got {len(arr)}")
    if polygon_area(arr) < 1.0:
        raise PromptError("polygon is degenerate (its area is under one pixel)")
    arr = clip_polygon(arr, height, width)
    if len(arr) < 3 or polygon_area(arr) <= 0.0:
        raise PromptError(f"polygon lies outside the {width}x{height} image")
    canvas = np.zeros((height, width), np.uint8)
    # Pixel centres sit at integer coordinates + 0.5: shift so OpenCV's integer grid matches.
    shift = 4
    pts = np.round((arr - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return canvas.astype(bool)


def _pixel(x: float, y: float, height: int, width: int) -> tuple[int, int]:
    """The (column, row) a point falls in; a point on the right or bottom edge is in the last pixel."""
    return min(int(np.floor(x)), width - 1), min(int(np.floor(y)), height - 1)


def _disc_mask(centres: np.ndarray, radius: float, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    r = max(1, int(round(radius)))
    for x, y in centres:
        cv2.circle(canvas, _pixel(x, y, height, width), r, 1, thickness=-1)
    return canvas.astype(bool)


def _clip_segment(a: np.ndarray, b: np.ndarray, x0: float, y0: float, x1: float, y1: float):
    """The part of segment a-b inside the rectangle (Liang-Barsky), or None."""
    d = b - a
    t0, t1 = 0.0, 1.0
    for p, q in ((-d[0], a[0] - x0), (d[0], x1 - a[0]), (-d[1], a[1] - y0), (d[1], y1 - a[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        r = q / p
        if p < 0:
            t0 = max(t0, r)
        else:
            t1 = min(t1, r)
        if t0 > t1:
            return None
    return a + t0 * d, a + t1 * d


def rasterize_scribble(points, height: int, width: int, thickness: float) -> np.ndarray:
    """A stroke through the points, `thickness` pixels wide, clipped to the image."""
    arr = _coordinates(points, "scribble")
    if len(arr) < 1:
        raise PromptError("scribble has no points")
    t = max(1, int(round(thickness)))
    canvas = np.zeros((height, width), np.uint8)
    if len(arr) == 1:
        (x, y), = _check_clicks(arr, height, width, "scribble")
        cv2.circle(canvas, _pixel(x, y, height, width), max(1, t // 2), 1, thickness=-1)
        return canvas.astype(bool)
    # Each segment cut to the image (plus the stroke's half-width), then drawn in the pixel it falls in.
    pad = t / 2 + 1
    for a, b in zip(arr[:-1], arr[1:]):
        part = _clip_segment(a, b, -pad, -pad, width + pad, height + pad)
        if part is not None:
            p0, p1 = (tuple(int(v) for v in np.floor(q)) for q in part)
            cv2.line(canvas, p0, p1, 1, thickness=t)
    if not canvas.any():
        raise PromptError(f"scribble lies outside the {width}x{height} image")
    return canvas.astype(bool)


def box_mask(box, height: int, width: int) -> np.ndarray:
    """The pixels inside the box (corners in any order), clipped to the image."""
    x0, y0, x1, y1 = clip_box(box, height, width)
    out = np.zeros((height, width), bool)
    # Pixel (i, j) is inside when its centre (j + 0.5, i + 0.5) is.
    c0, c1 = int(np.ceil(x0 - 0.5)), int(np.floor(x1 - 0.5))
    r0, r1 = int(np.ceil(y0 - 0.5)), int(np.floor(y1 - 0.5))
    out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out


def rasterize_prompt(prompt: Prompt, height: int, width: int, config: PriorConfig | None = None) -> np.ndarray:
    """The prompt as a float32 HxW foreground probability map.

    Order: hard region (mask | polygons) or else the box (uncertain inside); scribbles are
    foreground; positive points are foreground discs (with an uncertain halo when nothing else
    gives the region); negative points carve background discs out of everything.
    """
    cfg = config or PriorConfig()
    if prompt.is_empty():
        raise PromptError("nothing to refine: the prompt has no mask, polygon, box, positive point or scribble")
    diag = float(np.hypot(height, width))
    prob = np.zeros((height, width), np.float32)
    hard_region = False
    if prompt.mask is not None:
        prob = np.maximum(prob, _as_probability(np.asarray(prompt.mask), height, width))
        hard_region = True
    for poly in prompt.polygons:
        prob[rasterize_polygon(poly, height, width)] = 1.0
        hard_region = True
    if prompt.box is not None:
        inside = box_mask(prompt.box, height, width)
        if hard_region:
            prob[~inside] = 0.0  # the box bounds the hard region
        else:
            prob[inside] = np.maximum(prob[inside], cfg.box_prob)
    region_given = hard_region or prompt.box is not None
    for stroke in prompt.scribbles:
        line = rasterize_scribble(stroke, height, width, cfg.scribble_width * diag)
        if not region_given:
            halo = cv2.dilate(line.astype(np.uint8), _kernel(cfg.scribble_context_radius * diag)).astype(bool)
            prob[halo] = np.maximum(prob[halo], cfg.point_context_prob)
        prob[line] = 1.0
    if prompt.positive_points:
        pts = _check_clicks(prompt.positive_points, height, width, "positive")
        if not region_given and not prompt.scribbles:
            halo = _disc_mask(pts, cfg.point_context_radius * diag, height, width)
            prob[halo] = np.maximum(prob[halo], cfg.point_context_prob)
        prob[_disc_mask(pts, cfg.point_radius * diag, height, width)] = 1.0
    if prompt.negative_points:
        pts = _check_clicks(prompt.negative_points, height, width, "negative")
        prob[_disc_mask(pts, cfg.point_radius * diag, height, width)] = 0.0
    if not (prob > 0).any():
        raise PromptError("the prompt covers no pixel of the image")
    return prob


def _kernel(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def prompt_constraints(prompt: Prompt, height: int, width: int, config: PriorConfig | None = None):
    """Pixels the annotator fixed: (forced foreground, forced background), bool HxW each.

    Clicked points are certain about their disc; a box bounds the object. Engines apply these
    after refinement so a refined mask never contradicts a click or leaves its box.
    """
    cfg = config or PriorConfig()
    diag = float(np.hypot(height, width))
    force_fg = np.zeros((height, width), bool)
    force_bg = np.zeros((height, width), bool)
    if prompt.box is not None:
        force_bg |= ~box_mask(prompt.box, height, width)
    if prompt.positive_points:
        pts = _check_clicks(prompt.positive_points, height, width, "positive")
        force_fg |= _disc_mask(pts, cfg.point_radius * diag, height, width)
    if prompt.negative_points:
        pts = _check_clicks(prompt.negative_points, height, width, "negative")
        neg = _disc_mask(pts, cfg.point_radius * diag, height, width)
        force_bg |= neg
        force_fg &= ~neg
    return force_fg, force_bg


def mask_polygons(mask: np.ndarray, tolerance: float = 1.0, min_area: float = 4.0) -> list[list[tuple[float, float]]]:
    """A mask as simple polygons, one per connected part, in pixel coordinates (the inverse of
    `rasterize_polygon`: vertices on pixel centres, x + 0.5 and y + 0.5).

    Outlines come from OpenCV's border following and are simplified by Douglas-Peucker
    (`tolerance` pixels). Tools that take plain polygons (Label Studio's among them) have no holes,
    so each hole is joined to its part's outline by a zero-width cut ("keyhole"): the polygon
    runs out along the cut, round the hole the other way, and back; filled, it leaves the hole
    empty. Parts under `min_area` pixels (specks) are dropped; a part nested in another's hole
    is a part of its own.
    """
    binary = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    if binary.ndim != 2:
        raise PromptError(f"mask must be 2-D (HxW), got shape {binary.shape}")
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]

    def simplified(contour) -> np.ndarray:
        approx = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
        return approx.reshape(-1, 2).astype(np.float64) + 0.5

    out = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:  # a hole: handled with its part
            continue
        outline = simplified(contour)
        if len(outline) < 3 or polygon_area(outline) < min_area:
            continue
        holes = []
        child = hierarchy[index][2]
        while child != -1:
            hole = simplified(contours[child])
            if len(hole) >= 3 and polygon_area(hole) >= min_area:
                holes.append(hole)
            child = hierarchy[child][0]
        for hole in sorted(holes, key=lambda h: _gap(outline, h)[2]):
            outline = _keyhole(outline, hole)
        out.append([(float(x), float(y)) for x, y in outline])
    return out


def _gap(outline: np.ndarray, hole: np.ndarray) -> tuple[int, int, float]:
    """The closest pair of vertices (index in outline, index in hole, distance)."""
    distances = np.hypot(*(outline[:, None, :] - hole[None, :, :]).transpose(2, 0, 1))
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    return int(i), int(j), float(distances[i, j])


def _keyhole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`outline` with `hole` cut out through a zero-width slit between their closest vertices."""
    i, j, _ = _gap(outline, hole)
    around = np.concatenate([hole[j:], hole[: j + 1]])  # the hole from its joint back to its joint
    return np.concatenate([outline[: i + 1], around, outline[i:]])
