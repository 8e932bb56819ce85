"""Several exported SavedModels as one SavedModel for TF Serving (an ensemble in one graph).

``python -m lsnet_tf.export ensemble --model A --model B ... --out DIR`` (`lsnet_tf.export.cli`)
calls `export` here. The members are SavedModels of ``python -m lsnet_tf.export`` (or of
``python -m lsnet_tf.train``), given as ``python -m lsnet_tf.predict --model`` takes them: a
version folder, a TF Serving model folder (its highest version), or a folder of models
(`lsnet_tf.inference.ensemble.find_models`). They must share the input size, HU window, number
of classes and label (`lsnet_tf.inference.ensemble.check_members`: the same `MemberError`, naming
both members and both values, as ``predict``); ``.tflite`` members cannot go into a graph
(LiteRT runs an ensemble in ``predict``, member after member).

The written SavedModel has the signatures every member has (``serving_default``, and
``serving_int16`` where all members have it) with the first member's inputs and outputs: the same
names, dtypes and shapes as one member's (`lsnet_tf.export.saved_model`). Inside, each distinct
member is loaded once and runs its whole path (L-Net, RoI recalibration, S-Net, paste-back) on
the batch, and on its mirrors with `tta` (`lsnet_tf.inference.ensemble.MIRRORS`; a mirrored
view's probability is mirrored back). The outputs are those of ``predict``'s ensemble
(`lsnet_tf.inference.ensemble.EnsemblePredictor`):

- ``probability``: the mean of the K = members x mirrors views' probability maps, taken in
  float64 over the views sorted per pixel (so independent of the members' order), cast to
  float32;
- ``mask``: 1 where that float64 mean > 0.5;
- ``keypoints``, ``scores``, ``boxes``, ``valid``: the first member's, from its unmirrored view.
  Detections cannot be averaged (each member finds its own RoIs) and the K axis of the
  signature holds one model's ``data.max_boxes``; the other members' are not output (``predict
  --model A --model B`` lists every member's). The mask may therefore reach beyond these boxes
  (targets the other members found) or leave a box empty.

One member (or a member given twice, computed once) gives the member's outputs exactly. Beside
the graph, ``assets.extra/config.yaml`` is the first member's (so ``predict --model`` reads the
HU window and `check_members` the spec, as of a single model) and ``assets.extra/ensemble.json``
names the members (path, SHA-256 as ``predict`` fingerprints them), `tta`, the number of views
and where the detections come from.
"""
from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

from lsnet_tf.export import saved_model
from lsnet_tf.inference.ensemble import (MASK_THRESHOLD, MIRRORS, MemberError, check_members,
                                         find_models, saved_model_version)
from lsnet_tf.utils.files import fingerprint

__all__ = ["SIGNATURES", "MANIFEST", "EnsembleModule", "version_folder", "load_members",
           "export", "read_manifest"]

SIGNATURES = ("serving_default", "serving_int16")
MANIFEST = "ensemble.json"


def version_folder(path: str) -> str:
    """The SavedModel version folder of `path` (itself, or its highest numeric version)."""
    version = saved_model_version(path)
    if version is None:
        raise MemberError(f"{path}: no saved_model.pb here nor in a numeric version folder")
    return version


def _spec_text(spec) -> str:
    return f"{spec.dtype.name} {spec.shape}"


def _outputs_of(signature) -> dict:
    return {k: v for k, v in signature.structured_outputs.items()}


def _check_saved_models(members) -> None:
    for member in members:
        if not os.path.isdir(member):
            raise MemberError(f"{member}: a .tflite file cannot be a member of a SavedModel "
                              "ensemble (LiteRT runs an ensemble in python -m lsnet_tf.predict)")


