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

import numpy as np

from lsnet_tf.data import records
from lsnet_tf.files import write_json, write_text
from lsnet_tf.metrics import segmentation as seg

EMPTY_SLICE_MODES = ("exclude", "include")
SIZE_BUCKETS = ("small", "medium", "large")
# The per-slice counts an evaluation file keeps (``slices``).
SLICE_KEYS = ("patient_id", "slice_index", "tp", "n_true", "n_pred", "pixels")


class EvaluationError(RuntimeError):
    """A run folder cannot be evaluated (no config, no checkpoint, bad option)."""


# ----------------------------------------------------------------------------- data

def eval_dataset(data_cfg, dataset_dir: str, folds, batch_size: int | None = None):
    """Evaluation batches with slice identities, in shard order (patient by patient).

    Slices are resized and windowed exactly as the training pipeline's evaluation batches
    (``lsnet_tf.data.pipeline``, no augmentation). Each batch is a dict: ``image`` (B, S, S, 1)
    float32 in [0, 1], ``mask`` (B, S, S, 1) float32 in {0, 1}, ``boxes`` (B, N, 4) xyxy input
    pixels zero-padded to the batch's largest count (all boxes of a slice, not cut at
    ``data.max_boxes``), ``num_boxes`` (B,) int32, ``patient_id`` (B,) string and
    ``slice_index`` (B,) int64.
    """
    import tensorflow as tf

    from lsnet_tf.data import pipeline, records

    files = records.list_shards(dataset_dir, folds)
    if not files:
        raise EvaluationError(f"no shards for folds {list(folds)} under {dataset_dir}")
    size = data_cfg.image_size

    def prep(ex):
        # The training pipeline's resize (bilinear image, nearest mask, scaled boxes).
        img, mask, boxes = pipeline._resize(ex, size)
        return {
            "image": pipeline.window(img, data_cfg.window_center, data_cfg.window_width),
            "mask": tf.cast(mask > 0.5, tf.float32),
            "boxes": boxes,
            "num_boxes": tf.shape(boxes)[0],
            "patient_id": ex["patient_id"],
            "slice_index": ex["slice_index"],
        }

    ds = tf.data.TFRecordDataset(files).map(records.parse).map(prep)
    return ds.padded_batch(batch_size or data_cfg.batch_size).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- metrics

def slice_rows(patient_ids, slice_indices, truth, pred, true_boxes, num_boxes, pred_boxes,
               pred_valid) -> list[dict]:
    """Per-slice counts of a batch (numpy), the input of ``summarize``.

    Args:
      patient_ids: (B,) str or bytes; slice_indices: (B,) ints.
      truth, pred: (B, H, W) binary target and mask probabilities (foreground ``> 0.5``).
      true_boxes: (B, N, 4) xyxy with ``num_boxes`` (B,) valid rows.
      pred_boxes: (B, K, 4) xyxy with ``pred_valid`` (B, K) bool.

    Returns:
      one dict per slice: ``patient_id``, ``slice_index``, ``tp``, ``n_true``, ``n_pred``,
      ``pixels``, ``box_ious`` (best IoU per true box) and ``union_iou`` (None without a target).
    """
    truth = np.asarray(truth) > 0.5
    pred = np.asarray(pred) > 0.5
    if truth.shape != pred.shape or truth.ndim != 3:
        raise ValueError(f"truth and pred must both be (B, H, W), received {truth.shape} and "
                         f"{pred.shape}")
    rows = []
    for i in range(truth.shape[0]):
        pid = patient_ids[i]
        pid = pid.decode("utf-8") if isinstance(pid, bytes) else str(pid)
        nb = int(num_boxes[i])
        tb = np.asarray(true_boxes[i][:nb], np.float64).reshape(-1, 4)
        pb = np.asarray(pred_boxes[i], np.float64)[np.asarray(pred_valid[i], bool)].reshape(-1, 4)
        n_true = int(truth[i].sum())
        union_iou = None
        if n_true:
            union_iou = float(seg.box_iou_matrix(_enclosing(tb), _enclosing(pb))[0, 0]) if len(pb) else 0.0
        rows.append({
            "patient_id": pid,
            "slice_index": int(slice_indices[i]),
            "tp": int(np.logical_and(truth[i], pred[i]).sum()),
            "n_true": n_true,
            "n_pred": int(pred[i].sum()),
            "pixels": int(truth[i].size),
            "box_ious": [float(v) for v in seg.best_box_iou(tb, pb)] if n_true else [],
            "union_iou": union_iou,
        })
    return rows


def _enclosing(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])[None]


def _stats(values) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


