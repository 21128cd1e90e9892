"""Coarse masks as annotators and weak segmenters make them, from an exact mask.

Every generator is a pure function of the mask (and a `numpy.random.Generator` where it is
random), and `make_prompt` wraps its output in a `Prompt`, so every engine rasterises the coarse
input the same way the labeling tool's input is rasterised:

- `polygon:V` / `polygon:Tpx`: an annotator's polygon, simplified to at most V vertices per part,
  or with tolerance T pixels (Douglas-Peucker).            -> Prompt.polygons
- `dilate:R`, `erode:R`: a brush stroke that spills over, or stays inside, by R pixels.
- `jitter:A`: a wobbly outline, the boundary moved by a smooth random field of at most A pixels.
- `lowres:F`: a weak segmenter's output, F times smaller, upsampled and thresholded.
- `pred`: a base method's own mask, supplied by the caller (`g4seg bench --coarse pred:DIR`).
                                                          -> Prompt.mask
- `box[:M]`: the bounding box, M pixels looser.            -> Prompt.box
- `points[:K[:N]]`: K clicks inside the object (and N just outside it). -> Prompt points
- `scribble[:K]`: a stroke through K points inside the object.  -> Prompt.scribbles

Coordinates follow `prompts.py`: x right, y down, pixel (row i, col j) has its centre at
(j + 0.5, i + 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from g4seg_core.errors import SettingError
from g4seg_core.evaluation.metrics import disk
from g4seg_core.prompts import PriorConfig, Prompt, rasterize_scribble

COARSE_KINDS = ("polygon", "dilate", "erode", "jitter", "lowres", "box", "points", "scribble", "pred")
DEFAULT_COARSE = "polygon:8,dilate:10,lowres:16,box"


@dataclass(frozen=True)
class CoarseSpec:
    """One kind of coarse input with its parameters; `name` is how reports label it."""

    kind: str
    vertices: int | None = None  # polygon
    tolerance: float | None = None  # polygon, in pixels
    radius: int = 0  # dilate, erode
    amplitude: float = 0.0  # jitter, pixels
    factor: int = 0  # lowres
    margin: int = 0  # box, pixels
    positives: int = 0  # points
    negatives: int = 0  # points
    scribble_points: int = 0  # scribble
    source: str | None = None  # pred: where the caller reads the base method's masks
    name: str = ""


def _int_arg(kind: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingError(f"coarse {kind}: {text!r} is not a whole number") from None
    if value < minimum:
        raise SettingError(f"coarse {kind}: {value} is below the minimum {minimum}")
    return value


def parse_coarse_item(item: str) -> CoarseSpec:
    item = item.strip()
    kind, _, rest = item.partition(":")
    kind = kind.strip().lower()
    args = rest.split(":") if rest else []
    if kind not in COARSE_KINDS:
        raise SettingError(f"unknown coarse kind {kind!r} in {item!r} (choose from {', '.join(COARSE_KINDS)})")
    if kind == "pred":
        if not rest:
            raise SettingError("coarse pred needs a folder of the base method's masks: pred:DIR")
        return CoarseSpec("pred", source=rest, name="pred")
    max_args = {"points": 2}.get(kind, 1)
    if len(args) > max_args:
        raise SettingError(f"coarse {kind} takes at most {max_args} argument(s), got {item!r}")
    if kind == "polygon":
        arg = args[0] if args else "8"
        if arg.endswith("px"):
            try:
                tol = float(arg[:-2])
            except ValueError:
                raise SettingError(f"coarse polygon: {arg!r} is not a tolerance like 2.5px") from None
            if not (tol >= 0 and math.isfinite(tol)):
                raise SettingError("coarse polygon: the tolerance must be >= 0 pixels")
            return CoarseSpec("polygon", tolerance=tol, name=f"polygon:{tol:g}px")
        v = _int_arg(kind, arg, 4)
        return CoarseSpec("polygon", vertices=v, name=f"polygon:{v}")
    if kind in ("dilate", "erode"):
        if not args:
            raise SettingError(f"coarse {kind} needs a radius in pixels: {kind}:R")
        r = _int_arg(kind, args[0], 1)
        return CoarseSpec(kind, radius=r, name=f"{kind}:{r}")
    if kind == "jitter":
        if not args:
            raise SettingError("coarse jitter needs an amplitude in pixels: jitter:A")
        try:
            a = float(args[0])
        except ValueError:
            raise SettingError(f"coarse jitter: {args[0]!r} is not a number") from None
        if not (a > 0 and math.isfinite(a)):
            raise SettingError("coarse jitter: the amplitude must be > 0 pixels")
        return CoarseSpec("jitter", amplitude=a, name=f"jitter:{a:g}")
    if kind == "lowres":
        if not args:
            raise SettingError("coarse lowres needs a downsampling factor: lowres:F")
        f = _int_arg(kind, args[0], 2)
        return CoarseSpec("lowres", factor=f, name=f"lowres:{f}")
    if kind == "box":
        m = _int_arg(kind, args[0], 0) if args else 0
        return CoarseSpec("box", margin=m, name=f"box:{m}" if m else "box")
    if kind == "points":
        k = _int_arg(kind, args[0], 1) if args else 1
        n = _int_arg(kind, args[1], 0) if len(args) > 1 else 0
        return CoarseSpec("points", positives=k, negatives=n, name=f"points:{k}" + (f":{n}" if n else ""))
    k = _int_arg(kind, args[0], 1) if args else 4  # scribble
    return CoarseSpec("scribble", scribble_points=k, name=f"scribble:{k}")


def parse_coarse(spec: str) -> list[CoarseSpec]:
    """`polygon:8,dilate:10,lowres:16,box,points:3,scribble,erode:5,jitter:4` -> specs.

    `pred:DIR` takes the rest of its item as the folder, so a folder name may contain colons
    but not commas.
    """
    items = [s for s in (spec or "").split(",") if s.strip()]
    if not items:
        raise SettingError("no coarse kind given (e.g. --coarse polygon:8,dilate:10,lowres:16,box)")
    specs = [parse_coarse_item(s) for s in items]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SettingError(f"coarse kind listed twice in {spec!r}")
    return specs


# ---- generators (pure functions of the mask) ------------------------------------------------------

def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("cannot make a coarse input from an empty mask")
    return mask


def _inside_distance(mask: np.ndarray) -> np.ndarray:
    """Distance from each mask pixel to the nearest background pixel (0 outside the mask)."""
    if mask.all():
        return np.full(mask.shape, float(max(mask.shape)))
    return ndimage.distance_transform_edt(mask)


def _core(mask: np.ndarray) -> np.ndarray:
    """The innermost pixels of a mask: what remains when shrinking would leave nothing."""
    depth = _inside_distance(mask)
    return depth >= depth.max()


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Every pixel within Euclidean distance `radius` of the mask."""
    mask = _check_mask(mask)
    return cv2.dilate(mask.astype(np.uint8), disk(radius)) > 0


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Mask pixels farther than `radius` from any background pixel (the image edge is not
    background); a mask thinner than 2 * radius keeps its innermost pixels."""
    mask = _check_mask(mask)
    out = cv2.erode(mask.astype(np.uint8), disk(radius)) > 0
    return out if out.any() else _core(mask)


def jitter(mask: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """The boundary moved in and out by a smooth random field bounded by `amplitude` pixels.

    Signed distance (+ inside, - outside, +-0.5 at the boundary pixels) plus the field, thresholded
    at 0: no pixel farther than amplitude + 0.5 from the boundary changes side.
    """
    mask = _check_mask(mask)
    h, w = mask.shape
    signed = np.where(mask, _inside_distance(mask) - 0.5, -(ndimage.distance_transform_edt(~mask) - 0.5))
    # Smooth noise: a coarse grid (cell ~3x the amplitude, so the outline wobbles rather than
    # frays) upsampled bicubically, scaled to std amplitude/2 and clipped to +-amplitude.
    cell = max(2, int(round(3 * amplitude)))
    coarse = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
    field = cv2.resize(coarse, ((w // cell + 3) * cell, (h // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    field = field[cell : cell + h, cell : cell + w]
    field = np.clip(field / (field.std() + 1e-6), -2.0, 2.0) * (amplitude / 2.0)
    out = (signed + field) > 0
    return out if out.any() else _core(mask)


def lowres(mask: np.ndarray, factor: int) -> np.ndarray:
    """Area-downsample by `factor`, upsample bilinearly, threshold at 0.5. May be empty: a
    low-resolution segmenter misses objects smaller than its cells."""
    mask = _check_mask(mask)
    h, w = mask.shape
    small = cv2.resize(mask.astype(np.float32), (max(1, math.ceil(w / factor)), max(1, math.ceil(h / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixel-edge coordinates: the tight box grown by `margin`, within the image."""
    mask = _check_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        float(max(0, cols[0] - margin)),
        float(max(0, rows[0] - margin)),
        float(min(w, cols[-1] + 1 + margin)),
        float(min(h, rows[-1] + 1 + margin)),
    )


