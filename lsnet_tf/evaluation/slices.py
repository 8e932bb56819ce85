"""Evaluating a trained run on the slices of a prepared dataset (``evaluate --run``).

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
"""
from __future__ import annotations

import os

from lsnet_tf.data import records
from lsnet_tf.evaluation import EvaluationError
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES, predict_rows, summarize
from lsnet_tf.models.build import count_flops, model_networks, parameter_counts
from lsnet_tf.training.runs import RunError, load_run as _load_run

# The per-slice counts an evaluation file keeps (``slices``).
SLICE_KEYS = ("patient_id", "slice_index", "tp", "n_true", "n_pred", "pixels")


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
