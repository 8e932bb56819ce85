"""Callbacks of `python -m lsnet_tf.train`."""
from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf


class CheckpointCallback(keras.callbacks.Callback):
    """A checkpoint per epoch of every network, its optimizer and the epoch counter.

    `tf.train.CheckpointManager` writes the checkpoint files first and then replaces the small
    `checkpoint` index file, so a kill while saving leaves the previous checkpoint as the latest.
    """

    def __init__(self, directory: str, model, max_to_keep: int = 3):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        from lsnet_tf.models.build import checkpoint_objects

        self.checkpoint = tf.train.Checkpoint(**checkpoint_objects(model), epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)

    def restore(self) -> int:
        """Restore the latest checkpoint if there is one; return the epoch to start from."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.epoch.numpy())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


class GroundTruthPhase(keras.callbacks.Callback):
    """Ground-truth boxes stand in for predicted RoIs during the first `epochs` epochs."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.gt_phase.assign(1 if epoch < self.epochs else 0)


class LearningRateLogger(keras.callbacks.Callback):
    def __init__(self, logdir: str):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(logdir, "train"))

    def on_epoch_end(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = opt.learning_rate
        with self.writer.as_default():
            tf.summary.scalar("learning_rate", float(np.asarray(lr)), step=epoch)
        self.writer.flush()


def draw_boxes(image, boxes, valid, color=(1.0, 0.2, 0.2)):
    """image (H, W) in [0, 1] -> (H, W, 3) with xyxy `boxes` outlined (numpy, for logging)."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1).copy()
    h, w = image.shape
    for (x1, y1, x2, y2), ok in zip(boxes, valid):
        if not ok:
            continue
        x1, x2 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.ceil(x2) - 1, 0, w - 1))
        y1, y2 = int(np.clip(np.floor(y1), 0, h - 1)), int(np.clip(np.ceil(y2) - 1, 0, h - 1))
        rgb[y1, x1:x2 + 1] = color
        rgb[y2, x1:x2 + 1] = color
        rgb[y1:y2 + 1, x1] = color
        rgb[y1:y2 + 1, x2] = color
    return rgb


def overlay(image, mask, color=(0.1, 1.0, 0.1), alpha=0.5):
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)
    m = (mask > 0.5)[..., None]
    return np.where(m, (1 - alpha) * rgb + alpha * np.asarray(color), rgb)


class ImageLogger(keras.callbacks.Callback):
    """TensorBoard images of a fixed validation batch: boxes, heatmap, RoI, mask overlay."""

    def __init__(self, logdir: str, val_ds, every: int = 1, max_images: int = 4):
        super().__init__()
        self.every = every
        self.writer = tf.summary.create_file_writer(logdir) if every else None
        self.batch = next(iter(val_ds.take(1))) if every else None
        self.max_images = max_images

    def on_epoch_end(self, epoch, logs=None):
        if not self.every or (epoch + 1) % self.every:
            return
        b = {k: v[: self.max_images] for k, v in self.batch.items()}
        pred = self.model.predict_masks(b["image"])
        img = b["image"].numpy()[..., 0]
        boxes = pred["boxes"].numpy()
        valid = pred["valid"].numpy()
        heat = pred["heatmap"].numpy() if "heatmap" in pred else None
        mask = pred["mask"].numpy()[..., 0]
        with self.writer.as_default():
            tf.summary.image("input_with_boxes", np.stack([draw_boxes(i, bx, v) for i, bx, v in zip(img, boxes, valid)]),
                             step=epoch, max_outputs=self.max_images)
            if heat is not None:
                tf.summary.image("heatmap", heat, step=epoch, max_outputs=self.max_images)
            tf.summary.image("mask_overlay", np.stack([overlay(i, m) for i, m in zip(img, mask)]),
                             step=epoch, max_outputs=self.max_images)
            if hasattr(self.model, "rr"):  # L-SNet: the RoI of each image's best keypoint
                self._log_rois(b["image"], pred["heatmap"], epoch)
        self.writer.flush()

    def _log_rois(self, images, heatmap, epoch):
        """The RoI of each image's best keypoint, as S-Net sees it."""
        with self.writer.as_default():
            points, dist = self.model._select_rois(heatmap, self.model.lnet(images)["ltrb"],
                                                   False, tf.constant([0, 0], tf.int64))
            rois, _ = self.model.rr([images, points, dist])
            tf.summary.image("roi", rois, step=epoch, max_outputs=self.max_images)
