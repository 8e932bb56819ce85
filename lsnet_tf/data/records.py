"""The slice TFRecord format shared by `prepare`, the synthetic generator, tf.data and `validate`.

A prepared dataset is a folder::

    DATASET/
      dataset.json               # format, folds, patients per fold, slice counts, source
      fold-0/<patient>.tfrecord  # one shard per patient, written atomically
      fold-1/...

Each record is one axial slice (a ``tf.train.Example``):

==================  =======  ===============================================================
feature             type     meaning
==================  =======  ===============================================================
image               bytes    raw HU, int16 little-endian, row-major (height, width)
mask                bytes    binary target, uint8 (height, width), 1 = target
height, width       int64    slice size in pixels
boxes               float[]  one box per 8-connected component of the mask, flattened
                             (num_boxes * 4), xyxy in pixel-edge coordinates: a component
                             covering columns j0..j1 and rows i0..i1 has box
                             (j0, i0, j1 + 1, i1 + 1)
num_boxes           int64    number of boxes
patient_id          bytes    patient identifier (utf-8)
slice_index         int64    position of the slice in its volume, in z order (0 = lowest z)
spacing             float[3] (row spacing, column spacing, slice spacing) in mm
fold                int64    cross-validation fold of the patient
hu_mean, hu_std,    float    HU statistics of the slice (read by TF Data Validation)
hu_min, hu_max
foreground_area     int64    number of target pixels
box_max_side,       float    largest / smallest box side over the slice's boxes, pixels
box_min_side                 (0 when the slice has no box)
==================  =======  ===============================================================

Records hold raw HU so that the window (``data.window_center``/``window_width``) is applied in
the graph, the same way in training and in the exported serving model, and changing it needs no
re-preparation.

Shards are written through ``tf.io.gfile``, so a dataset folder may be any filesystem TensorFlow
writes (a local folder, ``gs://bucket/dataset``, ...); `read_info`, `list_shards` and
`write_info` go through ``tf.io.gfile`` for such URLs (``lsnet_tf.utils.files.is_remote``), and
``lsnet_tf.utils.files.write_text`` writes any file there with the same write-then-rename rule as
``lsnet_tf.utils.files.atomic_write``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable

import numpy as np

from lsnet_tf.utils.files import TMP_SUFFIX, is_remote, isfile, read_text, write_json, write_text
from lsnet_tf.utils.files import glob as find_files

FORMAT = "lsnet_tf-slices"
FORMAT_VERSION = 1
INFO_FILE = "dataset.json"
SHARD_SUFFIX = ".tfrecord"

# Scalar per-slice features read by validation (name -> numpy dtype).
SCALAR_FEATURES = {
    "hu_mean": np.float32,
    "hu_std": np.float32,
    "hu_min": np.float32,
    "hu_max": np.float32,
    "foreground_area": np.int64,
    "num_boxes": np.int64,
    "box_max_side": np.float32,
    "box_min_side": np.float32,
}


@dataclasses.dataclass
class SliceRecord:
    """One axial slice ready to be written. `image_hu` is (H, W) int16; `mask` (H, W) uint8."""

    image_hu: np.ndarray
    mask: np.ndarray
    patient_id: str
    slice_index: int
    spacing: tuple = (1.0, 1.0, 1.0)
    fold: int = 0
    boxes: np.ndarray | None = None  # (N, 4) xyxy; computed from the mask when None

    def __post_init__(self):
        if self.image_hu.ndim != 2:
            raise ValueError(f"image_hu must be 2-D (H, W), got shape {self.image_hu.shape}")
        if self.mask.shape != self.image_hu.shape:
            raise ValueError(f"mask shape {self.mask.shape} differs from image shape {self.image_hu.shape}")
        if self.boxes is None:
            self.boxes = boxes_from_mask(self.mask)


def boxes_from_mask(mask: np.ndarray) -> np.ndarray:
    """One xyxy box (pixel-edge coordinates) per 8-connected component of a binary mask.

    Components are ordered by their first pixel in row-major order. Returns (N, 4) float32.
    """
    from scipy import ndimage  # outside any graph: used when writing records

    labels, n = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3), dtype=bool))
    boxes = np.zeros((n, 4), np.float32)
    for k, sl in enumerate(ndimage.find_objects(labels)):
        rows, cols = sl
        boxes[k] = (cols.start, rows.start, cols.stop, rows.stop)
    return boxes


def slice_features(image_hu: np.ndarray, mask: np.ndarray, boxes: np.ndarray) -> dict:
    img = image_hu.astype(np.float32)
    sides = np.concatenate([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]) if len(boxes) else np.zeros(0)
    return {
        "hu_mean": float(img.mean()),
        "hu_std": float(img.std()),
        "hu_min": float(img.min()),
        "hu_max": float(img.max()),
        "foreground_area": int((mask > 0).sum()),
        "num_boxes": int(len(boxes)),
        "box_max_side": float(sides.max()) if sides.size else 0.0,
        "box_min_side": float(sides.min()) if sides.size else 0.0,
    }


def encode(rec: SliceRecord) -> bytes:
    """Serialise a SliceRecord to a tf.train.Example string."""
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    def f(vals):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in np.ravel(vals)]))

    hu = np.clip(np.asarray(rec.image_hu), -32768, 32767).astype("<i2")
    mask = (np.asarray(rec.mask) > 0).astype(np.uint8)
    boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
    feats = slice_features(hu, mask, boxes)
    feature = {
        "image": b(hu.tobytes()),
        "mask": b(mask.tobytes()),
        "height": i(hu.shape[0]),
        "width": i(hu.shape[1]),
        "boxes": f(boxes),
        "patient_id": b(str(rec.patient_id).encode("utf-8")),
        "slice_index": i(rec.slice_index),
        "spacing": f(np.asarray(rec.spacing, np.float32).reshape(3)),
        "fold": i(rec.fold),
    }
    for name, dtype in SCALAR_FEATURES.items():
        feature[name] = i(feats[name]) if dtype is np.int64 else f([feats[name]])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec() -> dict:
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "boxes": tf.io.VarLenFeature(tf.float32),
        "patient_id": tf.io.FixedLenFeature([], tf.string),
        "slice_index": tf.io.FixedLenFeature([], tf.int64),
        "spacing": tf.io.FixedLenFeature([3], tf.float32),
        "fold": tf.io.FixedLenFeature([], tf.int64),
    }
    for name, dtype in SCALAR_FEATURES.items():
        spec[name] = tf.io.FixedLenFeature([], tf.int64 if dtype is np.int64 else tf.float32)
    return spec


def parse(serialized):
    """Parse one serialised record into tensors (graph-safe).

    Returns a dict with ``image_hu`` (H, W) float32, ``mask`` (H, W) float32 in {0, 1},
    ``boxes`` (N, 4) float32 xyxy pixels, ``patient_id``, ``slice_index``, ``spacing``.
    """
    import tensorflow as tf

    ex = tf.io.parse_single_example(serialized, feature_spec())
    h, w = tf.cast(ex["height"], tf.int32), tf.cast(ex["width"], tf.int32)
    image = tf.reshape(tf.io.decode_raw(ex["image"], tf.int16, little_endian=True), [h, w])
    mask = tf.reshape(tf.io.decode_raw(ex["mask"], tf.uint8), [h, w])
    boxes = tf.reshape(tf.sparse.to_dense(ex["boxes"]), [-1, 4])
    return {
        "image_hu": tf.cast(image, tf.float32),
        "mask": tf.cast(mask, tf.float32),
        "boxes": boxes,
        "patient_id": ex["patient_id"],
        "slice_index": ex["slice_index"],
        "spacing": ex["spacing"],
    }


class ShardWriter:
    """Write one shard atomically: records go to ``<path>.tmp``, renamed to `path` on success.

    A crash or an exception inside the ``with`` block removes the temporary file, so a shard that
    exists under its final name is always complete. Files are written through ``tf.io.gfile``, so
    `path` may be on any filesystem TensorFlow writes (``gs://`` ...).
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp = path + TMP_SUFFIX
        self.count = 0
        self._writer = None

    def __enter__(self):
        import tensorflow as tf

        folder = os.path.dirname(self.path if is_remote(self.path) else os.path.abspath(self.path))
        tf.io.gfile.makedirs(folder)
        self._writer = tf.io.TFRecordWriter(self.tmp)
        return self

    def write(self, rec: SliceRecord) -> None:
        self._writer.write(encode(rec))
        self.count += 1

    def __exit__(self, exc_type, exc, tb):
        import tensorflow as tf

        self._writer.close()
        if exc_type is None:
            tf.io.gfile.rename(self.tmp, self.path, overwrite=True)
        elif tf.io.gfile.exists(self.tmp):
            tf.io.gfile.remove(self.tmp)
        return False


def shard_name(fold: int, patient_id: str) -> str:
    """A patient's shard relative to the dataset folder: ``fold-K/<patient>.tfrecord`` (characters
    other than letters, digits, ``-_.`` in the id become ``_``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(patient_id))
    return os.path.join(f"fold-{fold}", safe + SHARD_SUFFIX)


def shard_path(dataset_dir: str, fold: int, patient_id: str) -> str:
    return os.path.join(dataset_dir, shard_name(fold, patient_id))


def info_text(info: dict) -> str:
    """The text of ``dataset.json`` for `info` (format and version first, keys sorted)."""
    return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, **info}, indent=2,
                      sort_keys=True)


def write_info(dataset_dir: str, info: dict) -> None:
    """Write ``dataset_dir/dataset.json`` atomically (through ``tf.io.gfile`` for a URL)."""
    if is_remote(dataset_dir):
        write_text(os.path.join(dataset_dir, INFO_FILE), info_text(info))
        return
    info = {"format": FORMAT, "version": FORMAT_VERSION, **info}
    os.makedirs(dataset_dir, exist_ok=True)
    write_json(os.path.join(dataset_dir, INFO_FILE), info, sort_keys=True)


class DatasetError(ValueError):
    """A folder that is not a prepared dataset, or whose ``dataset.json`` lacks what is read."""


class NotADatasetError(DatasetError, FileNotFoundError):
    """No ``dataset.json`` in the folder (or no folder)."""


class NoShardsError(DatasetError, FileNotFoundError):
    """A prepared dataset without complete shards for the folds asked for."""


def read_info(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, INFO_FILE)
    if not isfile(path):
        raise NotADatasetError(
            f"{dataset_dir} is not a prepared dataset (no {INFO_FILE}); "
            "write one with `python -m lsnet_tf.prepare`")
    try:
        info = json.loads(read_text(path))
    except ValueError as e:
        raise DatasetError(f"{path}: not JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise DatasetError(f"{path}: format {got!r} is not {FORMAT!r}")
    return info


def slice_count(dataset_dir: str, info: dict, fold: int) -> int:
    """The number of slices of `fold` that `dataset_dir`'s ``dataset.json`` records."""
    try:
        return int(info["num_slices"][str(fold)])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(
            f"{os.path.join(dataset_dir, INFO_FILE)}: no slice count for fold {fold} "
            f"(num_slices: {info.get('num_slices')!r}); prepare the dataset again with "
            "`python -m lsnet_tf.prepare`") from None


def list_shards(dataset_dir: str, folds: Iterable[int]) -> list[str]:
    """Complete shards of the given folds, sorted (temporary files are never listed)."""
    paths = []
    for k in folds:
        paths += sorted(find_files(os.path.join(dataset_dir, f"fold-{k}", "*" + SHARD_SUFFIX)))
    return paths


def require_shards(dataset_dir: str, folds: Iterable[int]) -> list[str]:
    """`list_shards`, or NoShardsError naming the folds and the folder when there are none."""
    folds = list(folds)
    paths = list_shards(dataset_dir, folds)
    if not paths:
        raise NoShardsError(f"no shards for folds {folds} under {dataset_dir}")
    return paths


# The splits of a dataset's folds: the validation fold, the training folds (every other fold), all.
SPLITS = ("val", "train", "all")


class FoldError(ValueError):
    """A split that is not one of `SPLITS`, or a validation fold that the dataset does not have."""


def split_folds(dataset_dir: str, val_fold: int, split: str,
                folds: Iterable[int] | None = None) -> list[int]:
    """The folds of `split` of the dataset `dataset_dir` whose validation fold is `val_fold`.

    ``"val"`` is ``[val_fold]``, ``"train"`` every other fold, ``"all"`` every fold, in order.
    `folds` are the dataset's folds; by default ``0 .. folds - 1`` of its ``dataset.json``.

    Raises:
      FoldError: `split` is not one of `SPLITS`, or `val_fold` is not one of the folds.
      FileNotFoundError, ValueError: no ``dataset.json`` (`read_info`), when `folds` is not given.
    """
    if split not in SPLITS:
        raise FoldError(f"split must be one of {', '.join(SPLITS)}, received {split!r}")
    if folds is None:
        count = int(read_info(dataset_dir)["folds"])
        if not 0 <= val_fold < count:
            raise FoldError(f"data.val_fold={val_fold} but {dataset_dir} has folds "
                            f"0..{count - 1}")
        folds = range(count)
    else:
        folds = sorted(folds)
        if val_fold not in folds:  # the folds need not be 0 .. n - 1: name them
            raise FoldError(f"val fold {val_fold} is not a fold of {dataset_dir} (folds: {folds})")
    if split == "val":
        return [val_fold]
    if split == "train":
        return [k for k in folds if k != val_fold]
    return list(folds)


class CorruptShardError(ValueError):
    """A shard that cannot be read to its end (CRC mismatch, truncation); the message names it."""


@dataclasses.dataclass(frozen=True)
class ShardCheck:
    """The result of reading one shard to its end: `records` read before `error` ("" if none)."""

    path: str
    records: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def describe(self) -> str:
        return (f"{self.path}: corrupt TFRecord shard, unreadable from record {self.records + 1} "
                f"on ({self.records} record(s) before it are readable): {self.error}")


def check_shard(path: str) -> ShardCheck:
    """Read every record of a shard, checking its framing and CRCs (no parsing)."""
    import tensorflow as tf

    n = 0
    try:
        for _ in tf.data.TFRecordDataset(path):
            n += 1
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError) as e:
        return ShardCheck(path, n, e.message.strip().splitlines()[0])
    return ShardCheck(path, n)


def check_shards(paths: Iterable[str]) -> list[ShardCheck]:
    """`check_shard` of each path, in order."""
    return [check_shard(p) for p in paths]


def corrupt_shard_error(bad: list[ShardCheck], advice: str = "") -> CorruptShardError:
    """One error naming every corrupt shard of `bad` and what to do about them."""
    lines = "\n  ".join(c.describe() for c in bad)
    advice = advice or ("Re-create the dataset with `python -m lsnet_tf.prepare` (or remove the "
                        "shard), or set data.on_corrupt=skip to train on the readable records.")
    return CorruptShardError(f"{len(bad)} corrupt shard(s):\n  {lines}\n{advice}")
