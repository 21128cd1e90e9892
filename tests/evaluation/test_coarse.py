"""Every coarse-mask kind keeps its promise."""
import math

import numpy as np
import pytest
from scipy import ndimage

from g4seg_core.errors import SettingError
from g4seg_core.evaluation import coarse
from g4seg_core.prompts import (
    PriorConfig,
    Prompt,
    box_mask,
    rasterize_prompt,
    rasterize_scribble,
)


def rect(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def blob(h=96, w=128):
    """An ellipse with a notch: a non-convex object well inside the image."""
    yy, xx = np.mgrid[:h, :w]
    m = ((yy - 48) / 30.0) ** 2 + ((xx - 64) / 45.0) ** 2 <= 1
    m[40:56, 64:] = False  # a slot cut in from the right
    return m


def U_shape():
    m = np.zeros((120, 120), bool)
    m[20:100, 20:45] = True
    m[20:100, 75:100] = True
    m[75:100, 20:100] = True
    return m


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- spec parsing -------------------------------------------------------------------------------

def test_parse_spec_names_every_kind():
    specs = coarse.parse_coarse("polygon:8,dilate:10,lowres:16,box,points:3,scribble,erode:5,jitter:4")
    assert [s.name for s in specs] == [
        "polygon:8", "dilate:10", "lowres:16", "box", "points:3", "scribble:4", "erode:5", "jitter:4"]
    assert specs[0].vertices == 8 and specs[1].radius == 10 and specs[2].factor == 16
    tol = coarse.parse_coarse("polygon:2.5px,points:2:1,box:5,pred:/data/preds")
    assert tol[0].tolerance == 2.5 and tol[0].vertices is None
    assert (tol[1].positives, tol[1].negatives) == (2, 1)
    assert tol[2].margin == 5
    assert tol[3].kind == "pred" and tol[3].source == "/data/preds"


@pytest.mark.parametrize("bad, message", [
    ("blur:3", "unknown coarse kind"),
    ("dilate", "needs a radius"),
    ("dilate:x", "not a whole number"),
    ("polygon:3", "below the minimum 4"),
    ("lowres:1", "below the minimum 2"),
    ("jitter:-1", "must be > 0"),
    ("box,box", "listed twice"),
    ("", "no coarse kind"),
    ("pred", "needs a folder"),
])
def test_parse_spec_errors_are_clear(bad, message):
    with pytest.raises(SettingError, match=message):
        coarse.parse_coarse(bad)


# ---- dilate / erode -----------------------------------------------------------------------------

def test_dilation_by_r_adds_exactly_the_pixels_within_r():
    m = blob()
    for r in (1, 3, 10):
        out = coarse.dilate(m, r)
        np.testing.assert_array_equal(out, ndimage.distance_transform_edt(~m) <= r)
    # A square grows by r on every side.
    out = coarse.dilate(rect(60, 60, 20, 40, 20, 40), 5)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (15, 44, 15, 44)


def test_erosion_by_r_keeps_exactly_the_pixels_deeper_than_r():
    m = blob()
    out = coarse.erode(m, 4)
    np.testing.assert_array_equal(out, ndimage.distance_transform_edt(m) > 4)
    out = coarse.erode(rect(60, 60, 20, 40, 20, 40), 5)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (25, 34, 25, 34)


def test_erosion_never_empties_a_mask():
    thin = rect(40, 40, 10, 13, 5, 35)  # 3 pixels thick: erode:5 would remove everything
    out = coarse.erode(thin, 5)
    assert out.any() and not (out & ~thin).any()
    np.testing.assert_array_equal(np.flatnonzero(out.any(1)), [11])  # the middle row


# ---- jitter -------------------------------------------------------------------------------------

def test_jitter_moves_the_boundary_by_at_most_its_amplitude():
    m = blob()
    for amplitude in (2.0, 6.0):
        out = coarse.jitter(m, amplitude, rng(1))
        changed = out ^ m
        assert changed.any()
        # A changed pixel lies within amplitude + 0.5 of a pixel on the other side.
        dist_out = ndimage.distance_transform_edt(~m)  # outside pixels: distance to the mask
        dist_in = ndimage.distance_transform_edt(m)  # inside pixels: distance to the background
        assert dist_out[changed & ~m].max() <= amplitude + 0.5
        assert dist_in[changed & m].max() <= amplitude + 0.5


def test_jitter_is_seeded():
    m = blob()
    np.testing.assert_array_equal(coarse.jitter(m, 4, rng(3)), coarse.jitter(m, 4, rng(3)))
    assert (coarse.jitter(m, 4, rng(3)) != coarse.jitter(m, 4, rng(4))).any()


# ---- lowres -------------------------------------------------------------------------------------

def test_lowres_keeps_grid_aligned_edges_and_loses_fine_detail():
    band = rect(64, 64, 0, 64, 8, 40)  # full-height band, edges on multiples of 8
    np.testing.assert_array_equal(coarse.lowres(band, 8), band)
    with_hair = band.copy()
    with_hair[20:30, 40:60] = np.eye(10, 20, dtype=bool)  # a 1-pixel-wide diagonal hair
    np.testing.assert_array_equal(coarse.lowres(with_hair, 8), band)
    # Bilinear upsampling rounds corners: a grid-aligned square loses its corner pixels only.
    square = rect(64, 64, 16, 48, 8, 40)
    out = coarse.lowres(square, 8)
    assert not (out & ~square).any() and (square & ~out).sum() < 0.03 * square.sum()
    # An object smaller than half a cell disappears, as it does for a low-resolution segmenter.
    assert not coarse.lowres(rect(64, 64, 10, 13, 10, 13), 16).any()


# ---- box ----------------------------------------------------------------------------------------

def test_box_is_the_tight_bounding_box():
    m = blob()
    box = coarse.bounding_box(m)
    inside = box_mask(box, *m.shape)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    np.testing.assert_array_equal(inside, rect(*m.shape, rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    loose = coarse.bounding_box(rect(20, 20, 2, 10, 5, 18), margin=4)
    assert loose == (1.0, 0.0, 20.0, 14.0)  # grown by 4, clipped to the image


# ---- polygon ------------------------------------------------------------------------------------

def test_polygon_has_at_most_v_vertices_per_part():
    m = blob()
    for v in (4, 6, 8, 20):
        polys = coarse.polygon_outlines(m, vertices=v)
        assert len(polys) == 1 and 3 <= len(polys[0]) <= v
    # More vertices follow the shape more closely.
    ious = []
    for v in (4, 8, 32):
        r = rasterize_prompt(Prompt(polygons=coarse.polygon_outlines(m, vertices=v)), *m.shape) > 0.5
        ious.append((r & m).sum() / (r | m).sum())
    assert ious[0] < ious[1] < ious[2] and ious[2] > 0.95


def test_polygon_of_a_square_is_the_square():
    sq = rect(40, 50, 5, 25, 10, 35)
    polys = coarse.polygon_outlines(sq, vertices=4)
    assert len(polys[0]) == 4
    np.testing.assert_array_equal(rasterize_prompt(Prompt(polygons=polys), 40, 50) > 0.5, sq)


def test_polygon_tolerance_bounds_the_error():
    m = blob()
    for tol in (1.0, 4.0):
        r = rasterize_prompt(Prompt(polygons=coarse.polygon_outlines(m, tolerance=tol)), *m.shape) > 0.5
        wrong = r ^ m
        # Every wrong pixel lies within the tolerance (plus a pixel of rasterisation) of the boundary.
        near = np.where(m, ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m))
        assert near[wrong].max() <= tol + 1.5


def test_polygon_one_per_part_skipping_crumbs_and_covering_thin_parts():
    m = rect(60, 60, 5, 25, 5, 25) | rect(60, 60, 35, 55, 30, 55)
    m[58, 2] = True  # a one-pixel crumb
    polys = coarse.polygon_outlines(m, vertices=8)
    assert len(polys) == 2
    line = rect(30, 30, 10, 11, 3, 20)  # one pixel thick: a Douglas-Peucker polygon has no area
    r = rasterize_prompt(Prompt(polygons=coarse.polygon_outlines(line, vertices=8)), 30, 30) > 0.5
    np.testing.assert_array_equal(r, line)


# ---- points and scribbles -----------------------------------------------------------------------

def test_points_fall_inside_and_negatives_outside():
    m = blob()
    cfg = PriorConfig()
    disc = cfg.point_radius * math.hypot(*m.shape)
    pos, neg = coarse.sample_points(m, 3, 2, rng(5))
    assert len(pos) == 3 and len(neg) == 2
    inside_depth = ndimage.distance_transform_edt(m)
    outside_dist = ndimage.distance_transform_edt(~m)
    for x, y in pos:
        # The click's disc (the pixels the engines force to foreground) stays inside the object.
        assert inside_depth[int(y), int(x)] > disc
    for x, y in neg:
        assert outside_dist[int(y), int(x)] > disc
    assert coarse.sample_points(m, 3, 2, rng(5)) == (pos, neg)


def test_scribble_stays_inside_a_non_convex_object():
    m = U_shape()
    thickness = PriorConfig().scribble_width * math.hypot(*m.shape)
    for seed in range(5):
        strokes = coarse.scribble_strokes(m, 6, rng(seed))
        assert sum(len(s) for s in strokes) == 6
        for stroke in strokes:
            assert not (rasterize_scribble(stroke, *m.shape, thickness) & ~m).any()


# ---- make_prompt --------------------------------------------------------------------------------

def test_every_kind_makes_a_prompt_every_engine_can_rasterise():
    m = blob()
    expected_field = {
        "polygon": "polygons", "dilate": "mask", "erode": "mask", "jitter": "mask", "lowres": "mask",
        "box": "box", "points": "positive_points", "scribble": "scribbles",
    }
    for spec in coarse.parse_coarse("polygon:8,dilate:10,erode:3,jitter:4,lowres:8,box,points:2,scribble"):
        prompt = coarse.make_prompt(spec, m, rng(0))
        value = getattr(prompt, expected_field[spec.kind])
        assert value is not None and len(value) > 0, spec.name
        prob = rasterize_prompt(prompt, *m.shape)
        assert prob.shape == m.shape and (prob > 0.5).any()
    with pytest.raises(ValueError, match="empty mask"):
        coarse.make_prompt(coarse.parse_coarse("dilate:3")[0], np.zeros((10, 10), bool), rng(0))
