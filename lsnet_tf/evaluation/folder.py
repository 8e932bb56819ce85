"""Scoring a folder of NIfTI predictions against a folder of labels (``evaluate --predictions``).

Folder mode (``--predictions`` and ``--labels``)
------------------------------------------------

Scores the 3-D masks of any tool (lsnet_tf's ``predict``, nnU-Net, MONAI, a reader) against
reference labels, case by case, on the masks' own voxel grid (``evaluate_folder``):

- Cases pair by name: a prediction ``PRED_DIR/<case>.nii`` or ``PRED_DIR/<case>.nii.gz``, or
  ``PRED_DIR/<case>/mask.nii.gz`` (``mask.nii``; the folder per case that a batch of
  ``python -m lsnet_tf.predict`` runs writes), with the label ``LABELS_DIR/<case>.nii(.gz)``.
  Other files (JSON, PNG, ...) and hidden files are ignored; two files for one case (``a.nii``
  and ``a.nii.gz``, or ``a.nii.gz`` and ``a/mask.nii.gz``) are an error. A case with a label but
  no prediction is an error listing all such cases, unless ``--allow-missing``: then it is
  scored as an empty prediction on the label's grid (DSC 0, HD95 undefined) and listed in
  ``missing_predictions``. Predictions without a label are listed (``unlabelled_predictions``)
  and not scored.
- Each pair must lie on one voxel grid: the same array shape, and the two NIfTI affines
  (``img.affine``, voxel -> RAS mm) equal entry by entry within ``--affine-tol`` mm (default
  0.01). Two files of the same grid stored in another axis order or direction (a prediction
  of ``predict`` on a DICOM series is stored (slice, row, col); TCIA labels are stored (x, y, z))
  are compared in the canonical orientation of ``lsnet_tf.data.volumes``, whose shapes and
  affines must then agree in the same way (an exact permutation and flip of the voxels; the case
  is marked ``reoriented``; shape and spacing are then reported in that orientation). Anything
  else is an error naming the case, both files, both shapes and both affines; nothing is ever
  resampled.
- Target voxels: in a label, those whose value is one of ``--label-values`` (default: every
  non-zero value); in a prediction, those whose value is one of ``--prediction-values``
  (default: every non-zero value, so that lsnet_tf's ``1 + class`` maps and any binary mask
  count whole; name the values when the prediction holds several structures). Both files must
  hold integer values (a probability map is refused: threshold it first).
- Per case (``lsnet_tf.metrics.volumes.case_metrics``, exact definitions there): 3-D DSC,
  precision and recall; predicted and label volumes and their signed and absolute difference
  in mL (voxel volume = product of the affine's column norms); ``hd95_mm``, the 95th
  percentile of the pooled surface-to-surface distances of both directions in mm (medpy's and
  nnU-Net v1's definition), 0 when both masks are empty and ``null`` (left out of its mean,
  counted in ``hd95_undefined``) when exactly one is.
- ``summary``: per metric the mean and the sample standard deviation (``ddof=1``) over the
  cases with a value, and that number of cases (``metrics.statistics.mean_sd``).
- Either folder may be a ``gs://`` URL (`lsnet_tf.utils.files`): each mask is copied to a
  temporary local file, read and removed (`lsnet_tf.utils.staging`); errors name the URL.
"""
from __future__ import annotations

import os

import numpy as np

from lsnet_tf.utils import files, staging
from lsnet_tf.data import nifti
from lsnet_tf.data import volumes as data_volumes
from lsnet_tf.data.names import case_name
from lsnet_tf.data.volumes import PrepareError
from lsnet_tf.evaluation import EvaluationError
from lsnet_tf.metrics import volumes as volume_metrics
from lsnet_tf.metrics.statistics import mean_sd

# The file names of a case's mask in the folder per case that a batch of
# ``python -m lsnet_tf.predict`` runs writes, and the per-case metrics
# (``metrics.volumes.case_metrics``) that are averaged, in the order of the tables.
CASE_MASK_NAMES = ("mask.nii.gz", "mask.nii")
AFFINE_TOL_MM = 0.01
FOLDER_METRICS = ("dsc", "precision", "recall", "hd95_mm", "pred_ml", "label_ml",
                  "volume_diff_ml", "abs_volume_diff_ml")


def _absolute(path: str) -> str:
    """A local path made absolute; a URL as it is."""
    return path if files.is_remote(path) else os.path.abspath(path)


def _add_case(found: dict, case: str, path: str, folder: str) -> None:
    if case in found:
        raise EvaluationError(f"{folder}: case {case!r} has two files, {found[case]} and {path}; "
                              "keep one")
    found[case] = path


