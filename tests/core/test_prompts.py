"""Rough shapes rasterise to what a person expects, at image scale."""
import numpy as np
import pytest

from g4seg_core.prompts import (
    PriorConfig,
    Prompt,
    PromptError,
    prompt_constraints,
    rasterize_prompt,
)


def test_polygon_fills_its_inside_at_image_scale():
    # A 20x10 rectangle drawn as a polygon on a 50x40 image.
    prob = rasterize_prompt(Prompt(polygons=[[(10, 5), (30, 5), (30, 15), (10, 15)]]), 40, 50)
    assert prob.shape == (40, 50)
    ys, xs = np.nonzero(prob == 1.0)
    assert (xs.min(), ys.min()) == (10, 5)
    assert xs.max() in (29, 30) and ys.max() in (14, 15)  # OpenCV fills edges inclusively
    assert (prob[5:15, 10:30] == 1.0).all()
    assert 200 <= prob.sum() <= 21 * 11


def test_triangle_covers_about_its_area():
    prob = rasterize_prompt(Prompt(polygons=[[(0, 0), (100, 0), (0, 100)]]), 100, 100)
    assert abs(prob.sum() - 5000) < 150  # area 5000 px, up to the diagonal's rasterisation


def test_box_is_an_uncertain_region_and_bounds_the_object():
    prob = rasterize_prompt(Prompt(box=(10, 20, 30, 25)), 40, 50)
    inside = prob > 0
    assert inside.sum() == 20 * 5
    assert np.allclose(prob[inside], PriorConfig().box_prob)
    _, force_bg = prompt_constraints(Prompt(box=(10, 20, 30, 25)), 40, 50)
    assert force_bg.sum() == 40 * 50 - 100


def test_points_positive_disc_with_halo_and_negative_carved():
    h, w = 100, 100
    cfg = PriorConfig()
    prob = rasterize_prompt(Prompt(positive_points=[(50, 50)], negative_points=[(60, 50)]), h, w, cfg)
    r = cfg.point_radius * np.hypot(h, w)  # ~2.8 px
    assert prob[50, 50] == 1.0  # the clicked pixel
    assert prob[50, 60] == 0.0  # the negative click
    assert prob[50, 48] == 1.0 and prob[50, 50 - int(r) - 2] == pytest.approx(cfg.point_context_prob)
    assert prob[5, 5] == 0.0  # far away


def test_scribble_marks_its_stroke():
    prob = rasterize_prompt(Prompt(scribbles=[[(10, 50), (90, 50)]]), 100, 100)
    assert (prob[50, 10:90] == 1.0).all()
    assert prob[10, 50] == 0.0


def test_mask_prompt_accepts_0_255_and_bool():
    m = np.zeros((8, 9), np.uint8)
    m[2:4, 3:6] = 255
    assert rasterize_prompt(Prompt(mask=m), 8, 9).sum() == 6
    assert rasterize_prompt(Prompt(mask=m > 0), 8, 9).sum() == 6


@pytest.mark.parametrize(
    "prompt, message",
    [
        (Prompt(), "nothing to refine"),
        (Prompt(polygons=[[(1, 1), (5, 5)]]), "at least 3 points"),
        (Prompt(polygons=[[(1, 1), (2, 2), (3, 3)]]), "degenerate"),
        (Prompt(polygons=[[(1, 1), (200, 2), (3, 30)]]), "outside"),
        (Prompt(box=(60, 60, 70, 70)), "outside the image"),
        (Prompt(mask=np.zeros((5, 5), bool)), "is 5x5 but the image is 50x40"),
        (Prompt(mask=np.zeros((40, 50), bool)), "covers no pixel"),
        (Prompt(positive_points=[(-1, 3)]), "outside"),
    ],
)
def test_bad_prompts_raise_clear_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        rasterize_prompt(prompt, 40, 50)


def test_saved_masks_are_readable_by_others_and_bad_bytes_say_so(tmp_path):
    import os

    from g4seg_core.images import ImageError, decode_image, save_mask

    save_mask(np.ones((4, 5), bool), tmp_path / "m.png")
    assert (os.stat(tmp_path / "m.png").st_mode & 0o044) == 0o044
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ImageError, match="^cannot decode image: not a format Pillow can read$"):
        decode_image(b"plain text")
