"""Box formats, IoU / DIoU, and the RoI Recalibration transform of a box.

Formats (pixel coordinates follow ``lsnet_tf.ops.sampling``: pixel ``(i, j)`` covers
``[j, j + 1) x [i, i + 1)``, ``x`` along the width, ``y`` along the height):

- ``xyxy``: ``(..., 4)`` as ``(x1, y1, x2, y2)`` in input pixels, ``x1 <= x2``, ``y1 <= y2``.
- ``ltrb``: ``(..., 4)`` distances ``(l, t, r, b)`` in input pixels from a point ``(x, y)`` to the
  left, top, right and bottom edges of its box: ``xyxy = (x - l, y - t, x + r, y + b)``.
- points: ``(..., 2)`` as ``(x, y)`` in input pixels.
- ``theta``: ``(..., 2, 3)`` affine from normalised RoI (output) coordinates to normalised image
  (input) coordinates, as consumed by ``sampling.affine_grid``.
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["ltrb_to_xyxy", "xyxy_to_ltrb", "box_iou", "diou_loss", "roi_theta", "box_theta",
           "cell_centres"]


def _check_last(tensor: tf.Tensor, size: int, name: str, layout: str) -> None:
    if tensor.shape.rank == 0 or (tensor.shape.rank is not None and tensor.shape[-1] is not None
                                  and tensor.shape[-1] != size):
        raise ValueError(f"{name} must have shape (..., {size}) {layout}, got {tensor.shape}")


def _float(value) -> tf.Tensor:
    tensor = tf.convert_to_tensor(value)
    if not tensor.dtype.is_floating:
        tensor = tf.cast(tensor, tf.float32)
    return tensor


def cell_centres(cells, stride) -> tf.Tensor:
    """``(..., 2)`` feature-grid cells ``(x, y)`` = (column j, row i) -> ``(..., 2)`` input points.

    "Centre-aligned sampling" (Sec. 2.1 of the paper): cell ``(i, j)`` of a stride-`stride` grid
    stands for the input point ``((j + 0.5) * stride, (i + 0.5) * stride)``.
    """
    return (_float(cells) + 0.5) * stride


def ltrb_to_xyxy(points, ltrb) -> tf.Tensor:
    """``(..., 2)`` points ``(x, y)`` and ``(..., 4)`` ``ltrb`` -> ``(..., 4)`` ``xyxy`` boxes."""
    points = _float(points)
    ltrb = tf.cast(_float(ltrb), points.dtype)
    _check_last(points, 2, "points", "(x, y)")
    _check_last(ltrb, 4, "ltrb", "(l, t, r, b)")
    x, y = points[..., 0], points[..., 1]
    return tf.stack([x - ltrb[..., 0], y - ltrb[..., 1], x + ltrb[..., 2], y + ltrb[..., 3]], -1)


def xyxy_to_ltrb(points, boxes) -> tf.Tensor:
    """``(..., 2)`` points ``(x, y)`` and ``(..., 4)`` ``xyxy`` boxes -> ``(..., 4)`` ``ltrb``.

    The inverse of ``ltrb_to_xyxy``; distances are negative for a point outside its box.
    """
    points = _float(points)
    boxes = tf.cast(_float(boxes), points.dtype)
    _check_last(points, 2, "points", "(x, y)")
    _check_last(boxes, 4, "boxes", "(x1, y1, x2, y2)")
    x, y = points[..., 0], points[..., 1]
    return tf.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y],
                    -1)


def _iou_terms(a: tf.Tensor, b: tf.Tensor, eps: float):
    """Intersection-over-union of ``xyxy`` boxes, element-wise, plus the boxes' extents."""
    # Inverted boxes (x2 < x1) count as zero area.
    area_a = tf.nn.relu(a[..., 2] - a[..., 0]) * tf.nn.relu(a[..., 3] - a[..., 1])
    area_b = tf.nn.relu(b[..., 2] - b[..., 0]) * tf.nn.relu(b[..., 3] - b[..., 1])
    inter_w = tf.nn.relu(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    inter_h = tf.nn.relu(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    inter = inter_w * inter_h
    union = area_a + area_b - inter
    return inter / tf.maximum(union, eps)


def box_iou(boxes_a, boxes_b, eps: float = 1e-7) -> tf.Tensor:
    """Element-wise IoU of ``(..., 4)`` ``xyxy`` boxes -> ``(...)``; 0 when both have no area."""
    boxes_a = _float(boxes_a)
    boxes_b = tf.cast(_float(boxes_b), boxes_a.dtype)
    _check_last(boxes_a, 4, "boxes_a", "(x1, y1, x2, y2)")
    _check_last(boxes_b, 4, "boxes_b", "(x1, y1, x2, y2)")
    return _iou_terms(boxes_a, boxes_b, eps)


def diou_loss(boxes_true, boxes_pred, eps: float = 1e-7) -> tf.Tensor:
    """Distance-IoU loss (Zheng et al. 2020), element-wise, no reduction.

    Args:
      boxes_true, boxes_pred: ``(..., 4)`` ``xyxy`` boxes (broadcastable).
      eps: guards the IoU denominator and the enclosing diagonal.

    Returns:
      ``(...)``: ``1 - IoU + rho^2 / c^2``, ``rho`` the distance between the box centres and
      ``c`` the diagonal of the smallest box enclosing both. In ``[0, 2)``; 0 for identical
      boxes with positive area. Degenerate (zero-area or inverted) boxes give finite values and
      finite gradients: their IoU counts as 0 and ``c^2`` is at least ``eps``.
    """
    boxes_true = _float(boxes_true)
    boxes_pred = tf.cast(_float(boxes_pred), boxes_true.dtype)
    _check_last(boxes_true, 4, "boxes_true", "(x1, y1, x2, y2)")
    _check_last(boxes_pred, 4, "boxes_pred", "(x1, y1, x2, y2)")
    a, b = boxes_true, boxes_pred
    iou = _iou_terms(a, b, eps)
    dcx = (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) * 0.5
    dcy = (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) * 0.5
    rho2 = tf.square(dcx) + tf.square(dcy)
    enc_w = tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0])
    enc_h = tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])
    c2 = tf.square(enc_w) + tf.square(enc_h)
    return 1.0 - iou + rho2 / tf.maximum(c2, eps)