def load_members(members) -> tuple[list, list]:
    """``(loaded, order)``: each distinct member SavedModel loaded once
    (``tf.saved_model.load``), and for each member in `members` the index of its loaded model.

    `MemberError` (naming the member) for a ``.tflite`` member, one that cannot be loaded, one
    without ``serving_default``, and one whose ``serving_default`` differs from the first
    member's in inputs or in the ``probability``/``mask`` outputs (names, dtypes, shapes).
    """
    _check_saved_models(members)
    loaded, order, index = [], [], {}
    for member in members:
        key = os.path.realpath(version_folder(member))
        if key not in index:
            try:
                obj = tf.saved_model.load(key)
            except Exception as e:  # noqa: BLE001 - TF's own error types, one line each
                first = (str(e).strip().splitlines() or [""])[0]
                raise MemberError(f"{member}: the SavedModel cannot be loaded "
                                  f"({type(e).__name__}: {first})") from e
            if "serving_default" not in obj.signatures:
                raise MemberError(f"{member}: no serving_default signature (signatures: "
                                  f"{', '.join(obj.signatures) or 'none'})")
            index[key] = len(loaded)
            loaded.append(obj)
        order.append(index[key])
    first = loaded[0].signatures["serving_default"]
    want_in = first.structured_input_signature[1]
    want_out = _outputs_of(first)
    missing = set(saved_model.OUTPUT_NAMES) - set(want_out)
    if missing:
        raise MemberError(f"{members[0]}: serving_default returns {sorted(want_out)}, not "
                          f"{', '.join(saved_model.OUTPUT_NAMES)}: not a model of "
                          "python -m lsnet_tf.export")
    for member, i in zip(members, order):
        signature = loaded[i].signatures["serving_default"]
        got_in, got_out = signature.structured_input_signature[1], _outputs_of(signature)
        for what, want, got in (("input hu", want_in.get("hu"), got_in.get("hu")),
                                ("output probability", want_out["probability"],
                                 got_out.get("probability")),
                                ("output mask", want_out["mask"], got_out.get("mask"))):
            if got is None or set(got_in) != set(want_in) or (
                    got.dtype != want.dtype or not got.shape.is_compatible_with(want.shape)):
                raise MemberError(
                    f"ensemble members differ in their serving signature: {members[0]} has "
                    f"{what} {_spec_text(want)}, {member} has "
                    f"{'none' if got is None else _spec_text(got)}")
    return loaded, order


class EnsembleModule(tf.Module):
    """The ensemble's serving graph: `loaded` member SavedModels, `order` (the index into
    `loaded` of each member, repeated for a member given twice) and the mirrors of `tta`."""

    def __init__(self, loaded, order, tta: str = "none"):
        super().__init__()
        if tta not in MIRRORS:
            raise ValueError(f"tta must be one of {', '.join(MIRRORS)}, received {tta!r}")
        self.members = list(loaded)  # tracked: their variables and functions are saved
        self.order = [int(i) for i in order]
        self.tta = tta
        self.mirrors = MIRRORS[tta]
        self.views = len(self.order) * len(self.mirrors)

    def run(self, hu, signature: str) -> dict:
        """The ensemble's outputs for `hu`, each member through its signature `signature`."""
        # Reject a wrong rank before any mirror (a reverse of a rank-2 tensor would fail first,
        # with another message): the check and message of a single model's graph.
        given = tf.shape(hu)
        check = tf.debugging.Assert(tf.equal(tf.size(given), 3), [
            saved_model.RANK_MESSAGE, "; received shape", given], summarize=16)
        with tf.control_dependencies([check]):
            hu = tf.identity(hu)
        first_spec = _outputs_of(self.members[self.order[0]].signatures[signature])
        distinct, first = {}, None
        for i in sorted(set(self.order)):
            function = self.members[i].signatures[signature]
            views = []
            for axes in self.mirrors:
                x = tf.reverse(hu, list(axes)) if axes else hu
                out = function(hu=x)
                prob = out["probability"]
                views.append(tf.reverse(prob, list(axes)) if axes else prob)
                if i == self.order[0] and not axes:
                    first = out
            distinct[i] = views
        views = [v for i in self.order for v in distinct[i]]
        stacked = tf.cast(tf.stack(views), tf.float64)  # (K, n, H, W, C)
        if len(views) > 2:  # the sum of two is the same in either order; of more, sort first
            stacked = tf.sort(stacked, axis=0)
        total = stacked[0]
        for k in range(1, len(views)):  # in order, as numpy sums over the first axis
            total = total + stacked[k]
        mean = total / float(len(views))
        outputs = dict(first)
        outputs["probability"] = tf.cast(mean, tf.float32)
        outputs["mask"] = tf.cast(mean > MASK_THRESHOLD, first_spec["mask"].dtype)
        for name in ("probability", "mask"):
            outputs[name] = tf.ensure_shape(outputs[name], first_spec[name].shape)
        return {name: tf.identity(outputs[name], name=name) for name in first_spec}

    def _serving(self, signature: str):
        def serve(hu):
            return self.run(hu, signature)

        return serve

    def concrete_signatures(self, names=SIGNATURES) -> dict:
        """``{name: concrete function}``: those of `names` (default `SIGNATURES`) that every
        member has, each with the first member's input spec."""
        out = {}
        for name in names:
            if not all(name in self.members[i].signatures for i in self.order):
                continue
            spec = self.members[self.order[0]].signatures[name].structured_input_signature[1]
            out[name] = tf.function(self._serving(name), input_signature=[
                spec["hu"]]).get_concrete_function()
        return out


