"""The evaluation protocol's metrics, from per-slice counts (numpy).

Per-slice DSC, precision and recall averaged over slices (the paper's protocol, Sec. 3.1; slices
without a target are left out or counted, `EMPTY_SLICE_MODES`), the first stage's box mIoU, DSC by
target size (`SIZE_BUCKETS`) and per-case 3-D DSC: `lsnet_tf.evaluation.slices`' docstring
defines each. `slice_rows` counts a batch, `summarize` reduces the counts, `predict_rows` runs a
model over a dataset (``data.pipeline.eval_dataset``) and `evaluate_model` does both, as the
trainer does for its ``eval.json``. Single-slice scores are ``metrics.segmentation``'s.
"""
from __future__ import annotations

import numpy as np

from lsnet_tf.metrics import segmentation as seg

EMPTY_SLICE_MODES = ("exclude", "include")
SIZE_BUCKETS = ("small", "medium", "large")


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
    """The metrics of the module docstring from ``slice_rows`` output (or from the ``slices``
    an evaluation file keeps, with ``box_ious`` and ``union_iou`` added).

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
    """``slice_rows`` of every batch of a ``data.pipeline.eval_dataset`` (or of the training pipeline, whose
    batches carry no slice identities) through ``model.predict_masks``, traced once as a
    ``tf.function`` for any batch size when `dataset` is a ``tf.data.Dataset`` (its image
    spec), so the last, smaller batch does not trace it again."""
    # TensorFlow here only: the rest is numpy, and ``python -m lsnet_tf.evaluate --help`` imports
    # this module.
    import tensorflow as tf

    spec = getattr(dataset, "element_spec", None)
    if isinstance(spec, dict) and "image" in spec:
        image = spec["image"]
        signature = [tf.TensorSpec([None, *image.shape[1:]], image.dtype)]
        predict = tf.function(model.predict_masks, input_signature=signature)
    else:
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


def evaluate_model(model, dataset, empty_slices: str = "exclude") -> dict:
    """`summarize` of `model.predict_masks` over `dataset`'s batches (`predict_rows`)."""
    return summarize(predict_rows(model, dataset), empty_slices)
