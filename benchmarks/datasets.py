"""Synthetic TFRecord datasets for the benchmarks, written once under the scratch folder."""
from __future__ import annotations

import os
import shutil

from benchmarks import harness


def synthetic_dataset(image_size: int, patients: int = 2, slices: int = 8) -> str:
    """A synthetic dataset (``lsnet_tf.data.synthetic``) of `patients` x `slices` slices at
    `image_size` pixels, two folds; generated on first use, then reused."""
    from lsnet_tf.config import SyntheticConfig
    from lsnet_tf.data import records, synthetic

    cfg = SyntheticConfig(num_patients=patients, slices_per_patient=slices, image_size=image_size,
                          min_target_size=image_size / 32, max_target_size=image_size * 0.4,
                          folds=2)
    out = os.path.join(harness.scratch_dir("datasets"), synthetic.config_key(cfg))
    if not os.path.isfile(os.path.join(out, records.INFO_FILE)):
        if os.path.isdir(out):
            shutil.rmtree(out)
        synthetic.write_dataset(cfg, out)
    return out


def replicated(dataset_dir: str, copies: int) -> str:
    """A dataset `copies` times as large: every shard of `dataset_dir` repeated `copies` times
    (as more patients of the same fold). Written once next to `dataset_dir`."""
    from lsnet_tf.data import records

    if copies == 1:
        return dataset_dir
    out = f"{dataset_dir.rstrip(os.sep)}-x{copies}"
    if os.path.isfile(os.path.join(out, records.INFO_FILE)):
        return out
    info = records.read_info(dataset_dir)
    folds = int(info["folds"])
    patients = {}
    for fold in range(folds):
        names = []
        for shard in records.list_shards(dataset_dir, [fold]):
            stem = os.path.basename(shard)[: -len(records.SHARD_SUFFIX)]
            for copy in range(copies):
                name = f"{stem}-copy{copy}"
                target = records.shard_path(out, fold, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(shard, target)
                names.append(name)
        patients[str(fold)] = names
    info = {k: v for k, v in info.items() if k not in ("format", "version")}
    info.update({"patients": patients,
                 "num_slices": {k: int(v) * copies for k, v in info["num_slices"].items()}})
    records.write_info(out, info)
    return out


def config(path: str, image_size: int, dataset_dir: str, *overrides: str):
    """The config at `path` resized to `image_size` on `dataset_dir`, single-device."""
    from lsnet_tf.config import load_config

    return load_config(path, [f"data.image_size={image_size}", f"data.dataset={dataset_dir}",
                              "train.strategy=default", "train.verbose=0", *overrides])


def first_batch(cfg) -> dict:
    """One training batch of `cfg`'s pipeline (shuffled, augmented, targets encoded)."""
    from lsnet_tf.data import pipeline, records

    dataset_dir = pipeline.resolve_dataset(cfg.data)
    train_folds = records.split_folds(dataset_dir, cfg.data.val_fold, "train")
    ds = pipeline.make_dataset(cfg.data, dataset_dir, train_folds, training=True)
    return next(iter(ds))


def repo_path(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)