class _Config:
    """The first member's ``assets.extra/config.yaml``, copied as it is (what
    `saved_model.write_atomically` saves beside the graph)."""

    def __init__(self, member: str):
        self.source = os.path.join(version_folder(member), "assets.extra", "config.yaml")

    def save(self, path: str) -> None:
        if os.path.isfile(self.source):
            shutil.copyfile(self.source, path)


def _check_target(path: str, members) -> None:
    target = os.path.realpath(path)
    for member in members:
        folder = os.path.realpath(version_folder(member))
        if (target == folder or target.startswith(folder + os.sep)
                or folder.startswith(target + os.sep)):
            raise ValueError(f"{path}: the ensemble cannot be written over or inside its member "
                             f"{member}")


def export(models, path: str, tta: str = "none") -> str:
    """Write the ensemble of the SavedModels `models` to the version folder `path`; returns it.

    `models`: paths as ``predict --model`` takes them (see the module docstring; a path given
    twice is a member twice). `tta`: ``none``, ``flip`` or ``flip2``, mirrored views inside the
    graph. Written atomically, replacing `path` (`saved_model.write_atomically`).

    Raises `MemberError` (no model, a ``.tflite`` or unloadable member, members that differ) and
    `ValueError` (an unknown `tta`; `path` over or inside a member).
    """
    if tta not in MIRRORS:
        raise ValueError(f"tta must be one of {', '.join(MIRRORS)}, received {tta!r}")
    members = find_models(models)
    _check_saved_models(members)
    check_members(members)
    _check_target(path, members)
    loaded, order = load_members(members)
    module = EnsembleModule(loaded, order, tta)
    signatures = module.concrete_signatures()
    saved_model.track_variables(module, signatures.values())
    prints = {}
    manifest = {
        "members": [{"path": os.path.abspath(m),
                     "sha256": prints.setdefault(os.path.realpath(m), fingerprint(m))}
                    for m in members],
        "tta": tta, "views": module.views, "signatures": sorted(signatures),
        "averaged": ["probability", "mask"],
        "detections_from": os.path.abspath(members[0]),
    }

    def write(tmp: str) -> None:
        tf.saved_model.save(module, tmp, signatures=signatures)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, "assets.extra", MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")

    return saved_model.write_atomically(path, _Config(members[0]), write)


def read_manifest(path: str) -> dict:
    """The ``assets.extra/ensemble.json`` of an ensemble SavedModel `path` (see the module
    docstring); `OSError` for a SavedModel that is no ensemble of this module."""
    with open(os.path.join(version_folder(path), "assets.extra", MANIFEST), encoding="utf-8") as f:
        return json.load(f)
