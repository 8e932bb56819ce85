"""Localization or delineation: where one two-stage model loses to another, measured without
retraining (``python -m lsnet_tf.experiments oracle``).

L-SNet and the coarse-to-fine model both find a region, then segment it. When one trails the
other, the gap is either in the first stage (the boxes) or in the second (how a found region is
segmented). For each trained pair of runs on the same (fold, seed), on the held-out fold:

- ``own``: each model as it is (its ``predict_masks``);
- ``truth``: each second stage fed the ground-truth boxes of the slice, through its own rule:
  L-SNet's S-Net on one RR RoI per box (keypoint = the box centre, distances = the box's
  half-extents, RR's margin m added as in Eq. 3); the coarse-to-fine model's fine network on one
  hard crop of the union of the boxes (``crop_mode="union"``; one crop per box with
  ``"components"``), grown by its margin, rounded outward and clipped, as at inference;
- ``swapped``: each second stage fed the other model's first-stage boxes (L-Net's boxes into the
  fine network, the coarse mask's boxes into RR and S-Net), through the same rules;
- ``boxes``: the first stages' boxes against the ground truth (the best IoU of each true box, 0
  when none was found: ``box_miou``), by target size.

Per-slice DSC, the share of targets found and box mIoU are averaged over the held-out slices
with a target, overall and per size bucket (``metrics.segmentation.size_bucket``). If a model's
second stage is as good as the other's once both get perfect boxes, the gap was localization;
if the gap stays, it is delineation.
"""
from __future__ import annotations

import numpy as np

from lsnet_tf.metrics import segmentation as seg
from lsnet_tf.metrics.evaluation import SIZE_BUCKETS, slice_rows

CONDITIONS = ("own", "truth", "swapped")


def second_stage_on_boxes(model, images, boxes, valid):
    """The second stage of a two-stage `model` (``LSNet``, ``CoarseToFine`` or ``LNetCrop``) on
    given boxes ``(B, K, 4)`` xyxy with ``(B, K)`` bool `valid`, through the model's own RoI
    rule (see the module docstring): the pasted-back probabilities ``(B, H, W, C)``."""
    import tensorflow as tf

    from lsnet_tf.models import two_stage
    from lsnet_tf.models.lsnet import LSNet
    from lsnet_tf.ops import crops

    boxes = tf.convert_to_tensor(boxes, tf.float32)
    valid = tf.convert_to_tensor(valid, tf.bool)
    if isinstance(model, LSNet):
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        distances = tf.concat([centres - boxes[..., :2], boxes[..., 2:] - centres], -1)

        def take(images, keypoints, dist):
            return model.rr([images, keypoints, dist])

        return two_stage.segment_rois(model.snet, images, model.image_size, valid, take,
                                      centres, distances)
    if getattr(model, "crop_mode", "components") == "union":
        boxes = crops.union_box(boxes, valid)[:, None]
        valid = tf.reduce_any(valid, axis=1, keepdims=True)
    return model._segment_rois(images, boxes, valid)


def _truth_valid(batch):
    import tensorflow as tf

    k = tf.shape(batch["boxes"])[1]
    return tf.range(k)[None, :] < tf.cast(batch["num_boxes"], tf.int32)[:, None]


def compare_pair(models: dict, batches) -> dict:
    """Per-slice rows (``metrics.evaluation.slice_rows``) of two two-stage models under each
    condition of ``CONDITIONS`` over the batches of ``data.pipeline.eval_dataset``.

    Args:
      models: ``{name: model}``, exactly two.
      batches: the held-out slices.

    Returns:
      ``{name: {condition: [row, ...]}}``; a row's ``box_ious`` are those of the boxes the
      second stage was given (the model's own first stage for ``own``, the other's for
      ``swapped``, the truth for ``truth``).
    """
    import tensorflow as tf

    if len(models) != 2:
        raise ValueError(f"compare_pair takes two models, received {len(models)}")
    names = list(models)
    predict = {n: tf.function(models[n].predict_masks) for n in names}
    on_boxes = {n: tf.function(lambda im, b, v, m=models[n]: second_stage_on_boxes(m, im, b, v))
                for n in names}
    rows = {n: {c: [] for c in CONDITIONS} for n in names}
    for batch in batches:
        images = batch["image"]
        own = {n: predict[n](images) for n in names}
        truth_valid = _truth_valid(batch)
        n_images = int(images.shape[0])
        ids = batch["patient_id"].numpy() if "patient_id" in batch else [""] * n_images
        index = batch["slice_index"].numpy() if "slice_index" in batch else np.arange(n_images)
        truth = batch["mask"].numpy()[..., 0]

        def add(name, condition, mask, boxes, valid):
            rows[name][condition] += slice_rows(ids, index, truth, np.asarray(mask)[..., 0],
                                                batch["boxes"].numpy(), batch["num_boxes"].numpy(),
                                                np.asarray(boxes), np.asarray(valid))

        for me, other in (names, names[::-1]):
            add(me, "own", own[me]["mask"], own[me]["boxes"], own[me]["valid"])
            add(me, "truth", on_boxes[me](images, batch["boxes"], truth_valid),
                batch["boxes"], truth_valid)
            add(me, "swapped", on_boxes[me](images, own[other]["boxes"], own[other]["valid"]),
                own[other]["boxes"], own[other]["valid"])
    return rows


def _mean(values):
    return float(np.mean(values)) if values else None


def summarize_rows(rows) -> dict:
    """Over the slices with a target of `rows`: ``dsc`` (mean per-slice DSC), ``found`` (share
    of slices with a predicted pixel on the target), ``box_miou`` (mean best IoU of the true
    boxes) and ``slices``, overall (``"all"``) and per size bucket, in % (None where no slice)."""
    target = [r for r in rows if r["n_true"] > 0]
    groups = {"all": target}
    for b in SIZE_BUCKETS:
        groups[b] = [r for r in target if seg.size_bucket(r["n_true"], r["pixels"]) == b]
    out = {}
    for name, group in groups.items():
        dsc = [2.0 * r["tp"] / (r["n_true"] + r["n_pred"]) for r in group]
        ious = [v for r in group for v in r["box_ious"]]
        out[name] = {"slices": len(group),
                     "dsc": None if not group else round(100 * _mean(dsc), 2),
                     "found": None if not group else round(
                         100 * _mean([float(r["tp"] > 0) for r in group]), 2),
                     "box_miou": None if not ious else round(100 * _mean(ious), 2)}
    return out
