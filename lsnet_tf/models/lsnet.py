"""L-SNet: L-Net -> RoI Recalibration -> S-Net -> inverse transform, trained end to end.

Training (Sec. 2.5; ``train_step``), per batch:

1. L-Net runs on the images; L_L (Eq. 5) is computed against the heatmap and distance targets.
2. Per image, one of the ``top_k`` highest heatmap cells is picked at random; its cell point and
   predicted distances give θ (Eq. 3); RR samples the RoI (and the target mask through the same θ,
   without gradient); S-Net segments the RoI and L_S (Eq. 6) is computed. Images without a target
   add nothing to L_S.
3. Two GradientTapes: the S-Net tape gives ∇L_S for S-Net's weights and for the selected distances;
   the L-Net tape back-propagates L_L plus γ times that distance gradient in one backward pass, so
   L-Net's update is ∇L_L + γ·∇L_S. γ = 0 multiplies the S-Net contribution by exactly zero.
   The RoI comes from the same L-Net forward pass as L_L (the paper re-locates it after the L_L
   update; one forward per iteration keeps the step's cost near a coarse-to-fine model's). Each
   network has its own Adam optimizer.

Inference (``call``): heatmap > 0.5, connected components in-graph, each component's peak cell is a
keypoint with its regressed box; S-Net runs on all RoIs batched; masks return through θ⁻¹ and merge
per image by max. Outputs (dict):

===========  ===================  ================================================
key          shape                meaning
===========  ===================  ================================================
mask         (B, H, W, C)         full-size mask probabilities
heatmap      (B, H/4, W/4, 1)     keypoint heatmap
keypoints    (B, K, 2)            (x, y) input pixels, K = max_rois
scores       (B, K)               heatmap value at each keypoint (0 where invalid)
boxes        (B, K, 4)            xyxy input pixels (zeros where invalid)
valid        (B, K)               bool
===========  ===================  ================================================
"""
from __future__ import annotations

import keras
import tensorflow as tf

from lsnet_tf.config import LossConfig
from lsnet_tf.layers.roi_recalibration import RoIRecalibration
from lsnet_tf.ops.sampling import paste_masks
from lsnet_tf.losses import localization, segmentation
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops import components
from lsnet_tf.ops import sampling

STRIDE = 4


def _dice_per_image(y_true, y_pred, valid):
    """Per-image Dice of binary masks (B, H, W, C) and a 0/1 weight of images with a target."""
    inter = tf.reduce_sum(y_true * y_pred, [1, 2, 3])
    denom = tf.reduce_sum(y_true, [1, 2, 3]) + tf.reduce_sum(y_pred, [1, 2, 3])
    return tf.where(denom > 0, 2 * inter / tf.maximum(denom, 1e-9), 1.0), valid


