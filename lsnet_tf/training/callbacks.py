"""Callbacks of `python -m lsnet_tf.train`."""
from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from lsnet_tf.utils.drawing import draw_boxes, overlay
from lsnet_tf.models import two_stage
from lsnet_tf.models.build import checkpoint_objects
from lsnet_tf.training.nonfinite import NonFiniteLossError, check_finite


class CheckpointError(RuntimeError):
    """No checkpoint of a run folder can be read back."""


class CheckpointCallback(keras.callbacks.Callback):
    """A checkpoint per epoch of every network, its optimizer and the epoch counter.

    Writing: `tf.train.CheckpointManager` writes a checkpoint's data under a temporary name and
    renames it, then replaces the small ``checkpoint`` index file (also write-then-rename), so a
    process killed while saving leaves the previous checkpoint as the latest. A checkpoint whose
    variables are not all finite is never written (`NonFiniteLossError`).

    Reading: `restore` tries the checkpoints newest first, from `restore_dir` (default:
    `directory`); one that cannot be read (truncated or corrupt files, e.g. after a power loss
    or a full disk) is reported through `log` and the previous one is used.
    """

    def __init__(self, directory: str, model, max_to_keep: int = 3, restore_dir: str | None = None,
                 log=None):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.objects = checkpoint_objects(model)
        self.checkpoint = tf.train.Checkpoint(**self.objects, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=max_to_keep)
        self.restore_dir = restore_dir or directory
        self.restored_from = None
        self.log = log

    def candidates(self) -> list[str]:
        """Checkpoint prefixes in `restore_dir`, newest first: those the index file lists and
        any other ``ckpt-N`` with an ``.index`` file (the index file may itself be lost)."""
        paths = set()
        try:
            state = tf.train.get_checkpoint_state(self.restore_dir)
        except (tf.errors.OpError, ValueError):  # an unreadable index file: use the glob below
            state = None
        if state is not None:
            paths.update(state.all_model_checkpoint_paths)
        paths.update(p[: -len(".index")] for p in tf.io.gfile.glob(
            os.path.join(self.restore_dir, "ckpt-*.index")))

        def number(path):
            tail = os.path.basename(path).rpartition("-")[2]
            return int(tail) if tail.isdigit() else -1

        return sorted(paths, key=number, reverse=True)

    def restore(self) -> int:
        """Restore the newest readable checkpoint, if any; return the epoch to start from."""
        failures = []
        for path in self.candidates():
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            # A torn data file raises IndexError ("Read less bytes than requested").
            except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
                reason = str(getattr(e, "message", e)).strip().splitlines()[0][:300]
                failures.append(f"{path}: {type(e).__name__}: {reason}")
                self._warn(f"checkpoint {path} cannot be read ({type(e).__name__}: {reason}); "
                           "trying the previous one")
                continue
            self.restored_from = path
            return int(self.epoch.numpy())
        if failures:
            raise CheckpointError(
                f"{self.restore_dir}: no checkpoint can be read:\n  " + "\n  ".join(failures)
                + "\nMove the folder away to train from scratch.")
        return 0

    def _warn(self, message: str) -> None:
        if self.log is not None:
            self.log(f"warning: {message}")
        else:
            warnings.warn(message, stacklevel=3)

    def on_epoch_end(self, epoch, logs=None):
        strategy = getattr(self.model, "distribute_strategy", None) if self.model else None
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            average_replicas(strategy, [v for name, obj in self.objects.items()
                                        if not name.endswith("_optimizer")
                                        for v in obj.non_trainable_variables])
        try:
            check_finite(self.objects)
        except NonFiniteLossError as e:
            raise NonFiniteLossError(
                f"epoch {epoch + 1}: checkpoint not written, {e}; the latest checkpoint is "
                f"{self.manager.latest_checkpoint}") from None
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def average_replicas(strategy, variables) -> None:
    """Set each variable to its mean over the replicas (of every worker).

    Keras keeps batch-norm moving statistics per replica: each replica updates them from its own
    share of the batch, so they drift apart while the trainable weights (updated with all-reduced
    gradients) stay identical. Averaging them before each checkpoint gives every worker the same
    weights and the checkpoint the statistics of the whole global batch (exactly so for the
    moving means; the moving variances are the mean of the replicas' variances).
    """
    if not variables:
        return

    def mean():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])

    averaged = strategy.experimental_local_results(strategy.run(mean))[0]
    for v, value in zip(variables, averaged):
        v.assign(value)


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


class ImageLogger(keras.callbacks.Callback):
    """TensorBoard images of a fixed validation batch: boxes, heatmap, RoI, mask overlay.

    The model's inference path runs as one ``tf.function`` (traced at the first logged epoch),
    not op by op.
    """

    def __init__(self, logdir: str, val_ds, every: int = 1, max_images: int = 4):
        super().__init__()
        self.every = every
        self.writer = tf.summary.create_file_writer(logdir) if every else None
        self.batch = next(iter(val_ds.take(1))) if every else None
        self.max_images = max_images
        self._predict = None

    def _outputs(self, images):
        """What the images show: the model's boxes, mask and heatmap and, for L-SNet, the RoI of
        each image's best keypoint as S-Net sees it."""
        if self._predict is None:
            model = self.model

            def predict(images):
                pred = model.predict_masks(images)
                out = {k: pred[k] for k in ("boxes", "valid", "mask", "heatmap") if k in pred}
                if hasattr(model, "rr"):
                    points, dist = two_stage.select_train_rois(
                        pred["heatmap"], model.lnet(images, training=False)["ltrb"], model.top_k,
                        False, tf.constant([0, 0], tf.int64))
                    out["roi"] = model.rr([images, points, dist])[0]
                return out

            self._predict = tf.function(predict)
        return {k: v.numpy() for k, v in self._predict(images).items()}

    def on_epoch_end(self, epoch, logs=None):
        if not self.every or (epoch + 1) % self.every:
            return
        images = self.batch["image"][: self.max_images]
        out = self._outputs(images)
        img = images.numpy()[..., 0]
        with self.writer.as_default():
            tf.summary.image("input_with_boxes", np.stack([
                draw_boxes(i, bx, v) for i, bx, v in zip(img, out["boxes"], out["valid"])]),
                step=epoch, max_outputs=self.max_images)
            if "heatmap" in out:
                tf.summary.image("heatmap", out["heatmap"], step=epoch,
                                 max_outputs=self.max_images)
            tf.summary.image("mask_overlay", np.stack([
                overlay(i, m) for i, m in zip(img, out["mask"][..., 0])]),
                step=epoch, max_outputs=self.max_images)
            if "roi" in out:
                tf.summary.image("roi", out["roi"], step=epoch, max_outputs=self.max_images)
        self.writer.flush()