def case_files(folder: str, what: str, case_folders: bool = False) -> dict:
    """``{case: path}`` of the NIfTI files in `folder` (``<case>.nii`` or ``<case>.nii.gz``,
    `lsnet_tf.data.names.case_name`) and,
    with `case_folders`, of ``<case>/mask.nii.gz`` (or ``mask.nii``) in its subfolders. `what`
    names the folder in errors ("predictions", "labels")."""
    if not files.isdir(folder):
        raise EvaluationError(f"{folder}: {what} folder not found")
    found = {}
    for name in sorted(files.listdir(folder)):
        path = files.join(folder, name)
        if files.isdir(path):
            if not case_folders or name.startswith("."):
                continue
            masks = [files.join(path, m) for m in CASE_MASK_NAMES
                     if files.isfile(files.join(path, m))]
            if len(masks) > 1:
                raise EvaluationError(f"{path}: case {name!r} has two masks, {masks[0]} and "
                                      f"{masks[1]}; keep one")
            if masks:
                _add_case(found, name, masks[0], folder)
        elif files.isfile(path):
            case = None if name.startswith(".") else case_name(name)  # hidden files left out
            if case is not None:
                _add_case(found, case, path, folder)
    return found


def pair_cases(predictions: str, labels: str, allow_missing: bool = False) -> dict:
    """Pair the cases of a predictions folder with those of a labels folder (module docstring).

    Returns ``{"pairs": [(case, prediction path or None, label path)], "missing_predictions":
    [case], "unlabelled_predictions": [case]}``, cases sorted by name.

    Raises:
      EvaluationError: a folder is missing, a case has two files, there is no label, or a
        labelled case has no prediction (without `allow_missing`).
    """
    preds = case_files(predictions, "predictions", case_folders=True)
    labs = case_files(labels, "labels")
    if not labs:
        raise EvaluationError(f"{labels}: no label files (<case>.nii or <case>.nii.gz)")
    missing = sorted(set(labs) - set(preds))
    unlabelled = sorted(set(preds) - set(labs))
    if missing and not allow_missing:
        shown = ", ".join(missing[:20]) + (f", ... ({len(missing) - 20} more)"
                                          if len(missing) > 20 else "")
        raise EvaluationError(
            f"{predictions}: no prediction for {len(missing)} of the {len(labs)} labelled cases "
            f"in {labels}: {shown} (expected <case>.nii(.gz) or <case>/mask.nii.gz; "
            "--allow-missing scores them as empty masks)")
    pairs = [(case, preds.get(case), labs[case]) for case in sorted(labs)]
    return {"pairs": pairs, "missing_predictions": missing, "unlabelled_predictions": unlabelled}


def _read_mask(path: str, what: str):
    """``(integer array, affine)`` of a NIfTI mask as stored (nibabel's array and RAS affine)."""
    try:
        with staging.local_copies(path) as (_, (local,)):
            img = nifti.load(local)
            data = nifti.read_array(img, local)
    except PrepareError as e:
        raise EvaluationError(f"{what}: {e}") from None
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise EvaluationError(f"{path}: {what} voxels of type {data.dtype} are not numbers")
    if not np.issubdtype(data.dtype, np.integer):
        data = np.asarray(data)
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            bad = data[~np.isfinite(data) | (data != np.round(data))].ravel()[:3]
            raise EvaluationError(f"{path}: {what} holds values that are not integers "
                                  f"(e.g. {bad.tolist()}); a mask holds label values (threshold "
                                  "a probability map first)")
    return np.asarray(data), np.asarray(img.affine, np.float64)


def _target(data: np.ndarray, values) -> np.ndarray:
    return data != 0 if values is None else np.isin(data, np.asarray(list(values)))


def grid_mismatch(case: str, pred_path: str, pred_shape, pred_affine, label_path: str,
                  label_shape, label_affine, affine_tol: float = AFFINE_TOL_MM) -> EvaluationError:
    """The error for a prediction and a label on different grids: the case, both files, both
    shapes and both affines."""
    pred_shape, label_shape = tuple(int(n) for n in pred_shape), tuple(int(n) for n in label_shape)
    diff = float(np.max(np.abs(np.asarray(pred_affine) - np.asarray(label_affine))))
    why = (f"shape {pred_shape} vs {label_shape}" if pred_shape != label_shape
           else f"affines differ by up to {diff:.4g} mm (tolerance {affine_tol} mm)")
    return EvaluationError(
        f"case {case!r}: prediction and label are not on one voxel grid ({why}); masks are never "
        f"resampled.\n  prediction {pred_path}: shape {pred_shape}, affine "
        f"{np.round(pred_affine, 4).tolist()}\n  label {label_path}: shape {label_shape}, affine "
        f"{np.round(label_affine, 4).tolist()}")


def _same_grid(shape_a, affine_a, shape_b, affine_b, affine_tol: float) -> bool:
    return (tuple(shape_a) == tuple(shape_b)
            and float(np.max(np.abs(np.asarray(affine_a) - np.asarray(affine_b)))) <= affine_tol)


