"""What every model of ``build_model`` shares: settings, networks, optimizers, trackers, steps.

Every model (``lsnet.LSNet``, ``one_stage.OneStageSegmenter``, ``cascades.CoarseToFine``,
``cascades.LNetCrop``) is a ``SegmentationModel``: a ``keras.Model`` with a ``train_step`` /
``test_step`` on the pipeline's batches (dicts with ``image``, ``mask``, ``heatmap``, ``ltrb``,
``boxes``, ``num_boxes``), ``Mean`` loss trackers in ``self.trackers`` (a ``dsc`` tracker in
evaluation only), ``networks`` / ``optimizers`` dicts (one optimizer per network, Adam by
default; the names are the checkpoint keys), a ``gt_phase`` variable (set per epoch by
``lsnet_tf.training.callbacks.GroundTruthPhase``) and ``predict_masks(images)``, which maps
windowed images ``(B, H, W, 1)`` to a dict:

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
heatmap      (B, H/4, W/4, 1)     L-Net's keypoint heatmap (``LSNet`` and ``LNetCrop``)
coarse_mask  (B, H, W, C)         the first stage's mask probabilities (``CoarseToFine`` only)
===========  ===================  ================================================================
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from lsnet_tf.config import LossConfig, check_positive_int
from lsnet_tf.losses import segmentation
from lsnet_tf.ops.replicas import global_sum

__all__ = ["SegmentationModel"]


class SegmentationModel(keras.Model):
    """Shared plumbing: settings, trackers, one optimizer per network, ``gt_phase``, the steps.

    Args:
      max_rois: ``K``, the box slots of ``predict_masks``.
      threshold: the first stage's inference threshold (L-Net's heatmap, or a mask's
        probability for its boxes), in [0, 1).
      loss_config: ``LossConfig`` (or its dict).
      seed: seed of the random choices in training (with the step counter).

    Subclasses set ``TRACKERS`` (loss names), ``NETWORK_ARGS`` (constructor arguments that are
    networks) and ``networks``, and give ``_forward(data, training)`` -> dict of the tracked
    losses (``"loss"`` the one to minimise) and ``predict_masks``.
    """

    TRACKERS: tuple = ("loss",)

    def __init__(self, max_rois=8, threshold=0.5, loss_config=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(max_rois, "max_rois")
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
        """The segmentation loss ℓ of Eq. (6) of every model and stage, from logits.

        Per sample ``segmentation.per_sample_loss_from_logits`` (focal + 0.2 Dice, or BCE:
        log-sigmoids, nothing clipped), times `weight` ``(B,)``, summed and divided by the
        weights' sum over replicas, or by `global_batch` when given.
        """
        per = segmentation.per_sample_loss_from_logits(
            self.loss_config, mask, logits, self.loss_config.mask_focal_normalizer)
        if global_batch is None:
            n = global_sum(tf.reduce_sum(weight))
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
