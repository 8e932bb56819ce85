"""tf.data input pipeline: shards -> parsed slices -> windowed, augmented, encoded batches.

Each element (before batching) is a dict:

=============  ========================  ==============================================
key            shape                     meaning
=============  ========================  ==============================================
image          (S, S, 1) float32         HU windowed to [0, 1], S = data.image_size
mask           (S, S, 1) float32         binary target
heatmap        (S/4, S/4, 1) float32     keypoint heatmap target (targets.py)
ltrb           (S/4, S/4, 4) float32     distance targets, input pixels
boxes          (max_boxes, 4) float32    xyxy input pixels, zero-padded
num_boxes      () int32                  valid rows of `boxes`
=============  ========================  ==============================================

Shards are read interleaved and streamed (memory does not grow with the dataset); target
encoding and augmentation run on the fly. `deterministic=True` fixes the element order and
derives the augmentation from stateless seeds.

A corrupt shard (CRC mismatch, truncation) raises ``tf.errors.DataLossError`` while iterating,
and TensorFlow's message does not name the file: `explain_data_loss` reads the shards to find the
corrupt ones. With ``data.on_corrupt: skip`` each shard's reader drops everything from its first
corrupt record on (`check_training_shards` counts and reports what is lost, before training).
"""
from __future__ import annotations

import os

import tensorflow as tf

from lsnet_tf.config import Config, DataConfig
from lsnet_tf.data import records, synthetic, targets
from lsnet_tf.utils.files import is_remote

AUTOTUNE = tf.data.AUTOTUNE


def window(hu, center: float, width: float):
    """Map HU to [0, 1] through the window (center, width); used in training and serving alike."""
    lo = center - width / 2.0
    return tf.clip_by_value((tf.cast(hu, tf.float32) - lo) / width, 0.0, 1.0)


def resolve_dataset(cfg: DataConfig) -> str:
    """The prepared dataset folder for `cfg`: `data.dataset`, or the cached synthetic one."""
    if cfg.dataset:
        info = records.read_info(cfg.dataset)  # clear error when the folder is not prepared
        if info.get("complete") is False:
            import warnings

            warnings.warn(f"{cfg.dataset}: `prepare` reported failed patients ({info.get('failed')}); "
                          "training uses the patients that were prepared", stacklevel=2)
        return cfg.dataset
    return synthetic.ensure_dataset(cfg.synthetic, cfg.cache_dir)


def _resize(ex, size: int):
    h = tf.cast(tf.shape(ex["image_hu"])[0], tf.float32)
    w = tf.cast(tf.shape(ex["image_hu"])[1], tf.float32)
    img = tf.image.resize(ex["image_hu"][..., None], [size, size], method="bilinear")
    mask = tf.image.resize(ex["mask"][..., None], [size, size], method="nearest")
    scale = tf.stack([size / w, size / h, size / w, size / h])
    return img, mask, ex["boxes"] * scale


