"""Pure functions on the region of interest (`Roi`): choosing it, crops, paste-back, confusion area."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Roi:
    """A square of the image (may reach past its edges: padded) refined at the working size."""

    x0: int
    y0: int
    side: int


def whole_image_roi(height: int, width: int) -> Roi:
    side = max(height, width)
    return Roi((width - side) // 2, (height - side) // 2, side)


def roi_around(prior: np.ndarray, margin: float, grid: int) -> Roi:
    """A square that holds the prior's bounding box plus `margin` (a fraction of the box's longer
    side) on every side, wherever that span lies inside the image.

    Its side and, away from the image edges, its corner are multiples of `grid`, so that small
    edits of a shape map to the same region (and reuse the per-image cache). The whole image when
    the square would not be smaller.
    """
    height, width = prior.shape
    rows = np.flatnonzero((prior > 0).any(axis=1))
    cols = np.flatnonzero((prior > 0).any(axis=0))
    if rows.size == 0:
        return whole_image_roi(height, width)
    pad = margin * max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    # The span the square must hold, widened to the grid and cut to the image.
    x_lo, x_hi = _span(cols[0] - pad, cols[-1] + 1 + pad, grid, width)
    y_lo, y_hi = _span(rows[0] - pad, rows[-1] + 1 + pad, grid, height)
    side = int(np.ceil(max(x_hi - x_lo, y_hi - y_lo) / grid) * grid)
    if side >= max(height, width):
        return whole_image_roi(height, width)
    return Roi(_place(x_lo, x_hi, side, width, grid), _place(y_lo, y_hi, side, height, grid), side)


def _span(lo: float, hi: float, grid: int, extent: int) -> tuple[int, int]:
    return max(0, int(np.floor(lo / grid)) * grid), min(extent, int(np.ceil(hi / grid)) * grid)


def _place(lo: int, hi: int, side: int, extent: int, grid: int) -> int:
    """The square's start: it holds [lo, hi), sits on the grid where it can, stays in the image."""
    if side > extent:  # centred, padded on both sides
        return (extent - side) // 2
    # Grid starts that hold the span lie in [hi - side, lo] (lo is on the grid); take the most central.
    centred = lo - (side - (hi - lo)) / 2
    start = min(max(int(round(centred / grid)) * grid, int(np.ceil((hi - side) / grid)) * grid), lo)
    return min(max(start, 0), extent - side)


def crop(array: np.ndarray, roi: Roi, size: int, interpolation: int) -> np.ndarray:
    """The region of `array` (zero-padded past the edges) resized to size x size."""
    h, w = array.shape[:2]
    x0, y0, s = roi.x0, roi.y0, roi.side
    sub = array[max(0, y0) : min(h, y0 + s), max(0, x0) : min(w, x0 + s)]
    pads = (max(0, -y0), max(0, y0 + s - h), max(0, -x0), max(0, x0 + s - w))
    if any(pads):
        sub = cv2.copyMakeBorder(sub, *pads, cv2.BORDER_CONSTANT, value=0)
    if s == size:
        return np.ascontiguousarray(sub)
    return cv2.resize(sub, (size, size), interpolation=interpolation)


def paste(field: np.ndarray, roi: Roi, height: int, width: int) -> np.ndarray:
    """A working-size field resized to the region and placed in an image-size zero canvas."""
    s = roi.side
    resized = field if field.shape[0] == s else cv2.resize(field, (s, s), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((height, width), np.float32)
    ys, xs = slice(max(0, roi.y0), min(height, roi.y0 + s)), slice(max(0, roi.x0), min(width, roi.x0 + s))
    out[ys, xs] = resized[ys.start - roi.y0 : ys.stop - roi.y0, xs.start - roi.x0 : xs.stop - roi.x0]
    return out


def boundary_band(mask: np.ndarray, width_px: float) -> np.ndarray:
    """Pixels within `width_px` of the mask's boundary, on either side."""
    if width_px <= 0 or mask.all() or not mask.any():
        return np.zeros_like(mask, dtype=bool)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
    return (mask & (inside <= width_px)) | (~mask & (outside <= width_px))


def confusion_area(prob: np.ndarray, mask: np.ndarray, delta: float, band_px: float) -> np.ndarray:
    """Where the refiner may change the probability: uncertain pixels, or near the mask's boundary."""
    return (np.abs(prob - 0.5) < delta) | boundary_band(mask, band_px)
