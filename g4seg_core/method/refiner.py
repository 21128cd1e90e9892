"""The G4Seg refiner: one loaded model, per-image caches, and the refinement loop of the method page.

Like segment-anything's predictor, the expensive per-image work is cached: the VAE encoding of a
region of interest (per image and ROI), the reference pass (per image, ROI and class) and the text
embedding (per class). A second refine on the same image pays only for its mask-conditioned passes.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from g4seg_core.cache import LRUCache
from g4seg_core.engines.base import (
    Engine,
    apply_constraints,
    as_probability,
    check_image,
)
from g4seg_core.method.attention import MaskInjection
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.discrepancy import local_hausdorff, robust_normalize
from g4seg_core.method.model import SDModel
from g4seg_core.method.roi import (
    Roi,
    confusion_area,
    crop,
    paste,
    roi_around,
    whole_image_roi,
)
from g4seg_core.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class _RoiState:
    z_t: torch.Tensor  # noised latent of the ROI, (1, 4, h, w)


@dataclass
class _Reference:
    x0: torch.Tensor  # one-step estimate without injection
    space: torch.Tensor  # x0 in the discrepancy space, (C, H, W)


@dataclass
class RefineTrace:
    """A refinement with what happened on the way (for tests, debugging and benchmarks)."""

    probability: np.ndarray  # HxW float32, image size
    mask: np.ndarray  # HxW bool
    confusion: np.ndarray  # HxW bool: where the probability was allowed to change
    iterations: int  # mask-conditioned passes run
    roi: Roi


class G4SegRefiner(Engine):
    name = "g4seg"

    def __init__(self, model: SDModel, config: RefinerConfig | None = None):
        self.model = model
        self.config = config or RefinerConfig()
        self.working_size = model.working_size(self.config.working_size)
        self.threshold = self.config.threshold
        self._rois = LRUCache(self.config.cache_images)
        self._references = LRUCache(self.config.cache_references)
        self._texts = LRUCache(self.config.cache_texts)

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
                        config: RefinerConfig | None = None) -> "G4SegRefiner":
        return cls(SDModel.from_pretrained(model, device=device, dtype=dtype), config)

    @property
    def version(self) -> str:
        tiny = "-TINY-RANDOM" if self.model.is_tiny else ""
        settings = replace(self.config, working_size=self.working_size).short()
        return f"g4seg:{self.model.name}{tiny}:{str(self.model.dtype).replace('torch.', '')}:{settings}"

    def clear_caches(self) -> None:
        for cache in (self._rois, self._references, self._texts):
            cache.clear()

    # ---- Engine interface -----------------------------------------------------------------
    def refine_probability(self, image: np.ndarray, prior: np.ndarray, label: str) -> np.ndarray:
        return self._refine(image, prior, label).probability

    def refine_trace(self, image: np.ndarray, prompt: Prompt | np.ndarray, label: str) -> RefineTrace:
        """Like `refine`, with the confusion area, iteration count and ROI."""
        image = check_image(image)
        trace = self._refine(image, as_probability(image, prompt), label)
        apply_constraints(trace.probability, prompt)
        trace.mask = trace.probability > self.threshold
        return trace

    # ---- the method -----------------------------------------------------------------------
    def _refine(self, image: np.ndarray, prior: np.ndarray, label: str) -> RefineTrace:
        cfg, size = self.config, self.working_size
        height, width = prior.shape
        roi = roi_around(prior, cfg.roi_margin, cfg.roi_grid) if cfg.roi else whole_image_roi(height, width)
        image_key = hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()

        state = self._roi_state(image, image_key, roi)
        text, token_mask = self._text(label)
        reference = self._reference(image_key, roi, label, state, text)

        p0 = crop(prior, roi, size, cv2.INTER_LINEAR)
        prob = p0.copy()
        mask = prob > cfg.threshold
        band_px = cfg.boundary_band * size * np.sqrt(2)
        touched = np.zeros_like(mask)
        passes = 0
        for _ in range(cfg.iterations):
            area = confusion_area(prob, mask, cfg.confusion_delta, band_px)
            if not area.any():
                break
            injection = MaskInjection(
                mask=torch.from_numpy(mask.astype(np.float32))[None].to(self.model.device),
                token_mask=token_mask, alpha=cfg.alpha, cross=cfg.inject_cross, self_attn=cfg.inject_self,
                resolutions=cfg.injection_resolutions,
            )
            x0 = self.model.predict_x0(state.z_t, cfg.timestep, text, injection=injection,
                                       keep_features=cfg.discrepancy_space == "features")
            passes += 1
            generated = self._to_space(x0)
            d = local_hausdorff(generated, reference.space, self._radius(reference.space.shape[-1], state.z_t.shape[-1]))
            d = robust_normalize(d, cfg.robust_percentile)
            d = F.interpolate(d[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
            d = d.cpu().numpy()
            # A pixel whose content changed when the mask was forced on it is probably mislabelled.
            target = np.where(mask, 1.0 - d, d)
            prob = np.where(area, cfg.beta * prob + (1.0 - cfg.beta) * target, prob).astype(np.float32)
            touched |= area
            new_mask = prob > cfg.threshold
            changed = (new_mask != mask).any()
            mask = new_mask
            if cfg.early_stop and not changed:
                break

        delta = paste(prob - p0, roi, height, width)
        probability = np.clip(prior + delta, 0.0, 1.0).astype(np.float32)
        confusion = paste(touched.astype(np.float32), roi, height, width) > 0
        return RefineTrace(probability, probability > cfg.threshold, confusion, passes, roi)

    def _radius(self, space_side: int, latent_side: int) -> int:
        return int(round((self.config.hausdorff_window // 2) * space_side / latent_side))

    def _roi_state(self, image: np.ndarray, image_key: str, roi: Roi) -> _RoiState:
        key = (image_key, roi)
        state = self._rois.get(key)
        if state is None:
            pixels = crop(image, roi, self.working_size, cv2.INTER_AREA if roi.side > self.working_size else cv2.INTER_CUBIC)
            tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            z0 = self.model.encode_image(tensor)
            eps = self.model.noise(z0.shape, self.config.seed)
            state = _RoiState(z_t=self.model.add_noise(z0, eps, self.config.timestep))
            self._rois.put(key, state)
        return state

    def _text(self, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._texts.get(label)
        if cached is None:
            prompt = self.config.prompt_template.format(label)
            text = self.model.encode_text([prompt])
            token_mask = torch.zeros(1, text.shape[1], device=self.model.device)
            token_mask[0, self.model.token_positions(prompt, label)] = 1.0
            cached = (text, token_mask)
            self._texts.put(label, cached)
        return cached

    def _reference(self, image_key, roi, label, state, text) -> _Reference:
        key = (image_key, roi, label)
        ref = self._references.get(key)
        if ref is None:
            x0 = self.model.predict_x0(state.z_t, self.config.timestep, text,
                                       keep_features=self.config.discrepancy_space == "features")
            ref = _Reference(x0=x0, space=self._to_space(x0))
            self._references.put(key, ref)
        return ref

    def _to_space(self, x0: torch.Tensor) -> torch.Tensor:
        """A one-step generation in the discrepancy space, (C, H, W) float32."""
        space = self.config.discrepancy_space
        if space == "latent":
            return x0[0].float()
        if space == "features":
            return self.model.take_features()[0]
        decode_side = self.config.rgb_decode_size
        if decode_side and decode_side < self.working_size:
            latent_side = decode_side // self.model.vae_scale_factor
            x0 = F.interpolate(x0, size=(latent_side, latent_side), mode="area")
        rgb = self.model.decode_latents(x0)
        side = min(rgb.shape[-1], self.config.discrepancy_max_size)
        if side < rgb.shape[-1]:
            rgb = F.interpolate(rgb, size=(side, side), mode="area")
        return rgb[0]
