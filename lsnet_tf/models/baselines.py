"""The paper's baselines, on the same backbones, data pipeline and losses as L-SNet.

Every baseline is a ``keras.Model`` with the interface of ``lsnet_tf.models.lsnet.LSNet``: a
``train_step`` / ``test_step`` on the pipeline's batches (dicts with ``image``, ``mask``,
``heatmap``, ``ltrb``, ``boxes``, ``num_boxes``), ``Mean`` loss trackers in ``self.trackers`` (a
``dsc`` tracker in evaluation only), ``networks`` / ``optimizers`` dicts (one optimizer per
network, Adam by default; the names are the checkpoint keys), a ``gt_phase`` variable (set per
epoch by ``lsnet_tf.training.callbacks.GroundTruthPhase``) and ``predict_masks(images)``, which
maps windowed images ``(B, H, W, 1)`` to a dict:

===========  ===================  ================================================================
key          shape                meaning
===========  ===================  ================================================================
mask         (B, H, W, C)         full-size mask probabilities
boxes        (B, K, 4)            the first stage's boxes, xyxy input pixels (zeros where invalid),
                                  K = max_rois; for one-stage models the boxes of the predicted
                                  mask's connected components
valid        (B, K)               bool
scores       (B, K)               a box's score (see each class; 0 where invalid)
keypoints    (B, K, 2)            (x, y) input pixels: box centres, or L-Net's keypoints
heatmap      (B, H/4, W/4, 1)     L-Net's keypoint heatmap (``LNetCrop`` only)
coarse_mask  (B, H, W, C)         the first stage's mask probabilities (``CoarseToFine`` only)
===========  ===================  ================================================================

Models (``lsnet_tf.models.build.build_model`` builds them from ``model.architecture``):

- ``OneStageSegmenter`` ("unet", "attention_unet", "fcn"): S-Net alone on the whole image
  (ResNet34 in the paper), trained with the config's loss (focal + 0.2 Dice, or BCE) on every
  image, images without a target included.
- ``CoarseToFine`` ("coarse_to_fine", Table 1): the 2-D version of the coarse-to-fine models of
  Zhou et al. (2017) and Zhao et al. (2019) that the paper compares with. A first-stage
  segmentation network (ResNet18) segments the whole image; the bounding box of its mask, grown by
  a 15-pixel border, is cropped and resized to the input size (a hard crop, see ``hard_crop``); a
  second-stage network (ResNet34) segments the crop; its mask is pasted back. The stages are
  trained together but without any gradient between them: the first stage on the whole-image
  loss, the second stage on crops of the ground-truth box (``train_crop="truth"``, the usual
  coarse-to-fine training: the fine network sees the RoI it is meant to see) or of the coarse
  prediction (``train_crop="predicted"``, with the ground-truth box when the coarse mask is
  empty). At inference the crop comes from the coarse mask: one box around the whole mask
  (``crop_mode="union"``, as the fixed-point model) or one box per connected component
  (``crop_mode="components"``, each segmented and pasted, merged by max).
- ``LNetCrop`` ("lnet_crop", Table 2 row 3 and Table 3): L-Net as the first stage with the same
  hard crop instead of RR, no gradient from S-Net into L-Net. With ``train_crop="predicted"``
  the training RoI is chosen as in L-SNet (one of the ``top_k`` best heatmap cells at random, its
  regressed box), which makes it L-SNet with γ = 0 and a quantized crop; ``"truth"`` trains S-Net
  on a ground-truth box (one of the image's boxes at random). Inference: heatmap > threshold, one keypoint per connected component
  (its peak cell), its box, the hard crop.

The hard crop differs from RR in what the paper (Sec. 2.2) says RR removes: the box is grown by
the margin, rounded outward to whole pixels and clipped to the image, and it is a constant for
the gradient. The crop is then resampled bilinearly to the second stage's input size with the
same affine sampler as RR (conventions in ``lsnet_tf.ops.sampling``), so that the mask goes back
through the same inverse transform (``paste_masks``).
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from lsnet_tf.config import LossConfig
from lsnet_tf.losses import localization, segmentation
from lsnet_tf.ops import boxes as box_ops
from lsnet_tf.ops import components
from lsnet_tf.ops import sampling

STRIDE = 4
TRAIN_CROPS = ("truth", "predicted")
CROP_MODES = ("union", "components")

__all__ = ["CROP_MODES", "CoarseToFine", "LNetCrop", "OneStageSegmenter", "TRAIN_CROPS",
           "crop_boxes", "hard_crop", "mask_boxes"]


# ----------------------------------------------------------------------------- pure ops

def _dim(tensor, axis):
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _check_k(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, received {value!r}")


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
    _check_k(max_boxes, "max_boxes")
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


def _pick_random(valid, seed):
    """Per row, the index of a uniformly chosen True entry of ``(B, K)`` `valid` (0 if none)."""
    u = tf.random.stateless_uniform(tf.shape(valid), seed)
    return tf.argmax(tf.where(valid, u, -1.0), axis=1, output_type=tf.int32)


def _truth_slots(data):
    """``(B, K)`` bool: which rows of ``data["boxes"]`` are real boxes."""
    k = tf.shape(data["boxes"])[1]
    return tf.range(k)[None, :] < tf.cast(data["num_boxes"], tf.int32)[:, None]


def _union_box(boxes, valid):
    """``(B, K, 4)`` xyxy and ``(B, K)`` bool -> ``(B, 4)`` box around all valid boxes (0 if none)."""
    big = tf.constant(1e9, tf.float32)
    lo = tf.reduce_min(tf.where(valid[..., None], boxes[..., :2], big), axis=1)
    hi = tf.reduce_max(tf.where(valid[..., None], boxes[..., 2:], -big), axis=1)
    any_ = tf.reduce_any(valid, axis=1, keepdims=True)
    return tf.where(any_, tf.concat([lo, hi], -1), 0.0)


def _centres(boxes, valid):
    return (boxes[..., :2] + boxes[..., 2:]) / 2 * tf.cast(valid, tf.float32)[..., None]


# ----------------------------------------------------------------------------- models

class _Baseline(keras.Model):
    """Shared plumbing: settings, trackers, one optimizer per network, ``gt_phase``."""

    TRACKERS: tuple = ("loss",)

    def __init__(self, max_rois=8, threshold=0.5, loss_config=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        _check_k(max_rois, "max_rois")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), received {threshold!r}")
        self.max_rois = int(max_rois)
        self.threshold = float(threshold)
        self.loss_config = (loss_config if isinstance(loss_config, LossConfig)
                            else LossConfig(**(loss_config or {})))
        self.loss_config.validate()
        self.seed = int(seed)
        # 1 while ground-truth boxes stand in for predicted crops (train_crop="predicted").
        self.gt_phase = keras.Variable(0, dtype="int32", trainable=False, name="gt_phase")
        self.trackers = {n: keras.metrics.Mean(name=n) for n in self.TRACKERS + ("dsc",)}
        self._network_optimizers = {}

    # -------------------------------------------------------------- interface
    @property
    def networks(self) -> dict:
        """Name -> network; the names key the checkpoints and the parameter counts."""
        raise NotImplementedError

    @property
    def optimizers(self) -> dict:
        """Name -> optimizer of that network (after ``compile``)."""
        return dict(self._network_optimizers)

    @property
    def image_size(self) -> tuple:
        net = next(iter(self.networks.values()))
        return (int(net.input_shape[1]), int(net.input_shape[2]))

    def compile(self, optimizers=None, **kwargs):
        """One optimizer per network.

        `optimizers` maps names of ``networks`` to optimizers; ``<name>_optimizer=`` keywords do
        the same (``compile(lnet_optimizer=a, snet_optimizer=b)`` as for L-SNet). Missing ones
        get ``Adam(1e-4)``. ``self.optimizer`` is the first network's; the others are also
        attributes ``<name>_optimizer`` (e.g. ``snet_optimizer``).
        """
        optimizers = dict(optimizers or {})
        for key in [k for k in kwargs if k.endswith("_optimizer")]:
            optimizers[key[: -len("_optimizer")]] = kwargs.pop(key)
        unknown = sorted(set(optimizers) - set(self.networks))
        if unknown:
            raise ValueError(f"optimizers for unknown networks {unknown}; this model has "
                             f"{sorted(self.networks)}")
        names = list(self.networks)
        opts = {n: optimizers.get(n) or keras.optimizers.Adam(1e-4) for n in names}
        super().compile(optimizer=opts[names[0]], **kwargs)
        for n in names[1:]:
            setattr(self, f"{n}_optimizer", opts[n])
        self._network_optimizers = {n: (self.optimizer if i == 0 else opts[n])
                                    for i, n in enumerate(names)}
        for n, net in self.networks.items():
            self._network_optimizers[n].build(net.trainable_variables)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        images = inputs["image"] if isinstance(inputs, dict) else inputs
        return self.predict_masks(images)

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _unpack(data):
        return data[0] if isinstance(data, tuple) else data

    def _seg_loss(self, mask, logits, weight, global_batch=None):
        """Weighted per-sample loss, divided by the global weight sum (or the global batch)."""
        prob = tf.sigmoid(tf.cast(logits, tf.float32))
        per = segmentation.per_sample_loss(self.loss_config, mask, prob)
        if global_batch is None:
            n = localization.global_sum(tf.reduce_sum(weight))
        else:
            n = tf.cast(global_batch, tf.float32)
        return tf.reduce_sum(per * weight) / tf.maximum(n, 1.0)

    def _apply(self, tape, loss):
        """One backward pass of `loss`; each network's optimizer applies its own gradients (the
        stages share no variables, so each gets the gradient of its own loss)."""
        variables, owners = [], []
        for name, net in self.networks.items():
            vs = net.trainable_variables
            variables += vs
            owners += [name] * len(vs)
        grads = tape.gradient(loss, variables)
        for name in self.networks:
            pairs = [(g, v) for g, v, o in zip(grads, variables, owners)
                     if o == name and g is not None]
            self._network_optimizers[name].apply([g for g, _ in pairs], [v for _, v in pairs])

    def _finish_step(self, values, data, training):
        scale = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        for name, value in values.items():
            self.trackers[name].update_state(value * scale)
        if not training:
            mask = data["mask"]
            has_target = tf.cast(data["num_boxes"] > 0, tf.float32)
            pred = tf.cast(self.predict_masks(data["image"])["mask"] > 0.5, tf.float32)
            inter = tf.reduce_sum(mask * pred, [1, 2, 3])
            denom = tf.reduce_sum(mask, [1, 2, 3]) + tf.reduce_sum(pred, [1, 2, 3])
            dice = tf.where(denom > 0, 2 * inter / tf.maximum(denom, 1e-9), 1.0)
            self.trackers["dsc"].update_state(dice, sample_weight=has_target)
        return {n: t.result() for n, t in self.trackers.items() if not training or n != "dsc"}

    def _step_seed(self):
        return tf.stack([tf.cast(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])

    def train_step(self, data):
        data = self._unpack(data)
        with tf.GradientTape() as tape:
            losses = self._forward(data, training=True)
        self._apply(tape, losses["loss"])
        return self._finish_step(losses, data, training=True)

    def test_step(self, data):
        data = self._unpack(data)
        return self._finish_step(self._forward(data, training=False), data, training=False)

    def get_config(self):
        return {**super().get_config(), "max_rois": self.max_rois, "threshold": self.threshold,
                "loss_config": dataclasses.asdict(self.loss_config), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in cls.NETWORK_ARGS:
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="lsnet_tf")
class OneStageSegmenter(_Baseline):
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
        det = mask_boxes(prob[..., 0], self.threshold, self.max_rois, "components")
        return {"mask": prob, "boxes": det["boxes"], "valid": det["valid"],
                "scores": det["scores"], "keypoints": _centres(det["boxes"], det["valid"])}

    def get_config(self):
        return {**super().get_config(), "snet": keras.saving.serialize_keras_object(self.snet)}


class _CropCascade(_Baseline):
    """First stage -> hard crop -> S-Net -> paste; no gradient between the stages.

    Subclasses give the first stage: ``_first_stage(images, data, training, global_batch)``
    returns its loss, its tracker values and its output; ``_truth_train_boxes(data, seed)`` and
    ``_predicted_train_boxes(out, seed)`` one training box per image ``(B, 4)`` (the latter also
    whether it exists, ``(B,)``); ``predict_masks`` finds the inference boxes and calls
    ``_segment_rois``.
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
            pred_box, pred_ok = self._predicted_train_boxes(out, seeds[1])
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
        rois, theta = hard_crop(images, box, self.roi_size, self.margin)
        roi_mask = sampling.bilinear_sample(mask, sampling.affine_grid(theta, *self.roi_size))
        logits = self.snet(rois, training=training)
        s_loss = self._seg_loss(roi_mask, logits, has_target)
        return {"loss": first_loss + s_loss, "s_loss": s_loss, **values}

    def _segment_rois(self, images, boxes, valid):
        """S-Net on the crops of ``(B, K, 4)`` boxes, pasted back and merged: ``(B, H, W, C)``."""
        b = tf.shape(images)[0]
        k = tf.shape(boxes)[1]
        h, w = self.image_size
        # S-Net runs once on the valid boxes of the whole batch.
        sel = tf.where(tf.reshape(valid, [-1]))[:, 0]
        image_index = tf.gather(tf.repeat(tf.range(b), k), sel)
        crops, theta = hard_crop(tf.gather(images, image_index),
                                 tf.gather(tf.reshape(boxes, [-1, 4]), sel),
                                 self.roi_size, self.margin)
        # One blank crop is appended and dropped again: convolutions on an empty batch fail on
        # the oneDNN CPU kernels, and a batch without any box must still give an (empty) mask.
        padded = tf.pad(crops, [[0, 1], [0, 0], [0, 0], [0, 0]])
        prob = tf.sigmoid(tf.cast(self.snet(padded, training=False), tf.float32))[:-1]
        return sampling.paste_masks(prob, theta, image_index, b, h, w)

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
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, "
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
            return _union_box(data["boxes"], slots)
        return tf.gather(data["boxes"], _pick_random(slots, seed), batch_dims=1)

    def _predicted_train_boxes(self, prob, seed):
        det = mask_boxes(tf.stop_gradient(prob[..., 0]), self.threshold, self.max_rois,
                         self.crop_mode)
        pick = _pick_random(det["valid"], seed)
        return (tf.gather(det["boxes"], pick, batch_dims=1),
                tf.reduce_any(det["valid"], axis=1))

    def predict_masks(self, images):
        """See the module docstring. With ``crop_mode="union"`` S-Net runs at most once per image."""
        images = tf.convert_to_tensor(images, tf.float32)
        coarse = tf.sigmoid(tf.cast(self.coarse(images, training=False), tf.float32))
        slots = 1 if self.crop_mode == "union" else self.max_rois
        det = mask_boxes(coarse[..., 0], self.threshold, slots, self.crop_mode)
        mask = self._segment_rois(images, det["boxes"], det["valid"])
        pad = self.max_rois - slots
        boxes = tf.pad(det["boxes"], [[0, 0], [0, pad], [0, 0]])
        valid = tf.pad(det["valid"], [[0, 0], [0, pad]])
        return {"mask": mask, "boxes": boxes, "valid": valid,
                "scores": tf.pad(det["scores"], [[0, 0], [0, pad]]),
                "keypoints": _centres(boxes, valid), "coarse_mask": coarse}

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
        _check_k(top_k, "top_k")
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

    def _predicted_train_boxes(self, out, seed):
        heat = tf.stop_gradient(out["heatmap"])
        b, wf = tf.shape(heat)[0], tf.shape(heat)[2]
        flat = tf.reshape(heat, [b, -1])
        k = tf.minimum(self.top_k, tf.shape(flat)[1])
        _, idx = tf.math.top_k(flat, k=k)
        pick = tf.random.stateless_uniform([b], seed, 0, k, dtype=tf.int32)
        cell = tf.gather(idx, pick, batch_dims=1)
        points = tf.stack([(tf.cast(cell % wf, tf.float32) + 0.5) * STRIDE,
                           (tf.cast(cell // wf, tf.float32) + 0.5) * STRIDE], -1)
        dist = tf.gather(tf.reshape(tf.stop_gradient(out["ltrb"]), [b, -1, 4]), cell, batch_dims=1)
        return box_ops.ltrb_to_xyxy(points, dist), tf.ones([b], tf.bool)

    def predict_masks(self, images):
        """See the module docstring: keypoints as L-SNet's, crops instead of RR."""
        images = tf.convert_to_tensor(images, tf.float32)
        out = self.lnet(images, training=False)
        heat, ltrb = out["heatmap"], out["ltrb"]
        b = tf.shape(images)[0]
        peaks = components.component_peaks(heat[..., 0], threshold=self.threshold,
                                           max_components=self.max_rois)
        cells, valid = peaks["points"], peaks["valid"]
        vf = tf.cast(valid, tf.float32)
        keypoints = (cells + 0.5) * STRIDE
        wf = tf.shape(heat)[2]
        idx = tf.cast(cells[..., 1], tf.int32) * wf + tf.cast(cells[..., 0], tf.int32)
        dist = tf.gather(tf.reshape(ltrb, [b, -1, 4]), idx, batch_dims=1)
        boxes = box_ops.ltrb_to_xyxy(keypoints, dist) * vf[..., None]
        mask = self._segment_rois(images, boxes, valid)
        return {"mask": mask, "heatmap": heat, "keypoints": keypoints * vf[..., None],
                "scores": peaks["scores"] * vf, "boxes": boxes, "valid": valid}

    def get_config(self):
        return {**super().get_config(), "lnet": keras.saving.serialize_keras_object(self.lnet),
                "top_k": self.top_k}
