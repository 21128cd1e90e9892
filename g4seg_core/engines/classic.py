"""The classic refiners users would pick instead of G4Seg, behind the same `Engine` interface.

- `identity`: the coarse prior as it is (the floor every refiner must beat).
- `densecrf`: a fully connected CRF (Kraehenbuehl & Koltun 2011, `pydensecrf2`) with the prior
  as unary, the usual Gaussian + bilateral pairwise terms.
- `grabcut`: OpenCV's GrabCut initialised from the prior (certain pixels far from its boundary
  are fixed, the rest re-estimated from colour models).
- `pamr`: pixel-adaptive mask refinement (Araslanov & Roth 2020): the prior is repeatedly
  averaged over dilated neighbourhoods with weights from local colour affinity.
- `colourcut` (the default classic engine): the annotator's input as a soft prior, GrabCut's
  colour models and an edge-aware graph cut (`g4seg_core/colourcut.py`); where colours cannot
  tell, the input decides.

The four that look at the image work on a crop around the prior (with a margin, like G4Seg's
region of interest) scaled to at most `max_side` pixels, so their pixel settings mean the same
on any image, and paste the result back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np
from scipy import ndimage

from g4seg_core.colourcut import colour_cut, signed_distance
from g4seg_core.engines.base import Engine


def _settings(engine) -> str:
    return ",".join(f"{f.name}={getattr(engine, f.name)}" for f in fields(engine))


class IdentityEngine(Engine):
    """Returns the rasterised coarse prior unchanged."""

    name = "identity"

    def refine_probability(self, image: np.ndarray, prior: np.ndarray, label: str) -> np.ndarray:
        return np.asarray(prior, dtype=np.float32)


@dataclass
class RegionEngine(Engine):
    """Shared crop-and-scale for the peers that read the image."""

    max_side: int = 512  # longest side of the working crop, in pixels
    margin: float = 0.25  # crop margin around the prior's support, fraction of its size

    name = "region"

    @property
    def version(self) -> str:
        return f"{self.name}({_settings(self)})"

    def refine_probability(self, image: np.ndarray, prior: np.ndarray, label: str) -> np.ndarray:
        prior = np.asarray(prior, dtype=np.float32)
        height, width = prior.shape
        rows = np.flatnonzero((prior > 0).any(axis=1))
        cols = np.flatnonzero((prior > 0).any(axis=0))
        if rows.size == 0:
            return prior
        pad_y = int(math.ceil(self.margin * (rows[-1] - rows[0] + 1)))
        pad_x = int(math.ceil(self.margin * (cols[-1] - cols[0] + 1)))
        r0, r1 = max(0, rows[0] - pad_y), min(height, rows[-1] + 1 + pad_y)
        c0, c1 = max(0, cols[0] - pad_x), min(width, cols[-1] + 1 + pad_x)
        crop_img = image[r0:r1, c0:c1]
        crop_prior = prior[r0:r1, c0:c1]
        ch, cw = crop_prior.shape
        scale = min(1.0, self.max_side / max(ch, cw))
        if scale < 1.0:
            size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
            crop_img = cv2.resize(crop_img, size, interpolation=cv2.INTER_AREA)
            crop_prior = cv2.resize(crop_prior, size, interpolation=cv2.INTER_LINEAR)
        # A writable contiguous copy where needed: the dense CRF's Cython code refuses a read-only
        # view (a decoded photo that needed no resizing is one).
        crop_img = np.require(crop_img, np.uint8, ("C", "W"))
        refined = np.asarray(self.refine_region(crop_img, crop_prior), dtype=np.float32)
        if scale < 1.0:
            refined = cv2.resize(refined, (cw, ch), interpolation=cv2.INTER_LINEAR)
        out = np.zeros_like(prior)
        out[r0:r1, c0:c1] = refined
        return out

    def refine_region(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass
class DenseCRFEngine(RegionEngine):
    """Fully connected CRF; defaults are pydensecrf's documented example settings."""

    iterations: int = 5
    confidence: float = 0.7  # unary probability of a certain prior pixel (pydensecrf's gt_prob)
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0

    name = "densecrf"

    def refine_region(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        import pydensecrf.densecrf as dcrf

        h, w = prior.shape
        # A certain prior pixel gets `confidence`; an uncertain one (a box's 0.6) stays near 0.5.
        p = 0.5 + (prior.astype(np.float64) - 0.5) * (2.0 * self.confidence - 1.0)
        p = np.clip(p, 1e-4, 1 - 1e-4)
        unary = np.ascontiguousarray(-np.log(np.stack([1.0 - p, p]).reshape(2, -1)).astype(np.float32))
        crf = dcrf.DenseCRF2D(w, h, 2)
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=self.gaussian_sxy, compat=self.gaussian_compat)
        crf.addPairwiseBilateral(sxy=self.bilateral_sxy, srgb=self.bilateral_srgb,
                                 rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=self.bilateral_compat)
        q = np.asarray(crf.inference(self.iterations), dtype=np.float32)
        return q[1].reshape(h, w)


