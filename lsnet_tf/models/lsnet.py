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

Inference (``call``): heatmap > ``threshold`` (0.5), connected components in-graph, each
component's peak cell is a keypoint with its regressed box (``two_stage.decode_keypoints``); S-Net
runs on all RoIs batched; masks return through θ⁻¹ and merge per image by max
(``two_stage.segment_rois``). Outputs (dict):

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

from lsnet_tf.config import STRIDE, check_positive_int
from lsnet_tf.layers.roi_recalibration import RoIRecalibration, check_margin
from lsnet_tf.losses import localization
from lsnet_tf.models import two_stage
from lsnet_tf.models.base import SegmentationModel

__all__ = ["LSNet"]


@keras.saving.register_keras_serializable(package="lsnet_tf")
class LSNet(SegmentationModel):
    """The two-stage model. `lnet` maps (B,H,W,1) -> {"heatmap", "heatmap_logits", "ltrb"};
    `snet` (B,H,W,1) -> logits.

    Args:
      lnet, snet: the networks (``build_lnet``, ``build_snet``).
      margin: RR's border margin m in input pixels (Eq. 3; 15 in the paper).
      gamma: γ, the scale of S-Net's gradient into L-Net (Sec. 2.5; 0 blocks it).
      top_k: the training keypoint is drawn among the ``top_k`` highest heatmap cells (3).
      max_rois, threshold, loss_config, seed: see ``base.SegmentationModel``.
    """

    TRACKERS = ("loss", "l_loss", "heatmap_loss", "box_loss", "s_loss")
    NETWORK_ARGS = ("lnet", "snet")

    def __init__(self, lnet, snet, margin=15.0, gamma=0.1, top_k=3, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(top_k, "top_k")
        self.lnet = lnet
        self.snet = snet
        self.gamma = gamma
        self.top_k = int(top_k)
        self.roi_size = (int(snet.input_shape[1]), int(snet.input_shape[2]))
        self.rr = RoIRecalibration(output_size=self.roi_size, margin=margin, name="rr")

    # γ and the margin are read when the train, test and predict steps are traced: setting
    # either drops the traced steps, so that the next fit / evaluate / predict traces them with
    # the new value (a function the caller traced itself, e.g. tf.function(model.predict_masks),
    # keeps the value it was traced with).
    def _retrace(self):
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)

    @property
    def gamma(self) -> float:
        """γ, the scale of S-Net's gradient into L-Net; settable at any time (see above)."""
        return self._gamma

    @gamma.setter
    def gamma(self, value):
        if value < 0:
            raise ValueError(f"gamma must be >= 0, received {value}")
        self._gamma = float(value)
        self._retrace()

    @property
    def margin(self) -> float:
        """RR's margin m in input pixels (``self.rr.margin``); settable at any time (see
        above)."""
        return self.rr.margin

    @margin.setter
    def margin(self, value):
        self.rr.margin = check_margin(value)
        self._retrace()

    @property
    def networks(self):
        return {"lnet": self.lnet, "snet": self.snet}

    # ----------------------------------------------------------------------------- training
    def _forward(self, data, training):
        """Both losses of one replica's batch, recorded on the two tapes.

        Returns (losses dict, l_tape, s_tape, dist): `dist` is the selected distances (B, 4)
        through which S-Net's loss reaches L-Net.
        """
        images, mask = data["image"], data["mask"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.shape(images)[0] * replicas
        has_target = data["num_boxes"] > 0

        # The name scopes group the step's ops by part in a profiler trace
        # (benchmarks/step_parts.py); they change no computation.
        with tf.GradientTape() as l_tape:
            out = self.lnet(images, training=training)
            with tf.name_scope("localization_loss"):
                l_loss, terms = localization.localization_loss(
                    out["heatmap_logits"], out["ltrb"], data["heatmap"], data["ltrb"],
                    self.loss_config, global_batch, STRIDE)
            with tf.name_scope("roi_choice"):
                points, dist = two_stage.select_train_rois(out["heatmap"], out["ltrb"],
                                                           self.top_k, training, self._step_seed())
        with tf.GradientTape() as s_tape:
            s_tape.watch(dist)
            # While gt_phase is on, the first ground-truth box of each image with a target
            # stands in for the predicted RoI (no gradient reaches L-Net from those images).
            with tf.name_scope("gt_roi"):
                gt = data["boxes"][:, 0]
                gt_points = (gt[:, :2] + gt[:, 2:]) / 2
                gt_dist = tf.concat([gt_points - gt[:, :2], gt[:, 2:] - gt_points], -1)
                use_gt = tf.logical_and(tf.logical_and(tf.cast(self.gt_phase, tf.bool), training),
                                        has_target)[:, None]
                keypoints = tf.where(use_gt, gt_points, points)
                distances = tf.where(use_gt, gt_dist, dist)
            rois, theta = self.rr([images, keypoints, distances])
            with tf.name_scope("roi_targets"):
                roi_mask = two_stage.roi_targets(mask, theta, self.roi_size)
            logits = self.snet(rois, training=training)
            with tf.name_scope("s_loss"):
                s_loss = self._seg_loss(roi_mask, logits, tf.cast(has_target, tf.float32))
        losses = {"loss": l_loss + s_loss, "l_loss": l_loss, "heatmap_loss": terms["heatmap"],
                  "box_loss": terms["box"], "s_loss": s_loss}
        return losses, l_tape, s_tape, dist

    def gradients(self, data):
        """(L-Net gradients, S-Net gradients, losses) of one training batch.

        L-Net's gradient is ∇L_L + γ·∇L_S in one backward pass: the S-Net tape gives ∂L_S/∂dist,
        which enters L-Net's tape as the output gradient of `dist`, times γ.
        """
        losses, l_tape, s_tape, dist = self._forward(self._unpack(data), training=True)
        s_vars = self.snet.trainable_variables
        grads = s_tape.gradient(losses["s_loss"], s_vars + [dist])
        s_grads, d_grad = grads[:-1], grads[-1]
        d_grad = tf.zeros_like(dist) if d_grad is None else d_grad
        l_loss = losses["l_loss"]
        l_grads = l_tape.gradient([l_loss, dist], self.lnet.trainable_variables,
                                  output_gradients=[tf.ones_like(l_loss), self.gamma * d_grad])
        return l_grads, s_grads, losses

    def train_step(self, data):
        data = self._unpack(data)
        l_grads, s_grads, losses = self.gradients(data)
        with tf.name_scope("lnet_update"):
            self.optimizer.apply(l_grads, self.lnet.trainable_variables)
        with tf.name_scope("snet_update"):
            self.snet_optimizer.apply(s_grads, self.snet.trainable_variables)
        return self._finish_step(losses, data, training=True)

    def test_step(self, data):
        data = self._unpack(data)
        losses, *_ = self._forward(data, training=False)
        return self._finish_step(losses, data, training=False)

    # ----------------------------------------------------------------------------- inference
    def predict_masks(self, images):
        """Full inference path on windowed images (B, H, W, 1); see the module docstring."""
        images = tf.convert_to_tensor(images, tf.float32)
        out = self.lnet(images, training=False)
        det = two_stage.decode_keypoints(out["heatmap"], out["ltrb"], self.threshold,
                                         self.max_rois)

        def take(images, keypoints, distances):
            return self.rr([images, keypoints, distances])

        mask = two_stage.segment_rois(self.snet, images, self.image_size, det["valid"], take,
                                      det["keypoints"], det["distances"])
        return {"mask": mask, "heatmap": out["heatmap"], "keypoints": det["keypoints"],
                "scores": det["scores"], "boxes": det["boxes"], "valid": det["valid"]}

    # ----------------------------------------------------------------------------- config
    def get_config(self):
        return {**super().get_config(),
                "lnet": keras.saving.serialize_keras_object(self.lnet),
                "snet": keras.saving.serialize_keras_object(self.snet),
                "margin": self.margin, "gamma": self.gamma, "top_k": self.top_k}
