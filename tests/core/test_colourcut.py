"""The classic parts: colour models, the edge-aware graph cut, and the prior that holds them."""
from __future__ import annotations

import numpy as np

from g4seg_core.colourcut import GridCut, colour_cut, colour_log_ratio, contrast_weights, graph_cut, signed_distance
from g4seg_core.evaluation.metrics import iou


def _scene(seed: int = 0, contrast: float = 1.0):
    """A noisy red ellipse on a noisy blue background (`contrast` 0: the same colour), its mask."""
    rng = np.random.default_rng(seed)
    h, w = 90, 120
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - 45) ** 2 / 28**2 + (xx - 60) ** 2 / 40**2 <= 1.0
    fg, bg = np.array([200, 70, 60]), np.array([60, 110, 190])
    colour = np.where(truth[..., None], bg + contrast * (fg - bg), bg).astype(np.float64)
    image = np.clip(colour + rng.normal(0, 10, colour.shape), 0, 255).astype(np.uint8)
    return image, truth


def test_signed_distance_is_positive_inside_and_half_a_pixel_at_the_edge():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    sd = signed_distance(mask)
    assert sd[4, 4] > sd[3, 3] > 0 and sd[2, 4] == 0.5 and sd[1, 4] == -0.5 and sd[0, 0] < -1


def test_the_colour_ratio_favours_the_colours_of_the_labelled_object():
    image, truth = _scene()
    ratio = colour_log_ratio(image, truth.astype(np.float32))
    assert np.median(ratio[truth]) > 2 and np.median(ratio[~truth]) < -2


def test_the_cut_follows_the_unary_and_pays_for_its_boundary():
    unary = np.full((20, 20), -1.0)
    unary[5:15, 5:15] = 1.0
    flat = np.full((20, 20, 3), 128, np.uint8)
    weights = contrast_weights(flat)
    np.testing.assert_array_equal(graph_cut(unary, weights, 0.0), unary > 0)
    # A single pixel that disagrees with its neighbours costs more boundary than it gains.
    speck = unary.copy()
    speck[2, 2] = 1.0
    assert not graph_cut(speck, weights, 1.0)[2, 2]


def test_a_graph_kept_for_the_next_cut_gives_a_fresh_cuts_labelling():
    """GridCut adds only the unary's change and reuses the search trees: each of its cuts must
    equal a cut built from scratch, whether the unary moved a little, a lot, or not at all."""
    image, truth = _scene()
    weights = contrast_weights(image)
    rng = np.random.default_rng(0)
    kept = GridCut(weights, 10.0)
    unary = np.where(truth, 2.0, -2.0) + rng.normal(0, 3, truth.shape)
    for step in range(6):
        np.testing.assert_array_equal(kept(unary), graph_cut(unary, weights, 10.0), err_msg=f"step {step}")
        if step == 2:
            continue  # the same unary again
        unary = unary + rng.normal(0, 0.5 if step % 2 else 4.0, truth.shape) * (rng.random(truth.shape) < 0.3)


def test_a_rough_prior_snaps_to_the_object():
    image, truth = _scene()
    rough = np.zeros_like(truth)
    rough[20:70, 25:95] = True  # the ellipse's box: too much at the corners, too little at the sides
    logit = np.clip(signed_distance(rough) / 6.0, -6, 6)
    mask, _ = colour_cut(image, logit)
    assert iou(mask, truth) >= 0.95 > iou(rough, truth) + 0.1


def test_without_colour_contrast_the_prior_decides_once_its_own_outline_is_cheaper():
    image, truth = _scene(contrast=0.0)
    rough = np.zeros_like(truth)
    rough[25:65, 30:90] = True
    logit = np.clip(signed_distance(rough) / 3.0, -6, 6)
    # Plain graph cuts shrink: in flat colour, a shorter boundary through the prior's soft edge
    # is cheaper than the drawn one (the corners are cut off).
    shrunk, _ = colour_cut(image, logit)
    assert shrunk.sum() < 0.9 * rough.sum()
    kept, _ = colour_cut(image, logit, prior_edge_discount=0.3)
    assert iou(kept, rough) >= 0.95
