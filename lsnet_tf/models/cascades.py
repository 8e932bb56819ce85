"""Crop cascades: a first stage finds the region, a hard crop takes it, S-Net segments it.

Both are ``base.SegmentationModel``s and take every step they share with L-SNet from
``two_stage`` (training-RoI choice, keypoint decoding, RoI targets, segment-and-paste); what
differs is what the paper changes (Tables 1-3):

- ``CoarseToFine`` ("coarse_to_fine", Table 1): the 2-D version of the coarse-to-fine models of
  Zhou et al. (2017) and Zhao et al. (2019) that the paper compares with. A first-stage
  segmentation network (ResNet18) segments the whole image; the bounding box of its mask, grown by
  a 15-pixel border, is cropped and resized to the input size (a hard crop,
  ``lsnet_tf.ops.crops.hard_crop``); a second-stage network (ResNet34) segments the crop; its
  mask is pasted back. The stages are trained together but without any gradient between them:
  the first stage on the whole-image loss, the second stage on crops of the ground-truth box
  (``train_crop="truth"``, the usual coarse-to-fine training: the fine network sees the RoI it
  is meant to see) or of the coarse prediction (``train_crop="predicted"``, with the ground-truth box when the coarse mask is
  empty). At inference the crop comes from the coarse mask: one box around the whole mask
  (``crop_mode="union"``, as the fixed-point model) or one box per connected component
  (``crop_mode="components"``, each segmented and pasted, merged by max).
- ``LNetCrop`` ("lnet_crop", Table 2 row 3 and Table 3): L-Net as the first stage with the same
  hard crop instead of RR, no gradient from S-Net into L-Net. With ``train_crop="predicted"``
  the training RoI is chosen as in L-SNet (one of the ``top_k`` best heatmap cells at random, its
  regressed box), which makes it L-SNet with γ = 0 and a quantized crop; ``"truth"`` trains S-Net
  on a ground-truth box (one of the image's boxes at random). Inference: heatmap > threshold,
  one keypoint per connected component (its peak cell), its box, the hard crop.

The hard crop differs from RR in what the paper (Sec. 2.2) says RR removes: the box is grown by
the margin, rounded outward to whole pixels and clipped to the image, and it is a constant for
the gradient. The crop is then resampled bilinearly to the second stage's input size with the
same affine sampler as RR (conventions in ``lsnet_tf.ops.sampling``), so that the mask goes back
through the same inverse transform (``paste_masks``).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from lsnet_tf.config import STRIDE, check_positive_int
from lsnet_tf.losses import localization
from lsnet_tf.models import two_stage
from lsnet_tf.models.base import SegmentationModel
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops import crops
from lsnet_tf.ops.replicas import replica_uniform

TRAIN_CROPS = ("truth", "predicted")

__all__ = ["CoarseToFine", "LNetCrop", "TRAIN_CROPS"]


def _pick_random(valid, seed):
    """Per row, the index of a uniformly chosen True entry of ``(B, K)`` `valid` (0 if none)."""
    u = replica_uniform(tf.shape(valid), seed)
    return tf.argmax(tf.where(valid, u, -1.0), axis=1, output_type=tf.int32)


def _truth_slots(data):
    """``(B, K)`` bool: which rows of ``data["boxes"]`` are real boxes."""
    k = tf.shape(data["boxes"])[1]
    return tf.range(k)[None, :] < tf.cast(data["num_boxes"], tf.int32)[:, None]


class _CropCascade(SegmentationModel):
    """First stage -> hard crop -> S-Net -> paste; no gradient between the stages.

    Subclasses give the first stage: ``_first_stage(images, data, training, global_batch)``
    returns its loss, its tracker values and its output; ``_truth_train_boxes(data, seed)`` and
    ``_predicted_train_boxes(out, training, seed)`` one training box per image ``(B, 4)`` (the
    latter also whether it exists, ``(B,)``); ``predict_masks`` finds the inference boxes and
    calls ``_segment_rois``.
    """

    TRACKERS = ("loss", "s_loss")
    NETWORK_ARGS = ("snet",)

    def __init__(self, snet, margin=15.0, train_crop="truth", **kwargs):
        super().__init__(**kwargs)
        if train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {', '.join(TRAIN_CROPS)}, "
                             f"received {train_crop!r}")
        if float(margin) < 0:
            raise ValueError(f"margin must be >= 0, received {margin!r}")
        self.snet = snet
        self.margin = float(margin)
        self.train_crop = train_crop
        self.roi_size = (int(snet.input_shape[1]), int(snet.input_shape[2]))

    def _truth_train_boxes(self, data, seed):
        raise NotImplementedError

    def _train_boxes(self, data, out, training, seed):
        """The box (B, 4) each image's second-stage crop is taken from in a train/test step:
        the ground truth's, or with ``train_crop="predicted"`` the first stage's (the ground
        truth's where the first stage has none, and while ``gt_phase`` is on in training)."""
        seeds = tf.random.experimental.stateless_split(seed, 2)
        box = self._truth_train_boxes(data, seeds[0])
        if self.train_crop == "predicted":
            pred_box, pred_ok = self._predicted_train_boxes(out, training, seeds[1])
            gt_phase = tf.logical_and(tf.cast(self.gt_phase, tf.bool), training)
            use = tf.logical_and(pred_ok, tf.logical_not(gt_phase))
            box = tf.where(use[:, None], pred_box, box)
        return tf.stop_gradient(box)

    def _forward(self, data, training):
        """The losses of one replica's batch (record them on a tape to train): the first
        stage's, ``s_loss`` on the crops of the images with a target, and their sum ``loss``."""
        images, mask = data["image"], data["mask"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.shape(images)[0] * replicas
        has_target = tf.cast(data["num_boxes"] > 0, tf.float32)
        first_loss, values, out = self._first_stage(images, data, training, global_batch)
        box = self._train_boxes(data, out, training, self._step_seed())
        rois, theta = crops.hard_crop(images, box, self.roi_size, self.margin)
        roi_mask = two_stage.roi_targets(mask, theta, self.roi_size)
        logits = self.snet(rois, training=training)
        s_loss = self._seg_loss(roi_mask, logits, has_target)
        return {"loss": first_loss + s_loss, "s_loss": s_loss, **values}

    def _segment_rois(self, images, boxes, valid):
        """S-Net on the hard crops of ``(B, K, 4)`` boxes, pasted back: ``(B, H, W, C)``."""
        def take(images, boxes):
            return crops.hard_crop(images, boxes, self.roi_size, self.margin)

        return two_stage.segment_rois(self.snet, images, self.image_size, valid, take, boxes)

    def get_config(self):
        return {**super().get_config(), "snet": keras.saving.serialize_keras_object(self.snet),
                "margin": self.margin, "train_crop": self.train_crop}


@keras.saving.register_keras_serializable(package="lsnet_tf")
class CoarseToFine(_CropCascade):
    """2-D coarse-to-fine segmentation (Table 1): coarse network -> hard crop -> S-Net.

    Args:
      coarse: first-stage segmentation network ``(B, H, W, 1) -> (B, H, W, C)`` logits
        (``build_snet``, ResNet18 in the paper).
      snet: second-stage segmentation network, same signature (ResNet34).
      margin: crop border in pixels (15).
      train_crop: ``"truth"`` or ``"predicted"`` (see the module docstring).
      crop_mode: ``"union"`` (one box around the coarse mask) or ``"components"`` (one box per
        connected component, at most ``max_rois``). In training with ground-truth crops the same
        rule picks the box: the union of the ground-truth boxes, or one of them at random.
      max_rois, threshold, loss_config, seed: as ``OneStageSegmenter``.

    Losses: ``coarse_loss`` (the config's loss of the coarse mask on every image, divided by the
    global batch) + ``s_loss`` (on the crops of images with a target, divided by their number).
    Box ``scores``: the highest coarse probability inside the box.
    """

    TRACKERS = ("loss", "coarse_loss", "s_loss")
    NETWORK_ARGS = ("coarse", "snet")

    def __init__(self, coarse, snet, crop_mode="union", **kwargs):
        super().__init__(snet, **kwargs)
        if crop_mode not in crops.CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(crops.CROP_MODES)}, "
                             f"received {crop_mode!r}")
        self.coarse = coarse
        self.crop_mode = crop_mode

    @property
    def networks(self):
        return {"coarse": self.coarse, "snet": self.snet}

    def _first_stage(self, images, data, training, global_batch):
        logits = self.coarse(images, training=training)
        ones = tf.ones([tf.shape(images)[0]], tf.float32)
        loss = self._seg_loss(data["mask"], logits, ones, global_batch)
        return loss, {"coarse_loss": loss}, tf.sigmoid(tf.cast(logits, tf.float32))

    def _truth_train_boxes(self, data, seed):
        slots = _truth_slots(data)
        if self.crop_mode == "union":
            return crops.union_box(data["boxes"], slots)
        return tf.gather(data["boxes"], _pick_random(slots, seed), batch_dims=1)

    def _predicted_train_boxes(self, prob, training, seed):
        det = crops.mask_boxes(tf.stop_gradient(prob[..., 0]), self.threshold, self.max_rois,
                         self.crop_mode)
        pick = _pick_random(det["valid"], seed)
        return (tf.gather(det["boxes"], pick, batch_dims=1),
                tf.reduce_any(det["valid"], axis=1))

    def predict_masks(self, images):
        """See the module docstring. With ``crop_mode="union"`` S-Net runs at most once per image."""
        images = tf.convert_to_tensor(images, tf.float32)
        coarse = tf.sigmoid(tf.cast(self.coarse(images, training=False), tf.float32))
        slots = 1 if self.crop_mode == "union" else self.max_rois
        det = crops.mask_boxes(coarse[..., 0], self.threshold, slots, self.crop_mode)
        mask = self._segment_rois(images, det["boxes"], det["valid"])
        pad = self.max_rois - slots
        boxes = tf.pad(det["boxes"], [[0, 0], [0, pad], [0, 0]])
        valid = tf.pad(det["valid"], [[0, 0], [0, pad]])
        return {"mask": mask, "boxes": boxes, "valid": valid,
                "scores": tf.pad(det["scores"], [[0, 0], [0, pad]]),
                "keypoints": crops.box_centres(boxes, valid), "coarse_mask": coarse}

    def get_config(self):
        return {**super().get_config(),
                "coarse": keras.saving.serialize_keras_object(self.coarse),
                "crop_mode": self.crop_mode}


