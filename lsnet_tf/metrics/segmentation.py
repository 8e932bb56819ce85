"""Per-slice segmentation and box metrics (numpy; evaluation runs outside the graph).

Conventions: masks are binary (H, W); boxes are xyxy pixels. A slice's DSC, precision and recall
are defined when the slice holds a target; slices without one are counted separately (a
prediction on an empty slice is a false-positive slice).
"""
from __future__ import annotations

import numpy as np


def scores_from_counts(tp: int, n_true: int, n_pred: int) -> dict:
    """DSC, precision and recall of a slice from its counts (true positives, target pixels,
    predicted pixels); precision is 0 when nothing is predicted on a slice with a target."""
    dsc = 2 * tp / (n_true + n_pred) if n_true + n_pred > 0 else 1.0
    precision = tp / n_pred if n_pred > 0 else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true > 0 else 1.0
    return {"dsc": dsc, "precision": precision, "recall": recall}


def slice_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """`scores_from_counts` of one binary slice (foreground > 0.5)."""
    t = np.asarray(y_true) > 0.5
    p = np.asarray(y_pred) > 0.5
    return scores_from_counts(float(np.logical_and(t, p).sum()), float(t.sum()), float(p.sum()))


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def best_box_iou(true_boxes: np.ndarray, pred_boxes: np.ndarray) -> np.ndarray:
    """For each true box, the IoU of the best-matching predicted box (0 when none is predicted)."""
    if len(true_boxes) == 0:
        return np.zeros(0)
    if len(pred_boxes) == 0:
        return np.zeros(len(true_boxes))
    return box_iou_matrix(true_boxes, pred_boxes).max(axis=1)


def size_bucket(area: float, image_area: float) -> str:
    """small / medium / large by the target's share of the image (< 1 %, < 5 %, >= 5 %)."""
    frac = area / image_area
    return "small" if frac < 0.01 else ("medium" if frac < 0.05 else "large")
