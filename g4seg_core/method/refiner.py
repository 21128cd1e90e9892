"""The G4Seg refiner: one loaded model, per-image caches, and the method's discrepancy signal.

The machinery around the signal (region of interest, soft prior, confusion area, update,
iterations, paste-back, edge-aware final step) is `refinement.SignalRefiner`; this module supplies
what needs the model: the mask-conditioned one-step generation and its local Hausdorff distance to
the reference generation.

Like segment-anything's predictor, per-image work is cached behind an explicit `set_image`: the
caller names the image (a task and its URL, a file path), so a click never hashes the photo. Cached
are the VAE encoding of a region of interest (per image and ROI), the reference pass with its
per-layer logit ranges (per image, ROI and class) and the text embedding (per class). A second
refine on the same image pays only for its mask-conditioned passes.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from g4seg_core.cache import LRUCache
from g4seg_core.engines.base import check_image
from g4seg_core.method.attention import MaskInjection
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.discrepancy import discrepancy_side, local_hausdorff, resolve_space
from g4seg_core.method.model import SDModel
from g4seg_core.method.refinement import RegionItem, Signal, SignalRefiner
from g4seg_core.method.roi import crop

log = logging.getLogger(__name__)

_anonymous = itertools.count()


@dataclass
class _Reference:
    """The reference pass of one region and class."""

    z_t: torch.Tensor  # noised latent of the region, (1, 4, h, w)
    space: torch.Tensor  # the one-step generation in the discrepancy space, (1, C, H, W)
    ranges: dict  # layer name -> (1, heads, 1, 1) exact logit range
    text: torch.Tensor  # (1, L, D)
    token_mask: torch.Tensor  # (1, L)


class G4SegRefiner(SignalRefiner):
    name = "g4seg"

    def __init__(self, model: SDModel, config: RefinerConfig | None = None):
        self.model = model
        self.config = config or RefinerConfig()
        self.working_size = model.working_size(self.config.working_size)
        self.threshold = self.config.threshold
        self.space = resolve_space(self.config.discrepancy_space, model.fast_decoder is not None)
        self.signal_side = discrepancy_side(self.space, self.working_size, model.vae_scale_factor,
                                            self.config.discrepancy_max_size)
        self._latents = LRUCache(self.config.cache_images)
        self._references = LRUCache(self.config.cache_references)
        self._texts = LRUCache(self.config.cache_texts)
        self._image: np.ndarray | None = None
        self._image_key: str | None = None

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
                        config: RefinerConfig | None = None, decoder: str | None = "auto") -> "G4SegRefiner":
        return cls(SDModel.from_pretrained(model, device=device, dtype=dtype, decoder=decoder), config)

    @property
    def version(self) -> str:
        tiny = "-TINY-RANDOM" if self.model.is_tiny else ""
        settings = replace(self.config, working_size=self.working_size, discrepancy_space=self.space).short()
        return f"g4seg:{self.model.name}{tiny}:{str(self.model.dtype).replace('torch.', '')}:{settings}"

    def clear_caches(self) -> None:
        for cache in (self._latents, self._references, self._texts):
            cache.clear()

    def set_image(self, image: np.ndarray, key: str | None = None) -> None:
        """The image the next refinements are on, named by `key` (a task and URL, a path): its
        per-image work is cached under that name. Without a key the image counts as new.
        Pass the same (RGB uint8) array to the refinements: it is recognised by its memory, in
        constant time, never by hashing its pixels."""
        self._image = np.asarray(image)
        self._image_key = key if key is not None else f"unnamed-{next(_anonymous)}"

    def _key(self, image: np.ndarray) -> str:
        """The set image's key when `image` is that array (or a view of it with the same pixels);
        otherwise `image` becomes the set image, unnamed."""
        held = self._image
        if held is None or not _same_pixels(image, held):
            self.set_image(image)
        return self._image_key

    # ---- the signal -----------------------------------------------------------------------
    def make_signal(self, image: np.ndarray, items: list[RegionItem]) -> Signal:
        image = check_image(image)
        key = self._key(image)
        return _G4SegSignal(self, self._references_for(image, key, items))

    def _references_for(self, image, key: str, items: list[RegionItem]) -> list[_Reference]:
        """Each item's reference, from the cache or from one batched reference pass for the missing."""
        keys = [(key, it.roi, it.label) for it in items]
        found = {k: self._references.get(k) for k in set(keys)}
        missing = [k for k in dict.fromkeys(keys) if found[k] is None]
        if missing:
            cfg = self.config
            z_t = torch.cat([self._noised_latent(image, key, roi) for _, roi, _ in missing])
            texts = [self._text(label) for _, _, label in missing]
            text = torch.cat([t for t, _ in texts])
            ranges: dict = {}
            self.model.control.record_ranges = ranges
            try:
                x0 = self.model.predict_x0(z_t, cfg.timestep, text, keep_features=self.space == "features")
            finally:
                self.model.control.record_ranges = None
            space = self.to_space(x0)
            for i, k in enumerate(missing):
                ref = _Reference(z_t[i : i + 1], space[i : i + 1], {n: r[i : i + 1] for n, r in ranges.items()},
                                 texts[i][0], texts[i][1])
                self._references.put(k, ref)
                found[k] = ref
        return [found[k] for k in keys]

    def _noised_latent(self, image: np.ndarray, key: str, roi) -> torch.Tensor:
        cached = self._latents.get((key, roi))
        if cached is None:
            size = self.working_size
            pixels = crop(image, roi, size, cv2.INTER_AREA if roi.side > size else cv2.INTER_CUBIC)
            tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            z0 = self.model.encode_image(tensor)
            eps = self.model.noise(z0.shape, self.config.seed)
            cached = self.model.add_noise(z0, eps, self.config.timestep)
            self._latents.put((key, roi), cached)
        return cached

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

    def distance(self, generated: torch.Tensor, reference: torch.Tensor, radius: int) -> torch.Tensor:
        """The raw pixel-wise discrepancy of generations to their references, (B, side, side)."""
        return local_hausdorff(generated, reference, radius)

    def to_space(self, x0: torch.Tensor) -> torch.Tensor:
        """One-step generations (B, 4, h, w) in the discrepancy space, (B, C, side, side) float32."""
        space = self.space
        if space == "latent":
            return x0.float()
        if space == "features":
            return self.model.take_features()
        rgb = self.model.decode_latents(x0)
        if rgb.shape[-1] != self.signal_side:
            rgb = F.interpolate(rgb, size=(self.signal_side, self.signal_side), mode="area")
        return rgb