@keras.saving.register_keras_serializable(package="lsnet_tf")
class LNetCrop(_CropCascade):
    """L-Net -> hard crop -> S-Net (Table 2 row 3, Table 3 "L-Net"): L-SNet without RR.

    Args:
      lnet: L-Net (``build_lnet``): ``(B, H, W, 1) -> {"heatmap", "ltrb"}``.
      snet: S-Net.
      margin, train_crop: see ``_CropCascade`` and the module docstring.
      top_k: with ``train_crop="predicted"``, the training keypoint is drawn among the ``top_k``
        highest heatmap cells (3 in the paper).
      threshold: heatmap threshold of the inference keypoints (0.5).
      max_rois, loss_config, seed: as ``OneStageSegmenter``.

    Losses: ``l_loss`` (Eq. 5, terms ``heatmap_loss`` and ``box_loss``) for L-Net and ``s_loss``
    for S-Net; no gradient flows from ``s_loss`` into L-Net. Box ``scores``: the heatmap value
    of each keypoint.
    """

    TRACKERS = ("loss", "l_loss", "heatmap_loss", "box_loss", "s_loss")
    NETWORK_ARGS = ("lnet", "snet")

    def __init__(self, lnet, snet, top_k=3, **kwargs):
        super().__init__(snet, **kwargs)
        check_positive_int(top_k, "top_k")
        self.lnet = lnet
        self.top_k = int(top_k)

    @property
    def networks(self):
        return {"lnet": self.lnet, "snet": self.snet}

    def _first_stage(self, images, data, training, global_batch):
        out = self.lnet(images, training=training)
        loss, terms = localization.localization_loss(
            out["heatmap_logits"], out["ltrb"], data["heatmap"], data["ltrb"], self.loss_config,
            global_batch, STRIDE)
        return loss, {"l_loss": loss, "heatmap_loss": terms["heatmap"],
                      "box_loss": terms["box"]}, out

    def _truth_train_boxes(self, data, seed):
        return tf.gather(data["boxes"], _pick_random(_truth_slots(data), seed), batch_dims=1)

    def _predicted_train_boxes(self, out, training, seed):
        points, dist = two_stage.select_train_rois(out["heatmap"], tf.stop_gradient(out["ltrb"]),
                                                   self.top_k, training, seed)
        return box_ops.ltrb_to_xyxy(points, dist), tf.ones([tf.shape(points)[0]], tf.bool)

    def predict_masks(self, images):
        """See the module docstring: keypoints as L-SNet's, crops instead of RR."""
        images = tf.convert_to_tensor(images, tf.float32)
        out = self.lnet(images, training=False)
        det = two_stage.decode_keypoints(out["heatmap"], out["ltrb"], self.threshold,
                                         self.max_rois)
        mask = self._segment_rois(images, det["boxes"], det["valid"])
        return {"mask": mask, "heatmap": out["heatmap"], "keypoints": det["keypoints"],
                "scores": det["scores"], "boxes": det["boxes"], "valid": det["valid"]}

    def get_config(self):
        return {**super().get_config(), "lnet": keras.saving.serialize_keras_object(self.lnet),
                "top_k": self.top_k}
