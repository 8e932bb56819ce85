"""Hard crops: the boxes of a predicted mask and the quantized crop of a box, in-graph.

The baselines' first stages give boxes (``mask_boxes`` of a coarse mask, or L-Net's keypoint
boxes); ``hard_crop`` takes the crop the coarse-to-fine models take (Sec. 3.2 of the paper: the
box grown by a 15-pixel border): rounded outward to whole pixels, clipped to the image and a
constant for the gradient, which is what RR (Sec. 2.2) avoids. The crop is resampled to the
second stage's input size with the sampler RR uses (conventions in ``lsnet_tf.ops.sampling``),
so that its mask goes back through the same inverse transform (``sampling.paste_masks``).

Boxes are xyxy input pixels (``lsnet_tf.ops.boxes``).
"""
from __future__ import annotations

import tensorflow as tf

from lsnet_tf.config import check_positive_int
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops import components
from lsnet_tf.ops import sampling

CROP_MODES = ("union", "components")

__all__ = ["CROP_MODES", "box_centres", "crop_boxes", "hard_crop", "mask_boxes", "union_box"]


def _dim(tensor, axis):
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def mask_boxes(prob, threshold: float = 0.5, max_boxes: int = 8, mode: str = "components") -> dict:
    """Bounding boxes of a predicted mask, in-graph.

    Args:
      prob: ``(batch, H, W)`` float mask probabilities; pixels strictly above `threshold` are
        foreground.
      threshold: foreground threshold.
      max_boxes: ``K``, the number of box slots per image.
      mode: ``"components"``: one box per 8-connected component (``connected_components``),
        ranked by the component's highest probability, the best ``K`` kept; ``"union"``: one box
        around the whole foreground in slot 0, the other slots invalid.

    Returns:
      dict of ``boxes`` ``(batch, K, 4)`` float32 xyxy in pixel-edge coordinates (a component on
      columns ``j0..j1`` and rows ``i0..i1`` gives ``(j0, i0, j1 + 1, i1 + 1)``, the convention of
      ``lsnet_tf.data.records.boxes_from_mask``), ``scores`` ``(batch, K)`` the highest
      probability inside, ``valid`` ``(batch, K)`` bool. Invalid slots are zeros.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"mode must be one of {', '.join(CROP_MODES)}, received {mode!r}")
    check_positive_int(max_boxes, "max_boxes")
    prob = tf.convert_to_tensor(prob)
    if not prob.dtype.is_floating:
        raise TypeError(f"prob must be a floating tensor, received dtype {prob.dtype.name}")
    if prob.shape.rank is not None and prob.shape.rank != 3:
        raise ValueError(f"prob must have shape (batch, H, W), received {prob.shape}")
    prob = tf.cast(prob, tf.float32)
    batch, height, width = _dim(prob, 0), _dim(prob, 1), _dim(prob, 2)
    fg = prob > threshold
    cols = tf.range(width, dtype=tf.int32)
    rows = tf.range(height, dtype=tf.int32)
    k = max_boxes
    if mode == "union":
        any_col = tf.reduce_any(fg, axis=1)  # (B, W)
        any_row = tf.reduce_any(fg, axis=2)  # (B, H)
        valid = tf.reduce_any(any_col, axis=1)
        x1 = tf.reduce_min(tf.where(any_col, cols, width), axis=1)
        x2 = tf.reduce_max(tf.where(any_col, cols + 1, 0), axis=1)
        y1 = tf.reduce_min(tf.where(any_row, rows, height), axis=1)
        y2 = tf.reduce_max(tf.where(any_row, rows + 1, 0), axis=1)
        vf = tf.cast(valid, tf.float32)
        box = tf.cast(tf.stack([x1, y1, x2, y2], -1), tf.float32) * vf[:, None]
        score = tf.reduce_max(tf.where(fg, prob, 0.0), axis=[1, 2]) * vf
        return {
            "boxes": tf.pad(box[:, None], [[0, 0], [0, k - 1], [0, 0]]),
            "scores": tf.pad(score[:, None], [[0, 0], [0, k - 1]]),
            "valid": tf.pad(valid[:, None], [[0, 0], [0, k - 1]]),
        }

    labels = components.connected_components(fg)  # (B, H, W) in [0, H * W]
    pixels = height * width
    per_image = pixels + 1
    segments = tf.reshape(labels + tf.reshape(tf.range(batch) * per_image, [-1, 1, 1]), [-1])
    n = batch * per_image
    xs = tf.reshape(tf.broadcast_to(cols[None, None, :], tf.shape(labels)), [-1])
    ys = tf.reshape(tf.broadcast_to(rows[None, :, None], tf.shape(labels)), [-1])

    def per_label(x):  # (B * (pixels + 1),) -> (B, pixels): background label 0 dropped
        return tf.reshape(x, [batch, per_image])[:, 1:]

    x1 = per_label(tf.math.unsorted_segment_min(xs, segments, n))
    x2 = per_label(tf.math.unsorted_segment_max(xs + 1, segments, n))
    y1 = per_label(tf.math.unsorted_segment_min(ys, segments, n))
    y2 = per_label(tf.math.unsorted_segment_max(ys + 1, segments, n))
    count = per_label(tf.math.unsorted_segment_sum(tf.ones_like(xs), segments, n))
    peak = per_label(tf.math.unsorted_segment_max(tf.reshape(prob, [-1]), segments, n))
    exists = count > 0
    ranked = tf.where(exists, peak, -1.0)
    kk = min(k, pixels) if isinstance(pixels, int) else tf.minimum(k, pixels)
    order = tf.math.top_k(ranked, k=kk).indices

    def pick(x):
        return tf.gather(x, order, batch_dims=1)

    valid = pick(exists)
    vf = tf.cast(valid, tf.float32)
    boxes = tf.cast(tf.stack([pick(x1), pick(y1), pick(x2), pick(y2)], -1), tf.float32)
    boxes = boxes * vf[..., None]
    scores = pick(peak) * vf
    pad = k - kk
    return {
        "boxes": tf.reshape(tf.pad(boxes, [[0, 0], [0, pad], [0, 0]]), [batch, k, 4]),
        "scores": tf.reshape(tf.pad(scores, [[0, 0], [0, pad]]), [batch, k]),
        "valid": tf.reshape(tf.pad(valid, [[0, 0], [0, pad]]), [batch, k]),
    }


def crop_boxes(boxes, height, width, margin: float = 15.0) -> tf.Tensor:
    """The hard-crop box of each box: grown by `margin`, rounded outward, clipped, no gradient.

    Args:
      boxes: ``(..., 4)`` xyxy input pixels.
      height, width: image size in pixels.
      margin: border added on every side, in pixels (15 in the paper).

    Returns:
      ``(..., 4)`` float32 xyxy: ``floor(x1 - m)``, ``floor(y1 - m)``, ``ceil(x2 + m)``,
      ``ceil(y2 + m)``, clipped to ``[0, width] x [0, height]``, at least one pixel wide and
      high, wrapped in ``tf.stop_gradient``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, received {margin!r}")
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    if boxes.shape.rank is not None and boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (..., 4) xyxy, received {boxes.shape}")
    w = tf.cast(width, tf.float32)
    h = tf.cast(height, tf.float32)
    x1 = tf.clip_by_value(tf.floor(boxes[..., 0] - margin), 0.0, w - 1.0)
    y1 = tf.clip_by_value(tf.floor(boxes[..., 1] - margin), 0.0, h - 1.0)
    x2 = tf.clip_by_value(tf.math.ceil(boxes[..., 2] + margin), x1 + 1.0, w)
    y2 = tf.clip_by_value(tf.math.ceil(boxes[..., 3] + margin), y1 + 1.0, h)
    return tf.stop_gradient(tf.stack([x1, y1, x2, y2], -1))


