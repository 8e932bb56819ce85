"""Ensembles of exported models, test-time mirroring and the per-case agreement of their views.

``python -m lsnet_tf.predict --model A --model B ...`` (or ``--model FOLDS/``, a folder holding
several exported models, e.g. one per cross-validation fold) predicts with every member and
averages; ``--tta flip`` / ``--tta flip2`` also runs mirrored slices through every member.

How L-SNet's two stages combine
-------------------------------
Each member runs its whole path on its own: its L-Net finds its RoIs, RoI recalibration resamples
them, its S-Net segments them and the masks are pasted back onto the slice. Only what every
member gives on the same pixel grid is averaged: the slice's **probability map after paste-back**
(``probability`` of the serving signature, on the input's grid). The mean over the K views is
thresholded at 0.5 (``> MASK_THRESHOLD``) into the one mask, as for a single model. The members'
RoIs are never merged: each member's probability is 0 outside its own RoIs, so the mean
acts as a soft majority vote over them. With two members a target that only one of them finds
is dropped (its mean is at most 0.5); with M members a pixel needs a summed probability above
M / 2. The boxes and keypoints of each member's unmirrored
view are reported per member (``summary.json``: each box entry has a ``member`` index into
``members``; the overlays draw all of them); those of mirrored views are dropped.

Views
-----
The K = members x mirrors predictions of a slice are its *views*. ``--tta flip`` gives each
member two (the slice, and the slice mirrored left-right: the column axis of the canonical
layout, the patient's right-left axis), ``flip2`` four (the slice, left-right, up-down, both).
A mirrored view's probability map is mirrored back before averaging. The mean is taken in
float64 over the views sorted per voxel, so it does not depend on the order of the members or
mirrors (``--model A --model B`` equals ``--model B --model A`` bit for bit), and one view
averages to itself exactly: an ensemble of one model, or of a model and itself, gives the
model's own mask.

Agreement (per case, over the views; `Agreement`, `case_agreement`)
--------------------------------------------------------------------
- ``mean_pairwise_dice``: the mean over the K (K - 1) / 2 pairs of views of the Dice of their
  masks (each view's probability > 0.5) over the whole volume; two empty masks agree (Dice 1).
  ``min_pairwise_dice``: the lowest pair.
- ``view_volumes_ml``: each view's mask volume; ``volume_sd_ml`` its standard deviation over the
  views (population, ddof = 0) and ``volume_range_ml`` max - min; None where the slice spacing
  is unknown.
- ``review``: ``mean_pairwise_dice < review_below`` (``--review-below``, default
  `REVIEW_BELOW` = 0.9875, chosen on the synthetic tuning set's predictions by the evidence
  fold models, never on a test set: docs/results/ensemble/).
- the disagreement map (``--disagreement``): per voxel, the standard deviation over the views of
  the probability (population; with several classes, the largest over the classes), 0 where
  all views agree, at most 0.5.

With one model and no mirroring there is one view: no agreement fields (absent from
``summary.json``, empty in ``cases.csv``, null in ``cases.json``) and no disagreement map.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Sequence

import numpy as np

__all__ = ["TTA_MODES", "MIRRORS", "REVIEW_BELOW", "MemberError", "MemberSpec", "find_models",
           "read_spec", "check_members", "ensemble_fingerprint", "EnsemblePredictor",
           "Agreement", "case_agreement"]

MASK_THRESHOLD = 0.5
# The mirrors of each --tta mode, as axes of a (slices, rows, cols) batch: 2 = columns
# (left-right), 1 = rows (up-down, anterior-posterior).
MIRRORS = {"none": ((),), "flip": ((), (2,)), "flip2": ((), (2,), (1,), (1, 2))}
TTA_MODES = tuple(MIRRORS)
# Chosen on tuning data, not on a test set (issue 31, docs/results/ensemble/): the 4 evidence
# fold models of L-SNet (U-Net), no mirroring, on the 40 patients of the synthetic tuning set;
# the threshold maximising F1 of "flagged" against "among the 10 % lowest per-case DSC".
# Synthetic cases are easy (agreement 0.98-0.99): harder data needs its own threshold.
REVIEW_BELOW = 0.9875
AGREEMENT_FIELDS = ("mean_pairwise_dice", "volume_sd_ml", "volume_range_ml", "review")


class MemberError(ValueError):
    """The models given cannot form one ensemble (none found, or members that differ)."""


# ----------------------------------------------------------------------------------- finding
def saved_model_version(path: str) -> str | None:
    """The SavedModel version folder of `path`: `path` itself when it holds ``saved_model.pb``,
    else its highest numeric version folder that does (a TF Serving model folder); None when
    neither (or `path` cannot be listed)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    try:
        names = os.listdir(path)
    except OSError:
        return None
    versions = [n for n in names
                if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))]
    return os.path.join(path, max(versions, key=int)) if versions else None


