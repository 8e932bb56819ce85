"""L-Net's loss, Eq. (5): L_L = (1/N_L) Σ ℓ(P, Y) + (1/N_pos) Σ 1(Y > τ) · ℓ_DIoU(B̂, B).

ℓ is the segmentation loss of the config (focal + 0.2 · Dice, or BCE for the ablation) applied to
the predicted heatmap P against the Gaussian target Y. The box term compares, at each positive
position (Y > τ), the box rebuilt from the predicted distances with the one rebuilt from the
target distances, both around the position's input point q = ((j + 0.5)·s, (i + 0.5)·s).

Reduction across replicas: every term is a sum over this replica's examples divided by a global
count (the global batch for ℓ, the all-reduced number of positives for the box term), so the sum
of per-replica losses is the loss of the global batch, which is what a custom train step under
``tf.distribute`` must minimise.
"""
from __future__ import annotations

import tensorflow as tf

from lsnet_tf.config import STRIDE
from lsnet_tf.losses import segmentation
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops.replicas import global_sum


def cell_points(height: int, width: int, stride: int = STRIDE):
    """(height, width, 2) input-pixel points (x, y) of a stride grid of height x width cells."""
    ii, jj = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32),
                         indexing="ij")
    return box_ops.cell_centres(tf.stack([jj, ii], -1), stride)


def localization_loss(heatmap_logits, ltrb_pred, heatmap_true, ltrb_true, loss_cfg, global_batch,
                      stride: int = STRIDE):
    """Eq. (5) for one replica's batch.

    Args:
      heatmap_logits, heatmap_true: (B, h, w, 1) heatmap logits (L-Net's "heatmap_logits")
        and Gaussian targets; ℓ is computed from logits so its gradient never dies in a clip.
      ltrb_pred, ltrb_true: (B, h, w, 4) distances in input pixels.
      loss_cfg: a `LossConfig`.
      global_batch: the batch size summed over replicas (a Python int or scalar tensor).
    Returns:
      (total, {"heatmap": ..., "box": ...}) scalars already divided by the global counts.
    """
    ltrb_pred = tf.cast(ltrb_pred, tf.float32)
    per_image = segmentation.per_sample_loss_from_logits(
        loss_cfg, heatmap_true, heatmap_logits, loss_cfg.heatmap_focal_normalizer)  # (B,)
    heat = tf.reduce_sum(per_image) / tf.cast(global_batch, tf.float32)

    h, w = tf.shape(heatmap_true)[1], tf.shape(heatmap_true)[2]
    q = cell_points(h, w, stride)[None]
    pos = tf.cast(heatmap_true[..., 0] > loss_cfg.tau, tf.float32)  # (B, h, w)
    b_pred = box_ops.ltrb_to_xyxy(q, ltrb_pred)
    b_true = box_ops.ltrb_to_xyxy(q, ltrb_true)
    diou = box_ops.diou_loss(b_true, b_pred)  # (B, h, w)
    n_pos = global_sum(tf.reduce_sum(pos))
    box = tf.reduce_sum(diou * pos) / tf.maximum(n_pos, 1.0)
    total = heat + loss_cfg.box_weight * box
    return total, {"heatmap": heat, "box": box}