@dataclass
class GrabCutEngine(RegionEngine):
    """GrabCut from the prior. Pixels whose distance from the prior's boundary exceeds `core`
    times the prior's largest inner depth are fixed (foreground inside, background outside),
    the rest is re-estimated; scaling by the object's own size keeps a coarse mask that spills
    over by a fixed number of pixels from fixing wrong pixels on small and large objects alike."""

    iterations: int = 5
    core: float = 0.5

    name = "grabcut"

    def refine_region(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        fg = prior > 0.5
        if not fg.any() or fg.all():
            return prior  # GrabCut needs both colour models
        depth_in = ndimage.distance_transform_edt(fg)
        depth_out = ndimage.distance_transform_edt(~fg)
        fixed = self.core * depth_in.max()
        labels = np.where(fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        labels[(depth_in > fixed) & (prior >= 0.99)] = cv2.GC_FGD
        labels[(depth_out > fixed) & (prior <= 0.01)] = cv2.GC_BGD
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means initialisation is random
        cv2.grabCut(image, labels, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        out = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        return out if out.any() else prior


@dataclass
class PAMREngine(RegionEngine):
    """Pixel-adaptive mask refinement: affinity from colour differences scaled by the local
    spread, softmax over 8 neighbours at each dilation, applied to the prior `iterations` times."""

    iterations: int = 10
    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    temperature: float = 0.1  # divides the spread-normalised colour difference

    name = "pamr"

    def refine_region(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        h, w = prior.shape
        pad = max(self.dilations)
        offsets = [(dy * d, dx * d) for d in self.dilations
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

        def neighbours(arr: np.ndarray) -> np.ndarray:
            padded = np.pad(arr, ((pad, pad), (pad, pad)) + ((0, 0),) * (arr.ndim - 2), mode="edge")
            return np.stack([padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w] for oy, ox in offsets])

        img = image.astype(np.float32) / 255.0
        around = neighbours(img)  # K x H x W x 3
        spread = np.concatenate([around, img[None]]).std(axis=0)  # H x W x 3
        logits = -(np.abs(around - img[None]) / (self.temperature * spread[None] + 1e-8)).mean(axis=-1)
        logits -= logits.max(axis=0, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=0, keepdims=True)  # K x H x W
        prob = prior.astype(np.float32)
        for _ in range(self.iterations):
            prob = np.einsum("khw,khw->hw", weights, neighbours(prob))
        return prob


def prior_log_odds(prior: np.ndarray, softness: float, max_logit: float) -> np.ndarray:
    """How sure the annotator's input is about each pixel, as log-odds.

    A drawn region (pixels exactly 0 or 1: a mask, a polygon, the outside of a box) is sure far
    from its edge and unsure near it: its signed distance to the edge over `softness` pixels,
    capped at `max_logit`. Pixels the input leaves uncertain (a box's inside, a click's halo)
    keep the log-odds of their value."""
    mask = prior > 0.5
    logit = np.clip(signed_distance(mask) / max(softness, 1e-3), -max_logit, max_logit)
    uncertain = (prior > 0) & (prior < 1)
    if uncertain.any():
        p = np.clip(prior[uncertain], 1e-3, 1 - 1e-3)
        logit[uncertain] = np.log(p / (1 - p))
    return logit


@dataclass
class ColourCutEngine(RegionEngine):
    """The annotator's input as a soft prior, colour models of the object and its surroundings,
    and a graph cut that follows image edges (`g4seg_core/colourcut.py`).

    Where the colours cannot separate object from background the prior decides, so the result
    falls back to the input instead of wandering off. The prior's softness (how far the drawn
    edge may be from the true one) is measured on each input: a first cut with a loose prior
    shows how far colour and edges move the drawn boundary, and the final cut trusts the drawn
    boundary to about that distance."""

    softness: float = 0.05  # prior's soft edge, fraction of the object's size (sqrt of its area)
    adaptive: bool = True  # measure the softness per input (see the class docstring)
    max_logit: float = 6.0
    colour_weight: float = 1.0
    smoothness: float = 10.0
    # Cutting along the input's own outline costs this fraction less: in a region of flat colour
    # the cut keeps the drawn outline instead of shortcutting its corners (graph cuts' shrinking
    # bias; at 0.2 a flat 40 x 60 rectangle already lost 5% of its area).
    outline_discount: float = 0.3
    rounds: int = 3

    name = "colourcut"

    def refine_region(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
        mask = prior > 0.5
        if not mask.any() or mask.all():
            return prior
        size = math.sqrt(float(mask.sum()))
        softness = self.softness * size
        settings = dict(colour_weight=self.colour_weight, smoothness=self.smoothness,
                        prior_edge_discount=self.outline_discount, cache={})
        if self.adaptive:
            loose = prior_log_odds(prior, 2 * softness, self.max_logit)
            first, _ = colour_cut(image, loose, rounds=1, **settings)
            moved = first != mask
            if moved.any():
                softness = float(np.clip(np.abs(signed_distance(mask)[moved]).mean(), 1.0, 2 * softness))
        logit = prior_log_odds(prior, softness, self.max_logit)
        cut, unary = colour_cut(image, logit, rounds=self.rounds, **settings)
        # Probability on the cut's side of 0.5, as sure as the unary term that put it there.
        confidence = np.maximum(1.0 / (1.0 + np.exp(-np.abs(np.clip(unary, -30, 30)))), 0.51)
        return np.where(cut, confidence, 1.0 - confidence).astype(np.float32)


PEERS: dict[str, type] = {
    "identity": IdentityEngine,
    "densecrf": DenseCRFEngine,
    "grabcut": GrabCutEngine,
    "pamr": PAMREngine,
    "colourcut": ColourCutEngine,
}

# The engine the backend falls back to when G4Seg's weights cannot be loaded (and `classic`):
# chosen on real photos, the Weizmann Horse dev split (every fourth photo), over the coarse kinds
# polygon:8, polygon:16, dilate:10, erode:5, jitter:4, lowres:16, box, points:3, scribble:
# colourcut's mean IoU / Boundary IoU 73.8 / 51.8 against GrabCut's 68.9 / 45.2 and the input's
# own 62.7 / 27.6 (12 dev photos), above the input on every kind (GrabCut falls below it on
# jitter, lowres and scribbles). The test split's table, which no setting was tuned on, is in
# docs/benchmarks.md (`python benchmarks/weizmann_table.py`).
CLASSIC_ENGINE = "colourcut"