def _same_pixels(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether `a` reads exactly the memory `b` does (same start, shape and strides): constant
    time, whatever the image's size. (An RGBA image is copied to RGB on every call, so it is
    recognised only when the RGB copy is what is set and passed.)"""
    return (a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


class _G4SegSignal(Signal):
    """The mask-conditioned pass for the regions asked, and its discrepancy to their references."""

    def __init__(self, refiner: G4SegRefiner, references: list[_Reference]):
        self.refiner = refiner
        self.references = references
        self.side = refiner.signal_side
        self.device = refiner.model.device
        latent_side = references[0].z_t.shape[-1]
        self.radius = int(round((refiner.config.hausdorff_window // 2) * self.side / latent_side))

    def __call__(self, masks: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        cfg, model = self.refiner.config, self.refiner.model
        refs = [self.references[i] for i in which.nonzero()[:, 0].tolist()]
        injection = MaskInjection(
            mask=masks[which].float().to(model.device),
            token_mask=torch.cat([r.token_mask for r in refs]),
            alpha=cfg.alpha, cross=cfg.inject_cross, self_attn=cfg.inject_self,
            resolutions=cfg.injection_resolutions,
            ranges={name: torch.cat([r.ranges[name] for r in refs]) for name in refs[0].ranges},
        )
        x0 = model.predict_x0(torch.cat([r.z_t for r in refs]), cfg.timestep, torch.cat([r.text for r in refs]),
                              injection=injection, keep_features=self.refiner.space == "features")
        generated = self.refiner.to_space(x0)
        return self.refiner.distance(generated, torch.cat([r.space for r in refs]), self.radius)
