"""The Python API: what a notebook or a service needs, in a few calls.

    import lsnet_tf
    config = lsnet_tf.load_config("configs/default.yaml", overrides=["train.epochs=2"])
    summary = lsnet_tf.train_model(config)      # trains, evaluates, exports; the evaluation
    predictor = lsnet_tf.load_predictor("saved_models/lsnet/1")   # or a .tflite file
    volume = lsnet_tf.read_volume("case.nii.gz")                  # DICOM folder, NIfTI, .npy
    result = lsnet_tf.predict_volume(predictor, volume.hu)        # result["mask"]: (n, H, W)

Every name here is importable from ``lsnet_tf`` itself; importing ``lsnet_tf`` imports no
TensorFlow (each call imports what it needs) and changes nothing in the host process.
"""
from __future__ import annotations

__all__ = ["load_config", "build_model", "train_model", "load_predictor", "read_volume",
           "predict_volume"]


def load_config(path: str | None = None, overrides=()):
    """The `lsnet_tf.config.Config` of a YAML file (None: the built-in defaults) with
    ``key=value`` overrides applied (a list of strings, or a mapping of key to value)."""
    import lsnet_tf.config as config

    if hasattr(overrides, "items"):
        overrides = [f"{key}={value}" for key, value in overrides.items()]
    return config.load_config(path, list(overrides))


def build_model(config):
    """The Keras model `config` describes (L-SNet or a baseline), built and not compiled."""
    from lsnet_tf.models import build

    return build.build_model(config)


def train_model(config, log=print) -> dict:
    """Train, evaluate and export as `config` says (``python -m lsnet_tf.train``'s job);
    returns the evaluation summary (also written to ``<train.output_dir>/eval.json``).
    Running it again on the same output folder resumes from the last checkpoint."""
    from lsnet_tf.training import session

    return session.run(config, log=log)


def load_predictor(path: str, batch_size: int = 8):
    """A predictor for a SavedModel folder or a ``.tflite`` file; its ``predict(hu)`` takes
    ``(n, H, W)`` HU slices."""
    from lsnet_tf.inference import predictors

    return predictors.load_predictor(path, batch_size)


def read_volume(path: str, spacing=None, series_uid: str | None = None):
    """A `Volume` (``.hu``: ``(slices, rows, cols)`` float32 HU, ``.spacing``, ``.write_mask``)
    from a DICOM series folder, a NIfTI file, a ``.npy`` array or a PNG slice."""
    from lsnet_tf.inference import readers

    return readers.read_input(path, spacing=spacing, series_uid=series_uid)


def predict_volume(predictor, hu, progress=None) -> dict:
    """Segment every slice of `hu` ``(n, H, W)``; returns ``{"mask": (n, H, W) uint8, "boxes",
    "scores", "keypoints", "valid"}``. `progress(done, total)` is called as slices finish."""
    from lsnet_tf.inference import volume

    return volume.predict_volume(predictor, hu, progress=progress)
