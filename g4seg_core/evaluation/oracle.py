"""The oracle: G4Seg's machinery fed a perfect discrepancy signal. A ceiling for the bench, not a method.

The whole refinement loop runs as for G4Seg (region of interest, soft prior, confusion area,
update, iterations, early stop, paste-back, edge-aware final step, the annotator's constraints),
but the discrepancy comes from the ground truth instead of the UNet: 1 where the current mask
disagrees with the truth, 0 where it agrees, area-averaged to the resolution the configured
discrepancy space really has (64 x 64 cells for the latent space at 512). `g4seg-oracle:NOISE`
degrades it as a real signal would be: blurred by one latent cell (a Gaussian of that standard
deviation) and with Gaussian noise of standard deviation NOISE added; `g4seg-oracle:NOISE:BLUR`
blurs by BLUR latent cells instead (0: noise only), to measure how sharp a signal the machinery
needs. No UNet call, so it runs in seconds on a CPU.

What it measures: how far the machinery can take a coarse mask if the diffusion signal were
perfect, and where it caps (cell size, priors, upsampling). Never G4Seg's accuracy.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from g4seg_core.engines.base import RefineResult
from g4seg_core.errors import SettingError
from g4seg_core.method.config import RefinerConfig
from g4seg_core.method.discrepancy import discrepancy_side, resolve_space
from g4seg_core.method.refinement import RegionItem, Signal, SignalRefiner
from g4seg_core.method.roi import crop

ORACLE = "g4seg-oracle"
SD_NATIVE_SIZE, SD_VAE_FACTOR = 512, 8  # Stable Diffusion 2.1-base, whose shapes the oracle mimics


def parse_oracle(name: str, config: RefinerConfig | None = None) -> "OracleRefiner":
    """`g4seg-oracle` (exact), `g4seg-oracle:NOISE` (blurred by one latent cell, noise std NOISE) or
    `g4seg-oracle:NOISE:BLUR` (blurred by BLUR latent cells)."""
    base, _, args = name.partition(":")
    if base != ORACLE:
        raise SettingError(f"not an oracle: {name!r}")
    noise, blur = None, 1.0
    if args:
        values = args.split(":")
        if len(values) > 2:
            raise SettingError(f"{ORACLE} takes at most NOISE and BLUR ({ORACLE}:NOISE:BLUR), got {name!r}")
        numbers = []
        for what, text in zip(("NOISE", "BLUR"), values):
            try:
                numbers.append(float(text))
            except ValueError:
                raise SettingError(f"{ORACLE}:{what} needs a number, got {text!r}") from None
        noise = numbers[0]
        if not (0 <= noise <= 1):
            raise SettingError(f"{ORACLE}:NOISE must be in [0, 1], got {noise:g}")
        if len(numbers) == 2:
            blur = numbers[1]
            if not (0 <= blur <= 8):
                raise SettingError(f"{ORACLE}:NOISE:BLUR must be in [0, 8] latent cells, got {blur:g}")
    return OracleRefiner(config, noise, blur)


class OracleRefiner(SignalRefiner):
    needs_truth = True  # the bench hands it each object's exact mask (`refine_with_truth`)

    def __init__(self, config: RefinerConfig | None = None, noise: float | None = None, blur: float = 1.0):
        self.config = config or RefinerConfig()
        self.threshold = self.config.threshold
        self.working_size = self.config.working_size or SD_NATIVE_SIZE
        self.noise = noise
        self.blur = blur  # latent cells (used with noise only: the exact signal is neither blurred nor noised)
        self.latent_side = self.working_size // SD_VAE_FACTOR
        # `auto` as with the recommended install, which has the fast decoder: the RGB space.
        self.space = resolve_space(self.config.discrepancy_space, fast_decoder=True)
        self.signal_side = discrepancy_side(self.space, self.working_size, SD_VAE_FACTOR,
                                            self.config.discrepancy_max_size)
        self.name = ORACLE if noise is None else f"{ORACLE}:{noise:g}" + ("" if blur == 1.0 else f":{blur:g}")

    @property
    def version(self) -> str:
        return f"{self.name}(ceiling, not a method; {self.config.short()}, {self.space} signal {self.signal_side}px)"

    def refine_with_truth(self, image: np.ndarray, prompt, label: str, truth: np.ndarray) -> RefineResult:
        trace = self.refine_trace(image, prompt, label, truth=np.asarray(truth, bool))
        return RefineResult(probability=trace.probability, mask=trace.mask)

    def make_signal(self, image: np.ndarray, items: list[RegionItem]) -> Signal:
        if any(it.truth is None for it in items):
            raise TypeError("the oracle needs the ground truth: call refine_with_truth")
        size = self.working_size
        truths = [crop(it.truth.astype(np.float32), it.roi, size, cv2.INTER_AREA if it.roi.side > size
                       else cv2.INTER_LINEAR) for it in items]
        return _TruthSignal(torch.from_numpy(np.stack(truths)), self.signal_side,
                            self.blur * self.signal_side / self.latent_side, self.noise, self.config.seed)


class _TruthSignal(Signal):
    unit = 1.0  # the fraction of a cell mislabelled: an absolute scale

    def __init__(self, truth: torch.Tensor, side: int, sigma: float, noise: float | None, seed: int):
        self.truth = truth  # (B, S, S) fraction of each working pixel inside the object
        self.side = side
        self.noise = noise
        self.sigma = sigma  # the blur's standard deviation, in signal cells
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, masks: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        wrong = (masks[which].float() - self.truth[which]).abs()[:, None]
        d = F.adaptive_avg_pool2d(wrong, self.side)  # the cells the discrepancy space really has
        if self.noise is not None:
            if self.sigma > 0:
                d = _gaussian_blur(d, self.sigma)
            d = d + self.noise * torch.randn(d.shape, generator=self.generator)
        return d[:, 0].clamp_min(0.0)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return F.conv2d(x, k.view(1, 1, 1, -1))
