"""The pixel-wise discrepancy between two one-step generations: a local, symmetric Hausdorff distance."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resolve_space(space: str, fast_decoder: bool) -> str:
    """`auto` is RGB when a fast decoder (TAESD) makes decoding cheap, else the latent space."""
    if space != "auto":
        return space
    return "rgb" if fast_decoder else "latent"


def discrepancy_side(space: str, working_size: int, vae_scale_factor: int, max_size: int) -> int:
    """The side at which the discrepancy is computed: the latent side for the latent and feature
    spaces; for RGB, the decoded side reduced to `max_size`, but never below the latent side."""
    latent_side = working_size // vae_scale_factor
    if space == "rgb":
        return max(latent_side, min(working_size, max_size))
    return latent_side


def local_hausdorff(a: torch.Tensor, b: torch.Tensor, radius: int, budget: int | None = None) -> torch.Tensor:
    """(B, C, H, W) x (B, C, H, W) -> (B, H, W); (C, H, W) pairs give (H, W).

    For each pixel p: the distance from a(p) to the closest b(q) with q within `radius` of p
    (Chebyshev), and the same from b to a; the larger of the two. Small shifts between the
    images cost nothing. Vectorised: a strided view holds every shifted copy without copying, and
    the window is taken in as few chunks of rows as fit `budget` elements (default: one chunk on
    a GPU, a handful of kernels in all; cache-sized chunks on a CPU, where that is faster).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    single = a.dim() == 3
    if single:
        a, b = a[None], b[None]
    a, b = a.float(), b.float()
    if radius <= 0:
        d = (a - b).pow(2).sum(1).sqrt()
        return d[0] if single else d
    if budget is None:
        budget = 1 << 26 if a.device.type == "cuda" else 1 << 18
    d = torch.maximum(_directed(a, b, radius, budget), _directed(b, a, radius, budget)).sqrt()
    return d[0] if single else d


def _directed(a: torch.Tensor, b: torch.Tensor, radius: int, budget: int) -> torch.Tensor:
    """min over the window of |a(p) - b(q)|^2, (B, H, W)."""
    n, c, h, w = a.shape
    k = 2 * radius + 1
    b_pad = F.pad(b, (radius, radius, radius, radius), mode="replicate")
    windows = b_pad.unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H, W, K, K): a view, nothing copied
    rows = max(1, budget // (n * c * h * w * k))  # window rows per chunk
    a_ = a[..., None, None]
    best = None
    for top in range(0, k, rows):
        squared = (windows[..., top : top + rows, :] - a_).square_().sum(1)  # (B, H, W, rows, K)
        nearest = squared.flatten(-2).amin(-1)
        best = nearest if best is None else torch.minimum(best, nearest)
    return best
