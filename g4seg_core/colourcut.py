"""Colour models and an edge-aware graph cut around a soft prior: the classic parts of segmentation.

`colour_cut` labels each pixel foreground or background by minimising GrabCut's energy (Rother,
Kolmogorov & Blake 2004; Boykov & Jolly 2001) with one more unary term, the prior's own log-odds:

    E(x) = sum_p [x_p != prior side] * |prior logit_p + w * colour log-ratio_p|
         + lambda * sum_{p~q} exp(-beta |I_p - I_q|^2) [x_p != x_q]

- the prior logit says how sure the annotator's input is about each pixel (a drawn outline is
  sure far from its edge, unsure near it); where the colours cannot tell the object from its
  surroundings the log-ratio is near 0 and the prior decides: the result falls back to the input;
- the colour log-ratio compares two colour histograms (object and background, smoothed, in the
  CIE Lab space), re-estimated from the current labels for a few rounds, as GrabCut re-fits its
  colour mixtures;
- the contrast-sensitive pairwise term (beta from the image's mean contrast) makes the cut follow
  image edges: cutting between similar colours is expensive, between different ones cheap.

The cut itself is PyMaxflow's Boykov-Kolmogorov max-flow on the pixel grid (8-connected).
Everything here is a pure function of arrays.
"""
from __future__ import annotations

import math

import cv2
import maxflow
import numpy as np
from scipy import ndimage

# 8-connected grid: right, down, down-right, down-left (the other four are the same edges).
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the mask's boundary: + inside, - outside (+-0.5 at the boundary
    pixels), float32."""
    mask = np.asarray(mask, bool)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def colour_bins(image: np.ndarray, bins: int) -> np.ndarray:
    """Each pixel's colour histogram bin (HxW int), `bins` per channel of CIE Lab."""
    lab = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.int32)
    q = (lab * bins) >> 8
    return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def colour_log_ratio(bins_map: np.ndarray, foreground: np.ndarray, bins: int, smoothing: float = 1.0,
                     extra_background: np.ndarray | None = None) -> np.ndarray:
    """Per pixel, log p(colour | object) - log p(colour | background), from histograms weighted
    by `foreground` (soft labels in [0, 1]) and 1 - `foreground`; `extra_background` adds counts
    to the background histogram (colours seen around the region). Both histograms are smoothed
    over `smoothing` bins, so colours seen only once or not at all do not decide."""
    size = bins ** 3
    flat = bins_map.ravel()
    fg = np.bincount(flat, weights=foreground.ravel().astype(np.float64), minlength=size)
    bg = np.bincount(flat, weights=1.0 - foreground.ravel().astype(np.float64), minlength=size)
    if extra_background is not None:
        bg = bg + extra_background
    logs = []
    for hist in (fg, bg):
        hist = hist.reshape(bins, bins, bins)
        if smoothing > 0:
            hist = ndimage.gaussian_filter(hist, smoothing, mode="constant", truncate=2.0)
        total = hist.sum()
        # A floor of one pixel's worth spread over the colour space: an unseen colour is unlikely,
        # not impossible.
        logs.append(np.log(hist.ravel() / max(total, 1e-9) + 1.0 / (size * max(total, 1.0))))
    return (logs[0] - logs[1])[bins_map].astype(np.float32)


def contrast_weights(image: np.ndarray) -> list[np.ndarray]:
    """exp(-beta |I_p - I_q|^2) / distance(p, q) for each of the 8-connected grid's edge
    directions (array p's shape, the edge leaving p); beta = 1 / (2 mean |I_p - I_q|^2)."""
    f = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2LAB).astype(np.float32)
    height, width = f.shape[:2]
    diffs = []
    for dy, dx in _OFFSETS:
        d = np.zeros((height, width), np.float32)
        ys = slice(0, height - dy)
        xs_p = slice(max(0, -dx), width - max(0, dx))
        xs_q = slice(max(0, dx), width - max(0, -dx)) if dx >= 0 else slice(0, width + dx)
        d[ys, xs_p] = ((f[ys, xs_p] - f[dy:, xs_q]) ** 2).sum(-1)
        valid = np.zeros((height, width), bool)
        valid[ys, xs_p] = True
        diffs.append((d, valid))
    mean = sum(float(d[v].sum()) for d, v in diffs) / max(1, sum(int(v.sum()) for _, v in diffs))
    beta = 1.0 / (2.0 * max(mean, 1e-6))
    out = []
    for (d, valid), (dy, dx) in zip(diffs, _OFFSETS):
        out.append(np.where(valid, np.exp(-beta * d) / math.hypot(dy, dx), 0.0).astype(np.float64))
    return out


def graph_cut(unary: np.ndarray, pairwise: list[np.ndarray], smoothness: float) -> np.ndarray:
    """The labelling minimising sum_p [x_p != (unary_p > 0)] |unary_p| + smoothness * sum of the
    pairwise weights of cut edges (8-connected, `contrast_weights` layout). HxW bool."""
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(unary.shape)
    for weights, (dy, dx) in zip(pairwise, _OFFSETS):
        structure = np.zeros((3, 3))
        structure[1 + dy, 1 + dx] = 1
        graph.add_grid_edges(nodes, weights=smoothness * weights, structure=structure, symmetric=True)
    u = unary.astype(np.float64)
    graph.add_grid_tedges(nodes, np.maximum(u, 0.0), np.maximum(-u, 0.0))
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)  # the source side is the object


def colour_cut(image: np.ndarray, prior_logit: np.ndarray, *, rounds: int = 3, colour_weight: float = 1.0,
               smoothness: float = 10.0, bins: int = 16, smoothing: float = 1.0,
               extra_background: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Object mask of `image` given the prior's log-odds (HxW; large where the prior is sure).

    Rounds alternate the colour histograms (from the current labels; the first from the prior
    itself) and the graph cut. Returns (mask, total unary logit of the last round)."""
    bins_map = colour_bins(image, bins)
    pairwise = contrast_weights(image)
    labels = 1.0 / (1.0 + np.exp(-np.clip(prior_logit, -30, 30)))
    mask = prior_logit > 0
    unary = prior_logit
    for _ in range(max(1, rounds)):
        ratio = colour_log_ratio(bins_map, labels, bins, smoothing, extra_background)
        unary = prior_logit + colour_weight * ratio
        mask = graph_cut(unary, pairwise, smoothness)
        if not mask.any() or mask.all():
            break
        labels = mask.astype(np.float32)
    return mask, unary
