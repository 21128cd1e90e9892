"""Edge-aware filtering of probability maps, with the image as guide, and the score it gives a
mask's outline (`boundary_certainty`, what reviewers sort by).

The guided filter (He, Sun & Tang, "Guided Image Filtering", TPAMI 2013) fits, in every window,
the probability as a linear function of the image's colour; where the image has an edge, the
probability gets one too, and flat regions are smoothed. It is linear in the number of pixels
(box filters only).

OpenCV ships it in contrib (`cv2.ximgproc.guidedFilter`), but label-studio-sdk pins the plain
`opencv-python-headless`, and the two wheels cannot be installed side by side (both own `cv2`);
so it is written here with `cv2.boxFilter`, as in the paper's Algorithm 2 (colour guide).
"""
from __future__ import annotations

import cv2
import numpy as np


def _mean(x: np.ndarray, radius: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * radius + 1, 2 * radius + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: float, eps: float) -> np.ndarray:
    """`src` (HxW) filtered with the colour image `guide` (HxWx3, uint8 or float in [0, 1]).

    `radius` is the window half-size in pixels; `eps` the regulariser (in squared guide units,
    guide in [0, 1]): smaller follows weaker edges. Returns float32 HxW.
    """
    if guide.shape[:2] != src.shape[:2]:
        raise ValueError(f"guide {guide.shape[:2]} and src {src.shape[:2]} differ in size")
    I = guide.astype(np.float32)
    if guide.dtype == np.uint8:
        I /= 255.0
    if I.ndim == 2:
        I = I[..., None]
    p = src.astype(np.float32)
    radius = max(1, int(round(radius)))
    mean_I = _mean(I, radius).reshape(I.shape)
    mean_p = _mean(p, radius)
    channels = I.shape[2]
    # Covariance of the guide's channels (C x C per pixel) and of guide and src (C per pixel).
    cov_Ip = np.stack([_mean(I[..., c] * p, radius) - mean_I[..., c] * mean_p for c in range(channels)], axis=-1)
    sigma = np.empty(I.shape[:2] + (channels, channels), np.float32)
    for a in range(channels):
        for b in range(a, channels):
            v = _mean(I[..., a] * I[..., b], radius) - mean_I[..., a] * mean_I[..., b]
            sigma[..., a, b] = sigma[..., b, a] = v
    sigma += eps * np.eye(channels, dtype=np.float32)
    a_coef = np.linalg.solve(sigma, cov_Ip[..., None])[..., 0]  # HxWxC
    b_coef = mean_p - (a_coef * mean_I).sum(axis=-1)
    mean_a = _mean(a_coef, radius).reshape(a_coef.shape)
    mean_b = _mean(b_coef, radius)
    return ((mean_a * I).sum(axis=-1) + mean_b).astype(np.float32)


def boundary_certainty(image: np.ndarray, probability: np.ndarray, mask: np.ndarray) -> float:
    """How clearly the image supports a mask's outline, in [0, 1]: a reviewer's sorting key.

    The engine's probability is filtered with the image as guide (`guided_filter`), which keeps a
    step where the image has an edge and blurs it where the image is flat; the score is the mean
    certainty |2p - 1| of the filtered map over the uncertain band, the pixels within a few pixels
    of the mask's outline (2 % of the mask's equivalent diameter, at least 2). An outline on a
    clear object edge scores near 1; one through uniform colour, low contrast or an engine's
    hesitation scores lower. The mask's interior far from the outline does not count, so large
    and small objects compare.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    radius = max(2, int(round(0.02 * 2.0 * np.sqrt(mask.sum() / np.pi))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    binary = mask.astype(np.uint8)
    band = (cv2.dilate(binary, kernel) > 0) & ~(cv2.erode(binary, kernel) > 0)
    if not band.any():
        return 0.0
    filtered = np.clip(guided_filter(image[..., :3], np.asarray(probability, np.float32), 2 * radius, 1e-2), 0, 1)
    return float(np.mean(np.abs(2.0 * filtered[band] - 1.0)))
