"""L-Net training targets: the keypoint heatmap (Eq. 1) and the l,t,r,b distances, in TF.

Conventions (Sec. 2.1 of the paper): L-Net's output stride is s = ``lsnet_tf.config.STRIDE`` = 4;
feature position (i, j) maps to the input point q = ((j + 0.5)·s, (i + 0.5)·s) ("centre-aligned
sampling", ``ops.boxes.cell_centres``). Boxes are xyxy in input pixels (pixel-edge coordinates).

For a box with centre c, its keypoint cell is the cell holding c: p = (floor(c_x / s),
floor(c_y / s)). The heatmap is Y_ij = max over boxes of exp(-((j - p_x)² + (i - p_y)²) / (2σ²)),
so one box gives a peak of exactly 1.0 at its keypoint cell. σ is size-adaptive by default, as in
CenterNet: r = floor(gaussian_radius(box size / s, min_overlap)), σ = (2r + 1) / 6; a positive
`sigma` fixes it (in feature cells) instead.

At each position the distance target is (l, t, r, b) = (q_x - x1, q_y - y1, x2 - q_x, y2 - q_y)
for the box whose Gaussian is largest there, so q - (l, t) and q + (r, b) rebuild that box
exactly. Only positions with Y > τ are positives for the box loss (the loss applies that mask).
"""
from __future__ import annotations

import tensorflow as tf

from lsnet_tf.config import STRIDE
from lsnet_tf.ops import boxes as box_ops


def gaussian_radius(height, width, min_overlap=0.7):
    """CenterNet's Gaussian radius for a box of (height, width) feature cells (element-wise).

    The largest corner displacement that keeps IoU >= min_overlap, as implemented in CenterNet
    (xingyizhou/CenterNet `gaussian_radius`, including its `(b + sqrt) / 2` form).
    """
    h = tf.convert_to_tensor(height, tf.float32)
    w = tf.convert_to_tensor(width, tf.float32)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + tf.sqrt(tf.maximum(b1 ** 2 - 4 * c1, 0.0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + tf.sqrt(tf.maximum(b2 ** 2 - 16 * c2, 0.0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + tf.sqrt(tf.maximum(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
    return tf.minimum(tf.minimum(r1, r2), r3)


def keypoint_cells(boxes, stride=STRIDE):
    """(N, 4) xyxy input pixels -> (N, 2) int32 (x, y) keypoint cells on the stride grid."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return tf.cast(tf.stack([tf.floor(cx / stride), tf.floor(cy / stride)], -1), tf.int32)


def encode_targets(boxes, height: int, width: int, stride: int = STRIDE, sigma: float = 0.0,
                   min_overlap: float = 0.7):
    """Heatmap and distance targets for one image.

    Args:
      boxes: (N, 4) float32 xyxy in input pixels; N may be 0.
      height, width: input size in pixels (static ints, multiples of `stride`).
    Returns:
      heatmap (height/stride, width/stride, 1) float32 in [0, 1];
      ltrb (height/stride, width/stride, 4) float32 input pixels (zeros when N = 0).
    """
    boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
    hf, wf = height // stride, width // stride
    ii, jj = tf.meshgrid(tf.range(hf, dtype=tf.float32), tf.range(wf, dtype=tf.float32), indexing="ij")
    cells = tf.cast(keypoint_cells(boxes, stride), tf.float32)
    px = tf.clip_by_value(cells[:, 0], 0, wf - 1)[:, None, None]
    py = tf.clip_by_value(cells[:, 1], 0, hf - 1)[:, None, None]
    if sigma > 0:
        sig = tf.fill(tf.shape(boxes)[:1], float(sigma))
    else:
        bh = (boxes[:, 3] - boxes[:, 1]) / stride
        bw = (boxes[:, 2] - boxes[:, 0]) / stride
        r = tf.maximum(tf.floor(gaussian_radius(bh, bw, min_overlap)), 0.0)
        sig = (2 * r + 1) / 6
    sig = sig[:, None, None]
    g = tf.exp(-((jj - px) ** 2 + (ii - py) ** 2) / (2 * sig ** 2))  # (N, hf, wf)
    n = tf.shape(boxes)[0]
    heat = tf.cond(n > 0, lambda: tf.reduce_max(g, 0), lambda: tf.zeros([hf, wf]))
    owner = tf.argmax(tf.concat([g, tf.zeros([1, hf, wf])], 0), axis=0, output_type=tf.int32)
    owner = tf.minimum(owner, tf.maximum(n - 1, 0))
    padded = tf.concat([boxes, tf.zeros([1, 4])], 0)
    b = tf.gather(padded, owner)  # (hf, wf, 4)
    ltrb = box_ops.xyxy_to_ltrb(box_ops.cell_centres(tf.stack([jj, ii], -1), stride), b)
    ltrb = ltrb * tf.cast(n > 0, tf.float32)
    return heat[..., None], ltrb
