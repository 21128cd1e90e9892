"""The guided filter: a blurred or coarse probability snaps to the image's edges; and the score built on it."""
from __future__ import annotations

import cv2
import numpy as np

from g4seg_core.edges import guided_filter
from g4seg_core.evaluation.metrics import boundary_iou, iou


def _scene(seed: int = 0):
    """A textured disc on a textured background with a clear colour edge, and its exact mask."""
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - 60) ** 2 / 40**2 + (xx - 75) ** 2 / 52**2 <= 1.0
    image = np.where(truth[..., None], [200, 80, 60], [60, 120, 190]).astype(np.float32)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_a_flat_guide_leaves_a_constant_map_constant():
    guide = np.full((32, 40, 3), 128, np.uint8)
    out = guided_filter(guide, np.full((32, 40), 0.7, np.float32), radius=4, eps=1e-3)
    np.testing.assert_allclose(out, 0.7, atol=1e-5)


def test_a_coarse_map_upsampled_with_the_image_follows_the_true_boundary():
    image, truth = _scene()
    small = cv2.resize(truth.astype(np.float32), (20, 15), interpolation=cv2.INTER_AREA)  # 8x coarser
    bilinear = cv2.resize(small, (160, 120), interpolation=cv2.INTER_LINEAR) > 0.5
    snapped = guided_filter(image, cv2.resize(small, (160, 120), interpolation=cv2.INTER_LINEAR), 6, 1e-3) > 0.5
    assert boundary_iou(snapped, truth) > boundary_iou(bilinear, truth) + 0.05
    assert iou(snapped, truth) >= 0.97


def test_boundary_certainty_is_lower_for_a_genuinely_ambiguous_object():
    """The score reviewers sort by: the same object, the same box, the classic engine; the fainter
    and blurrier the object's edge, the lower the score, and the worse the mask."""
    from g4seg_core.edges import boundary_certainty
    from g4seg_core.engines.factory import create_engine
    from g4seg_core.prompts import Prompt

    engine = create_engine("classic").engine
    height, width = 96, 128
    truth = np.zeros((height, width), np.uint8)
    cv2.ellipse(truth, (64, 48), (28, 20), 20, 0, 360, 1, -1)
    noise = np.random.default_rng(0).normal(100, 6, (height, width, 3))
    scores, ious = [], []
    for contrast, blur in [(120, 0), (30, 2), (8, 6)]:
        image = np.where(truth[..., None] > 0, noise + [contrast, -contrast / 2, -contrast / 2], noise)
        if blur:
            image = cv2.GaussianBlur(image, (0, 0), blur)
        image = np.clip(image, 0, 255).astype(np.uint8)
        refined = engine.refine(image, Prompt(box=(30, 22, 100, 75)), "Cat")
        scores.append(boundary_certainty(image, refined.probability, refined.mask))
        ious.append((refined.mask & (truth > 0)).sum() / (refined.mask | (truth > 0)).sum())
    assert scores[0] > 0.8 and scores[0] > scores[1] + 0.2 and scores[1] > scores[2]
    assert ious[0] > 0.95 and ious[2] < 0.9
    # A box's outline across uniform background: the image does not support it.
    box = np.zeros((height, width), bool)
    box[10:40, 5:40] = True
    assert boundary_certainty(image, box.astype(np.float32), box) < 0.4
    assert boundary_certainty(image, box.astype(np.float32), np.zeros_like(box)) == 0.0