def on_one_grid(case: str, pred_path: str, pred: np.ndarray, pred_affine, label_path: str,
                label: np.ndarray, label_affine, affine_tol: float = AFFINE_TOL_MM):
    """``(pred, label, affine, reoriented)`` on one voxel grid: the arrays as stored when their
    shapes and affines agree; else, when they are the same grid stored in another axis order or
    direction (e.g. a (slice, row, col) prediction of a DICOM series against a label stored
    (x, y, z)), both brought to the canonical orientation of `lsnet_tf.data.volumes` (axes
    permuted and flipped, no interpolation) with `reoriented` True. Anything else: the
    `grid_mismatch` error."""
    if _same_grid(pred.shape, pred_affine, label.shape, label_affine, affine_tol):
        return pred, label, label_affine, False
    try:
        pred_c, pred_aff_c = data_volumes.canonicalize(
            pred, data_volumes.ras_to_lps(pred_affine), pred_path)
        label_c, label_aff_c = data_volumes.canonicalize(
            label, data_volumes.ras_to_lps(label_affine), label_path)
    except (PrepareError, ValueError):  # oblique or degenerate: no exact way across
        pred_c = None
    if pred_c is not None and _same_grid(pred_c.shape, pred_aff_c, label_c.shape, label_aff_c,
                                         affine_tol):
        return pred_c, label_c, label_aff_c, True
    raise grid_mismatch(case, pred_path, pred.shape, pred_affine, label_path, label.shape,
                        label_affine, affine_tol)


def _check_values(values, option: str):
    if values is None:
        return None
    values = tuple(sorted({int(v) for v in values}))
    if not values or 0 in values:
        raise EvaluationError(f"{option} must be non-zero integers (0 is background), got "
                              f"{list(values)}")
    return values


def evaluate_folder(predictions: str, labels: str, label_values=None, prediction_values=None,
                    allow_missing: bool = False, affine_tol: float = AFFINE_TOL_MM,
                    log=print) -> dict:
    """Score the NIfTI masks of `predictions` against those of `labels` (see the module
    docstring, folder mode); returns the JSON-ready result.

    Raises:
      EvaluationError: unpaired cases, a pair on different grids, unreadable files, values that
        are not integers, zero among the target values.
    """
    label_values = _check_values(label_values, "--label-values")
    prediction_values = _check_values(prediction_values, "--prediction-values")
    if not (affine_tol >= 0):
        raise EvaluationError(f"--affine-tol must be >= 0 mm, got {affine_tol}")
    paired = pair_cases(predictions, labels, allow_missing)
    pairs = paired["pairs"]
    if paired["unlabelled_predictions"]:
        log(f"not scored (no label in {labels}): {', '.join(paired['unlabelled_predictions'])}")
    cases = []
    for i, (case, pred_path, label_path) in enumerate(pairs, 1):
        label_data, label_affine = _read_mask(label_path, "label")
        label = _target(label_data, label_values)
        affine, reoriented = label_affine, False
        if pred_path is None:
            pred = np.zeros_like(label)
        else:
            pred_data, pred_affine = _read_mask(pred_path, "prediction")
            pred, label, affine, reoriented = on_one_grid(
                case, pred_path, _target(pred_data, prediction_values), pred_affine, label_path,
                label, label_affine, affine_tol)
        row = {"case": case,
               "prediction": _absolute(pred_path) if pred_path else None,
               "label": _absolute(label_path),
               "shape": [int(n) for n in label.shape],
               "spacing_mm": list(volume_metrics.axis_spacing(affine)),
               "voxel_ml": volume_metrics.voxel_volume_ml(affine),
               "reoriented": reoriented,
               **volume_metrics.case_metrics(pred, label, affine)}
        cases.append(row)
        hd = "undefined" if row["hd95_mm"] is None else f"{row['hd95_mm']:.2f} mm"
        log(f"[{i}/{len(pairs)}] {case}: DSC {row['dsc']:.4f}, HD95 {hd}, volume "
            f"{row['pred_ml']:.2f} vs {row['label_ml']:.2f} mL"
            + (" (no prediction: scored as empty)" if pred_path is None else ""))
    if cases and not any(c["label_voxels"] for c in cases):
        log(f"note: no label holds a target voxel (label values "
            f"{'any non-zero' if label_values is None else list(label_values)})")
    return {
        "mode": "folder",
        "predictions": _absolute(predictions),
        "labels": _absolute(labels),
        "label_values": None if label_values is None else list(label_values),
        "prediction_values": None if prediction_values is None else list(prediction_values),
        "affine_tol_mm": affine_tol,
        "n_cases": len(cases),
        "missing_predictions": paired["missing_predictions"],
        "unlabelled_predictions": paired["unlabelled_predictions"],
        "hd95_undefined": [c["case"] for c in cases if c["hd95_mm"] is None],
        "summary": {m: mean_sd([c[m] for c in cases]) for m in FOLDER_METRICS},
        "cases": cases,
    }
