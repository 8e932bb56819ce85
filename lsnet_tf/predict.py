"""Predict a whole volume: ``python -m lsnet_tf.predict --model PATH --input INPUT --out DIR``.

``--model``: an exported SavedModel (a version folder, or a TF Serving model folder whose highest
numeric version is taken; TF-TRT SavedModels too) or a ``.tflite`` file of
``python -m lsnet_tf.export``. Both give the same outputs: slices go in as raw HU at their own
size, and the TFLite path resizes them to the model's input size and back exactly as the
SavedModel graph does (``lsnet_tf.export.saved_model.preprocess``/``postprocess``).

Ensembles and mirroring (`lsnet_tf.ensemble`): ``--model`` may be repeated, or name a folder
of models (e.g. one exported model per fold, found recursively); the members (SavedModels and
``.tflite`` files alike, each loaded once, run in sequence) must share input size, HU window
and label, else the command stops before any case with an error naming both members and both
values. ``--tta flip`` also runs each slice mirrored left-right through every member (``flip2``:
left-right, up-down and both), mirrored back. Each member finds and segments its own RoIs; only
the probability maps after paste-back are averaged over the views (members x mirrors) and the
mean thresholded at 0.5; the boxes of each member are listed per member. The summary then also
holds the members, the mirroring, and the case's agreement: ``mean_pairwise_dice`` (the mean
Dice between the views' masks), ``volume_sd_ml``/``volume_range_ml`` (the spread of their
volumes) and ``review`` (mean pairwise Dice below ``--review-below``, default 0.8,
provisional); ``--disagreement`` writes ``disagreement.nii.gz``, per voxel the standard
deviation of the views' probabilities. With one model and no mirroring none of these appear.

``--input``:

- a DICOM folder: one CT series (``lsnet_tf.data.dicom.read_series``: slices sorted by position,
  HU from the rescale tags, canonical orientation), told by DICOM files directly in the folder;
  ``--series-uid UID`` picks one of several series in it (the error for such a folder lists
  them with their descriptions and slice counts); files among the slices that are not DICOM
  at all (zero bytes, a stray note) are left out with a warning naming them;
- a NIfTI file (``.nii``/``.nii.gz``): a 3-D volume, brought to the canonical orientation for
  inference (``lsnet_tf.data.volumes.canonicalize``) and the mask brought back to the file's own
  axis order;
- a ``.npy`` file: raw HU, one slice ``(H, W)`` or a volume ``(slices, H, W)`` in the canonical
  layout (no geometry: ``--spacing``);
- a ``.png`` file: one slice. 8-bit gray is taken as a display image in the model's HU window
  (value v is ``center - width / 2 + v / 255 * width`` HU, which the model's window maps back to
  v / 255); 16-bit gray as HU + 32768 (the DeepLesion convention). Colour PNGs must be gray.
- many cases (`lsnet_tf.batch_predict`): a folder of cases (NIfTI files and DICOM series
  folders, found recursively: any folder without DICOM files directly in it) or a ``.txt``/
  ``.lst`` file listing inputs one a line. The model loads once; each case is written to
  ``--out/<case>/`` as below (``--overwrite`` redoes cases already complete, which are skipped
  otherwise), with ``--out/cases.csv`` and ``cases.json`` summing them up; a broken case is
  reported and the others go on (exit status 1 when a case failed). ``--runner NAME`` with
  ``--beam-options "..."`` runs them as an Apache Beam pipeline.

Canonical orientation (as in training): slice 0 the lowest z, row 0 the most anterior, column 0
the patient's right (``lsnet_tf.data.volumes``).

Outputs in ``--out``:

- ``mask.nii.gz``: uint8 mask (1 = target; with several classes, 1 + the class index, later
  classes on top). Its geometry is the input's: for NIfTI input the same shape, axis order and
  affine (sform/qform and their codes) as the input file; for DICOM input the canonical
  (slice, row, col) array with the affine built from the series' headers
  (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, slice positions), so it overlays
  the CT in any viewer; for NPY/PNG input the canonical layout at the origin with ``--spacing``.
- ``overlays/slice_NNNN.png``: each slice with findings (mask or box), windowed, the mask tinted
  green and the boxes outlined in red (NNNN = canonical slice index).
- ``summary.json``: input and model, shape, spacing (mm) and its source, voxel volume, mask voxel
  count and volume in mL (voxels x voxel volume / 1000), the slice range of the mask, and per slice
  with findings its voxels, area and boxes (xyxy pixels of the canonical slice, score, keypoint;
  the DICOM file for DICOM input).
- ``mask.seg.dcm`` (DICOM input, unless ``--no-dicom-seg``): the mask as a DICOM Segmentation for
  PACS and viewers (OHIF, 3D Slicer), one frame per CT slice with a finding, each referencing its
  slice by SOP Instance UID (`lsnet_tf.dicom_seg`); an empty mask writes none and says so.
- ``disagreement.nii.gz`` (``--disagreement``, an ensemble or ``--tta``): float32 in the mask's
  geometry, per voxel the standard deviation of the views' probabilities (0 to 0.5).

Sizes: a slice may have any size from 1 x 1 pixels (the model resizes it to its input size and
the outputs back). Larger than ``lsnet_tf.data.volumes.MAX_SLICE_PIXELS`` (8192 x 8192) per
slice or ``MAX_VOLUME_VOXELS`` (2**31) in all, or with an axis of length 0, the input is refused
from its header (DICOM tags, NIfTI header, .npy header, PNG size) before any voxel is read. Each
call to the model gets at most ``MAX_BATCH_PIXELS`` pixels (fewer slices than ``--batch-size``
for large slices, at least one).

Refused inputs (exit status 1, the message names the file): a missing path or unknown
extension; an array that is not 2-D or 3-D, or a 3-D ``.npy`` whose last axis has 1, 3 or 4
entries with both others >= 8 (an ``(H, W, C)`` image, not ``(slices, H, W)``); values that are
not real numbers, or NaN/infinite values (``.npy``, NIfTI); a colour or 1-bit PNG; the DICOM
and NIfTI readers' own errors (`lsnet_tf.data.volumes.PrepareError`).

Refused before the model loads: an ``--out`` that is an existing file, or that is (or lies
inside) the input folder. A model that cannot be loaded (missing, a damaged or truncated
SavedModel, one without a ``serving_default`` signature or whose signature is not
``hu -> mask, boxes, scores, keypoints, valid``, an unreadable ``.tflite``) is one line naming
its path and the fault; so are members of an ensemble that differ (input size, HU window,
classes, label: both members named with both values) and a folder without models. A file that cannot be written is named with what it is.

Exit status: 0 on success, 1 when the input or the model cannot be used (the message says why).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Callable

import numpy as np

from lsnet_tf import batch_predict, beam, dicom_seg, ensemble
from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.drawing import draw_boxes, overlay
from lsnet_tf.export.litert import TFLitePredictor  # LiteRT and numpy: no TensorFlow
from lsnet_tf.files import describe_outputs, fingerprint, write_json, writing

__all__ = ["PredictError", "Volume", "read_input", "load_predictor", "load_ensemble",
           "SavedModelPredictor", "TFLitePredictor", "EnsemblePredictor", "predict_volume",
           "predict_case", "run", "run_many", "main"]

MASK_THRESHOLD = 0.5
# Most pixels (slices x H x W) sent to the model in one call: 128 MiB of float32 input.
MAX_BATCH_PIXELS = 2 ** 25
DEFAULT_WINDOW = (40.0, 400.0)
SEG_FILE = "mask.seg.dcm"
DISAGREEMENT_FILE = "disagreement.nii.gz"
EnsemblePredictor = ensemble.EnsemblePredictor
INPUT_KINDS = "a DICOM folder, a NIfTI file (.nii, .nii.gz), a .npy array or a .png image"
# What an exported model's serving_default returns (`predict_volume` reads them all).
OUTPUTS = ("mask", "boxes", "scores", "keypoints", "valid")


class PredictError(ValueError):
    """The input or the model cannot be used; the message names the path and the reason."""


# ----------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class Volume:
    """An input volume ready for inference.

    hu: (slices, rows, cols) float32 raw HU in the canonical orientation (NPY/PNG: as given).
    spacing: (row, col, slice) mm. spacing_source: where the spacing comes from.
    kind: "dicom", "nifti", "npy" or "png". files: per-slice source files (axial DICOM), else [].
    source_files: DICOM: all the series' slice files, any orientation (for the DICOM SEG).
    info: more about the source for the summary (DICOM: series UID, skipped files).
    write_mask: ``write_mask(array, path, dtype=np.uint8)`` writes a (slices, rows, cols) array
      (the mask; the disagreement map as float32) to a NIfTI path in the input's geometry.
    affine: the canonical voxel->LPS affine of `hu` (DICOM/NIfTI), else None.
    """

    hu: np.ndarray
    spacing: tuple
    spacing_source: str
    kind: str
    write_mask: Callable[[np.ndarray, str], None]
    affine: np.ndarray | None = None
    files: list = dataclasses.field(default_factory=list)
    source_files: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)


def _canonical_affine(spacing) -> np.ndarray:
    """Voxel->LPS affine of a canonical (slice, row, col) array at the origin."""
    dr, dc, ds = (float(s) for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, dc], [0.0, dr, 0.0], [ds, 0.0, 0.0]]
    return affine


def _write_canonical(affine):
    def write(mask, path, dtype=np.uint8):
        nifti.write_volume(path, mask.astype(dtype), affine)
    return write


def _read_dicom(folder: str, series_uid=None) -> Volume:
    vol = dicom.read_series(folder, series_uid=series_uid)
    # Files map to canonical slices only for an axial series (a re-cut one has none per slice).
    axial = int(np.argmax(np.abs(dicom.slice_normal(vol.source_orientation)))) == 2
    return Volume(hu=vol.hu.astype(np.float32), spacing=tuple(vol.spacing), spacing_source="dicom",
                  kind="dicom", write_mask=_write_canonical(vol.affine), affine=vol.affine,
                  files=list(vol.files) if axial else [], source_files=list(vol.files),
                  notes=list(vol.notes) + _not_dicom_note(vol.skipped_files),
                  info={"series_uid": vol.series_uid,
                        "skipped_files": [list(f) for f in vol.skipped_files]})


def _not_dicom_note(skipped) -> list:
    """A note naming the files of a DICOM folder that were left out as not DICOM at all."""
    files = [path for path, reason in skipped if reason.startswith(dicom.NOT_DICOM)]
    return [f"left out {len(files)} file(s) that are not DICOM: {', '.join(files)}"] if files \
        else []


def _read_nifti(path: str) -> Volume:
    import nibabel as nib

    img = nifti.load(path)
    data = nifti.read_image_array(img, path)
    stored_shape = data.shape
    affine = nifti.affine_lps(img, path)
    perm, flips = volumes.canonical_axes(affine, path)
    hu, affine_c = volumes.canonicalize(data.astype(np.float32), affine, path)

    def write(mask, out_path, dtype=np.uint8):
        # Undo canonicalize: the flips (on canonical axes), then the axis permutation.
        stored = mask
        for axis, flip in enumerate(flips):
            if flip:
                stored = np.flip(stored, axis=axis)
        stored = np.ascontiguousarray(np.transpose(stored, np.argsort(perm))).astype(dtype)
        assert stored.shape == stored_shape[:3], (stored.shape, stored_shape)
        header = img.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
        out = nib.Nifti1Image(stored, img.affine, header)
        sform, sform_code = img.header.get_sform(coded=True)
        qform, qform_code = img.header.get_qform(coded=True)
        out.set_sform(sform if sform_code else img.affine, code=int(sform_code or 0))
        out.set_qform(qform if qform_code else img.affine, code=int(qform_code or 0))
        nib.save(out, out_path)

    return Volume(hu=hu, spacing=volumes.spacing_of(affine_c), spacing_source="nifti",
                  kind="nifti", write_mask=write, affine=affine_c)


def _check_shape(shape, path: str) -> tuple:
    """The (slices, H, W) shape of an input array of `shape`, checked before its values are read:
    rank 2 or 3, not an (H, W, C) image, not empty, within the size limits."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise PredictError(f"{path}: expected a 2-D slice (H, W) or a 3-D volume (slices, H, W), "
                           f"got shape {shape}")
    if shape[-1] in (1, 3, 4) and min(shape[:2]) >= 8:
        raise PredictError(f"{path}: shape {shape} looks like an (H, W, C) image with "
                           f"{shape[-1]} channel(s); save one gray slice as (H, W) or a volume as "
                           "(slices, H, W)")
    if min(shape) < 1:
        raise PredictError(f"{path}: empty array of shape {shape}")
    try:
        volumes.check_volume_size(shape, path)
    except volumes.VolumeSizeError as e:
        raise PredictError(str(e)) from e
    return shape


