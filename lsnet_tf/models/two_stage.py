"""The steps of the two-stage method that L-SNet and its ablations share.

L-SNet (``lsnet.LSNet``), L-Net + crop and the coarse-to-fine cascades (``cascades``) differ only
in what the paper changes between them (Tables 2 and 3): how the first stage finds the region
(L-Net's keypoints, or a coarse mask's boxes) and how the region is taken (RR's differentiable
affine sampling, Sec. 2.2, or a hard crop). Every other step is one function here, called by each
of them, so that a change to a step changes every row of the ablation alike:

- ``decode_keypoints``: inference keypoints (Sec. 2.5): heatmap > threshold, one keypoint per
  connected component (its peak cell) with its regressed box;
- ``select_train_rois``: the training keypoint of each image (Sec. 2.5): one of the ``top_k``
  highest heatmap cells at random, or the best one outside training;
- ``roi_targets``: the target mask resampled through a RoI's θ, without gradient;
- ``segment_rois``: S-Net once on every valid RoI of a batch, its masks pasted back through θ⁻¹
  (Eq. 4) and merged per image by max.

Conventions: images ``(B, H, W, C)``; L-Net's heatmap ``(B, H/s, W/s, 1)`` and distances
``(B, H/s, W/s, 4)`` ``ltrb`` in input pixels at the stride ``STRIDE`` = s = 4; feature cell
``(i, j)`` stands for the input point ``((j + 0.5)·s, (i + 0.5)·s)`` (``boxes.cell_centres``);
points ``(x, y)`` and boxes ``xyxy`` in input pixels.
"""
from __future__ import annotations

import tensorflow as tf

from lsnet_tf.config import STRIDE
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops import components
from lsnet_tf.ops import sampling
from lsnet_tf.ops.replicas import replica_uniform

__all__ = ["decode_keypoints", "roi_targets", "segment_rois", "select_train_rois"]


def _cell_values(tensor, cells):
    """``(B, h, w, C)`` and flat cell indices ``(B, ...)`` (row-major) -> ``(B, ..., C)``."""
    b = tf.shape(tensor)[0]
    return tf.gather(tf.reshape(tensor, [b, -1, tensor.shape[-1]]), cells, batch_dims=1)


