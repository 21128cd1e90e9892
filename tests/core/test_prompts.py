"""Rough shapes rasterise to what a person expects, at image scale."""
import numpy as np
import pytest

from g4seg_core.prompts import (
    PriorConfig,
    Prompt,
    PromptError,
    edge_notes,
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
        (Prompt(polygons=[[(60, 1), (200, 2), (70, 30)]]), "polygon lies outside the 50x40 image"),
        (Prompt(polygons=[[(1e300, 1), (2e300, 2), (1e300, 30)]]), "polygon lies outside"),
        (Prompt(box=(60, 60, 70, 70)), "box is empty or lies outside the 50x40 image"),
        (Prompt(scribbles=[[(-10, -10), (-5, -30)]]), "scribble lies outside the 50x40 image"),
        (Prompt(polygons=[[(1, 1), (float("nan"), 2), (3, 30)]]), "non-finite"),
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


# ---- the image edge: one rule for every kind --------------------------------------------------

def test_shapes_past_the_edge_are_clipped_to_the_image_and_said_so():
    h, w = 40, 50
    # The same square, once drawn inside and once overshooting the left and top edges.
    inside = rasterize_prompt(Prompt(polygons=[[(0, 0), (20, 0), (20, 10), (0, 10)]]), h, w)
    over = Prompt(polygons=[[(-30, -1e6), (20, -1e6), (20, 10), (-30, 10)]])
    np.testing.assert_array_equal(rasterize_prompt(over, h, w), inside)
    assert edge_notes(over, h, w) == ["polygon 1 reaches past the 50x40 image: clipped to it"]
    # A box: clipped, and said so; the same box reversed gives the same pixels.
    box = Prompt(box=(-50, 10, 30, 1000))
    expected = np.zeros((h, w), bool)
    expected[10:, :30] = True
    np.testing.assert_array_equal(rasterize_prompt(box, h, w) > 0, expected)
    np.testing.assert_array_equal(rasterize_prompt(Prompt(box=(30, 1000, -50, 10)), h, w) > 0, expected)
    assert edge_notes(box, h, w) == ["box reaches past the 50x40 image: clipped to (0, 10, 30, 40)"]
    assert edge_notes(Prompt(box=(30, 1000, -50, 10)), h, w)[0].endswith("corners reversed: put in order")
    # A stroke leaving the image keeps its inside part.
    stroke = rasterize_prompt(Prompt(scribbles=[[(10, 20), (1e9, 20)]]), h, w)
    assert (stroke[20, 10:] == 1.0).all() and stroke[:, :9].max() < 1.0  # left of its start: only the halo
    # A click on the edge is on the image; nothing to note for shapes inside it.
    assert rasterize_prompt(Prompt(positive_points=[(50, 40)]), h, w)[39, 49] == 1.0
    assert edge_notes(Prompt(box=(1, 1, 20, 20), polygons=[[(1, 1), (9, 1), (9, 9)]]), h, w) == []


def test_a_concave_polygon_clipped_keeps_exactly_its_inside_part():
    # A U shape whose two arms leave the image at the top: clipping must not join the arms.
    u = [(5, -20), (15, -20), (15, 20), (35, 20), (35, -20), (45, -20), (45, 30), (5, 30)]
    big = rasterize_prompt(Prompt(polygons=[[(x, y + 40) for x, y in u]]), 120, 50)[40:80]
    np.testing.assert_array_equal(rasterize_prompt(Prompt(polygons=[u]), 40, 50), big)
