"""Colour models and an edge-aware graph cut around a soft prior: the classic parts of segmentation.

`colour_cut` labels each pixel foreground or background by minimising GrabCut's energy (Rother,
Kolmogorov & Blake 2004; Boykov & Jolly 2001) with one more unary term, the prior's own log-odds:

    E(x) = sum_p [x_p != prior side] * |prior logit_p + w * colour log-ratio_p|
         + lambda * sum_{p~q} exp(-beta |I_p - I_q|^2) [x_p != x_q]

- the prior logit says how sure the annotator's input is about each pixel (a drawn outline is
  sure far from its edge, unsure near it); where the colours cannot tell the object from its
  surroundings the log-ratio is near 0 and the prior decides: the result falls back to the input;
- the colour log-ratio compares two colour models (object and background: GrabCut's mixtures of
  five Gaussians in RGB), re-fitted to the current labels for a few rounds as GrabCut does;
- the contrast-sensitive pairwise term (GrabCut's, in RGB, beta from the image's mean contrast)
  makes the cut follow image edges: cutting between similar colours is expensive, between
  different ones cheap;
- optionally, edges along the prior's own outline cost less, which removes graph cuts'
  shrinking bias where the colours are flat (the cut would otherwise shortcut every corner).

The cut itself is PyMaxflow's Boykov-Kolmogorov max-flow on the pixel grid (8-connected).
Everything here is a pure function of arrays.
"""
from __future__ import annotations

import math

import cv2
import maxflow
import numpy as np