def _simplify(contour: np.ndarray, vertices: int | None, tolerance: float | None) -> np.ndarray:
    if tolerance is not None:
        return cv2.approxPolyDP(contour, tolerance, closed=True)
    if len(contour) <= vertices:
        return contour
    # The smallest Douglas-Peucker tolerance that leaves at most `vertices` points.
    lo, hi = 0.0, float(cv2.arcLength(contour, True))
    best = cv2.approxPolyDP(contour, hi, closed=True)
    for _ in range(40):
        mid = (lo + hi) / 2
        approx = cv2.approxPolyDP(contour, mid, closed=True)
        if len(approx) <= vertices:
            best, hi = approx, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best


def polygon_outlines(mask: np.ndarray, vertices: int | None = None, tolerance: float | None = None,
                     min_part: float = 0.01) -> list[list[tuple[float, float]]]:
    """One simplified polygon per connected part (parts under `min_part` of the largest are
    skipped, as annotators skip crumbs; holes are not drawn)."""
    if (vertices is None) == (tolerance is None):
        raise ValueError("give either vertices or tolerance")
    if vertices is not None and vertices < 4:
        raise ValueError("a polygon needs at least 4 vertices here")
    mask = _check_mask(mask)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    areas = [int(np.prod(cv2.boundingRect(c)[2:])) for c in contours]  # part size, by its box
    polygons = []
    for contour, area in sorted(zip(contours, areas), key=lambda ca: -ca[1]):
        if area < min_part * max(areas):
            continue
        pts = _simplify(contour, vertices, tolerance).reshape(-1, 2).astype(np.float64) + 0.5
        if len(pts) < 3 or _area(pts) < 1.0:
            # A part one pixel thick: its bounding rectangle, inset by 0.1 px so that the
            # rasteriser (1/16-pixel grid, edges inclusive) touches no neighbouring pixel; a single
            # pixel keeps its full square, as the rasteriser needs an area of at least 1.
            x, y, bw, bh = cv2.boundingRect(contour)
            inset = 0.1 if (bw - 0.2) * (bh - 0.2) >= 1.0 else 0.0
            x0, y0, x1, y1 = x + inset, y + inset, x + bw - inset, y + bh - inset
            pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
        polygons.append([(float(px), float(py)) for px, py in pts])
    return polygons


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _centre(rc: np.ndarray) -> tuple[float, float]:
    return float(rc[1]) + 0.5, float(rc[0]) + 0.5


