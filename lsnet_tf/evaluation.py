"""The trainer's evaluation: the protocol of ``python -m lsnet_tf.evaluate`` on a dataset.

Per-slice DSC, precision and recall averaged over the slices that hold a target (the paper does
not say how it counts empty slices; they are reported as false-positive slices), box mIoU, DSC
by target size and, where batches carry patient ids, per-case 3-D DSC (``evaluate.summarize``).
"""
from __future__ import annotations


def evaluate_model(model, dataset, empty_slices: str = "exclude") -> dict:
    """``evaluate.summarize`` of `model.predict_masks` over `dataset`'s batches."""
    from lsnet_tf import evaluate

    return evaluate.summarize(evaluate.predict_rows(model, dataset), empty_slices)
