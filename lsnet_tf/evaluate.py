"""Evaluate a trained run: ``python -m lsnet_tf.evaluate --run DIR --out FILE.json``.

::

    python -m lsnet_tf.evaluate --run runs/default [--dataset DIR] [--split val|train|all]
        [--empty-slices exclude|include] [--batch-size N] [--no-flops] --out FILE.json
        [--markdown FILE.md] [--label NAME]

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

import argparse
import os
import sys

from lsnet_tf.data import records
from lsnet_tf.files import write_json, write_text
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES, predict_rows, summarize
from lsnet_tf.models.build import count_flops, model_networks, parameter_counts
from lsnet_tf.training.runs import RunError, load_run as _load_run

# The per-slice counts an evaluation file keeps (``slices``).
SLICE_KEYS = ("patient_id", "slice_index", "tp", "n_true", "n_pred", "pixels")


class EvaluationError(RuntimeError):
    """A run folder cannot be evaluated (no config, no checkpoint, bad option)."""


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run folder (config.yaml + checkpoints/)")
    parser.add_argument("--dataset", help="prepared dataset folder (default: the run's data)")
    parser.add_argument("--split", default="val", choices=records.SPLITS)
    parser.add_argument("--empty-slices", default="exclude", choices=EMPTY_SLICE_MODES,
                        help="how slices without a target count in the per-slice averages")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--markdown", help="Markdown file to write (default: --out with .md)")
    parser.add_argument("--label", help="method name in the Markdown table")
    args = parser.parse_args(argv)
    try:
        result = evaluate_run(args.run, args.dataset, args.split, args.empty_slices,
                              args.batch_size, flops=not args.no_flops)
    except (EvaluationError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    table = markdown(result, args.label)
    write_text(args.markdown or os.path.splitext(args.out)[0] + ".md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