@keras.saving.register_keras_serializable(package="lsnet_tf")
class LSNet(keras.Model):
    """The two-stage model. `lnet` maps (B,H,W,1) -> {"heatmap", "ltrb"}; `snet` (B,H,W,1) -> logits."""

    def __init__(self, lnet, snet, margin=15.0, gamma=0.1, top_k=3, max_rois=4, threshold=0.5,
                 loss_config=None, gt_box_epochs=0, seed=0, **kwargs):
        super().__init__(**kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, received {gamma}")
        if top_k < 1 or max_rois < 1:
            raise ValueError(f"top_k and max_rois must be >= 1, received {top_k}, {max_rois}")
        self.lnet = lnet
        self.snet = snet
        self.margin = float(margin)
        self.gamma = float(gamma)
        self.top_k = int(top_k)
        self.max_rois = int(max_rois)
        self.threshold = float(threshold)
        self.loss_config = loss_config if isinstance(loss_config, LossConfig) else LossConfig(**(loss_config or {}))
        self.gt_box_epochs = int(gt_box_epochs)
        self.seed = int(seed)
        h, w = lnet.input_shape[1], lnet.input_shape[2]
        self.image_size = (int(h), int(w))
        self.roi_size = (int(snet.input_shape[1]), int(snet.input_shape[2]))
        self.rr = RoIRecalibration(output_size=self.roi_size, margin=margin, name="rr")
        # 1 while ground-truth boxes stand in for predicted RoIs (set per epoch by the trainer).
        self.gt_phase = keras.Variable(0, dtype="int32", trainable=False, name="gt_phase")
        names = ["loss", "l_loss", "heatmap_loss", "box_loss", "s_loss", "dsc"]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.snet_optimizer = None

    # ----------------------------------------------------------------------------- training
    def compile(self, lnet_optimizer=None, snet_optimizer=None, **kwargs):
        lnet_optimizer = lnet_optimizer or keras.optimizers.Adam(1e-4)
        self.snet_optimizer = snet_optimizer or keras.optimizers.Adam(1e-4)
        super().compile(optimizer=lnet_optimizer, **kwargs)
        self.optimizer.build(self.lnet.trainable_variables)
        self.snet_optimizer.build(self.snet.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _select_rois(self, heatmap, ltrb, training, seed):
        """Per image a keypoint among the top-k cells (random in training, best in evaluation).

        Returns keypoints (B, 2) input pixels and their predicted distances (B, 4).
        """
        b = tf.shape(heatmap)[0]
        wf = tf.shape(heatmap)[2]
        flat = tf.reshape(heatmap, [b, -1])
        k = tf.minimum(self.top_k, tf.shape(flat)[1])
        _, idx = tf.math.top_k(tf.stop_gradient(flat), k=k)
        if training:
            pick = tf.random.stateless_uniform([b], seed, 0, k, dtype=tf.int32)
        else:
            pick = tf.zeros([b], tf.int32)
        cell = tf.gather(idx, pick, batch_dims=1)  # (B,)
        i, j = cell // wf, cell % wf
        points = tf.stack([(tf.cast(j, tf.float32) + 0.5) * STRIDE, (tf.cast(i, tf.float32) + 0.5) * STRIDE], -1)
        d = tf.gather(tf.reshape(ltrb, [b, -1, 4]), cell, batch_dims=1)
        return points, d

    def _seg_loss(self, mask_true, logits, weight):
        """Eq. (6): ℓ over the images with a target, normalised by their global count."""
        per = segmentation.per_sample_loss_from_logits(self.loss_config, mask_true, logits)
        n = localization.global_sum(tf.reduce_sum(weight))
        return tf.reduce_sum(per * weight) / tf.maximum(n, 1.0)

    def _unpack(self, data):
        if isinstance(data, tuple):
            data = data[0]
        return data

    def _forward(self, data, training):
        """Both losses of one replica's batch, recorded on the two tapes.

        Returns (losses dict, l_tape, s_tape, dist): `dist` is the selected distances (B, 4)
        through which S-Net's loss reaches L-Net.
        """
        data = self._unpack(data)
        images, mask = data["image"], data["mask"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.shape(images)[0] * replicas
        has_target = data["num_boxes"] > 0
        seed = tf.stack([tf.cast(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])

        with tf.GradientTape() as l_tape:
            out = self.lnet(images, training=training)
            l_loss, terms = localization.localization_loss(
                out["heatmap_logits"], out["ltrb"], data["heatmap"], data["ltrb"], self.loss_config,
                global_batch, STRIDE)
            points, dist = self._select_rois(out["heatmap"], out["ltrb"], training, seed)
        with tf.GradientTape() as s_tape:
            s_tape.watch(dist)
            # While gt_phase is on, the first ground-truth box of each image with a target
            # stands in for the predicted RoI (no gradient reaches L-Net from those images).
            gt = data["boxes"][:, 0]
            gt_points = (gt[:, :2] + gt[:, 2:]) / 2
            gt_dist = tf.concat([gt_points - gt[:, :2], gt[:, 2:] - gt_points], -1)
            use_gt = tf.logical_and(tf.logical_and(tf.cast(self.gt_phase, tf.bool), training),
                                    has_target)[:, None]
            rois, theta = self.rr([images, tf.where(use_gt, gt_points, points),
                                   tf.where(use_gt, gt_dist, dist)])
            grid = sampling.affine_grid(tf.stop_gradient(theta), *self.roi_size)
            roi_mask = sampling.bilinear_sample(mask, grid)
            logits = self.snet(rois, training=training)
            s_loss = self._seg_loss(roi_mask, logits, tf.cast(has_target, tf.float32))
        losses = {"l_loss": l_loss, "heatmap_loss": terms["heatmap"], "box_loss": terms["box"],
                  "s_loss": s_loss}
        return losses, l_tape, s_tape, dist

    def gradients(self, data):
        """(L-Net gradients, S-Net gradients, losses) of one training batch.

        L-Net's gradient is ∇L_L + γ·∇L_S in one backward pass: the S-Net tape gives ∂L_S/∂dist,
        which enters L-Net's tape as the output gradient of `dist`, times γ.
        """
        losses, l_tape, s_tape, dist = self._forward(data, training=True)
        s_vars = self.snet.trainable_variables
        grads = s_tape.gradient(losses["s_loss"], s_vars + [dist])
        s_grads, d_grad = grads[:-1], grads[-1]
        d_grad = tf.zeros_like(dist) if d_grad is None else d_grad
        l_loss = losses["l_loss"]
        l_grads = l_tape.gradient([l_loss, dist], self.lnet.trainable_variables,
                                  output_gradients=[tf.ones_like(l_loss), self.gamma * d_grad])
        return l_grads, s_grads, losses

    def _track(self, losses):
        # Trackers hold this replica's share of the global-batch loss times the replica count
        # (= the loss of the global batch); Mean metrics then average over replicas and steps.
        scale = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        self.trackers["loss"].update_state((losses["l_loss"] + losses["s_loss"]) * scale)
        for name in ("l_loss", "heatmap_loss", "box_loss", "s_loss"):
            self.trackers[name].update_state(losses[name] * scale)

    def train_step(self, data):
        l_grads, s_grads, losses = self.gradients(data)
        self.optimizer.apply(l_grads, self.lnet.trainable_variables)
        self.snet_optimizer.apply(s_grads, self.snet.trainable_variables)
        self._track(losses)
        return {n: t.result() for n, t in self.trackers.items() if n != "dsc"}

    def test_step(self, data):
        losses, *_ = self._forward(data, training=False)
        self._track(losses)
        data = self._unpack(data)
        pred = self.predict_masks(data["image"])
        has_target = tf.cast(data["num_boxes"] > 0, tf.float32)
        dice, weight = _dice_per_image(data["mask"], tf.cast(pred["mask"] > 0.5, tf.float32), has_target)
        self.trackers["dsc"].update_state(dice, sample_weight=weight)
        return {n: t.result() for n, t in self.trackers.items()}

    # ----------------------------------------------------------------------------- inference
    def predict_masks(self, images):
        """Full inference path on windowed images (B, H, W, 1); see the module docstring."""
        images = tf.convert_to_tensor(images, tf.float32)
        out = self.lnet(images, training=False)
        heat, ltrb = out["heatmap"], out["ltrb"]
        b = tf.shape(images)[0]
        h, w = self.image_size
        k = self.max_rois
        peaks = components.component_peaks(heat[..., 0], threshold=self.threshold, max_components=k)
        cells = peaks["points"]  # (B, K, 2) feature-grid (x, y) of each component's peak
        valid = peaks["valid"]
        keypoints = (cells + 0.5) * STRIDE
        wf = tf.shape(heat)[2]
        idx = tf.cast(cells[..., 1], tf.int32) * wf + tf.cast(cells[..., 0], tf.int32)
        dist = tf.gather(tf.reshape(ltrb, [b, -1, 4]), idx, batch_dims=1)  # (B, K, 4)
        vf = tf.cast(valid, tf.float32)
        boxes = box_ops.ltrb_to_xyxy(keypoints, dist) * vf[..., None]
        # S-Net runs once on the valid RoIs of the whole batch.
        sel = tf.where(tf.reshape(valid, [-1]))[:, 0]
        image_index = tf.gather(tf.repeat(tf.range(b), k), sel)
        kp = tf.gather(tf.reshape(keypoints, [-1, 2]), sel)
        d = tf.gather(tf.reshape(dist, [-1, 4]), sel)
        rois, theta = self.rr([tf.gather(images, image_index), kp, d])
        # One blank RoI is appended and dropped again: convolutions on an empty batch fail on the
        # oneDNN CPU kernels, and a batch with no RoI must still give an (empty) mask.
        padded = tf.pad(rois, [[0, 1], [0, 0], [0, 0], [0, 0]])
        prob = tf.sigmoid(tf.cast(self.snet(padded, training=False), tf.float32))[:-1]
        mask = paste_masks(prob, theta, image_index, b, h, w)
        return {"mask": mask, "heatmap": heat, "keypoints": keypoints * vf[..., None],
                "scores": peaks["scores"] * vf, "boxes": boxes, "valid": valid}

    def call(self, inputs, training=False):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.predict_masks(images)

    # ----------------------------------------------------------------------------- config
    def get_config(self):
        import dataclasses

        return {
            **super().get_config(),
            "lnet": keras.saving.serialize_keras_object(self.lnet),
            "snet": keras.saving.serialize_keras_object(self.snet),
            "margin": self.margin, "gamma": self.gamma, "top_k": self.top_k,
            "max_rois": self.max_rois, "threshold": self.threshold,
            "loss_config": dataclasses.asdict(self.loss_config),
            "gt_box_epochs": self.gt_box_epochs, "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["lnet"] = keras.saving.deserialize_keras_object(config["lnet"])
        config["snet"] = keras.saving.deserialize_keras_object(config["snet"])
        return cls(**config)
