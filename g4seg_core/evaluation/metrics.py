"""Segmentation metrics as pure functions over bool masks.

Each boundary metric follows its paper's reference definition, so numbers compare with published
ones:
- mBA (CascadePSP, Cheng et al. 2020): pixel accuracy inside bands around the ground-truth
  boundary, for five radii from 1 to (h + w) / 300, averaged.
- Boundary IoU (Cheng et al. 2021): IoU of the inner boundary bands of width d = 2% of the
  diagonal (the image edge counts as boundary).
- Boundary F-measure (DAVIS, Perazzi et al. 2016): precision and recall of one-pixel boundaries
  matched within 0.8% of the diagonal.

`ignore` (bool HxW, optional) marks pixels that no metric counts (VOC's 255 label).
Conventions for empty masks: a prediction that matches an empty ground truth exactly scores 1;
mBA is undefined (nan) when the ground truth has no boundary, and callers average with nanmean.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

IGNORE_LABEL = 255


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must be 2-D and the same size")
    return pred, gt


def _valid(shape, ignore: np.ndarray | None) -> np.ndarray:
    if ignore is None:
        return np.ones(shape, bool)
    ignore = np.asarray(ignore, dtype=bool)
    if ignore.shape != tuple(shape):
        raise ValueError(f"ignore mask {ignore.shape} does not match the masks {tuple(shape)}")
    return ~ignore


def disk(radius: int) -> np.ndarray:
    """Structuring element of the pixels within Euclidean distance `radius` (x^2 + y^2 <= r^2)."""
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return ((xx * xx + yy * yy) <= r * r).astype(np.uint8)


def _ratio(num: int, den: int, empty: float) -> float:
    return float(num) / float(den) if den else empty


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union; 1.0 when both masks are empty."""
    pred, gt = _pair(pred, gt)
    valid = _valid(gt.shape, ignore)
    inter = np.count_nonzero(pred & gt & valid)
    union = np.count_nonzero((pred | gt) & valid)
    return _ratio(inter, union, 1.0)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """num_classes x num_classes counts, rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_label` are not counted. Labels outside [0, num_classes)
    elsewhere are an error, not silently dropped.
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise ValueError("prediction and ground truth label maps differ in size")
    keep = gt != ignore_label
    pred, gt = pred[keep], gt[keep]
    for name, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_ious(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; nan for a class in neither ground truth nor prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """mIoU over the classes that occur (in ground truth or prediction)."""
    ious = class_ious(confusion)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


def mba_radii(height: int, width: int, steps: int = 5) -> list[int]:
    """CascadePSP's band radii: 1 + int((max_r - 1) / steps * i), max_r = (h + w) / 300."""
    max_radius = (height + width) / 300.0
    return [1 + int((max_radius - 1) / steps * i) for i in range(steps)]


def _ellipse(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def mba(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean boundary accuracy (CascadePSP); nan when the ground truth has no boundary."""
    pred, gt = _pair(pred, gt)
    valid = _valid(gt.shape, ignore)
    gt_u8 = gt.astype(np.uint8)
    accuracies = []
    for radius in mba_radii(*gt.shape):
        kernel = _ellipse(radius)
        # Morphological gradient; OpenCV's default border never creates boundary at the image edge.
        band = (cv2.dilate(gt_u8, kernel) > cv2.erode(gt_u8, kernel)) & valid
        n = np.count_nonzero(band)
        if n == 0:
            return float("nan")
        accuracies.append(np.count_nonzero((pred == gt) & band) / n)
    return float(np.mean(accuracies))


def boundary_iou_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def inner_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Mask pixels within `width` steps (8-connected) of a background pixel; outside the image is background."""
    mask = np.asarray(mask, dtype=bool)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=width)[1:-1, 1:-1]
    return mask & (eroded == 0)


def boundary_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU (Cheng et al. 2021); 1.0 when both masks are empty."""
    pred, gt = _pair(pred, gt)
    valid = _valid(gt.shape, ignore)
    d = boundary_iou_width(*gt.shape, dilation_ratio=dilation_ratio)
    gt_band = inner_band(gt, d) & valid
    pred_band = inner_band(pred, d) & valid
    return _ratio(np.count_nonzero(gt_band & pred_band), np.count_nonzero(gt_band | pred_band), 1.0)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS one-pixel boundary: a pixel differing from its right, lower or lower-right neighbour."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    out[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    out[:-1, :] |= mask[:-1, :] != mask[1:, :]
    out[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return out


def boundary_tolerance(height: int, width: int, ratio: float = 0.008) -> int:
    return int(math.ceil(ratio * math.hypot(height, width)))


def boundary_f(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, tolerance_ratio: float = 0.008) -> float:
    """Boundary F-measure (DAVIS): boundaries match within ceil(0.8% of the diagonal) pixels."""
    pred, gt = _pair(pred, gt)
    valid = _valid(gt.shape, ignore)
    tol = disk(max(1, boundary_tolerance(*gt.shape, ratio=tolerance_ratio)))
    pred_b = boundary_map(pred) & valid
    gt_b = boundary_map(gt) & valid
    n_pred, n_gt = np.count_nonzero(pred_b), np.count_nonzero(gt_b)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    precision = np.count_nonzero(pred_b & (cv2.dilate(gt_b.astype(np.uint8), tol) > 0)) / n_pred
    recall = np.count_nonzero(gt_b & (cv2.dilate(pred_b.astype(np.uint8), tol) > 0)) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def object_scores(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
    """The per-object metrics the benchmark reports."""
    return {
        "iou": iou(pred, gt, ignore),
        "biou": boundary_iou(pred, gt, ignore),
        "mba": mba(pred, gt, ignore),
        "bf": boundary_f(pred, gt, ignore),
    }