def summarize(rows, empty_slices: str = "exclude") -> dict:
    """The metrics of the module docstring from ``slice_rows`` output.

    Returns a dict with ``empty_slices``, ``n_slices``, ``n_target_slices``, ``n_empty_slices``,
    ``fp_empty_slices``, ``dsc``/``precision``/``recall`` (each ``{"n", "mean", "std", "min",
    "max"}`` over the slices chosen by `empty_slices`), ``box_miou``, ``box_miou_union``,
    ``dsc_by_size`` ({bucket: {"n", "dsc"}}) and ``per_case`` (``{"n", "mean", "std", "min",
    "max", "cases": {patient_id: dsc}}``).
    """
    if empty_slices not in EMPTY_SLICE_MODES:
        raise ValueError(f"empty_slices must be one of {', '.join(EMPTY_SLICE_MODES)}, "
                         f"received {empty_slices!r}")
    rows = list(rows)
    target = [r for r in rows if r["n_true"] > 0]
    empty = [r for r in rows if r["n_true"] == 0]
    counted = target if empty_slices == "exclude" else rows
    scores = [seg.scores_from_counts(r["tp"], r["n_true"], r["n_pred"]) for r in counted]
    out = {
        "empty_slices": empty_slices,
        "n_slices": len(rows),
        "n_target_slices": len(target),
        "n_empty_slices": len(empty),
        "fp_empty_slices": sum(r["n_pred"] > 0 for r in empty),
    }
    for key in ("dsc", "precision", "recall"):
        out[key] = _stats([s[key] for s in scores])
    ious = [v for r in target for v in r["box_ious"]]
    out["box_miou"] = float(np.mean(ious)) if ious else None
    unions = [r["union_iou"] for r in target]
    out["box_miou_union"] = float(np.mean(unions)) if unions else None
    by_size = {b: [] for b in SIZE_BUCKETS}
    for r in target:
        by_size[seg.size_bucket(r["n_true"], r["pixels"])].append(
            seg.scores_from_counts(r["tp"], r["n_true"], r["n_pred"])["dsc"])
    out["dsc_by_size"] = {b: {"n": len(v), "dsc": float(np.mean(v)) if v else None}
                          for b, v in by_size.items()}
    cases: dict = {}
    for r in rows:
        c = cases.setdefault(r["patient_id"], [0, 0, 0])
        c[0] += r["tp"]
        c[1] += r["n_true"]
        c[2] += r["n_pred"]
    case_dsc = {pid: (2 * tp / (nt + np_) if nt + np_ > 0 else 1.0)
                for pid, (tp, nt, np_) in sorted(cases.items())}
    out["per_case"] = {**_stats(list(case_dsc.values())), "cases": case_dsc}
    return out


def predict_rows(model, dataset) -> list[dict]:
    """``slice_rows`` of every batch of an ``eval_dataset`` (or of the training pipeline, whose
    batches carry no slice identities) through ``model.predict_masks``
    (traced once as a ``tf.function``; the last, smaller batch traces it again)."""
    import tensorflow as tf

    predict = tf.function(model.predict_masks)
    rows = []
    for batch in dataset:
        pred = predict(batch["image"])
        n = int(batch["image"].shape[0])
        # Batches without slice identities (e.g. hand-made ones) count as one unnamed case.
        ids = batch["patient_id"].numpy() if "patient_id" in batch else [""] * n
        index = batch["slice_index"].numpy() if "slice_index" in batch else np.arange(n)
        rows += slice_rows(ids, index,
                           batch["mask"].numpy()[..., 0], pred["mask"].numpy()[..., 0],
                           batch["boxes"].numpy(), batch["num_boxes"].numpy(),
                           pred["boxes"].numpy(), pred["valid"].numpy())
    return rows


# ----------------------------------------------------------------------------- models

def load_run(run_dir: str):
    """``(cfg, model, checkpoint)`` of a run folder (``lsnet_tf.training.runs.load_run``: the
    networks of its latest checkpoint, not the optimizers' state)."""
    from lsnet_tf.training.runs import RunError, load_run as _load

    try:
        model, cfg, path = _load(run_dir)
    except RunError as e:
        raise EvaluationError(str(e)) from None
    return cfg, model, path


def complexity(model, image_size: int, flops: bool = True) -> dict:
    """Trainable parameters and (optionally) FLOPs per network, and totals (module docstring)."""
    from lsnet_tf.models.build import count_flops, model_networks, parameter_counts

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
    from lsnet_tf.data import pipeline

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
    rows = predict_rows(model, eval_dataset(cfg.data, dataset_dir, folds, batch_size))
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
