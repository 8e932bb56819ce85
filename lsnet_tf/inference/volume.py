"""The volume loop of ``python -m lsnet_tf.predict``: ``predict_volume(predictor, hu)`` runs a
predictor (`lsnet_tf.inference.predictors`) over the slices of a volume in batches and gathers
the label map, boxes, scores and keypoints (and an ensemble's agreement).

Each call to the model gets at most `MAX_BATCH_PIXELS` pixels (fewer slices than
``--batch-size`` for large slices, at least one). `progress_bar` draws the command's slice bar.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from lsnet_tf.inference import ensemble, review

__all__ = ["MASK_THRESHOLD", "MAX_BATCH_PIXELS", "progress_bar", "predict_volume"]

MASK_THRESHOLD = 0.5
# Most pixels (slices x H x W) sent to the model in one call: 128 MiB of float32 input.
MAX_BATCH_PIXELS = 2 ** 25


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
    view) also ``"agreement"`` (`lsnet_tf.inference.ensemble.Agreement` of the case),
    ``"box_member"`` (the member of each of the K box entries) and ``"disagreement"``
    (``(n, H, W)`` float32 map when `disagreement`, else None) and ``"slice_ranking"`` (the
    slices of most disagreement with their maps, `lsnet_tf.inference.review.SliceRanking`).
    """
    n = hu.shape[0]
    per_slice = max(1, int(hu.shape[1]) * int(hu.shape[2]))
    step = max(1, min(int(predictor.batch_size), MAX_BATCH_PIXELS // per_slice))
    masks, rest = [], {"boxes": [], "scores": [], "keypoints": [], "valid": []}
    views = int(getattr(predictor, "views", 1))
    agreement = ensemble.Agreement(views) if views > 1 else None
    ranking = review.SliceRanking() if views > 1 else None
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
            ranking.add(start, out["disagreement"])
            if disagreement:
                maps.append(out["disagreement"])
        if progress:
            progress(min(start + step, n), n)
    result = {"mask": np.concatenate(masks, 0),
              **{k: np.concatenate(v, 0) for k, v in rest.items()}}
    if agreement is not None:
        result.update(agreement=agreement, box_member=box_member, slice_ranking=ranking,
                      disagreement=np.concatenate(maps, 0) if disagreement else None)
    return result