def _deep_pixels(mask: np.ndarray, min_depth: float) -> np.ndarray:
    """(row, col) of mask pixels at least half as deep as the deepest one, and at least
    `min_depth` deep when the object allows it."""
    depth = _inside_distance(mask)
    top = depth.max()
    return np.argwhere(depth >= max(top / 2.0, min(top, min_depth)))


def sample_points(mask: np.ndarray, positives: int, negatives: int, rng: np.random.Generator,
                  prior: PriorConfig | None = None):
    """Clicks as an annotator places them: positives well inside the object, negatives just
    outside it (farther than a click's disc, within 10% of the diagonal)."""
    mask = _check_mask(mask)
    cfg = prior or PriorConfig()
    h, w = mask.shape
    disc = cfg.point_radius * math.hypot(h, w)
    inside = _deep_pixels(mask, disc + 1.0)
    picks = rng.choice(len(inside), size=positives, replace=len(inside) < positives)
    pos = [_centre(inside[i]) for i in picks]
    neg = []
    if negatives:
        dist = ndimage.distance_transform_edt(~mask)
        ring = np.argwhere((dist > disc + 1.0) & (dist <= disc + 1.0 + 0.1 * math.hypot(h, w)))
        if len(ring):
            picks = rng.choice(len(ring), size=negatives, replace=len(ring) < negatives)
            neg = [_centre(ring[i]) for i in picks]
    return pos, neg