def hard_crop(images, boxes, output_size, margin: float = 15.0):
    """Crop ``crop_boxes(boxes)`` from each image and resize it bilinearly to `output_size`.

    Args:
      images: ``(N, H, W, C)`` float.
      boxes: ``(N, 4)`` xyxy input pixels (one box per image).
      output_size: ``(h, w)`` of the crops.
      margin: border in pixels.

    Returns:
      ``(crops, theta)``: ``crops`` ``(N, h, w, C)``, output pixel ``p`` sampled bilinearly at
      the normalised point ``theta @ p`` (``lsnet_tf.ops.sampling`` conventions); ``theta``
      ``(N, 2, 3)`` float32 maps the crop onto the quantized box (``box_theta`` with margin 0) and
      inverts with ``paste_masks``. A box the size of the output gives the box's pixels exactly.
      No gradient reaches `boxes`.
    """
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"images must have shape (N, H, W, C), received {images.shape}")
    oh, ow = (int(s) for s in output_size)
    height, width = _dim(images, 1), _dim(images, 2)
    box = crop_boxes(boxes, height, width, margin)
    theta = box_ops.box_theta(box, height, width, margin=0.0)
    # box_theta is scale-and-translate: the separable sampler gives bilinear_sample's crops.
    scale = tf.stack([theta[:, 0, 0], theta[:, 1, 1]], axis=-1)
    return sampling.sample_axis_aligned(images, scale, theta[:, :, 2], oh, ow), theta


def union_box(boxes, valid):
    """``(B, K, 4)`` xyxy and ``(B, K)`` bool -> ``(B, 4)`` box around all valid boxes (0 if none)."""
    big = tf.constant(1e9, tf.float32)
    lo = tf.reduce_min(tf.where(valid[..., None], boxes[..., :2], big), axis=1)
    hi = tf.reduce_max(tf.where(valid[..., None], boxes[..., 2:], -big), axis=1)
    any_ = tf.reduce_any(valid, axis=1, keepdims=True)
    return tf.where(any_, tf.concat([lo, hi], -1), 0.0)


def box_centres(boxes, valid):
    """``(B, K, 4)`` xyxy and ``(B, K)`` bool -> ``(B, K, 2)`` box centres (0 where invalid)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2 * tf.cast(valid, tf.float32)[..., None]
