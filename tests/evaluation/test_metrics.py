"""Metric values on small masks worked out by hand (the reasoning is in each test)."""
import math

import numpy as np
import pytest

from g4seg_core.evaluation import metrics


def columns(height, width, last_col):
    """Foreground = columns 0..last_col (a vertical edge between last_col and last_col + 1)."""
    m = np.zeros((height, width), bool)
    m[:, : last_col + 1] = True
    return m


def square(size, r0, c0, side):
    m = np.zeros((size, size), bool)
    m[r0 : r0 + side, c0 : c0 + side] = True
    return m


# ---- IoU and mIoU -------------------------------------------------------------------------------

def test_iou_of_overlapping_squares():
    # 4x4 squares offset by one column: intersection 4x3 = 12, union 16 + 16 - 12 = 20.
    assert metrics.iou(square(10, 3, 4, 4), square(10, 3, 3, 4)) == pytest.approx(12 / 20)


def test_iou_edge_cases_and_ignore():
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert metrics.iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert metrics.iou(empty, full) == 0.0
    # Prediction = top row (5 px), ground truth = two top rows (10 px): IoU 5/10.
    pred = np.zeros((5, 5), bool); pred[0] = True
    gt = np.zeros((5, 5), bool); gt[:2] = True
    assert metrics.iou(pred, gt) == pytest.approx(0.5)
    # Ignoring the second row leaves pred = gt = top row.
    ignore = np.zeros((5, 5), bool); ignore[1] = True
    assert metrics.iou(pred, gt, ignore) == 1.0


def test_confusion_matrix_and_miou_with_ignore_label():
    gt = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 2], [1, 2]])
    conf = metrics.confusion_matrix(pred, gt, num_classes=3)
    # The 255 pixel is not counted; the others give (0,0), (1,2), (2,2).
    expected = np.zeros((3, 3), int)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = 1
    np.testing.assert_array_equal(conf, expected)
    # class 0: 1/1; class 1: 0 / (1 gt + 0 pred); class 2: 1 / (1 gt + 2 pred - 1).
    np.testing.assert_allclose(metrics.class_ious(conf), [1.0, 0.0, 0.5])
    assert metrics.mean_iou(conf) == pytest.approx(0.5)


def test_miou_skips_classes_absent_everywhere():
    gt = np.array([[0, 0], [3, 3]])
    conf = metrics.confusion_matrix(gt, gt, num_classes=4)
    ious = metrics.class_ious(conf)
    assert np.isnan(ious[1]) and np.isnan(ious[2])
    assert metrics.mean_iou(conf) == 1.0


def test_confusion_matrix_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="labels outside"):
        metrics.confusion_matrix(np.array([[5]]), np.array([[0]]), num_classes=3)


# ---- mBA ----------------------------------------------------------------------------------------

def test_mba_radii_follow_cascadepsp():
    # (h + w) / 300 = 2 for 300x300: radii 1 + int(0.2 i) = 1 for i < 5.
    assert metrics.mba_radii(300, 300) == [1, 1, 1, 1, 1]
    # (h + w) / 300 = 5: radii 1 + int(0.8 i) = 1, 1, 2, 3, 4.
    assert metrics.mba_radii(100, 1400) == [1, 1, 2, 3, 4]
    # Small images never go below radius 1.
    assert metrics.mba_radii(10, 10) == [1] * 5


def test_mba_one_column_too_wide_on_a_small_image():
    # Radius 1 (a cross): the band is columns 4 and 5; the prediction is right on column 4 and
    # wrong on column 5, so every band scores 1/2.
    gt = columns(10, 10, 4)
    assert metrics.mba(gt, gt) == 1.0
    assert metrics.mba(columns(10, 10, 5), gt) == pytest.approx(0.5)


def test_mba_averages_over_growing_bands():
    # 100x1400: radii 1, 1, 2, 3, 4. A band of radius r around a vertical edge is 2r columns wide,
    # and a prediction one column too wide is wrong in one of them: accuracy 1 - 1/(2r).
    gt = columns(100, 1400, 49)
    pred = columns(100, 1400, 50)
    expected = (1 / 2 + 1 / 2 + 3 / 4 + 5 / 6 + 7 / 8) / 5  # = 83/120
    assert metrics.mba(pred, gt) == pytest.approx(expected)


def test_mba_undefined_without_a_boundary_and_respects_ignore():
    assert math.isnan(metrics.mba(np.zeros((10, 10), bool), np.zeros((10, 10), bool)))
    gt = columns(10, 10, 4)
    ignore = np.zeros((10, 10), bool)
    ignore[:, 5] = True  # the wrong column is not counted
    assert metrics.mba(columns(10, 10, 5), gt, ignore) == 1.0


