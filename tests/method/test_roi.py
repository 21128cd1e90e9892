"""The region of interest: whatever the placement and size, it holds the prior's box plus its margin."""
import numpy as np
import pytest

from g4seg_core.method.roi import Roi, crop, paste, roi_around, whole_image_roi


def _holds(roi: Roi, x0, y0, x1, y1) -> bool:
    return roi.x0 <= x0 and roi.y0 <= y0 and roi.x0 + roi.side >= x1 and roi.y0 + roi.side >= y1


@pytest.mark.parametrize("grid", [1, 16, 32])
def test_the_roi_holds_the_box_and_margin_for_thousands_of_placements(grid):
    rng = np.random.default_rng(grid)
    margin = 0.25
    for _ in range(3000):
        height, width = (int(v) for v in rng.integers(40, 700, size=2))
        bw, bh = int(rng.integers(1, max(2, width // 2))), int(rng.integers(1, max(2, height // 2)))
        bw, bh = min(bw, width), min(bh, height)
        x, y = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
        prior = np.zeros((height, width), np.float32)
        prior[y : y + bh, x : x + bw] = 1.0
        roi = roi_around(prior, margin, grid)
        pad = margin * max(bw, bh)
        need = (max(0, x - pad), max(0, y - pad), min(width, x + bw + pad), min(height, y + bh + pad))
        assert _holds(roi, *need), (height, width, x, y, bw, bh, roi)
        if roi != whole_image_roi(height, width):
            assert roi.side % grid == 0 and roi.side < max(height, width)
            # Inside the image wherever the image is wide enough (no padding wasted on that axis).
            assert roi.side > width or 0 <= roi.x0 <= width - roi.side
            assert roi.side > height or 0 <= roi.y0 <= height - roi.side


def test_a_small_object_in_a_corner_is_entirely_inside_its_roi():
    for corner in ((0, 0), (0, 1), (1, 0), (1, 1)):
        prior = np.zeros((480, 640), np.float32)
        ys = slice(0, 12) if corner[0] == 0 else slice(468, 480)
        xs = slice(0, 9) if corner[1] == 0 else slice(631, 640)
        prior[ys, xs] = 1.0
        roi = roi_around(prior, 0.25, 32)
        cropped = crop(prior, roi, 128, 0)
        assert cropped.sum() * (roi.side / 128) ** 2 == pytest.approx(prior.sum(), rel=0.05)
        assert roi.side < 100  # a crop, not the whole image: the small object gets latent pixels


def test_small_edits_keep_the_same_roi():
    prior = np.zeros((480, 640), np.float32)
    prior[100:300, 200:400] = 1.0
    base = roi_around(prior, 0.25, 32)
    nudged = prior.copy()
    nudged[100:300, 400:403] = 1.0
    assert roi_around(nudged, 0.25, 32) == base


def test_paste_inverts_crop_inside_the_image():
    rng = np.random.default_rng(0)
    field = rng.random((90, 120)).astype(np.float32)
    roi = Roi(-10, 20, 64)
    back = paste(crop(field, roi, 64, 0), roi, 90, 120)
    assert np.allclose(back[20:84, 0:54], field[20:84, 0:54])
    assert (back[:20] == 0).all() and (back[:, 54:] == 0).all()
