"""Training-run folders: load the model a run of `python -m lsnet_tf.train` left behind."""
from __future__ import annotations

import os

from lsnet_tf.config import load_config
from lsnet_tf.models.build import build_model, checkpoint_objects
from lsnet_tf.utils import files


class RunError(ValueError):
    """A run folder that cannot be loaded (no config, no checkpoint, weights that do not match)."""


def load_run(run_dir: str, checkpoint: str | None = None):
    """Rebuild a trained run's model: returns ``(model, cfg, checkpoint_path)``.

    The model is `build_model` of the run's ``config.yaml`` (any architecture) with the weights
    of its networks from `checkpoint` (default: the latest in ``run_dir/checkpoints``), restored
    through ``tf.train.Checkpoint(**checkpoint_objects(model, optimizers=False))`` (for L-SNet
    ``lnet=..., snet=...``); every weight of every network must be found.
    """
    import tensorflow as tf  # here only: export's and evaluate's --help import this module

    if not files.isdir(run_dir):
        raise RunError(f"{run_dir}: run folder not found")
    config_path = os.path.join(run_dir, "config.yaml")
    if not files.isfile(config_path):
        raise RunError(f"{run_dir}: no config.yaml (not a folder written by python -m "
                       "lsnet_tf.train)")
    cfg = load_config(config_path)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    path = checkpoint or tf.train.latest_checkpoint(ckpt_dir)
    if path is None:
        raise RunError(f"{ckpt_dir}: no checkpoint found (has the run finished an epoch?)")
    if not tf.io.gfile.exists(path + ".index"):
        raise RunError(f"{path}: checkpoint not found (no {os.path.basename(path)}.index)")
    model = build_model(cfg)
    try:
        status = tf.train.Checkpoint(**checkpoint_objects(model, optimizers=False)).restore(path)
        status.expect_partial()  # the optimizers and the epoch counter are not needed
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunError(f"{path}: the checkpoint does not hold every weight of the model in "
                       f"{config_path} ({type(e).__name__}: {str(e)[:500]})") from e
    return model, cfg, path
