"""What ``python -m lsnet_tf.predict`` writes for a case: the summary and the overlays
(`summarize`, `save_overlay`; `lsnet_tf.inference.cases.predict_case` writes them all).

Outputs in ``--out`` (for many cases, in ``--out/<case>/``):

- ``mask.nii.gz``: uint8 mask (1 = target; with several classes, 1 + the class index, later
  classes on top). Its geometry is the input's: for NIfTI input the same shape, axis order and
  affine (sform/qform and their codes) as the input file; for DICOM input the canonical
  (slice, row, col) array with the affine built from the series' headers
  (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, slice positions), so it overlays
  the CT in any viewer; for NPY/PNG input the canonical layout at the origin with ``--spacing``.
- ``overlays/slice_NNNN.png``: each slice with findings (mask or box), windowed, the mask tinted
  green and the boxes outlined in red (NNNN = canonical slice index).
- ``summary.json``: input and model, shape, spacing (mm) and its source, voxel volume, mask voxel
  count and volume in mL (voxels x voxel volume / 1000), the slice range of the mask, and per slice
  with findings its voxels, area and boxes (xyxy pixels of the canonical slice, score, keypoint;
  the DICOM file for DICOM input).
- ``mask.seg.dcm`` (DICOM input, unless ``--no-dicom-seg``): the mask as a DICOM Segmentation for
  PACS and viewers (OHIF, 3D Slicer), one frame per CT slice with a finding, each referencing its
  slice by SOP Instance UID (`lsnet_tf.inference.dicom_seg`); an empty mask writes none and says
  so.
- ``disagreement.nii.gz`` (``--disagreement``, an ensemble or ``--tta``): float32 in the mask's
  geometry, per voxel the standard deviation of the views' probabilities (0 to 0.5).

A file that cannot be written is named with what it is (`lsnet_tf.utils.files.WriteError`).
"""
from __future__ import annotations

import numpy as np

from lsnet_tf.data import volumes
from lsnet_tf.utils.drawing import display_window, draw_boxes, overlay
from lsnet_tf.inference.readers import Volume
from lsnet_tf.inference.volume import MASK_THRESHOLD

__all__ = ["SEG_FILE", "DISAGREEMENT_FILE", "save_overlay", "summarize"]

SEG_FILE = "mask.seg.dcm"
DISAGREEMENT_FILE = "disagreement.nii.gz"


def save_overlay(path: str, hu: np.ndarray, mask: np.ndarray, boxes, valid, window) -> None:
    from PIL import Image

    image = display_window(hu, window)
    rgb = overlay(image, (mask > 0).astype(np.float32))
    rgb = np.where(draw_boxes(np.zeros_like(image), boxes, valid).sum(-1, keepdims=True) > 0,
                   np.array([1.0, 0.2, 0.2]), rgb)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)


def summarize(volume: Volume, pred: dict, extra: dict | None = None) -> dict:
    """The JSON summary of a prediction (see the module docstring)."""
    mask = pred["mask"]
    dr, dc, ds = (float(s) for s in volume.spacing)
    voxel_mm3 = dr * dc * ds
    count = int(np.count_nonzero(mask))
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    with_mask = np.flatnonzero(per_slice)
    notes = list(volume.notes)
    if ds <= 0:
        notes.append("slice spacing unknown (one slice without SpacingBetweenSlices/"
                     "SliceThickness): no volume in mL")
    slices = []
    box_member = pred.get("box_member")
    for k in range(mask.shape[0]):
        valid = pred["valid"][k].astype(bool)
        if not per_slice[k] and not valid.any():
            continue
        entry = {
            "index": int(k),
            "mask_voxels": int(per_slice[k]),
            "area_mm2": float(per_slice[k] * dr * dc),
            "boxes": [{"box": [round(float(v), 3) for v in pred["boxes"][k, j]],
                       "score": round(float(pred["scores"][k, j]), 6),
                       "keypoint": [round(float(v), 3) for v in pred["keypoints"][k, j]],
                       **({} if box_member is None else {"member": int(box_member[j])})}
                      for j in np.flatnonzero(valid)],
        }
        if volume.files:
            entry["file"] = volume.files[k]
        slices.append(entry)
    summary = {
        "input_format": volume.kind,
        "shape": [int(s) for s in mask.shape],
        "orientation": (volumes.CANONICAL_ORIENTATION if volume.kind in ("dicom", "nifti")
                        else "as given: (slice, row, col)"),
        "spacing_mm": {"row": dr, "col": dc, "slice": ds},
        "spacing_source": volume.spacing_source,
        "voxel_volume_mm3": voxel_mm3,
        "mask_voxels": count,
        "volume_ml": count * voxel_mm3 / 1000.0 if ds > 0 else None,
        "slice_range": [int(with_mask[0]), int(with_mask[-1])] if with_mask.size else None,
        "slices_with_mask": int(with_mask.size),
        "slices_with_findings": len(slices),
        "mask_threshold": MASK_THRESHOLD,
        "slices": slices,
        "notes": notes,
        **volume.info,
    }
    summary.update(extra or {})
    return summary

