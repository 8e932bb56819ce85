"""Evaluate a trained L-SNet on a dataset split: the paper's per-slice protocol.

Per-slice DSC, precision and recall are averaged over the slices that hold a target (the paper
does not say how it counts empty slices; we report them separately as false-positive slices).
The first stage's box mIoU is the mean, over ground-truth boxes, of the IoU of the best-matching
predicted box.
"""
from __future__ import annotations

import numpy as np

from lsnet_tf.metrics import segmentation as seg


def evaluate_model(model, dataset) -> dict:
    """Run `model.predict_masks` over `dataset` (batches from lsnet_tf.data.pipeline)."""
    rows, ious, fp_empty, n_empty = [], [], 0, 0
    for batch in dataset:
        pred = model.predict_masks(batch["image"])
        masks = pred["mask"].numpy()[..., 0]
        boxes, valid = pred["boxes"].numpy(), pred["valid"].numpy()
        for i in range(masks.shape[0]):
            truth = batch["mask"][i, ..., 0].numpy()
            nb = int(batch["num_boxes"][i])
            if nb == 0:
                n_empty += 1
                fp_empty += int((masks[i] > 0.5).any())
                continue
            s = seg.slice_scores(truth, masks[i])
            s["size"] = seg.size_bucket(truth.sum(), truth.size)
            rows.append(s)
            ious += list(seg.best_box_iou(batch["boxes"][i, :nb].numpy(), boxes[i][valid[i]]))
    out = {
        "n_target_slices": len(rows),
        "n_empty_slices": n_empty,
        "fp_empty_slices": fp_empty,
        "box_miou": float(np.mean(ious)) if ious else 0.0,
    }
    for key in ("dsc", "precision", "recall"):
        vals = [r[key] for r in rows]
        out[f"{key}_mean"] = float(np.mean(vals)) if vals else 0.0
    out["dsc_by_size"] = {
        b: {"n": sum(r["size"] == b for r in rows),
            "dsc": float(np.mean([r["dsc"] for r in rows if r["size"] == b])) if any(r["size"] == b for r in rows) else None}
        for b in ("small", "medium", "large")}
    return out