def _models_under(folder: str) -> list[str]:
    """The models in a folder of models, recursively: every SavedModel (version or TF Serving
    model folder; nothing below one is searched) and every ``.tflite`` file; hidden entries are
    left out. Sorted by path."""
    found = []
    for root, dirs, files in os.walk(folder):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            path = os.path.join(root, d)
            if saved_model_version(path) is not None:
                found.append(path)
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(os.path.join(root, f) for f in sorted(files)
                     if not f.startswith(".") and f.lower().endswith(".tflite"))
    return sorted(found)


def find_models(paths: Sequence[str] | str) -> list[str]:
    """The member model paths of the ``--model`` arguments `paths`, in order.

    Each argument is a model (a SavedModel version folder, a TF Serving model folder whose
    highest version is used, a ``.tflite`` file) or a folder of models (`_models_under`: e.g.
    ``folds/fold0/lsnet/1``, ``folds/fold1/lsnet/1``, ... one per fold). A path given twice is
    a member twice (loaded once). Raises `MemberError` for a missing path, a file that is no
    model, or a folder without models.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    members = []
    for path in paths:
        if not os.path.exists(path):
            raise MemberError(f"{path}: model not found")
        if os.path.isdir(path):
            if saved_model_version(path) is not None:
                members.append(path)
                continue
            inside = _models_under(path)
            if not inside:
                raise MemberError(f"{path}: no saved_model.pb here nor in a numeric version "
                                  "folder (expected an exported SavedModel or a .tflite file), "
                                  "and no SavedModel or .tflite file in the folders under it")
            members.extend(inside)
        elif path.lower().endswith(".tflite"):
            members.append(path)
        else:
            raise MemberError(f"{path}: unsupported model (expected a SavedModel folder or a "
                              ".tflite file)")
    return members


# ----------------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """What members of one ensemble must share; None where the model does not record it.

    image_size: ``(S, S)`` input size. window: ``(center, width)`` HU. classes: the number of
    output classes (``model.num_classes``). label: what the target is, for a SavedModel whose
    config names a dataset whose ``dataset.json`` is readable here: its ``label_values``
    (``nonzero`` or a list of values); ``synthetic`` for the synthetic default dataset."""

    image_size: tuple | None = None
    window: tuple | None = None
    classes: int | None = None
    label: str | None = None


def _label_of(dataset: str | None) -> str | None:
    if dataset == "":
        return "synthetic"
    try:
        with open(os.path.join(dataset, "dataset.json"), encoding="utf-8") as f:
            values = json.load(f).get("label_values")
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # the dataset is not on this machine: not compared
    return None if values is None else f"label values {values}"


def read_spec(path: str) -> MemberSpec:
    """The `MemberSpec` of a model, read from its files without loading it: a SavedModel's
    ``assets.extra/config.yaml``, a ``.tflite`` file's ``lsnet_tf`` metadata."""
    if os.path.isdir(path):
        config = os.path.join(saved_model_version(path) or path, "assets.extra", "config.yaml")
        try:
            import yaml

            with open(config, encoding="utf-8") as f:
                cfg = yaml.safe_load(f) or {}
        except (OSError, ValueError):
            return MemberSpec()
        data, model = cfg.get("data", {}) or {}, cfg.get("model", {}) or {}
        size = data.get("image_size", 128)
        return MemberSpec(image_size=(int(size), int(size)),
                          window=(float(data.get("window_center", 40.0)),
                                  float(data.get("window_width", 400.0))),
                          classes=int(model.get("num_classes", 1)),
                          label=_label_of(data.get("dataset", "")))
    from lsnet_tf.export.litert import read_metadata  # numpy only: no TensorFlow

    try:
        meta = read_metadata(path)
    except Exception:  # noqa: BLE001 - not a TFLite file: loading it says so
        return MemberSpec()
    size = meta.get("image_size")
    window = ((float(meta["window_center"]), float(meta["window_width"]))
              if "window_center" in meta else None)
    classes = meta.get("num_classes")
    return MemberSpec(image_size=tuple(int(s) for s in size) if size else None, window=window,
                      classes=None if classes is None else int(classes))