def _as_slices(array: np.ndarray, path: str) -> np.ndarray:
    array = np.reshape(array, _check_shape(array.shape, path))
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise PredictError(f"{path}: values of type {array.dtype} are not real numbers")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise PredictError(f"{path}: holds NaN or infinite values")
    return array


def _npy_shape(path: str) -> tuple:
    """The shape stored in a .npy header (the data is not read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)[0]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)[0]
    return np.load(path, mmap_mode="r", allow_pickle=False).shape


def _read_npy(path: str, spacing, source) -> Volume:
    try:
        shape = _npy_shape(path)
    except Exception as e:
        raise PredictError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    _check_shape(shape, path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:
        raise PredictError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    hu = _as_slices(array, path)
    return Volume(hu=hu, spacing=tuple(spacing), spacing_source=source, kind="npy",
                  write_mask=_write_canonical(_canonical_affine(spacing)))


def _read_png(path: str, spacing, source, window) -> Volume:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            _check_shape((im.height, im.width), path)
            pixels = np.array(im.convert("RGBA") if mode in ("P", "PA") else im)
    except PredictError:
        raise
    except Exception as e:
        raise PredictError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from e
    if pixels.ndim == 3:  # LA, RGB, RGBA (palette images were expanded to RGBA)
        channels = pixels[..., :1] if pixels.shape[-1] == 2 else pixels[..., :3]
        if not all(np.array_equal(channels[..., 0], channels[..., c])
                   for c in range(1, channels.shape[-1])):
            raise PredictError(f"{path}: colour PNG (mode {mode}); a CT slice must be gray")
        pixels = channels[..., 0]
    notes = []
    if pixels.dtype == np.uint8:
        center, width = window
        hu = center - width / 2.0 + pixels.astype(np.float32) / 255.0 * width
        notes.append(f"8-bit PNG read as a display image in the window (center {center}, width "
                     f"{width}) HU")
    elif pixels.dtype in (np.uint16, np.int32) and mode.startswith("I"):
        hu = pixels.astype(np.float32) - 32768.0
        notes.append("16-bit PNG read as HU + 32768")
    else:
        raise PredictError(f"{path}: PNG of mode {mode} ({pixels.dtype}); expected 8- or "
                           "16-bit gray")
    return Volume(hu=_as_slices(hu, path), spacing=tuple(spacing), spacing_source=source,
                  kind="png", write_mask=_write_canonical(_canonical_affine(spacing)), notes=notes)


def read_input(path: str, spacing=None, window=DEFAULT_WINDOW, series_uid=None) -> Volume:
    """Read `path` (see the module docstring) into a `Volume`.

    `spacing` ``(row, col, slice)`` mm applies to NPY/PNG input (default 1 mm, noted as assumed).
    `window` ``(center, width)`` reads 8-bit PNGs. `series_uid` picks a series of a DICOM folder
    that holds several.

    Raises:
      PredictError: a missing path, an unsupported extension, an array that is not 2-D or 3-D
        or looks like an (H, W, C) image, an empty or too large array, values that are not finite
        real numbers, unreadable contents. DICOM and NIfTI readers raise their own `PrepareError`s
        (``DicomSeriesError``, ``NiftiError``, ``GeometryError``, ``VolumeSizeError``: also
        `ValueError`s).
    """
    if not os.path.exists(path):
        raise PredictError(f"{path}: input not found")
    if spacing is None:
        spacing, source = (1.0, 1.0, 1.0), "assumed 1 mm (no geometry in the input; --spacing)"
    else:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise PredictError(f"spacing must be three positive mm values (row, col, slice), "
                               f"got {spacing}")
        source = "--spacing"
    if os.path.isdir(path):
        return _read_dicom(path, series_uid)
    if series_uid:
        raise PredictError(f"{path}: --series-uid picks a series of a DICOM folder; this input "
                           "is a file")
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if lower.endswith(".npy"):
        return _read_npy(path, spacing, source)
    if lower.endswith(".png"):
        return _read_png(path, spacing, source, window)
    raise PredictError(f"{path}: unsupported input (expected {INPUT_KINDS})")


# ----------------------------------------------------------------------------------- models
def _resolve_saved_model(path: str) -> str:
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = [d for d in os.listdir(path) if d.isdigit()
                and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
    if not versions:
        raise PredictError(f"{path}: no saved_model.pb here nor in a numeric version folder "
                           "(expected an exported SavedModel or a .tflite file)")
    return os.path.join(path, max(versions, key=int))


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
    hashed the model already, else ``lsnet_tf.files.fingerprint(path)``."""
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
    `lsnet_tf.ensemble.find_models`), checked to share input size, HU window and label, before
    any model loads. `PredictError` names the fault: a missing path, a file or folder that is no
    model, members that differ (both named, with both values), or `disagreement` asked of one
    model without mirroring (one view: nothing to disagree)."""
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
    """Whether `members` with `tta` make more than one view (`EnsemblePredictor`)."""
    return len(members) > 1 or tta != "none"


def member_fingerprints(members) -> list[str]:
    """`lsnet_tf.files.fingerprint` of each member (a path given twice is hashed once)."""
    done, out = {}, []
    for member in members:
        key = os.path.realpath(member)
        if key not in done:
            done[key] = fingerprint(member)
        out.append(done[key])
    return out


def load_ensemble(members, batch_size: int = 8, tta: str = "none", disagreement: bool = False,
                  model_sha256: str | None = None, member_sha256=None, path: str | None = None):
    """An `EnsemblePredictor` of the member models `members` (`resolve_models`) with the
    mirrors of `tta`: each distinct member is loaded once (`load_predictor`; a path given twice
    is one predictor used twice). ``fingerprint`` (summary.json's ``model_sha256``) is
    `model_sha256`, else `lsnet_tf.ensemble.ensemble_fingerprint` of the members' fingerprints
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
    return EnsemblePredictor(pairs, tta=tta, batch_size=batch_size, path=path, fingerprint=sha)


def _load(members, batch_size: int = 8, tta: str = "none", disagreement: bool = False,
          model_sha256: str | None = None, member_sha256=None, path: str | None = None):
    """`load_predictor` for one model without mirroring, else `load_ensemble`."""
    if not is_ensemble(members, tta):
        return load_predictor(members[0], batch_size, model_sha256=model_sha256)
    return load_ensemble(members, batch_size, tta=tta, disagreement=disagreement,
                         model_sha256=model_sha256, member_sha256=member_sha256, path=path)


# ----------------------------------------------------------------------------------- running
def progress_bar(done: int, total: int, stream=None, width: int = 30, label: str = "slices"):
    """Draw ``[#####.....] done/total`` on one line of `stream` (stderr by default)."""
    stream = stream or sys.stderr
    filled = int(round(width * done / max(total, 1)))
    end = "\n" if done >= total else ""
    bar = "#" * filled + "." * (width - filled)
    stream.write(f"\rpredicting [{bar}] {done}/{total} {label}{end}")
    stream.flush()


def _label_map(mask: np.ndarray) -> np.ndarray:
    """(n, H, W, C) 0/1 -> (n, H, W) uint8: 1 + the last class present, 0 for none."""
    out = np.zeros(mask.shape[:3], np.uint8)
    for c in range(mask.shape[-1]):
        out[mask[..., c] > 0] = c + 1
    return out


def predict_volume(predictor, hu: np.ndarray, progress: Callable | None = progress_bar,
                   disagreement: bool = False) -> dict:
    """Run `predictor` over the slices of `hu` ``(n, H, W)`` in batches.

    A call gets ``predictor.batch_size`` slices, or fewer so that it holds at most
    `MAX_BATCH_PIXELS` pixels (at least one slice).

    Returns ``{"mask": (n, H, W) uint8 label map, "boxes": (n, K, 4), "scores": (n, K),
    "keypoints": (n, K, 2), "valid": (n, K)}``. For an `EnsemblePredictor` (more than one
    view) also ``"agreement"`` (`lsnet_tf.ensemble.Agreement` of the case), ``"box_member"``
    (the member of each of the K box entries) and ``"disagreement"`` (``(n, H, W)`` float32
    map when `disagreement`, else None).
    """
    n = hu.shape[0]
    per_slice = max(1, int(hu.shape[1]) * int(hu.shape[2]))
    step = max(1, min(int(predictor.batch_size), MAX_BATCH_PIXELS // per_slice))
    masks, rest = [], {"boxes": [], "scores": [], "keypoints": [], "valid": []}
    views = int(getattr(predictor, "views", 1))
    agreement = ensemble.Agreement(views) if views > 1 else None
    maps, box_member = [], None
    if progress:
        progress(0, n)
    for start in range(0, n, step):
        out = predictor.predict(hu[start:start + step])
        masks.append(_label_map(out["mask"]))
        for key in rest:
            rest[key].append(out[key])
        if agreement is not None:
            agreement.add(out["view_foreground"])
            box_member = out["box_member"]
            if disagreement:
                maps.append(out["disagreement"])
        if progress:
            progress(min(start + step, n), n)
    result = {"mask": np.concatenate(masks, 0),
              **{k: np.concatenate(v, 0) for k, v in rest.items()}}
    if agreement is not None:
        result.update(agreement=agreement, box_member=box_member,
                      disagreement=np.concatenate(maps, 0) if disagreement else None)
    return result


def _display(hu: np.ndarray, window) -> np.ndarray:
    center, width = window
    return np.clip((hu - (center - width / 2.0)) / width, 0.0, 1.0)


def _save_overlay(path: str, hu: np.ndarray, mask: np.ndarray, boxes, valid, window) -> None:
    from PIL import Image

    image = _display(hu, window)
    rgb = overlay(image, (mask > 0).astype(np.float32))
    rgb = np.where(draw_boxes(np.zeros_like(image), boxes, valid).sum(-1, keepdims=True) > 0,
                   np.array([1.0, 0.2, 0.2]), rgb)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)


def summarize(volume: Volume, pred: dict, extra: dict | None = None) -> dict:
    """The JSON summary of a prediction (see the module docstring)."""
    mask = pred["mask"]
    dr, dc, ds = (float(s) for s in volume.spacing)
    voxel_mm3 = dr * dc * ds
    count = int(np.count_nonzero(mask))
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    with_mask = np.flatnonzero(per_slice)
    notes = list(volume.notes)
    if ds <= 0:
        notes.append("slice spacing unknown (one slice without SpacingBetweenSlices/"
                     "SliceThickness): no volume in mL")
    slices = []
    box_member = pred.get("box_member")
    for k in range(mask.shape[0]):
        valid = pred["valid"][k].astype(bool)
        if not per_slice[k] and not valid.any():
            continue
        entry = {
            "index": int(k),
            "mask_voxels": int(per_slice[k]),
            "area_mm2": float(per_slice[k] * dr * dc),
            "boxes": [{"box": [round(float(v), 3) for v in pred["boxes"][k, j]],
                       "score": round(float(pred["scores"][k, j]), 6),
                       "keypoint": [round(float(v), 3) for v in pred["keypoints"][k, j]],
                       **({} if box_member is None else {"member": int(box_member[j])})}
                      for j in np.flatnonzero(valid)],
        }
        if volume.files:
            entry["file"] = volume.files[k]
        slices.append(entry)
    summary = {
        "input_format": volume.kind,
        "shape": [int(s) for s in mask.shape],
        "orientation": (volumes.CANONICAL_ORIENTATION if volume.kind in ("dicom", "nifti")
                        else "as given: (slice, row, col)"),
        "spacing_mm": {"row": dr, "col": dc, "slice": ds},
        "spacing_source": volume.spacing_source,
        "voxel_volume_mm3": voxel_mm3,
        "mask_voxels": count,
        "volume_ml": count * voxel_mm3 / 1000.0 if ds > 0 else None,
        "slice_range": [int(with_mask[0]), int(with_mask[-1])] if with_mask.size else None,
        "slices_with_mask": int(with_mask.size),
        "slices_with_findings": len(slices),
        "mask_threshold": MASK_THRESHOLD,
        "slices": slices,
        "notes": notes,
        **volume.info,
    }
    summary.update(extra or {})
    return summary


def predict_case(predictor, input_path: str, out_dir: str, spacing=None, overlays: bool = True,
                 progress: Callable | None = progress_bar, log=print, t0: float | None = None,
                 shown_as: str | None = None, dicom_seg_file: bool = True,
                 series_uid=None, disagreement: bool = False,
                 review_below: float = ensemble.REVIEW_BELOW) -> dict:
    """Predict `input_path` with a loaded `predictor` into `out_dir`; returns the summary dict.

    With an `EnsemblePredictor` (more than one view: `lsnet_tf.ensemble`) the summary also
    holds ``members`` (path, format, sha256 of each), ``tta``, and the agreement fields of
    `lsnet_tf.ensemble.Agreement.summary` (``review`` against `review_below`); `disagreement`
    writes ``disagreement.nii.gz`` (float32, the input's geometry) beside the mask.

    `dicom_seg_file`: for a DICOM series, also write ``mask.seg.dcm`` (`lsnet_tf.dicom_seg`), a
    DICOM Segmentation of the mask referencing the CT slices (none when the mask is empty).

    `t0`: the time the summary's ``seconds`` count from (default: now). `shown_as`: the folder
    named in the log line (default `out_dir`; the batch writes into a temporary folder).
    `series_uid`: the series to read from a DICOM folder that holds several.

    The summary's ``outputs`` maps each file written (relative to `out_dir`) to its ``bytes``
    and ``sha256``: a later batch run skips the case only while they are unchanged. A file that
    cannot be written raises `lsnet_tf.files.WriteError` naming it and what it is.
    """
    t0 = time.time() if t0 is None else t0
    window = predictor.window or DEFAULT_WINDOW
    volume = read_input(input_path, spacing=spacing, window=window, series_uid=series_uid)
    log(f"{input_path}: {volume.kind}, {volume.hu.shape[0]} slices of {volume.hu.shape[1]} x "
        f"{volume.hu.shape[2]}, spacing {tuple(round(s, 4) for s in volume.spacing)} mm "
        f"({volume.spacing_source})")
    for note in _not_dicom_note(volume.info.get("skipped_files", [])):
        print(f"warning: {input_path}: {note}", file=sys.stderr)
    views = int(getattr(predictor, "views", 1))
    if disagreement and views < 2:
        raise PredictError("a disagreement map needs several models or --tta (one view here)")
    pred = predict_volume(predictor, volume.hu, progress, disagreement=disagreement)
    with writing("the output folder", out_dir):
        os.makedirs(out_dir, exist_ok=True)
    mask_path = os.path.join(out_dir, "mask.nii.gz")
    with writing("the mask", mask_path):
        volume.write_mask(pred["mask"], mask_path)
    agreement = {}
    if views > 1:
        spacing = [float(v) for v in volume.spacing]
        agreement = {
            "members": [{"model": os.path.abspath(member.path), "format": member.format,
                         "sha256": getattr(member, "fingerprint", None)}
                        for _, member in predictor.members],
            "tta": predictor.tta,
            **pred["agreement"].summary(float(np.prod(spacing)) if spacing[2] > 0 else None,
                                        review_below),
            "disagreement_file": None,
        }
        if disagreement:
            path = os.path.join(out_dir, DISAGREEMENT_FILE)
            with writing("the disagreement map", path):
                volume.write_mask(pred["disagreement"], path, dtype=np.float32)
            agreement["disagreement_file"] = DISAGREEMENT_FILE
    seg_file = None
    if volume.kind == "dicom" and dicom_seg_file:
        with writing("the DICOM SEG", os.path.join(out_dir, SEG_FILE)):
            seg_path = dicom_seg.write_dicom_seg(pred["mask"], volume.source_files,
                                                 os.path.join(out_dir, SEG_FILE))
        if seg_path is None:
            log("empty mask: no DICOM SEG written")
        else:
            seg_file = os.path.basename(seg_path)
    summary = summarize(volume, pred, {
        "input": os.path.abspath(input_path),
        "model": os.path.abspath(predictor.path),
        "model_format": predictor.format,
        "model_sha256": getattr(predictor, "fingerprint", None),
        "mask_file": os.path.basename(mask_path),
        "dicom_seg_file": seg_file,
        **agreement,
    })
    written = []
    if overlays:
        folder = os.path.join(out_dir, "overlays")
        with writing("the overlays folder", folder):
            os.makedirs(folder, exist_ok=True)
        for entry in summary["slices"]:
            k = entry["index"]
            name = f"slice_{k:04d}.png"
            with writing("an overlay image", os.path.join(folder, name)):
                _save_overlay(os.path.join(folder, name), volume.hu[k], pred["mask"][k],
                              pred["boxes"][k], pred["valid"][k].astype(bool), window)
            written.append(os.path.join("overlays", name))
    summary["overlays"] = written
    summary["outputs"] = describe_outputs(out_dir, [os.path.basename(mask_path)]
                                          + ([seg_file] if seg_file else [])
                                          + ([DISAGREEMENT_FILE] if agreement.get(
                                              "disagreement_file") else [])
                                          + [p.replace(os.sep, "/") for p in written])
    summary["seconds"] = round(time.time() - t0, 2)
    with writing("the summary", os.path.join(out_dir, "summary.json")):
        write_json(os.path.join(out_dir, "summary.json"), summary)
    volume_text = (f"{summary['volume_ml']:.3f} mL" if summary["volume_ml"] is not None
                   else "volume unknown")
    log(f"mask: {summary['mask_voxels']} voxels, {volume_text}, slices "
        f"{summary['slice_range']}; {len(summary['slices'])} slices with findings -> "
        f"{shown_as or out_dir}")
    if agreement:
        sd = agreement["volume_sd_ml"]
        log(f"agreement of {agreement['views']} views: mean pairwise Dice "
            f"{agreement['mean_pairwise_dice']:.4f}"
            + (f", volume sd {sd:.3f} mL, range {agreement['volume_range_ml']:.3f} mL"
               if sd is not None else "")
            + (f"; REVIEW (below {review_below:g})" if agreement["review"] else ""))
    return summary


def check_out_dir(out_dir: str, inputs=()) -> None:
    """`PredictError` for an `out_dir` that is an existing file (or lies under one), or that is
    one of the folders `inputs` or lies inside it (`batch_predict.check_out_dir`)."""
    try:
        batch_predict.check_out_dir(out_dir, inputs)
    except batch_predict.BatchError as e:
        raise PredictError(str(e)) from e


def _shown(model_paths) -> str:
    """What the summary names as ``model``: the --model argument, or several joined by + ."""
    paths = [model_paths] if isinstance(model_paths, str) else list(model_paths)
    return " + ".join(os.path.abspath(p) for p in paths)


def run(model_path, input_path: str, out_dir: str, batch_size: int = 8, spacing=None,
        overlays: bool = True, progress: Callable | None = progress_bar, log=print,
        dicom_seg_file: bool = True, series_uid=None, tta: str = "none",
        disagreement: bool = False, review_below: float = ensemble.REVIEW_BELOW) -> dict:
    """Predict `input_path` with `model_path` into `out_dir`; returns the summary dict.

    `model_path`: a model, a folder of models, or a list of them (an ensemble,
    `lsnet_tf.ensemble`); `tta`: ``none``, ``flip`` or ``flip2``.

    Before the model loads: `PredictError` for a missing input, for an `out_dir` that is a
    file or lies inside a DICOM input folder (`check_out_dir`), and for models that cannot form
    an ensemble (`resolve_models`)."""
    t0 = time.time()
    if not os.path.exists(input_path):
        raise PredictError(f"{input_path}: input not found")
    check_out_dir(out_dir, [input_path])
    members = resolve_models(model_path, tta, disagreement)
    predictor = _load(members, batch_size, tta=tta, disagreement=disagreement,
                      path=_shown(model_path))
    return predict_case(predictor, input_path, out_dir, spacing=spacing, overlays=overlays,
                        progress=progress, log=log, t0=t0, dicom_seg_file=dicom_seg_file,
                        series_uid=series_uid, disagreement=disagreement,
                        review_below=review_below)


def run_many(model_path, input_path: str, out_dir: str, batch_size: int = 8, spacing=None,
             overlays: bool = True, overwrite: bool = False, progress: bool = True,
             log=print, options=None, dicom_seg_file: bool = True, tta: str = "none",
             disagreement: bool = False, review_below: float = ensemble.REVIEW_BELOW) -> list:
    """Predict every case of a folder or list file `input_path` (`lsnet_tf.batch_predict`)
    into ``out_dir/<case>/``, loading the model once; returns the rows of ``cases.csv``.

    `options`: Beam ``PipelineOptions`` (`lsnet_tf.beam.pipeline_options`) to run the cases as
    a pipeline, each worker loading the model once; None runs them in this process.
    `model_path`, `tta`, `disagreement`, `review_below`: as for `run` (the members are checked
    before any case is predicted; a skipped case's ``review`` is taken against `review_below`).
    """
    # Named by the import name, so that a pipeline's workers find them also when this runs as
    # ``python -m lsnet_tf.predict``.
    from lsnet_tf import predict as this

    check_out_dir(out_dir, [input_path])
    cases = batch_predict.find_cases(input_path, out_dir, log=log)
    # Before the model loads: --out is no file, nor inside the input folder or a listed series.
    check_out_dir(out_dir, [input_path] + [c.input for c in cases if os.path.isdir(c.input)])
    members = resolve_models(model_path, tta, disagreement)  # before starting any worker
    # Hashed once: the skip decision and every case's summary.json use the same fingerprint.
    if is_ensemble(members, tta):
        member_sha256 = member_fingerprints(members)
        sha256 = ensemble.ensemble_fingerprint(member_sha256, tta, disagreement)
        load = functools.partial(this.load_ensemble, members, batch_size, tta=tta,
                                 disagreement=disagreement, model_sha256=sha256,
                                 member_sha256=member_sha256, path=_shown(model_path))
    else:
        if options is not None and not os.path.exists(members[0]):
            raise PredictError(f"{members[0]}: model not found")
        sha256 = fingerprint(members[0]) if os.path.exists(members[0]) else None
        load = functools.partial(this.load_predictor, members[0], batch_size,
                                 model_sha256=sha256)
    return batch_predict.run_batch(
        cases, out_dir, load=load,
        predict=functools.partial(this.predict_case, spacing=spacing, overlays=overlays,
                                  dicom_seg_file=dicom_seg_file, disagreement=disagreement,
                                  review_below=review_below),
        overwrite=overwrite, progress=progress, log=log, options=options, model_sha256=sha256,
        review_below=review_below)


def main(argv=None) -> int:
    argv, beam_argv = beam.split_argv(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, action="append",
                        help="SavedModel folder or .tflite file; repeat it, or give a folder of "
                             "such models (e.g. one per fold), for an ensemble whose "
                             "probabilities are averaged")
    parser.add_argument("--input", required=True,
                        help=f"{INPUT_KINDS}; or a folder of cases or a .txt/.lst list of cases")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per call (SavedModel)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("ROW", "COL", "SLICE"),
                        help="voxel spacing in mm for .npy/.png input (default 1 1 1)")
    parser.add_argument("--no-overlays", action="store_true", help="do not write PNG overlays")
    parser.add_argument("--no-dicom-seg", action="store_true",
                        help=f"DICOM input: do not write {SEG_FILE} (a DICOM SEG of the mask)")
    parser.add_argument("--overwrite", action="store_true",
                        help="many cases: redo cases whose outputs are already complete")
    parser.add_argument("--series-uid", metavar="UID",
                        help="a DICOM folder holding several series: predict the series of this "
                             "SeriesInstanceUID (the error for such a folder lists them)")
    parser.add_argument("--tta", choices=ensemble.TTA_MODES, default="none",
                        help="test-time mirroring: flip = also the slices mirrored left-right; "
                             "flip2 = left-right, up-down and both (default none)")
    parser.add_argument("--disagreement", action="store_true",
                        help=f"write {DISAGREEMENT_FILE}: per voxel the standard deviation of "
                             "the views' probabilities (several models or --tta)")
    parser.add_argument("--review-below", type=float, default=ensemble.REVIEW_BELOW,
                        metavar="DICE",
                        help="flag a case for review when the mean pairwise Dice of its views "
                             f"is below DICE (default {ensemble.REVIEW_BELOW}: provisional, to "
                             "be chosen on tuning data)")
    beam.add_beam_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.review_below <= 1.0:
        parser.error(f"--review-below must lie in [0, 1], got {args.review_below}")
    models = args.model[0] if len(args.model) == 1 else args.model
    more = dict(tta=args.tta, disagreement=args.disagreement, review_below=args.review_below)
    try:
        if batch_predict.is_batch_input(args.input):
            if args.series_uid:
                parser.error("--series-uid picks a series of one DICOM folder, not of many "
                             "cases; point --input at the DICOM folder")
            rows = run_many(models, args.input, args.out, batch_size=args.batch_size,
                            spacing=args.spacing, overlays=not args.no_overlays,
                            overwrite=args.overwrite, dicom_seg_file=not args.no_dicom_seg,
                            options=beam.pipeline_options(args, beam_argv), **more)
            return 1 if any(row["status"] == "failed" for row in rows) else 0
        if args.runner or args.beam_options or beam_argv:
            parser.error("--runner and Beam pipeline options apply to many cases (a folder of "
                         "cases or a .txt/.lst list), not to one")
        run(models, args.input, args.out, batch_size=args.batch_size, spacing=args.spacing,
            overlays=not args.no_overlays, dicom_seg_file=not args.no_dicom_seg,
            series_uid=args.series_uid, **more)
    except (ValueError, OSError) as e:  # PredictError and the readers' PrepareErrors included
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