# 8-connected grid: right, down, down-right, down-left (the other four are the same edges).
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the mask's boundary: + inside, - outside (+-0.5 at the boundary
    pixels), float32."""
    mask = np.asarray(mask, bool)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def _fit_mixture(colours: np.ndarray, components: int) -> np.ndarray:
    """GrabCut's colour model: k-means clusters of the colours (N x 3 float32), one Gaussian each.

    Returns the model as a (10, k) matrix: the features of `_quadratic_features` times it are
    each Gaussian's log density (log weight included), so evaluating it is one matrix product."""
    k = max(1, min(components, len(colours) // 10))
    criteria = (cv2.TERM_CRITERIA_MAX_ITER + cv2.TERM_CRITERIA_EPS, 10, 1.0)
    cv2.setRNGSeed(0)  # k-means++ seeding is random; the same input gives the same model
    _, labels, _ = cv2.kmeans(colours, k, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    columns = []
    for j in range(k):
        part = colours[labels == j].astype(np.float64)
        if len(part) < 4:
            continue
        # One grey level of variance on the diagonal keeps a flat patch's Gaussian finite.
        cov = np.cov(part.T) + np.eye(3)
        precision, mean = np.linalg.inv(cov), part.mean(0)
        log_norm = math.log(len(part) / len(colours)) - 0.5 * (np.linalg.slogdet(cov)[1] + 3 * math.log(2 * math.pi))
        # -1/2 (x - m)' P (x - m), expanded over the features x_i x_j, x_i and 1.
        pm = precision @ mean
        columns.append(-0.5 * np.array([
            precision[0, 0], precision[1, 1], precision[2, 2],
            2 * precision[0, 1], 2 * precision[0, 2], 2 * precision[1, 2],
            -2 * pm[0], -2 * pm[1], -2 * pm[2], mean @ pm - 2 * log_norm]))
    return np.stack(columns, axis=1)


def _quadratic_features(colours: np.ndarray) -> np.ndarray:
    """(N, 10) float64: r^2, g^2, b^2, rg, rb, gb, r, g, b, 1 of N RGB colours."""
    c = colours.astype(np.float64)
    r, g, b = c[:, 0], c[:, 1], c[:, 2]
    return np.stack([r * r, g * g, b * b, r * g, r * b, g * b, r, g, b, np.ones_like(r)], axis=1)


def _log_density(features: np.ndarray, model: np.ndarray) -> np.ndarray:
    # k x N (each Gaussian's weighted log density in a row): the log-sum-exp over the k rows is
    # then element-wise across long rows, several times faster than reducing N short ones.
    per = model.T @ features.T
    top = per.max(0)
    return top + np.log(np.exp((per - top).astype(np.float32)).sum(0))


def colour_log_ratio(image: np.ndarray, foreground: np.ndarray, components: int = 5, cap: float = 4.0,
                     samples: int = 4000, features: np.ndarray | None = None) -> np.ndarray:
    """Per pixel, log p(colour | object) - log p(colour | background), each a mixture of
    `components` Gaussians in RGB fitted (as GrabCut does) to the pixels `foreground` > 0.5 and
    the rest, at most `samples` of each (a fixed random subset). Capped at +-`cap` nats, so that
    colour alone never outweighs a sure prior. HxW float32; 0 where one side has too few pixels.
    `features`: the image's `_quadratic_features`, when the caller already has them."""
    colours = image.reshape(-1, 3).astype(np.float32)
    features = _quadratic_features(colours) if features is None else features
    side = foreground.ravel() > 0.5
    rng = np.random.default_rng(0)
    models = []
    for chosen in (side, ~side):
        index = np.flatnonzero(chosen)
        if len(index) < 10:
            return np.zeros(foreground.shape, np.float32)
        if len(index) > samples:
            index = rng.choice(index, samples, replace=False)
        models.append(_fit_mixture(colours[index], components))
    ratio = _log_density(features, models[0]) - _log_density(features, models[1])
    return np.clip(ratio, -cap, cap).reshape(foreground.shape).astype(np.float32)


def contrast_weights(image: np.ndarray) -> list[np.ndarray]:
    """exp(-beta |I_p - I_q|^2) / distance(p, q) for each of the 8-connected grid's edge
    directions (array p's shape, the edge leaving p); beta = 1 / (2 mean |I_p - I_q|^2)."""
    f = image[..., :3].astype(np.float32)
    height, width = f.shape[:2]
    diffs = []
    for dy, dx in _OFFSETS:
        p, q = _neighbours(dy, dx, height, width)
        d = np.zeros((height, width), np.float32)
        d[p] = ((f[p] - f[q]) ** 2).sum(-1)
        valid = np.zeros((height, width), bool)
        valid[p] = True
        diffs.append((d, valid))
    mean = sum(float(d[v].sum()) for d, v in diffs) / max(1, sum(int(v.sum()) for _, v in diffs))
    beta = 1.0 / (2.0 * max(mean, 1e-6))
    out = []
    for (d, valid), (dy, dx) in zip(diffs, _OFFSETS):
        out.append(np.where(valid, np.exp(-beta * d) / math.hypot(dy, dx), 0.0).astype(np.float64))
    return out


def _crosses(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """For each pixel p, whether the grid edge from p to p + (dy, dx) crosses the mask's boundary."""
    p, q = _neighbours(dy, dx, *mask.shape)
    out = np.zeros(mask.shape, bool)
    out[p] = mask[p] != mask[q]
    return out


def _neighbours(dy: int, dx: int, height: int, width: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Index of the pixels p whose neighbour q = p + (dy, dx) lies in the image (dy >= 0), and of
    those neighbours: arrays indexed by them line up pixel by pixel."""
    p = (slice(0, height - dy), slice(max(0, -dx), width - max(0, dx)))
    q = (slice(dy, height), slice(max(0, dx), width - max(0, -dx)))
    return p, q


class GridCut:
    """Graph cuts on the 8-connected pixel grid whose pairwise weights stay while the unary
    changes (the colour rounds of `colour_cut`, the cuts of one outline).

    The graph is built once; each later cut adds only the change of the unary to the terminal
    edges and lets PyMaxflow reuse its search trees (Kohli & Torr, "Efficiently Solving Dynamic
    Markov Random Fields Using Graph Cuts", ICCV 2005). The labelling is the same minimum as a
    fresh cut's, found in a fraction of the time when the unary changed little."""

    def __init__(self, pairwise: list[np.ndarray], smoothness: float):
        self.graph = maxflow.Graph[float]()
        self.nodes = self.graph.add_grid_nodes(pairwise[0].shape)
        for weights, (dy, dx) in zip(pairwise, _OFFSETS):
            structure = np.zeros((3, 3))
            structure[1 + dy, 1 + dx] = 1
            self.graph.add_grid_edges(self.nodes, weights=smoothness * weights, structure=structure, symmetric=True)
        self.unary: np.ndarray | None = None

    def __call__(self, unary: np.ndarray) -> np.ndarray:
        """The labelling minimising sum_p [x_p != (unary_p > 0)] |unary_p| + the cut pairwise
        weights. HxW bool (True: the object)."""
        u = unary.astype(np.float64)
        change = u if self.unary is None else u - self.unary
        # Terminal capacities only add up: the change goes to the source or the sink side.
        self.graph.add_grid_tedges(self.nodes, np.maximum(change, 0.0), np.maximum(-change, 0.0))
        if self.unary is None:
            self.graph.maxflow()
        elif (changed := self.nodes[change != 0]).size:
            self.graph.mark_grid_nodes(changed)
            self.graph.maxflow(reuse_trees=True)
        self.unary = u
        return ~self.graph.get_grid_segments(self.nodes)  # the source side is the object


def graph_cut(unary: np.ndarray, pairwise: list[np.ndarray], smoothness: float) -> np.ndarray:
    """The labelling minimising sum_p [x_p != (unary_p > 0)] |unary_p| + smoothness * sum of the
    pairwise weights of cut edges (8-connected, `contrast_weights` layout). HxW bool."""
    return GridCut(pairwise, smoothness)(unary)


def colour_cut(image: np.ndarray, prior_logit: np.ndarray, *, rounds: int = 3, colour_weight: float = 1.0,
               smoothness: float = 10.0, prior_edge_discount: float = 0.0,
               cache: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Object mask of `image` given the prior's log-odds (HxW; large where the prior is sure).

    Rounds alternate the colour models (from the current labels; the first from the prior
    itself) and the graph cut. Returns (mask, total unary log-odds of the last round). `cache`
    (a dict the caller keeps for one image) saves the image's colour features and edge weights
    between cuts of the same image."""
    image = np.ascontiguousarray(image[..., :3])
    cache = {} if cache is None else cache
    if "features" not in cache:
        cache["features"] = _quadratic_features(image.reshape(-1, 3))
        cache["pairwise"] = contrast_weights(image)
    features, pairwise = cache["features"], cache["pairwise"]
    labels = prior_logit > 0
    # The graph depends on the edge weights only: cuts of the same image, smoothness and outline
    # (every round here, and the caller's next cut of this outline) share it.
    key = (smoothness, prior_edge_discount, labels.tobytes() if prior_edge_discount > 0 else None)
    if cache.get("graph_key") != key:
        if prior_edge_discount > 0:
            pairwise = [w * np.where(_crosses(labels, dy, dx), 1.0 - prior_edge_discount, 1.0)
                        for w, (dy, dx) in zip(pairwise, _OFFSETS)]
        cache["graph"], cache["graph_key"] = GridCut(pairwise, smoothness), key
    cut = cache["graph"]
    mask, unary = labels, prior_logit
    for _ in range(max(1, rounds)):
        unary = prior_logit + colour_weight * colour_log_ratio(image, labels, features=features)
        mask = cut(unary)
        if not mask.any() or mask.all() or np.array_equal(mask, labels):
            break  # nothing left to re-fit the colours from, or the labels no longer change
        labels = mask
    return mask, unary