def scribble_strokes(mask: np.ndarray, points: int, rng: np.random.Generator,
                     prior: PriorConfig | None = None) -> list[list[tuple[float, float]]]:
    """A stroke through `points` random deep pixels, ordered along the object's main axis; it is
    split wherever a straight segment (at the prior's stroke width) would leave the object."""
    mask = _check_mask(mask)
    cfg = prior or PriorConfig()
    h, w = mask.shape
    thickness = cfg.scribble_width * math.hypot(h, w)
    deep = _deep_pixels(mask, thickness / 2.0 + 1.5)
    picks = deep[rng.choice(len(deep), size=min(points, len(deep)), replace=False)].astype(np.float64)
    coords = np.argwhere(mask).astype(np.float64)
    if len(coords) > 1:
        centred = coords - coords.mean(axis=0)
        axis = np.linalg.svd(centred[:: max(1, len(centred) // 5000)], full_matrices=False)[2][0]
        picks = picks[np.argsort(picks @ axis)]
    strokes: list[list[tuple[float, float]]] = []
    current = [_centre(picks[0])]
    for rc in picks[1:]:
        nxt = _centre(rc)
        segment = rasterize_scribble([current[-1], nxt], h, w, thickness)
        if (segment & ~mask).any():
            strokes.append(current)
            current = [nxt]
        else:
            current.append(nxt)
    strokes.append(current)
    return strokes


def make_prompt(spec: CoarseSpec, mask: np.ndarray, rng: np.random.Generator) -> Prompt:
    """The coarse input `spec` describes, made from `mask` (the base method's mask for `pred`)."""
    if spec.kind == "pred":
        return Prompt(mask=np.asarray(mask, dtype=bool))
    if spec.kind == "polygon":
        return Prompt(polygons=polygon_outlines(mask, spec.vertices, spec.tolerance))
    if spec.kind == "dilate":
        return Prompt(mask=dilate(mask, spec.radius))
    if spec.kind == "erode":
        return Prompt(mask=erode(mask, spec.radius))
    if spec.kind == "jitter":
        return Prompt(mask=jitter(mask, spec.amplitude, rng))
    if spec.kind == "lowres":
        return Prompt(mask=lowres(mask, spec.factor))
    if spec.kind == "box":
        return Prompt(box=bounding_box(mask, spec.margin))
    if spec.kind == "points":
        pos, neg = sample_points(mask, spec.positives, spec.negatives, rng)
        return Prompt(positive_points=pos, negative_points=neg)
    if spec.kind == "scribble":
        return Prompt(scribbles=scribble_strokes(mask, spec.scribble_points, rng))
    raise ValueError(f"unknown coarse kind {spec.kind!r}")
