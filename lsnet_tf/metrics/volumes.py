"""Volume (3-D) metrics of a binary prediction against a binary label on one voxel grid (numpy and
scipy.ndimage): overlap, volumes in mL and the 95th-percentile Hausdorff distance in mm.

Used by ``python -m lsnet_tf.evaluate --predictions DIR --labels DIR`` on NIfTI masks of any
tool; both masks share one voxel grid (the caller checks it), whose voxel->world affine gives
the spacing: the length in mm of each array axis is the norm of the affine's column for that
axis, whatever the axis order or orientation.

Definitions, with P the predicted voxels, L the label voxels and ``tp = |P ∩ L|``:

- ``dsc = 2 tp / (|P| + |L|)``; ``precision = tp / |P|``; ``recall = tp / |L|``. When a count in a
  denominator is 0 the conventions of ``metrics.segmentation.scores_from_counts`` apply: both
  empty gives DSC, precision and recall 1; an empty prediction of a non-empty label gives 0, 0,
  0; a non-empty prediction of an empty label gives DSC 0, precision 0 and recall 1.
- ``pred_ml = |P| v``, ``label_ml = |L| v``, ``volume_diff_ml = pred_ml - label_ml`` (signed:
  positive when the prediction is larger) and ``abs_volume_diff_ml``, with the voxel volume
  ``v`` = the product of the affine's three column norms / 1000 (mL).
- Surface of a mask: its voxels with at least one of their 6 face neighbours outside the mask,
  the outside of the array counting as outside (``binary_erosion`` with the 3-D cross and
  ``border_value=0``; ``surface``).
- ``hd95_mm``: the distances (mm, spacing-aware ``distance_transform_edt(sampling=spacing)``)
  from every surface voxel of P to the nearest surface voxel of L, and from every surface voxel
  of L to the nearest surface voxel of P, pooled into one list; HD95 is its 95th percentile
  (``numpy.percentile``, linear interpolation). This is medpy's ``hd95``, which nnU-Net (v1)
  reports. MONAI's ``compute_hausdorff_distance(percentile=95)`` takes instead the larger of the
  two directed 95th percentiles: the same number when both directions give the same distances
  (e.g. a box shifted along one axis), mostly larger otherwise; ``hd95`` with ``pooled=False``
  computes that. Both masks empty: 0.0 (the surfaces agree). Exactly one mask
  empty: ``None`` (there is no surface to measure to); callers report such cases apart instead
  of averaging an arbitrary number.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from lsnet_tf.metrics.segmentation import scores_from_counts

HD_PERCENTILE = 95.0


def axis_spacing(affine) -> tuple:
    """The length in mm of one step along each array axis: the norms of the columns of the
    affine's 3x3 part (any axis order, orientation or sign)."""
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"a voxel affine is 4x4, got shape {a.shape}")
    return tuple(float(n) for n in np.linalg.norm(a[:3, :3], axis=0))


def voxel_volume_ml(affine) -> float:
    """Volume of one voxel in mL: the product of `axis_spacing` (mm^3) / 1000."""
    return float(np.prod(axis_spacing(affine))) / 1000.0


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a binary mask: voxels of the mask with a face neighbour (the cross of
    ``generate_binary_structure(ndim, 1)``) outside it; beyond the array is outside."""
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop(a: np.ndarray, b: np.ndarray):
    """Both masks cut to the bounding box of their union grown by one voxel (within the array).
    The surfaces and all surface-to-surface distances are the same as on the whole array: a mask
    touches a cut face only where that face is the array's border."""
    both = a | b
    slices = []
    for axis in range(both.ndim):
        other = tuple(i for i in range(both.ndim) if i != axis)
        hit = np.flatnonzero(both.any(axis=other))
        slices.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, both.shape[axis])))
    return a[tuple(slices)], b[tuple(slices)]


def surface_distances(pred: np.ndarray, label: np.ndarray, spacing) -> tuple:
    """``(pred_to_label, label_to_pred)``: for every surface voxel of `pred` the distance in mm to
    the nearest surface voxel of `label`, and the other way round (1-D float arrays). Both masks
    must be non-empty and of one shape; `spacing` is the mm per array axis."""
    pred, label = np.asarray(pred, bool), np.asarray(label, bool)
    if pred.shape != label.shape:
        raise ValueError(f"masks of different shapes {pred.shape} and {label.shape}")
    if not pred.any() or not label.any():
        raise ValueError("surface distances need two non-empty masks")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}-D mask")
    pred, label = _crop(pred, label)
    sp, sl = surface(pred), surface(label)
    to_label = ndimage.distance_transform_edt(~sl, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_label[sp], to_pred[sl]


def hd95(pred: np.ndarray, label: np.ndarray, spacing, percentile: float = HD_PERCENTILE,
         pooled: bool = True):
    """The `percentile`-th Hausdorff distance in mm (module docstring): of the pooled distances of
    both directions (default), or with ``pooled=False`` the larger of the two directed
    percentiles (MONAI's). 0.0 when both masks are empty, None when exactly one is."""
    p_any, l_any = bool(np.any(pred)), bool(np.any(label))
    if not p_any and not l_any:
        return 0.0
    if not p_any or not l_any:
        return None
    d_pl, d_lp = surface_distances(pred, label, spacing)
    if pooled:
        return float(np.percentile(np.concatenate([d_pl, d_lp]), percentile))
    return float(max(np.percentile(d_pl, percentile), np.percentile(d_lp, percentile)))


def case_metrics(pred: np.ndarray, label: np.ndarray, affine) -> dict:
    """All metrics of one case (module docstring) for binary `pred` and `label` of one shape on
    the grid of `affine` (voxel->world, mm): ``dsc``, ``precision``, ``recall``, ``pred_ml``,
    ``label_ml``, ``volume_diff_ml``, ``abs_volume_diff_ml``, ``hd95_mm`` (None when exactly one
    mask is empty), and the voxel counts ``pred_voxels``, ``label_voxels``, ``tp_voxels``."""
    pred, label = np.asarray(pred, bool), np.asarray(label, bool)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    n_pred, n_label = int(pred.sum()), int(label.sum())
    tp = int(np.count_nonzero(pred & label))
    v = voxel_volume_ml(affine)
    out = dict(scores_from_counts(tp, n_label, n_pred))
    out.update({
        "pred_ml": n_pred * v,
        "label_ml": n_label * v,
        "volume_diff_ml": (n_pred - n_label) * v,
        "abs_volume_diff_ml": abs(n_pred - n_label) * v,
        "hd95_mm": hd95(pred, label, axis_spacing(affine)),
        "pred_voxels": n_pred,
        "label_voxels": n_label,
        "tp_voxels": tp,
    })
    return out