def box_theta(boxes_xyxy, height, width, margin: float = 15.0) -> tf.Tensor:
    """RR transform of a box (Eq. (3) of the paper, Sec. 2.2): ``(..., 4)`` ``xyxy`` -> ``(..., 2, 3)``.

    The box is grown by `margin` input pixels on every side, giving ``(x1, y1, x2, y2)``; then
    ``s_x = (x2 - x1) / W``, ``s_y = (y2 - y1) / H``, ``t_x = (x1 + x2) / W - 1``,
    ``t_y = (y1 + y2) / H - 1`` and ``theta = [[s_x, 0, t_x], [0, s_y, t_y]]``: the output grid's
    outer edges (normalised -1 and +1) land on the grown box's edges in the ``height`` x
    ``width`` input image. Differentiable with respect to the box.
    """
    boxes = _float(boxes_xyxy)
    _check_last(boxes, 4, "boxes_xyxy", "(x1, y1, x2, y2)")
    h = tf.cast(height, boxes.dtype)
    w = tf.cast(width, boxes.dtype)
    x1 = boxes[..., 0] - margin
    y1 = boxes[..., 1] - margin
    x2 = boxes[..., 2] + margin
    y2 = boxes[..., 3] + margin
    sx = (x2 - x1) / w
    sy = (y2 - y1) / h
    tx = (x1 + x2) / w - 1.0
    ty = (y1 + y2) / h - 1.0
    zero = tf.zeros_like(sx)
    return tf.stack([tf.stack([sx, zero, tx], -1), tf.stack([zero, sy, ty], -1)], -2)


def roi_theta(keypoints, ltrb, height, width, margin: float = 15.0) -> tf.Tensor:
    """RR transform from a keypoint and its regressed distances (Eqs. (2)-(3) of the paper, Sec. 2.2).

    Args:
      keypoints: ``(..., 2)`` ``(x, y)`` in input pixels.
      ltrb: ``(..., 4)`` distances in input pixels.
      height, width: input image size in pixels.
      margin: context added on every side, in input pixels.

    Returns:
      ``(..., 2, 3)``: ``box_theta(ltrb_to_xyxy(keypoints, ltrb), height, width, margin)``,
      i.e. ``x1 = k_x - l - m``, ``x2 = k_x + r + m``, ``y1 = k_y - t - m``, ``y2 = k_y + b + m``.
    """
    return box_theta(ltrb_to_xyxy(keypoints, ltrb), height, width, margin)
