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


def local_hausdorff(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) x (B, C, H, W) -> (B, H, W); (C, H, W) pairs give (H, W).

    For each pixel p: the distance from a(p) to the closest b(q) with q within `radius` of p
    (Chebyshev), and the same from b to a; the larger of the two. Small shifts between the
    images cost nothing. Vectorised: one unfold of each image holds every shifted copy, so a pass
    is a handful of kernels whatever the radius.
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
    d = torch.maximum(_directed(a, b, radius), _directed(b, a, radius)).sqrt()
    return d[0] if single else d


def _directed(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """min over the window of |a(p) - b(q)|^2, (B, H, W)."""
    n, c, h, w = a.shape
    k = 2 * radius + 1
    b_pad = F.pad(b, (radius, radius, radius, radius), mode="replicate")
    # |a - b_q|^2 = |a|^2 - 2 a.b_q + |b_q|^2, with every shift q of b in one unfolded tensor.
    shifted = F.unfold(b_pad, k).view(n, c, k * k, h * w)  # (B, C, K*K, HW)
    flat = a.reshape(n, c, 1, h * w)
    squared = (shifted - flat).pow_(2).sum(1) if c <= 8 else (
        flat.pow(2).sum(1) - 2 * torch.einsum("bckn,bcn->bkn", shifted, flat[:, :, 0]) + shifted.pow(2).sum(1))
    return squared.amin(1).clamp_min_(0).view(n, h, w)


def robust_normalize(d: torch.Tensor, percentile: float, floor: float = 1e-6) -> torch.Tensor:
    """Scale each map of a (B, H, W) batch (or one (H, W) map) to [0, 1] by a high percentile,
    so a few outliers do not flatten the rest."""
    flat = d.flatten(1) if d.dim() == 3 else d.flatten()[None]
    scale = torch.quantile(flat.float(), percentile / 100.0, dim=1).clamp_min(floor)
    scale = scale.view(-1, *([1] * (d.dim() - 1))) if d.dim() == 3 else scale[0]
    return (d / scale).clamp(0.0, 1.0)