def _augment(img, mask, boxes, seed, size: int):
    """Random zoom (0.8-1.25) about a random centre, and a small HU scale/shift.

    The same scale-and-translate map moves image (bilinear), mask (nearest) and boxes
    (analytically), so they stay consistent; boxes leaving the image are clipped, and dropped
    when nothing of them is left.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    zoom = tf.exp(tf.random.stateless_uniform([], seeds[0], tf.math.log(0.8), tf.math.log(1.25)))
    shift = tf.random.stateless_uniform([2], seeds[1], -0.15, 0.15) * size
    # Output pixel x maps to input x_in = (x - c) / zoom + c - shift (c = image centre).
    c = size / 2.0
    a = 1.0 / zoom
    tx = c - c * a - shift[0]
    ty = c - c * a - shift[1]
    # The kernel indexes pixel centres at integers (x_idx = x - 0.5), hence the 0.5 * (a - 1).
    transform = tf.stack([a, 0.0, tx + 0.5 * (a - 1), 0.0, a, ty + 0.5 * (a - 1), 0.0, 0.0])[None]

    def warp(x, interp):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x[None], transforms=transform, output_shape=[size, size], fill_value=0.0,
            interpolation=interp, fill_mode="CONSTANT")[0]

    img = warp(img + 1024.0, "BILINEAR") - 1024.0  # fill outside with air (-1024 HU)
    mask = warp(mask, "NEAREST")
    # Inverse map for boxes: x_out = (x_in - tx) / a.
    bx = (boxes - tf.stack([tx, ty, tx, ty])) / a
    bx = tf.clip_by_value(bx, 0.0, float(size))
    keep = (bx[:, 2] - bx[:, 0] > 0.5) & (bx[:, 3] - bx[:, 1] > 0.5)
    bx = tf.boolean_mask(bx, keep)
    gain = tf.random.stateless_uniform([], seeds[2], 0.95, 1.05)
    offset = tf.random.stateless_uniform([], seeds[3], -20.0, 20.0)
    return img * gain + offset, mask, bx


def _finish(img_hu, mask, boxes, cfg: DataConfig):
    heat, ltrb = targets.encode_targets(boxes, cfg.image_size, cfg.image_size, cfg.stride,
                                        cfg.heatmap_sigma, cfg.min_overlap)
    n = tf.minimum(tf.shape(boxes)[0], cfg.max_boxes)
    padded = tf.pad(boxes[: cfg.max_boxes], [[0, cfg.max_boxes - n], [0, 0]])
    return {
        "image": window(img_hu, cfg.window_center, cfg.window_width),
        "mask": tf.cast(mask > 0.5, tf.float32),
        "heatmap": heat,
        "ltrb": ltrb,
        "boxes": tf.ensure_shape(padded, [cfg.max_boxes, 4]),
        "num_boxes": n,
    }


def make_dataset(cfg: DataConfig, dataset_dir: str, folds, training: bool, seed: int = 0,
                 repeat: bool | None = None, batch_size: int | None = None) -> tf.data.Dataset:
    """Batched dataset over the shards of `folds`.

    `training` shuffles, augments (if `cfg.augment`), repeats and drops the last partial batch;
    otherwise the order is the shard order and every slice appears once.
    """
    files = records.require_shards(dataset_dir, folds)
    repeat = training if repeat is None else repeat
    batch_size = batch_size or cfg.batch_size
    det = cfg.deterministic or not training
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if cfg.on_corrupt == "skip":
        def read(path):  # a corrupt record ends its shard (the reader moves to the next file)
            return tf.data.TFRecordDataset(path).ignore_errors()
    else:
        read = tf.data.TFRecordDataset
    ds = ds.interleave(read, cycle_length=min(4, len(files)), num_parallel_calls=AUTOTUNE,
                       deterministic=det)
    ds = ds.map(records.parse, num_parallel_calls=AUTOTUNE, deterministic=det)
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    size = cfg.image_size
    do_aug = training and cfg.augment

    def prep(index, ex):
        img, mask, boxes = _resize(ex, size)
        if do_aug:
            img, mask, boxes = _augment(img, mask, boxes, tf.stack([tf.cast(seed, tf.int64), index]), size)
        return _finish(img, mask, boxes, cfg)

    ds = ds.enumerate().map(prep, num_parallel_calls=AUTOTUNE, deterministic=det)
    ds = ds.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = det
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)


def eval_dataset(data_cfg: DataConfig, dataset_dir: str, folds, batch_size: int | None = None):
    """Evaluation batches with slice identities, in shard order (patient by patient): what
    ``python -m lsnet_tf.evaluate`` and the trainer's ``eval.json`` evaluate.

    Slices are resized and windowed exactly as `make_dataset`'s evaluation batches (no
    augmentation). Each batch is a dict: ``image`` (B, S, S, 1) float32 in [0, 1], ``mask``
    (B, S, S, 1) float32 in {0, 1}, ``boxes`` (B, N, 4) xyxy input pixels zero-padded to the
    batch's largest count (all boxes of a slice, not cut at ``data.max_boxes``), ``num_boxes``
    (B,) int32, ``patient_id`` (B,) string and ``slice_index`` (B,) int64. Raises
    FileNotFoundError when `folds` have no shards.
    """
    files = records.require_shards(dataset_dir, folds)
    size = data_cfg.image_size

    def prep(ex):
        # The training pipeline's resize (bilinear image, nearest mask, scaled boxes).
        img, mask, boxes = _resize(ex, size)
        return {
            "image": window(img, data_cfg.window_center, data_cfg.window_width),
            "mask": tf.cast(mask > 0.5, tf.float32),
            "boxes": boxes,
            "num_boxes": tf.shape(boxes)[0],
            "patient_id": ex["patient_id"],
            "slice_index": ex["slice_index"],
        }

    ds = tf.data.TFRecordDataset(files).map(records.parse).map(prep)
    return ds.padded_batch(batch_size or data_cfg.batch_size).prefetch(AUTOTUNE)


def count_slices(dataset_dir: str, folds) -> int:
    info = records.read_info(dataset_dir)
    return sum(records.slice_count(dataset_dir, info, k) for k in folds)


def datasets_for(cfg: Config, seed: int | None = None):
    """(train_ds, val_ds, dataset_dir, n_train, n_val) for a full config.

    ``train.deterministic`` turns ``data.deterministic`` on.
    """
    dataset_dir = resolve_dataset(cfg.data)
    train_folds = records.split_folds(dataset_dir, cfg.data.val_fold, "train")
    val_folds = records.split_folds(dataset_dir, cfg.data.val_fold, "val")
    seed = cfg.train.seed if seed is None else seed
    data = cfg.data
    if cfg.train.deterministic and not data.deterministic:
        import dataclasses

        data = dataclasses.replace(data, deterministic=True)
    train = make_dataset(data, dataset_dir, train_folds, training=True, seed=seed)
    val = make_dataset(data, dataset_dir, val_folds, training=False)
    where = dataset_dir if is_remote(dataset_dir) else os.path.abspath(dataset_dir)
    return (train, val, where, count_slices(dataset_dir, train_folds),
            count_slices(dataset_dir, val_folds))


def check_training_shards(cfg: DataConfig, dataset_dir: str) -> list[records.ShardCheck]:
    """Read every shard of `dataset_dir` (``data.on_corrupt: skip``, before training).

    Returns the `records.ShardCheck` of every training shard (a corrupt one's records from the
    corruption on are skipped); raises `records.CorruptShardError` when a validation shard is corrupt, since the evaluation
    needs every slice of its fold.
    """
    train_folds = records.split_folds(dataset_dir, cfg.val_fold, "train")
    val_folds = records.split_folds(dataset_dir, cfg.val_fold, "val")
    bad_val = [c for c in records.check_shards(records.list_shards(dataset_dir, val_folds))
               if not c.ok]
    if bad_val:
        raise records.corrupt_shard_error(bad_val, (
            f"These shards are in the validation fold (data.val_fold={cfg.val_fold}), which is "
            "evaluated slice by slice and is never skipped: re-create them with `python -m "
            "lsnet_tf.prepare`, or choose another data.val_fold."))
    return records.check_shards(records.list_shards(dataset_dir, train_folds))


def explain_data_loss(dataset_dir: str, error: Exception) -> Exception:
    """The error to raise for a ``tf.errors.DataLossError`` met while reading `dataset_dir`.

    Reads every shard of the dataset and returns a `records.CorruptShardError` naming the corrupt
    ones, or `error` itself when none is (the loss happened elsewhere).
    """
    folds = range(int(records.read_info(dataset_dir)["folds"]))
    bad = [c for c in records.check_shards(records.list_shards(dataset_dir, folds)) if not c.ok]
    return records.corrupt_shard_error(bad) if bad else error
