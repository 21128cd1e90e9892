"""The pixel-wise discrepancy between two one-step generations: a local, symmetric Hausdorff distance."""
from __future__ import annotations

import torch


def local_hausdorff(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """(C, H, W) x (C, H, W) -> (H, W).

    For each pixel p: the distance from a(p) to the closest b(q) with q within `radius` of p, and
    the same from b to a; the larger of the two. Small shifts between the images cost nothing.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    _, h, w = a.shape
    a, b = a.float(), b.float()
    if radius <= 0:
        return (a - b).pow(2).sum(0).sqrt()
    pad = (radius, radius, radius, radius)
    a_pad = torch.nn.functional.pad(a[None], pad, mode="replicate")[0]
    b_pad = torch.nn.functional.pad(b[None], pad, mode="replicate")[0]
    a_to_b = torch.full((h, w), float("inf"), device=a.device)
    b_to_a = torch.full((h, w), float("inf"), device=a.device)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            a_to_b = torch.minimum(a_to_b, (a - b_pad[:, dy : dy + h, dx : dx + w]).pow(2).sum(0))
            b_to_a = torch.minimum(b_to_a, (b - a_pad[:, dy : dy + h, dx : dx + w]).pow(2).sum(0))
    return torch.maximum(a_to_b, b_to_a).sqrt()


def robust_normalize(d: torch.Tensor, percentile: float, floor: float = 1e-6) -> torch.Tensor:
    """Scale to [0, 1] by a high percentile, so a few outliers do not flatten the rest."""
    scale = torch.quantile(d.flatten().float(), percentile / 100.0).clamp_min(floor)
    return (d / scale).clamp(0.0, 1.0)
