"""The refinement machinery of the method page, around any discrepancy signal.

Steps 6-8 (confusion area, update, iterations) and what frames them: the region of interest,
the soft prior, the paste-back and the edge-aware final step. A *signal* maps the current masks of
a batch of regions to a discrepancy in [0, 1] (1: the content changed when the mask was forced
on it, so the pixel is probably mislabelled). G4Seg's signal runs the UNet (`refiner.py`); the
bench's oracle reads the ground truth (`g4seg_core/evaluation/oracle.py`) to measure what this
machinery reaches with a perfect signal.

The loop runs on the signal's device, for a batch of regions at once (the classes of one image
share each iteration's UNet call), and the probability leaves the device once, at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from g4seg_core.colourcut import colour_cut, signed_distance
from g4seg_core.engines.base import Engine, RefineResult, apply_constraints, as_probability, check_image, resolve_overlaps
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.roi import Roi, crop, paste, roi_around, whole_image_roi
from g4seg_core.prompts import Prompt


class Signal:
    """The discrepancy of a batch of regions: `side` is its resolution (a side of cells).

    `unit` is the raw value that means "this cell surely changed" when the signal has one (the
    oracle's: 1, a whole cell mislabelled); its values are then read on that absolute scale. A
    signal without one (G4Seg's distances between generations) is scaled per region by the
    robust percentile of its own values.
    """

    side: int
    device: torch.device = torch.device("cpu")
    unit: float | None = None

    def __call__(self, masks: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """masks (B, S, S) bool at working size; which (B,) bool: the regions to evaluate.
        Returns (which.sum(), side, side) float in [0, 1]."""
        raise NotImplementedError


@dataclass
class LoopOutcome:
    probability: torch.Tensor  # (B, S, S) float32
    touched: torch.Tensor  # (B, S, S) bool: ever in the confusion area
    iterations: int  # updates made (the batch's longest run)
    passes: int  # signal evaluations (batched calls)


def soft_prior(prior: np.ndarray, softness_px: float, threshold: float = 0.5) -> np.ndarray:
    """Hard pixels of a prior (exactly 0 or 1) replaced by a sigmoid of their signed distance to
    the boundary of `prior > threshold`, `softness_px` wide; uncertain pixels (a box's 0.6, a
    text-only map's soft values) are kept as they are."""
    mask = prior > threshold
    if softness_px <= 0 or mask.all() or not mask.any():
        return prior.astype(np.float32)
    signed = signed_distance(mask)  # +-0.5 at the boundary pixels
    soft = 1.0 / (1.0 + np.exp(-np.clip(signed / softness_px, -50.0, 50.0)))
    hard = (prior == 0) | (prior == 1)
    return np.where(hard, soft, prior).astype(np.float32)


def _window_sum(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums over a window of 2r+1 along `dim` (cut at the edges), by cumulative sums: the cost
    does not grow with the radius."""
    c = torch.cumsum(x, dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim)
    n = x.shape[dim]
    hi = torch.clamp(torch.arange(n, device=x.device) + radius + 1, max=n)
    lo = torch.clamp(torch.arange(n, device=x.device) - radius, min=0)
    return c.index_select(dim, hi) - c.index_select(dim, lo)


def boundary_band(mask: torch.Tensor, width_px: float) -> torch.Tensor:
    """(B, H, W) bool: pixels with both sides of the mask within `width_px` (Chebyshev distance)."""
    radius = int(round(width_px))
    if radius <= 0:
        return torch.zeros_like(mask)
    m = mask.float()
    inside = _window_sum(_window_sum(m, radius, 1), radius, 2)  # mask pixels in each window (exact)
    count = _window_sum(_window_sum(torch.ones_like(m[:1]), radius, 1), radius, 2)
    return (inside > 0) & (inside < count)


def confusion_area(prob: torch.Tensor, mask: torch.Tensor, delta: float, band_px: float) -> torch.Tensor:
    """Where the refiner may change the probability: uncertain pixels, or near the mask's boundary."""
    return ((prob - 0.5).abs() < delta) | boundary_band(mask, band_px)


def normalize_discrepancy(d: torch.Tensor, percentile: float, unit: float | None = None) -> torch.Tensor:
    """Raw discrepancies (B, S, S) to [0, 1]: divided by the signal's `unit` when it has one, else
    each region by a high percentile of its own values (the method page's robust scale).

    A percentile cannot tell a region with nothing left to fix from one with much to fix: where
    the mask is right, it would blow the leftover noise up to 1. So a signal that knows its unit
    is read on that scale."""
    if unit is not None:
        return (d / unit).clamp(0.0, 1.0)
    flat = d.flatten(1).float()
    scale = torch.quantile(flat, percentile / 100.0, dim=1).clamp_min(1e-6)
    return (d / scale[:, None, None]).clamp(0.0, 1.0)


def run_loop(prob0: torch.Tensor, signal: Signal, config: RefinerConfig) -> LoopOutcome:
    """Steps 6-8 for a batch (B, S, S) of priors at working size.

    The signal depends only on the mask, so it is evaluated again only for regions whose mask
    changed; the update may go on without it. A region stops early once nothing can change any
    more: its mask held, and every pixel of its confusion area already lies on the side of the
    threshold its target points to (the probability only moves toward the target). The updates it
    skips are then known (the same target, as the mask and so the signal cannot change) and are
    applied at once, so stopping early saves signal calls without changing the result.
    """
    cfg = config
    batch, size, _ = prob0.shape
    band_px = cfg.boundary_band * size * math.sqrt(2)
    prob = prob0.clone()
    mask = prob > cfg.threshold
    touched = torch.zeros_like(mask)
    active = torch.ones(batch, dtype=torch.bool, device=prob.device)
    stale = torch.ones(batch, dtype=torch.bool, device=prob.device)
    d = torch.zeros_like(prob)
    iterations = passes = 0
    for step in range(cfg.iterations):
        area = confusion_area(prob, mask, cfg.confusion_delta, band_px) & active[:, None, None]
        active &= area.flatten(1).any(1)
        if not active.any():
            break
        need = stale & active
        if need.any():
            fresh = signal(mask, need).to(prob.device, torch.float32)
            fresh = F.interpolate(fresh[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
            fresh = normalize_discrepancy(fresh, cfg.robust_percentile, signal.unit)
            d[need] = fresh
            stale &= ~need
            passes += 1
        # A pixel whose content changed when the mask was forced on it is probably mislabelled.
        target = torch.where(mask, 1.0 - d, d)
        prob = torch.where(area, cfg.beta * prob + (1.0 - cfg.beta) * target, prob)
        touched |= area
        new_mask = prob > cfg.threshold
        changed = (new_mask != mask).flatten(1).any(1)
        stale |= changed
        if cfg.early_stop:
            pending = (((target > cfg.threshold) != new_mask) & area).flatten(1).any(1)
            stopped = active & ~(changed | pending)
            if stopped.any():
                left = cfg.beta ** (cfg.iterations - step - 1)  # what the skipped updates leave of P
                done = area & stopped[:, None, None]
                prob = torch.where(done, left * prob + (1.0 - left) * target, prob)
            active &= ~stopped
        mask = new_mask
        iterations += 1
    return LoopOutcome(prob, touched, iterations, passes)


@dataclass
class RefineTrace:
    """A refinement with what happened on the way (for tests, debugging and benchmarks)."""

    probability: np.ndarray  # HxW float32, image size
    mask: np.ndarray  # HxW bool
    confusion: np.ndarray  # HxW bool: where the probability was allowed to change
    iterations: int  # updates made
    passes: int  # signal evaluations (UNet calls for G4Seg)
    roi: Roi


@dataclass
class RegionItem:
    """One region to refine: its prior at image size, its ROI, its label (and, for the oracle, the truth)."""

    prior: np.ndarray
    roi: Roi
    label: str
    truth: np.ndarray | None = None


class SignalRefiner(Engine):
    """An engine that refines with the method's machinery; subclasses supply the signal."""

    config: RefinerConfig
    working_size: int

    def make_signal(self, image: np.ndarray, items: list[RegionItem]) -> Signal:
        raise NotImplementedError

    # ---- Engine interface -----------------------------------------------------------------
    def refine_probability(self, image: np.ndarray, prior: np.ndarray, label: str) -> np.ndarray:
        return self.refine_regions(image, [self.item(prior, label)])[0].probability

    def refine_trace(self, image: np.ndarray, prompt: Prompt | np.ndarray, label: str,
                     truth: np.ndarray | None = None) -> RefineTrace:
        """Like `refine`, with the confusion area, iteration count and ROI."""
        image = check_image(image)
        (trace,) = self.refine_regions(image, [self.item(as_probability(image, prompt), label, truth)])
        apply_constraints(trace.probability, prompt)
        trace.mask = trace.probability > self.config.threshold
        return trace

    def refine_classes(self, image: np.ndarray, prompts: dict[str, Prompt | np.ndarray]) -> dict[str, RefineResult]:
        """The classes of one image refined together (one signal call per iteration for all)."""
        image = check_image(image)
        labels = list(prompts)
        traces = self.refine_regions(image, [self.item(as_probability(image, prompts[k]), k) for k in labels])
        probs = {}
        for label, trace in zip(labels, traces):
            apply_constraints(trace.probability, prompts[label])
            probs[label] = trace.probability
        masks = resolve_overlaps(probs, self.threshold)
        return {k: RefineResult(probability=probs[k], mask=masks[k]) for k in labels}

    # ---- the machinery --------------------------------------------------------------------
    def item(self, prior: np.ndarray, label: str, truth: np.ndarray | None = None) -> RegionItem:
        cfg = self.config
        height, width = prior.shape
        roi = roi_around(prior, cfg.roi_margin, cfg.roi_grid) if cfg.roi else whole_image_roi(height, width)
        return RegionItem(np.asarray(prior, np.float32), roi, label, truth)

    def refine_regions(self, image: np.ndarray, items: list[RegionItem]) -> list[RefineTrace]:
        cfg, size = self.config, self.working_size
        signal = self.make_signal(image, items)
        softness = cfg.prior_softness * cfg.boundary_band * size * math.sqrt(2)
        prob0 = np.stack([soft_prior(crop(it.prior, it.roi, size, cv2.INTER_LINEAR), softness, cfg.threshold)
                          for it in items])
        outcome = run_loop(torch.from_numpy(prob0).to(signal.device), signal, cfg)
        # One transfer to the host: the probabilities and where the loop worked, together.
        host = torch.stack([outcome.probability, outcome.touched.to(outcome.probability.dtype)]).cpu().numpy()
        probs, touched = host[0], host[1] > 0
        return [self._to_image(image, it, probs[i], touched[i], signal.side, outcome) for i, it in enumerate(items)]

    def _to_image(self, image, item: RegionItem, prob: np.ndarray, touched: np.ndarray, side: int,
                  outcome: LoopOutcome) -> RefineTrace:
        """The working-size result at image resolution: the refined probability where the loop
        worked (edge-aware: boundaries follow the image's edges), the prior everywhere else."""
        cfg, roi = self.config, item.roi
        height, width = item.prior.shape
        refined = paste(prob, roi, height, width)
        confusion = paste(touched.astype(np.float32), roi, height, width) > 0
        probability = np.where(confusion, refined, item.prior).astype(np.float32)
        if cfg.edge_aware and confusion.any():
            ys = slice(max(0, roi.y0), min(height, roi.y0 + roi.side))
            xs = slice(max(0, roi.x0), min(width, roi.x0 + roi.side))
            snapped = snap_to_edges(image[ys, xs], probability[ys, xs], cfg, max_side=2 * self.working_size)
            probability[ys, xs] = np.where(confusion[ys, xs], snapped, probability[ys, xs])
        return RefineTrace(probability, probability > cfg.threshold, confusion, outcome.iterations,
                           outcome.passes, roi)


def snap_to_edges(image: np.ndarray, probability: np.ndarray, config: RefinerConfig, max_side: int) -> np.ndarray:
    """The edge-aware final step: where the loop left a pixel uncertain (|P - 0.5| below
    `confusion_delta`), a graph cut decides its side from the probability's log-odds, the region's
    colour models and its contrast edges (`colourcut.colour_cut`); pixels the loop is sure about
    hold. Each pixel keeps its probability, moved to the side of 0.5 the cut chose. Regions larger
    than `max_side` are cut at that size and the decision brought back by interpolation."""
    height, width = probability.shape
    scale = min(1.0, max_side / max(height, width))
    p = np.clip(probability, 1e-4, 1 - 1e-4)
    img = image
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        p = cv2.resize(p, size, interpolation=cv2.INTER_AREA)
    logit = np.log(p / (1 - p))
    sure = np.abs(p - 0.5) >= config.confusion_delta
    logit[sure] = np.sign(logit[sure]) * 1e4  # held: no colour or edge outweighs it
    cut, _ = colour_cut(img, logit, rounds=2, colour_weight=config.edge_colour_weight,
                        smoothness=config.edge_smoothness)
    if scale < 1.0:
        cut = cv2.resize(cut.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    return np.where(cut, np.maximum(probability, 0.51), np.minimum(probability, 0.49)).astype(np.float32)
