"""The models of ``python -m lsnet_tf.predict``: ``load_predictor(path)`` and ensembles.

``--model``: an exported SavedModel (a version folder, or a TF Serving model folder whose highest
numeric version is taken; TF-TRT SavedModels too: `SavedModelPredictor`) or a ``.tflite`` file
of ``python -m lsnet_tf.export`` (`lsnet_tf.export.litert.TFLitePredictor`, no TensorFlow).
Both give the same outputs: slices go in as raw HU at their own size, and the TFLite path
resizes them to the model's input size and back exactly as the SavedModel graph does
(``lsnet_tf.export.saved_model.preprocess``/``postprocess``).

Ensembles and mirroring (`lsnet_tf.inference.ensemble`): ``--model`` may be repeated, or name a
folder of models (e.g. one exported model per fold, found recursively); the members
(SavedModels and ``.tflite`` files alike, each loaded once, run in sequence) must share input
size, HU window and label, else the command stops before any case with an error naming both
members and both values (`resolve_models`). ``--tta flip`` also runs each slice mirrored
left-right through every member (``flip2``: left-right, up-down and both), mirrored back. Each
member finds and segments its own RoIs; only the probability maps after paste-back are averaged
over the views (members x mirrors) and the mean thresholded at 0.5; the boxes of each member
are listed per member. The summary then also holds the members, the mirroring, and the case's
agreement: ``mean_pairwise_dice`` (the mean Dice between the views' masks),
``volume_sd_ml``/``volume_range_ml`` (the spread of their volumes) and ``review`` (mean
pairwise Dice below ``--review-below``, default 0.9875); ``--disagreement`` writes
``disagreement.nii.gz``, per voxel the standard deviation of the views' probabilities. With
one model and no mirroring none of these appear.

Refused before any case (`lsnet_tf.inference.readers.PredictError`, one line naming the path
and the fault): a model that cannot be loaded (missing, a damaged or truncated SavedModel, one
without a ``serving_default`` signature or whose signature is not
``hu -> mask, boxes, scores, keypoints, valid``, an unreadable ``.tflite``); members of an
ensemble that differ (input size, HU window, classes, label: both members named with both
values) and a folder without models.
"""
from __future__ import annotations

import os

import numpy as np

from lsnet_tf.export.litert import TFLitePredictor  # LiteRT and numpy: no TensorFlow
from lsnet_tf.utils.files import fingerprint
from lsnet_tf.inference import ensemble
from lsnet_tf.inference.readers import DEFAULT_WINDOW, PredictError

__all__ = ["SavedModelPredictor", "TFLitePredictor", "load_predictor", "resolve_models",
           "is_ensemble", "member_fingerprints", "load_ensemble", "load_members"]

# What an exported model's serving_default returns (`predict_volume` reads them all).
OUTPUTS = ("mask", "boxes", "scores", "keypoints", "valid")


def _resolve_saved_model(path: str) -> str:
    version = ensemble.saved_model_version(path)
    if version is None:
        raise PredictError(f"{path}: no saved_model.pb here nor in a numeric version folder "
                           "(expected an exported SavedModel or a .tflite file)")
    return version


def _window_of_config(path: str):
    """The HU window of an exported model's ``assets.extra/config.yaml``, if it has one."""
    config = os.path.join(path, "assets.extra", "config.yaml")
    if not os.path.isfile(config):
        return None
    import yaml

    with open(config, encoding="utf-8") as f:
        data = (yaml.safe_load(f) or {}).get("data", {})
    return (float(data.get("window_center", DEFAULT_WINDOW[0])),
            float(data.get("window_width", DEFAULT_WINDOW[1])))


class SavedModelPredictor:
    """``predict(hu)``: ``(n, H, W)`` raw HU -> dict of numpy outputs on the input grid."""

    format = "saved_model"

    def __init__(self, path: str, batch_size: int = 8):
        import tensorflow as tf

        self.path = _resolve_saved_model(path)
        self.batch_size = int(batch_size)
        try:
            self.module = tf.saved_model.load(self.path)
        except Exception as e:  # noqa: BLE001 - truncated variables, a bad graph, ...: TF's own
            first = (str(e).strip().splitlines() or [""])[0]  # error types, one line each
            raise PredictError(f"{self.path}: the SavedModel cannot be loaded (damaged or "
                               f"incomplete: {type(e).__name__}: {first})") from e
        signatures = getattr(self.module, "signatures", None) or {}
        if "serving_default" not in signatures:
            raise PredictError(f"{self.path}: no serving_default signature (signatures: "
                               f"{', '.join(signatures) or 'none'}): not a model of "
                               "python -m lsnet_tf.export")
        self.signature = signatures["serving_default"]
        inputs = sorted(self.signature.structured_input_signature[1])
        outputs = sorted(self.signature.structured_outputs)
        if inputs != ["hu"] or not set(OUTPUTS) <= set(outputs):
            raise PredictError(f"{self.path}: serving_default takes {inputs} and returns "
                               f"{outputs}, not hu -> {', '.join(OUTPUTS)}: not a model of "
                               "python -m lsnet_tf.export")
        self.window = _window_of_config(self.path)

    def predict(self, hu: np.ndarray) -> dict:
        import tensorflow as tf

        out = self.signature(hu=tf.constant(np.asarray(hu, np.float32)))
        return {k: v.numpy() for k, v in out.items()}