def _show(field: str, value) -> str:
    if field == "image_size":
        return " x ".join(str(v) for v in value)
    if field == "window":
        return f"center {value[0]:g}, width {value[1]:g} HU"
    return str(value)


def check_members(paths: Sequence[str], specs: Sequence[MemberSpec] | None = None) -> list:
    """`MemberError` when two members differ in input size, HU window, number of classes or
    label (each compared where both record it), naming both members and both values; returns
    the specs."""
    specs = [read_spec(p) for p in paths] if specs is None else list(specs)
    names = {"image_size": "input size", "window": "HU window", "classes": "number of classes",
             "label": "label"}
    for field, name in names.items():
        known = [(p, getattr(s, field)) for p, s in zip(paths, specs)
                 if getattr(s, field) is not None]
        for path, value in known[1:]:
            first, first_value = known[0]
            if value != first_value:
                raise MemberError(
                    f"ensemble members differ in {name}: {first} has {_show(field, first_value)}"
                    f", {path} has {_show(field, value)}; the members of an ensemble must share "
                    "the input size, HU window and label")
    return specs


def ensemble_fingerprint(member_sha256: Sequence[str], tta: str = "none",
                         disagreement: bool = False) -> str:
    """``model_sha256`` of an ensemble or of mirrored prediction: SHA-256 of the members'
    fingerprints (in order) and the settings that change the outputs (``--tta``,
    ``--disagreement``), so that a batch rerun with other members or settings predicts again."""
    text = json.dumps({"members": list(member_sha256), "tta": tta,
                       "disagreement": bool(disagreement)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------- predicting
def _label_map(mask: np.ndarray) -> np.ndarray:
    """(n, H, W, C) 0/1 -> (n, H, W) uint8: 1 + the last class present, 0 for none."""
    out = np.zeros(mask.shape[:3], np.uint8)
    for c in range(mask.shape[-1]):
        out[mask[..., c] > 0] = c + 1
    return out


class EnsemblePredictor:
    """``predict(hu)`` of several loaded predictors (`lsnet_tf.inference.predictors`' SavedModel
    or TFLite predictors; the same object may appear twice) and mirrors, as one predictor.

    `members`: ``[(path, predictor), ...]``; `tta`: a key of `MIRRORS`. Members run in sequence,
    each on the whole batch and each mirror (LiteRT one slice at a time inside). ``predict``
    returns the serving outputs (``probability`` the mean of the views, ``mask`` > 0.5) with the
    boxes of each member's unmirrored view side by side on the K axis (``box_member`` names the
    member of each entry), and ``view_foreground`` ``(views, n, H, W)`` bool, ``disagreement``
    ``(n, H, W)`` float32 (see the module docstring).
    """

    def __init__(self, members: Sequence, tta: str = "none", batch_size: int = 8,
                 path: str | None = None, fingerprint: str | None = None):
        if tta not in MIRRORS:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, received {tta!r}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.tta = tta
        self.mirrors = MIRRORS[tta]
        self.views = len(self.members) * len(self.mirrors)
        self.batch_size = int(batch_size)
        self.path = path or " + ".join(p for p, _ in self.members)
        formats = sorted({m.format for _, m in self.members})
        self.format = formats[0] if len(formats) == 1 else "+".join(formats)
        windows = [m.window for _, m in self.members if m.window is not None]
        self.window = windows[0] if windows else None
        self.fingerprint = fingerprint

    def predict(self, hu: np.ndarray) -> dict:
        hu = np.asarray(hu, np.float32)
        probs, keep, member_of = [], {k: [] for k in ("boxes", "scores", "keypoints", "valid")}, []
        for index, (_, member) in enumerate(self.members):
            for axes in self.mirrors:
                x = np.ascontiguousarray(np.flip(hu, axes)) if axes else hu
                out = member.predict(x)
                prob = np.asarray(out["probability"], np.float32)
                probs.append(np.flip(prob, axes) if axes else prob)  # (n, H, W, C): same axes
                if not axes:
                    for key in keep:
                        keep[key].append(np.asarray(out[key]))
                    member_of.append(np.full(np.shape(out["valid"])[1], index, np.int32))
        views = np.stack(probs).astype(np.float64)  # (K, n, H, W, C)
        if len(probs) > 2:  # the sum of two is the same in either order; of more, sort first
            views = np.sort(views, axis=0)
        mean = views.sum(0) / len(probs)
        foreground = np.any(views > MASK_THRESHOLD, axis=-1)  # (K, n, H, W)
        return {
            "probability": mean.astype(np.float32),
            "mask": (mean > MASK_THRESHOLD).astype(np.uint8),
            **{k: np.concatenate(v, axis=1) for k, v in keep.items()},
            "box_member": np.concatenate(member_of),
            "view_foreground": foreground,
            "disagreement": views.std(0).max(-1).astype(np.float32),
        }


# ----------------------------------------------------------------------------------- agreement
class Agreement:
    """The per-case agreement of K views, accumulated over batches of slices (`add`) without
    keeping their masks: each view's voxel count and each pair's intersection."""

    def __init__(self, views: int):
        self.views = int(views)
        self.counts = np.zeros(self.views, np.int64)
        self.intersections = np.zeros((self.views, self.views), np.int64)

    def add(self, foreground: np.ndarray) -> None:
        """`foreground`: ``(views, ...)`` bool masks of the same voxels, one per view."""
        flat = np.asarray(foreground, bool).reshape(self.views, -1)
        self.counts += np.count_nonzero(flat, axis=1)
        for i in range(self.views):
            for j in range(i + 1, self.views):
                self.intersections[i, j] += np.count_nonzero(flat[i] & flat[j])

    def pairwise_dice(self) -> list[float]:
        """The Dice of every pair (i < j), in order; 1.0 for two empty masks."""
        out = []
        for i in range(self.views):
            for j in range(i + 1, self.views):
                total = self.counts[i] + self.counts[j]
                out.append(1.0 if total == 0 else 2.0 * self.intersections[i, j] / total)
        return out

    def summary(self, voxel_mm3: float | None, review_below: float = REVIEW_BELOW) -> dict:
        """The agreement fields (see the module docstring); `voxel_mm3` None (slice spacing
        unknown) gives no volumes."""
        dice = self.pairwise_dice()
        mean = float(np.mean(dice)) if dice else None
        volumes = (None if voxel_mm3 is None
                   else [float(c) * float(voxel_mm3) / 1000.0 for c in self.counts])
        return {
            "views": self.views,
            "mean_pairwise_dice": mean,
            "min_pairwise_dice": float(min(dice)) if dice else None,
            "view_volumes_ml": volumes,
            "volume_sd_ml": None if volumes is None else float(np.std(volumes)),
            "volume_range_ml": None if volumes is None else float(max(volumes) - min(volumes)),
            "review_below": float(review_below),
            "review": None if mean is None else bool(mean < review_below),
        }


def case_agreement(masks, voxel_mm3: float | None = 1.0,
                   review_below: float = REVIEW_BELOW) -> dict:
    """`Agreement.summary` of whole-volume masks ``(views, ...)`` (non-zero = target)."""
    masks = np.asarray(masks) != 0
    agreement = Agreement(masks.shape[0])
    agreement.add(masks)
    return agreement.summary(voxel_mm3, review_below)