def _flat_cell_points(cells, width):
    """Flat cell indices on a grid `width` cells wide -> their input points ``(..., 2)``."""
    xy = tf.stack([tf.cast(cells % width, tf.float32), tf.cast(cells // width, tf.float32)], -1)
    return box_ops.cell_centres(xy, STRIDE)


def select_train_rois(heatmap, ltrb, top_k: int, training, seed):
    """Per image, the keypoint of its training RoI and that keypoint's distances.

    Args:
      heatmap: ``(B, h, w, 1)`` keypoint scores; the choice takes no gradient from it.
      ltrb: ``(B, h, w, 4)`` distances; the returned ones keep their gradient (RR's route from
        S-Net's loss into L-Net).
      top_k: in training, one of the ``top_k`` highest cells is picked uniformly at random (3 in
        the paper, Sec. 2.5).
      training: Python bool; outside training, always the highest cell.
      seed: ``(2,)`` int seed of ``tf.random.stateless_uniform`` (see
        ``lsnet_tf.ops.replicas.replica_uniform``).

    Returns:
      ``(points, distances)``: ``(B, 2)`` input pixels and ``(B, 4)`` ``ltrb``.
    """
    b = tf.shape(heatmap)[0]
    wf = tf.shape(heatmap)[2]
    flat = tf.reshape(tf.stop_gradient(heatmap), [b, -1])
    k = tf.minimum(top_k, tf.shape(flat)[1])
    _, idx = tf.math.top_k(flat, k=k)
    if training:
        pick = replica_uniform([b], seed, 0, k, dtype=tf.int32)
    else:
        pick = tf.zeros([b], tf.int32)
    cell = tf.gather(idx, pick, batch_dims=1)  # (B,)
    return _flat_cell_points(cell, wf), _cell_values(ltrb, cell)


def decode_keypoints(heatmap, ltrb, threshold: float, max_rois: int) -> dict:
    """Inference keypoints: one per connected component of ``heatmap > threshold``.

    Args:
      heatmap: ``(B, h, w, 1)``; ltrb: ``(B, h, w, 4)``.
      threshold: heatmap threshold (0.5 in the paper).
      max_rois: ``K`` keypoint slots per image (components with the highest peaks first).

    Returns:
      dict of ``keypoints`` ``(B, K, 2)`` the peak cell's input point, ``distances`` ``(B, K, 4)``
      its ``ltrb``, ``boxes`` ``(B, K, 4)`` xyxy, ``scores`` ``(B, K)`` the peak value and
      ``valid`` ``(B, K)`` bool; keypoints, boxes and scores are zeros where invalid.
    """
    peaks = components.component_peaks(heatmap[..., 0], threshold=threshold,
                                       max_components=max_rois)
    cells, valid = peaks["points"], peaks["valid"]  # (B, K, 2) feature-grid (x, y) of each peak
    vf = tf.cast(valid, tf.float32)
    keypoints = box_ops.cell_centres(cells, STRIDE)
    wf = tf.shape(heatmap)[2]
    flat = tf.cast(cells[..., 1], tf.int32) * wf + tf.cast(cells[..., 0], tf.int32)
    distances = _cell_values(ltrb, flat)
    return {"keypoints": keypoints * vf[..., None], "distances": distances,
            "boxes": box_ops.ltrb_to_xyxy(keypoints, distances) * vf[..., None],
            "scores": peaks["scores"] * vf, "valid": valid}


def roi_targets(mask, theta, roi_size):
    """The target mask ``(B, H, W, C)`` sampled through each RoI's θ ``(B, 2, 3)`` (no gradient
    to θ): ``(B, h, w, C)`` at ``roi_size`` ``(h, w)``, what S-Net's loss compares with.

    θ is scale-and-translate (RR's or the hard crop's): the values are
    ``bilinear_sample(mask, affine_grid(θ, h, w))``'s bit for bit, computed by
    ``sampling.sample_scale_translate`` (the index and weight arithmetic per axis)."""
    return sampling.sample_scale_translate(mask, tf.stop_gradient(theta), *roi_size)


def segment_rois(snet, images, image_size, valid, take_rois, *per_roi):
    """S-Net on every valid RoI of a batch, pasted back and merged: ``(B, H, W, C)``.

    Args:
      snet: ``(N, h, w, C_in) -> (N, h, w, C)`` logits.
      images: ``(B, H, W, C_in)``.
      image_size: ``(H, W)`` ints.
      valid: ``(B, K)`` bool, which RoI slots exist.
      take_rois: ``take_rois(images, *rois) -> (crops, theta)``: the RoIs ``(N, h, w, C_in)``
        of ``N`` images and their θ ``(N, 2, 3)`` (RR, or a hard crop).
      *per_roi: ``(B, K, ...)`` tensors describing each RoI slot (keypoints and distances, or
        boxes); the valid ones are passed to `take_rois`, with their image.

    S-Net runs once on all valid RoIs of the batch; each mask goes back through θ⁻¹ (Eq. 4) and
    the masks of one image merge by max (``sampling.paste_masks``). An image without a valid RoI
    gets an empty mask.
    """
    b = tf.shape(images)[0]
    k = tf.shape(valid)[1]
    h, w = image_size
    sel = tf.where(tf.reshape(valid, [-1]))[:, 0]
    image_index = tf.gather(tf.repeat(tf.range(b), k), sel)
    flat = [tf.gather(tf.reshape(x, [-1, *x.shape[2:]]), sel) for x in per_roi]
    rois, theta = take_rois(tf.gather(images, image_index), *flat)
    # Convolutions on an empty batch fail on the oneDNN CPU kernels, and a batch without any RoI
    # must still give an (empty) mask: a blank RoI is appended only then, and dropped again.
    # (Appending one always would run S-Net on two RoIs for a slice's one, twice its work.)
    n = tf.shape(rois)[0]
    padded = tf.pad(rois, [[0, tf.maximum(1 - n, 0)], [0, 0], [0, 0], [0, 0]])
    prob = tf.sigmoid(tf.cast(snet(padded, training=False), tf.float32))[:n]
    return sampling.paste_masks(prob, theta, image_index, b, h, w)