# ---- Boundary IoU -------------------------------------------------------------------------------

def test_boundary_iou_width():
    assert metrics.boundary_iou_width(10, 10) == 1  # 0.02 * 14.1 rounds to 0, at least 1
    assert metrics.boundary_iou_width(100, 100) == 3  # 0.02 * 141.4 = 2.83


def test_inner_band_counts_the_image_edge_as_boundary():
    m = np.ones((4, 4), bool)
    band = metrics.inner_band(m, 1)
    expected = np.ones((4, 4), bool)
    expected[1:3, 1:3] = False
    np.testing.assert_array_equal(band, expected)


def test_boundary_iou_of_shifted_squares():
    # 10x10, d = 1. A 4x4 square's band is its 12 outline pixels. Squares at columns 3-6 and
    # 4-7 share the top and bottom rows at columns 4-6: 6 pixels; union 12 + 12 - 6 = 18.
    gt = square(10, 3, 3, 4)
    pred = square(10, 3, 4, 4)
    assert metrics.boundary_iou(gt, gt) == 1.0
    assert metrics.boundary_iou(pred, gt) == pytest.approx(6 / 18)
    empty = np.zeros_like(gt)
    assert metrics.boundary_iou(empty, empty) == 1.0
    assert metrics.boundary_iou(empty, gt) == 0.0


def test_boundary_iou_ignores_interior_errors():
    # A hole in the middle of a big square lies outside the 1-pixel band: plain IoU drops,
    # Boundary IoU does not.
    gt = square(10, 1, 1, 8)  # band = 28 outline pixels, core rows/cols 2..7
    pred = gt.copy()
    pred[4:6, 4:6] = False  # 4 interior pixels; the hole adds band pixels around it in pred
    # The hole's band in pred: the 12 pixels ringing the 2x2 hole (rows/cols 3..6 minus the hole).
    assert metrics.iou(pred, gt) == pytest.approx(60 / 64)
    assert metrics.boundary_iou(pred, gt) == pytest.approx(28 / 40)


# ---- Boundary F ---------------------------------------------------------------------------------

def test_boundary_map_is_davis_one_pixel_boundary():
    # Left half of a 4x4: the boundary is the last foreground column; the image edge is not boundary.
    b = metrics.boundary_map(columns(4, 4, 1))
    expected = np.zeros((4, 4), bool)
    expected[:, 1] = True
    np.testing.assert_array_equal(b, expected)
    assert not metrics.boundary_map(np.ones((4, 4), bool)).any()


def test_boundary_f_within_and_beyond_tolerance():
    # 10x10: tolerance ceil(0.008 * 14.1) = 1 pixel (a cross).
    gt = columns(10, 10, 4)  # boundary: column 4
    assert metrics.boundary_tolerance(10, 10) == 1
    assert metrics.boundary_f(gt, gt) == 1.0
    assert metrics.boundary_f(columns(10, 10, 5), gt) == 1.0  # boundary column 5: 1 px away
    assert metrics.boundary_f(columns(10, 10, 6), gt) == 0.0  # 2 px away
    assert metrics.boundary_f(np.zeros_like(gt), gt) == 0.0
    empty = np.zeros_like(gt)
    assert metrics.boundary_f(empty, empty) == 1.0


def test_boundary_f_partial_match():
    # Ground truth: columns 0-4 (boundary = column 4, 10 pixels).
    # Prediction: columns 0-4 in rows 0-4 and columns 0-6 in rows 5-9. Its boundary: column 4 in
    # rows 0-4 (5), column 6 in rows 5-9 (5), and (4,5), (4,6) above the step (2): 12 pixels.
    # Precision: column 4 rows 0-4 and (4,5) lie within 1 of column 4 -> 6/12.
    # Recall: ground-truth column 4 rows 0-4 are on the prediction's boundary and (5,4) touches
    # (4,4); rows 6-9 have no predicted boundary within 1 -> 6/10.
    gt = columns(10, 10, 4)
    pred = gt.copy()
    pred[5:, 5:7] = True
    p, r = 6 / 12, 6 / 10
    assert metrics.boundary_f(pred, gt) == pytest.approx(2 * p * r / (p + r))


def test_disk_is_euclidean():
    np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    # Radius 2: (±1, ±1) is in (2 <= 4), (±2, ±1) is not (5 > 4).
    d = metrics.disk(2)
    assert d[1, 1] == 1 and d[0, 1] == 0 and d[0, 2] == 1 and d.sum() == 13


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        metrics.iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
