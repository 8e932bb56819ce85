"""Evaluate a trained run, or score a folder of NIfTI predictions against a folder of labels.

::

    python -m lsnet_tf.evaluate --run runs/default [--dataset DIR] [--split val|train|all]
        [--empty-slices exclude|include] [--batch-size N] [--no-flops] --out OUT
        [--markdown FILE.md] [--label NAME]
    python -m lsnet_tf.evaluate --predictions PRED_DIR --labels LABELS_DIR
        [--label-values V [V ...]] [--prediction-values V [V ...]] [--allow-missing]
        [--affine-tol MM] --out OUT [--markdown FILE.md] [--label NAME]

Both modes write JSON and Markdown and print the Markdown. ``--out``: a ``.json`` file (the
Markdown goes beside it with ``.md``), an existing folder or one named with a trailing ``/``
(``evaluation.json`` and ``evaluation.md`` in it), or any other path as a prefix (``OUT.json``
and ``OUT.md``); ``--markdown`` names the Markdown file itself.

Run mode (``--run``)
--------------------

Loads ``DIR/config.yaml`` and the latest checkpoint under ``DIR/checkpoints`` (the networks
only), runs ``predict_masks`` on every slice of the split (``val``: fold ``data.val_fold``;
``train``: the other folds; ``all``), and reports, as JSON and as a Markdown table in the
paper's format:

- Per-slice DSC, precision and recall averaged over slices, the paper's protocol (Sec. 3.1), with
  their standard deviations. The paper does not say how slices without a target count;
  ``--empty-slices`` chooses:

  * ``exclude`` (default, as the trainer's ``eval.json``): the averages run over the slices that
    hold a target; slices without one are reported apart, as the number on which anything was
    predicted (``fp_empty_slices`` of ``n_empty_slices``).
  * ``include``: every slice counts; on a slice without a target DSC and precision are 1 when
    nothing is predicted and 0 otherwise, recall is 1 (``metrics.segmentation.slice_scores``).

  A slice's scores, with ``tp``, ``|T|``, ``|P|`` its true-positive, target and predicted pixel
  counts: DSC ``2 tp / (|T| + |P|)``, precision ``tp / |P|`` (0 when nothing is predicted on a
  slice with a target), recall ``tp / |T|``; predictions are ``probability > 0.5``.
- ``box_miou``: the first stage's boxes (L-Net's, or those of the coarse mask; for one-stage
  models those of the predicted mask's components): the mean over ground-truth boxes (one per
  connected component of the target) of the IoU of the best-matching valid predicted box (0
  when none), over the slices with a target. ``box_miou_union``: per slice with a target, the IoU
  of the box around all predicted boxes with the box around all true ones, averaged.
- ``dsc_by_size``: per-slice DSC of the slices with a target in each size bucket of
  ``metrics.segmentation.size_bucket`` (target area < 1 %, < 5 %, >= 5 % of the image).
- ``per_case``: 3-D DSC per patient, ``2 Σ tp / (Σ |T| + Σ |P|)`` over all of the patient's
  slices (slices grouped by the records' ``patient_id``), at the network's input resolution
  (every slice of a patient is resized by the same factor, so this is the volume DSC up to the
  interpolation of the masks); mean, std, min, max and each case's value.
- ``slices``: every slice's counts (``patient_id``, ``slice_index``, ``tp``, ``n_true``,
  ``n_pred``, ``pixels``), from which any of the above can be recomputed (e.g. DSC against the
  target's area: ``python -m lsnet_tf.experiments`` plots it).
- ``complexity``: per network its trainable parameters (what the paper's "Params" counts;
  BatchNorm moving statistics excluded) and its FLOPs on one image (``build.count_flops``:
  TensorFlow's profiler on the frozen inference graph, multiply and add counted apart, ~2 MACs),
  and the totals: a two-stage model's FLOPs are those of one image through the first stage plus
  one RoI through S-Net (at inference S-Net runs once per detected RoI).

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
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from lsnet_tf.data import nifti, records
from lsnet_tf.data import volumes as data_volumes
from lsnet_tf.data.volumes import PrepareError
from lsnet_tf.files import write_json, write_text
from lsnet_tf.metrics import volumes as volume_metrics
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES, predict_rows, summarize
from lsnet_tf.metrics.statistics import mean_sd
from lsnet_tf.models.build import count_flops, model_networks, parameter_counts
from lsnet_tf.training.runs import RunError, load_run as _load_run

# The per-slice counts an evaluation file keeps (``slices``).
SLICE_KEYS = ("patient_id", "slice_index", "tp", "n_true", "n_pred", "pixels")


# Folder mode: the file names a case's prediction or label may have, and the per-case metrics
# (``metrics.volumes.case_metrics``) that are averaged, in the order of the tables.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
CASE_MASK_NAMES = ("mask.nii.gz", "mask.nii")
AFFINE_TOL_MM = 0.01
FOLDER_METRICS = ("dsc", "precision", "recall", "hd95_mm", "pred_ml", "label_ml",
                  "volume_diff_ml", "abs_volume_diff_ml")


class EvaluationError(RuntimeError):
    """A run folder or a pair of folders cannot be evaluated (no config, no checkpoint, bad
    option, unpaired cases, masks on different grids)."""


# ----------------------------------------------------------------------------- models

def load_run(run_dir: str):
    """``(cfg, model, checkpoint)`` of a run folder (``lsnet_tf.training.runs.load_run``: the
    networks of its latest checkpoint, not the optimizers' state)."""
    try:
        model, cfg, path = _load_run(run_dir)
    except RunError as e:
        raise EvaluationError(str(e)) from None
    return cfg, model, path


def complexity(model, image_size: int, flops: bool = True) -> dict:
    """Trainable parameters and (optionally) FLOPs per network, and totals (module docstring)."""
    params = parameter_counts(model, trainable=True)
    out = {"params": params}
    if flops:
        per = {name: count_flops(net, (image_size, image_size, 1))
               for name, net in model_networks(model).items()}
        per["total"] = sum(per.values())
        out["flops"] = per
    return out


def evaluate_run(run_dir: str, dataset: str | None = None, split: str = "val",
                 empty_slices: str = "exclude", batch_size: int | None = None,
                 flops: bool = True, log=print) -> dict:
    """Evaluate a run folder; returns the JSON-ready result (see the module docstring)."""
    from lsnet_tf.data import pipeline  # imports TensorFlow: not for --help or a usage error

    if empty_slices not in EMPTY_SLICE_MODES:
        raise EvaluationError(f"empty_slices must be one of {', '.join(EMPTY_SLICE_MODES)}, "
                              f"received {empty_slices!r}")
    cfg, model, checkpoint = load_run(run_dir)
    dataset_dir = dataset or pipeline.resolve_dataset(cfg.data)
    try:
        folds = records.split_folds(dataset_dir, cfg.data.val_fold, split)
    except records.FoldError as e:
        raise EvaluationError(str(e)) from None
    log(f"evaluating {checkpoint} ({cfg.model.architecture}) on {dataset_dir} {split} "
        f"folds {folds}")
    try:
        batches = pipeline.eval_dataset(cfg.data, dataset_dir, folds, batch_size)
    except FileNotFoundError as e:  # no shards for the folds
        raise EvaluationError(str(e)) from None
    rows = predict_rows(model, batches)
    result = {
        "run": os.path.abspath(run_dir),
        "checkpoint": os.path.abspath(checkpoint),
        "architecture": cfg.model.architecture,
        "family": cfg.model.family,
        "dataset": os.path.abspath(dataset_dir),
        "split": split,
        "folds": folds,
        **summarize(rows, empty_slices),
        "slices": [{k: r[k] for k in SLICE_KEYS} for r in rows],
        "complexity": complexity(model, cfg.data.image_size, flops),
    }
    return result


# ----------------------------------------------------------------------------- folders

def _case_name(filename: str) -> str | None:
    """``'a.nii.gz'`` -> ``'a'``; None for a file that is not NIfTI or is hidden."""
    if filename.startswith("."):
        return None
    for suffix in NIFTI_SUFFIXES:
        if filename.lower().endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def _add_case(found: dict, case: str, path: str, folder: str) -> None:
    if case in found:
        raise EvaluationError(f"{folder}: case {case!r} has two files, {found[case]} and {path}; "
                              "keep one")
    found[case] = path


def find_cases(folder: str, what: str, case_folders: bool = False) -> dict:
    """``{case: path}`` of the NIfTI files in `folder` (``<case>.nii`` or ``<case>.nii.gz``) and,
    with `case_folders`, of ``<case>/mask.nii.gz`` (or ``mask.nii``) in its subfolders. `what`
    names the folder in errors ("predictions", "labels")."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"{folder}: {what} folder not found")
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            if not case_folders or name.startswith("."):
                continue
            masks = [os.path.join(path, m) for m in CASE_MASK_NAMES
                     if os.path.isfile(os.path.join(path, m))]
            if len(masks) > 1:
                raise EvaluationError(f"{path}: case {name!r} has two masks, {masks[0]} and "
                                      f"{masks[1]}; keep one")
            if masks:
                _add_case(found, name, masks[0], folder)
        elif os.path.isfile(path):
            case = _case_name(name)
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
    preds = find_cases(predictions, "predictions", case_folders=True)
    labs = find_cases(labels, "labels")
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
        img = nifti.load(path)
        data = nifti.read_array(img, path)
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
               "prediction": os.path.abspath(pred_path) if pred_path else None,
               "label": os.path.abspath(label_path),
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
        "predictions": os.path.abspath(predictions),
        "labels": os.path.abspath(labels),
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


# ----------------------------------------------------------------------------- reporting

def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _case(result) -> str:
    c = result["per_case"]
    if not c["n"]:
        return "–"
    return f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"


def _millions(value) -> str:
    return "–" if value is None else f"{value / 1e6:.2f}"


def markdown(result: dict, label: str | None = None) -> str:
    """A Markdown table of one evaluation in the paper's format (Table 1's columns, then the
    first stage's mIoU, per-case DSC, parameters and FLOPs), and the size buckets."""
    label = label or result.get("architecture", "model")
    cx = result.get("complexity", {})
    params = cx.get("params", {}).get("total")
    flops = cx.get("flops", {}).get("total")
    lines = [
        f"Split `{result.get('split')}`, {result['n_slices']} slices "
        f"({result['n_target_slices']} with a target; empty slices {result['empty_slices']}d; "
        f"{result['fp_empty_slices']} of {result['n_empty_slices']} empty slices with a "
        "false positive).",
        "",
        "| Method | DSC(%) | Precision(%) | Recall(%) | box mIoU(%) | DSC per case(%) | "
        "Params(M) | GFLOPs |",
        "|---|---|---|---|---|---|---|---|",
        f"| {label} | {_pct(result['dsc']['mean'])} | {_pct(result['precision']['mean'])} | "
        f"{_pct(result['recall']['mean'])} | {_pct(result['box_miou'])} | {_case(result)} | "
        f"{_millions(params)} | {'–' if flops is None else f'{flops / 1e9:.2f}'} |",
        "",
        "| Target size | slices | DSC(%) |",
        "|---|---|---|",
    ]
    for bucket, v in result["dsc_by_size"].items():
        lines.append(f"| {bucket} | {v['n']} | {_pct(v['dsc'])} |")
    return "\n".join(lines) + "\n"


def _num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_sd(stats: dict, scale: float = 1.0) -> str:
    if stats["mean"] is None:
        return "–"
    sd = "–" if stats["sd"] is None else f"{scale * stats['sd']:.2f}"
    return f"{scale * stats['mean']:.2f} ± {sd}"


def folder_markdown(result: dict, label: str | None = None) -> str:
    """A Markdown report of `evaluate_folder`: one line of context, a table with one row per case
    and a last row of mean ± sample standard deviation (HD95 over the cases where it is
    defined), and the unpaired and undefined cases."""
    values = result["label_values"]
    pred_values = result["prediction_values"]
    lines = [
        (f"{label}: " if label else "")
        + f"{result['n_cases']} cases; predictions `{result['predictions']}`, labels "
        f"`{result['labels']}`; target: label values "
        f"{'any non-zero' if values is None else values}, prediction values "
        f"{'any non-zero' if pred_values is None else pred_values}.",
        "",
        "| Case | DSC(%) | Precision(%) | Recall(%) | HD95(mm) | Pred(mL) | Label(mL) | "
        "Pred−Label(mL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        lines.append(f"| {c['case']} | {_pct(c['dsc'])} | {_pct(c['precision'])} | "
                     f"{_pct(c['recall'])} | {_num(c['hd95_mm'])} | {_num(c['pred_ml'])} | "
                     f"{_num(c['label_ml'])} | {_num(c['volume_diff_ml'])} |")
    sm = result["summary"]
    lines.append(f"| mean ± sd (n={result['n_cases']}) | {_mean_sd(sm['dsc'], 100)} | "
                 f"{_mean_sd(sm['precision'], 100)} | {_mean_sd(sm['recall'], 100)} | "
                 f"{_mean_sd(sm['hd95_mm'])}"
                 + (f" (n={sm['hd95_mm']['n']})" if sm["hd95_mm"]["n"] != result["n_cases"]
                    else "")
                 + f" | {_mean_sd(sm['pred_ml'])} | {_mean_sd(sm['label_ml'])} | "
                 f"{_mean_sd(sm['volume_diff_ml'])} |")
    notes = []
    if result["hd95_undefined"]:
        notes.append("HD95 undefined (exactly one mask empty), left out of its mean: "
                     + ", ".join(result["hd95_undefined"]))
    if result["missing_predictions"]:
        notes.append("no prediction, scored as an empty mask: "
                     + ", ".join(result["missing_predictions"]))
    if result["unlabelled_predictions"]:
        notes.append("predictions without a label, not scored: "
                     + ", ".join(result["unlabelled_predictions"]))
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def output_paths(out: str, markdown_path: str | None = None) -> tuple[str, str]:
    """``(json, markdown)`` paths of ``--out`` (module docstring): a ``.json`` file, a folder
    (existing, or named with a trailing separator: ``evaluation.json`` in it) or a prefix."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        json_path = os.path.join(out, "evaluation.json")
    elif out.lower().endswith(".json"):
        json_path = out
    else:
        json_path = out + ".json"
    return json_path, markdown_path or os.path.splitext(json_path)[0] + ".md"


# Options of one mode only: (dest, flag); a mode refuses the other's.
_RUN_OPTIONS = (("dataset", "--dataset"), ("split", "--split"),
                ("empty_slices", "--empty-slices"), ("batch_size", "--batch-size"),
                ("no_flops", "--no-flops"))
_FOLDER_OPTIONS = (("label_values", "--label-values"),
                   ("prediction_values", "--prediction-values"),
                   ("allow_missing", "--allow-missing"), ("affine_tol", "--affine-tol"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (config.yaml + checkpoints/): run mode")
    parser.add_argument("--dataset", help="prepared dataset folder (default: the run's data)")
    parser.add_argument("--split", choices=records.SPLITS, help="default: val")
    parser.add_argument("--empty-slices", choices=EMPTY_SLICE_MODES,
                        help="how slices without a target count in the per-slice averages "
                             "(default: exclude)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--predictions", help="folder of predicted NIfTI masks: folder mode")
    parser.add_argument("--labels", help="folder of label NIfTI files (folder mode)")
    parser.add_argument("--label-values", type=int, nargs="+", metavar="V",
                        help="label values that are the target (default: any non-zero)")
    parser.add_argument("--prediction-values", type=int, nargs="+", metavar="V",
                        help="prediction values that are the target (default: any non-zero)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a labelled case without prediction as an empty mask "
                             "(default: an error)")
    parser.add_argument("--affine-tol", type=float, default=None, metavar="MM",
                        help=f"largest difference of the affines' entries in mm (default "
                             f"{AFFINE_TOL_MM})")
    parser.add_argument("--out", required=True,
                        help="FILE.json, a folder (evaluation.json) or a path prefix")
    parser.add_argument("--markdown", help="Markdown file to write (default: beside the JSON, "
                                           ".md)")
    parser.add_argument("--label", help="method name in the Markdown table")
    args = parser.parse_args(argv)
    folder_mode = args.predictions is not None or args.labels is not None
    if folder_mode == (args.run is not None):
        parser.error("give either --run DIR or --predictions DIR --labels DIR")
    if folder_mode and (args.predictions is None or args.labels is None):
        parser.error("folder mode needs both --predictions and --labels")
    wrong = [flag for dest, flag in (_RUN_OPTIONS if folder_mode else _FOLDER_OPTIONS)
             if getattr(args, dest) not in (None, False)]
    if wrong:
        parser.error(f"{', '.join(wrong)} only {'apply' if len(wrong) > 1 else 'applies'} with "
                     f"{'--run' if folder_mode else '--predictions/--labels'}")
    json_path, md_path = output_paths(args.out, args.markdown)
    try:
        if folder_mode:
            result = evaluate_folder(
                args.predictions, args.labels, args.label_values, args.prediction_values,
                args.allow_missing,
                AFFINE_TOL_MM if args.affine_tol is None else args.affine_tol,
                log=lambda *a: print(*a, file=sys.stderr))
        else:
            result = evaluate_run(args.run, args.dataset, args.split or "val",
                                  args.empty_slices or "exclude", args.batch_size,
                                  flops=not args.no_flops)
    except (EvaluationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(json_path, result)
    table = (folder_markdown if folder_mode else markdown)(result, args.label)
    write_text(md_path, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
