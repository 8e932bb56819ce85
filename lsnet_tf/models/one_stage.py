"""One-stage baselines (Table 1): S-Net alone on the whole image.

``OneStageSegmenter`` ("unet", "attention_unet", "fcn"; ResNet34 in the paper) is trained with the
config's loss (focal + 0.2 Dice, or BCE) on every image, images without a target included. Its
boxes are those of its mask's connected components (``lsnet_tf.ops.crops.mask_boxes``), so that
it reports the same outputs as the two-stage models (``base.SegmentationModel``).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from lsnet_tf.models.base import SegmentationModel
from lsnet_tf.ops import crops

__all__ = ["OneStageSegmenter"]


@keras.saving.register_keras_serializable(package="lsnet_tf")
class OneStageSegmenter(SegmentationModel):
    """S-Net alone on the whole image: the one-stage U-Net, Attention U-Net and FCN baselines.

    Args:
      snet: ``keras.Model`` ``(B, H, W, 1) -> (B, H, W, C)`` mask logits (``build_snet``).
      max_rois: box slots K of ``predict_masks``.
      threshold: mask probability threshold for the boxes.
      loss_config: ``LossConfig`` (or its dict): focal + Dice or BCE.
      seed: unused (no random choice), kept for a uniform constructor; ``gt_phase`` has no
        effect either (there is no RoI).

    Training: the config's loss on every image of the batch (images without a target included:
    the network must learn to predict nothing there), divided by the global batch size.
    ``predict_masks``: sigmoid of the logits; boxes: ``mask_boxes(mask[..., 0], threshold,
    max_rois, "components")`` (scores: the component's highest probability).
    """

    NETWORK_ARGS = ("snet",)

    def __init__(self, snet, **kwargs):
        super().__init__(**kwargs)
        self.snet = snet

    @property
    def networks(self):
        return {"snet": self.snet}

    def _forward(self, data, training):
        """``{"loss": ...}`` of one replica's batch (record it on a tape to train)."""
        images = data["image"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.shape(images)[0] * replicas
        ones = tf.ones([tf.shape(images)[0]], tf.float32)
        logits = self.snet(images, training=training)
        return {"loss": self._seg_loss(data["mask"], logits, ones, global_batch)}

    def predict_masks(self, images):
        """See the module docstring; boxes are those of the mask's components."""
        images = tf.convert_to_tensor(images, tf.float32)
        prob = tf.sigmoid(tf.cast(self.snet(images, training=False), tf.float32))
        det = crops.mask_boxes(prob[..., 0], self.threshold, self.max_rois, "components")
        return {"mask": prob, "boxes": det["boxes"], "valid": det["valid"],
                "scores": det["scores"], "keypoints": crops.box_centres(det["boxes"], det["valid"])}

    def get_config(self):
        return {**super().get_config(), "snet": keras.saving.serialize_keras_object(self.snet)}