def load_predictor(path: str, batch_size: int = 8, model_sha256: str | None = None):
    """A `SavedModelPredictor` for a folder, a `TFLitePredictor` for a ``.tflite`` file; its
    ``fingerprint`` (summary.json's ``model_sha256``) is `model_sha256` when the caller has
    hashed the model already, else ``lsnet_tf.utils.files.fingerprint(path)``."""
    if not os.path.exists(path):
        raise PredictError(f"{path}: model not found")
    if os.path.isdir(path):
        predictor = SavedModelPredictor(path, batch_size)
    elif path.lower().endswith(".tflite"):
        predictor = TFLitePredictor(path, batch_size)
    else:
        raise PredictError(f"{path}: unsupported model (expected a SavedModel folder or a "
                           ".tflite file)")
    predictor.fingerprint = fingerprint(path) if model_sha256 is None else model_sha256
    return predictor


def resolve_models(model_paths, tta: str = "none", disagreement: bool = False) -> list[str]:
    """The member models of the ``--model`` arguments `model_paths` (one path or several;
    `lsnet_tf.inference.ensemble.find_models`), checked to share input size, HU window and label,
    before any model loads. `PredictError` names the fault: a missing path, a file or folder
    that is no model, members that differ (both named, with both values), or `disagreement`
    asked of one model without mirroring (one view: nothing to disagree)."""
    paths = [model_paths] if isinstance(model_paths, str) else list(model_paths)
    if tta not in ensemble.TTA_MODES:
        raise PredictError(f"--tta must be one of {', '.join(ensemble.TTA_MODES)}, got {tta!r}")
    if len(paths) == 1 and not os.path.exists(paths[0]) and tta == "none" and not disagreement:
        return paths  # one model, as before: `load_predictor` says "model not found" on loading
    try:
        members = ensemble.find_models(paths)
        ensemble.check_members(members)
    except ensemble.MemberError as e:
        raise PredictError(str(e)) from e
    if disagreement and len(members) == 1 and tta == "none":
        raise PredictError("--disagreement needs several models (--model A --model B, or a "
                           "folder of models) or --tta: one model without mirroring has no "
                           "views to disagree")
    return members


def is_ensemble(members, tta: str = "none") -> bool:
    """Whether `members` with `tta` make more than one view (an ensemble's
    `lsnet_tf.inference.ensemble.EnsemblePredictor`)."""
    return len(members) > 1 or tta != "none"


def member_fingerprints(members) -> list[str]:
    """`lsnet_tf.utils.files.fingerprint` of each member (a path given twice is hashed once)."""
    done, out = {}, []
    for member in members:
        key = os.path.realpath(member)
        if key not in done:
            done[key] = fingerprint(member)
        out.append(done[key])
    return out


def load_ensemble(members, batch_size: int = 8, tta: str = "none", disagreement: bool = False,
                  model_sha256: str | None = None, member_sha256=None, path: str | None = None):
    """An `lsnet_tf.inference.ensemble.EnsemblePredictor` of the member models `members`
    (`resolve_models`) with the mirrors of `tta`: each distinct member is loaded once
    (`load_predictor`; a path given twice is one predictor used twice). ``fingerprint``
    (summary.json's ``model_sha256``) is `model_sha256`, else
    `lsnet_tf.inference.ensemble.ensemble_fingerprint` of the members' fingerprints
    (`member_sha256` when hashed already) with `tta` and `disagreement`. `path`: what the
    summary names as ``model`` (default: the members joined by `` + ``)."""
    try:
        ensemble.check_members(members)
    except ensemble.MemberError as e:
        raise PredictError(str(e)) from e
    loaded, pairs = {}, []
    for i, member in enumerate(members):
        key = os.path.realpath(member)
        if key not in loaded:
            loaded[key] = load_predictor(member, batch_size, model_sha256=None
                                         if member_sha256 is None else member_sha256[i])
        pairs.append((member, loaded[key]))
    sha = model_sha256 or ensemble.ensemble_fingerprint(
        [getattr(p, "fingerprint", None) for _, p in pairs], tta, disagreement)
    return ensemble.EnsemblePredictor(pairs, tta=tta, batch_size=batch_size, path=path,
                                      fingerprint=sha)


def load_members(members, batch_size: int = 8, tta: str = "none", disagreement: bool = False,
                 model_sha256: str | None = None, member_sha256=None, path: str | None = None):
    """`load_predictor` for one model without mirroring, else `load_ensemble`."""
    if not is_ensemble(members, tta):
        return load_predictor(members[0], batch_size, model_sha256=model_sha256)
    return load_ensemble(members, batch_size, tta=tta, disagreement=disagreement,
                         model_sha256=model_sha256, member_sha256=member_sha256, path=path)

