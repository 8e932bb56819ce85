"""From 3-D volumes to slice records: canonical orientation, geometry checks, K-fold split.

Shared by both input layouts of ``python -m lsnet_tf.prepare`` (TCIA DICOM series with NIfTI
labels, and the Medical Segmentation Decathlon's NIfTI pairs); writing the shards, the run's
summary and ``dataset.json`` are `lsnet_tf.preparation.prepare`'s.

Coordinates
-----------
Patient coordinates are DICOM's LPS: +x towards the patient's Left, +y Posterior, +z Superior
(head), in mm. NIfTI affines are RAS (+x Right, +y Anterior); ``ras_to_lps`` converts.

A *voxel affine* is a 4x4 matrix mapping integer voxel indices ``(i0, i1, i2, 1)`` of an array
(in its own axis order) to the LPS position of the voxel's centre; column ``j`` of its 3x3 part is
the step in mm of array axis ``j``.

Canonical orientation
---------------------
Every volume, whatever its storage order, is brought to one layout by permuting and flipping its
array axes (never by interpolation) — see ``canonicalize``:

    array (slice, row, col) with
    slice axis  along +z: slice 0 is the most inferior (lowest z), the slice index grows head-wards;
    row axis    along +y: row 0 is the most anterior, so the image top is the patient's front;
    column axis along +x: column 0 is the patient's right, so the image left is the patient's right.

This is the usual radiological display of an axial CT slice, i.e. the layout of a DICOM series
with ImageOrientationPatient (1, 0, 0, 0, 1, 0) stacked by increasing z. Images and labels go
through the same rule, each from its own affine, and their canonical geometries must then agree
(``geometry_mismatches``); nothing is resampled.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Sequence

import numpy as np

from lsnet_tf.data import records

# Array axes whose direction is further than this from a patient axis are refused (the volume
# would need resampling to be cut into axial slices).
MAX_OBLIQUE_DEG = 1.0
# Default tolerances for image/label geometry agreement.
ORIGIN_TOLERANCE_MM = 0.1
SPACING_RTOL = 1e-3
DIRECTION_ATOL = 1e-3

# Largest slice (rows x cols) and volume (slices x rows x cols) the readers accept: checked from
# the headers before any voxel is read. 8192 x 8192 is 16 times a 2048 x 2048 slice, far above
# any CT; 2**31 voxels are 8 GiB as float32.
MAX_SLICE_PIXELS = 8192 * 8192
MAX_VOLUME_VOXELS = 2 ** 31

CANONICAL_ORIENTATION = (
    "array (slice, row, col): slice 0 = lowest z (inferior), row 0 = most anterior, "
    "col 0 = patient right (DICOM orientation (1,0,0,0,1,0), slices by increasing z)")

_WORLD = "xyz"


class PrepareError(ValueError):
    """A patient cannot be prepared; `path` names the file or folder at fault, `reason` says why."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class GeometryError(PrepareError):
    """Unsupported geometry (oblique axes), or image and label geometries that disagree."""


class VolumeSizeError(PrepareError):
    """An empty volume (an axis of length 0), or one larger than `MAX_SLICE_PIXELS` per slice or
    `MAX_VOLUME_VOXELS` in all."""


class MissingLabelError(PrepareError):
    """A patient's label volume is missing or ambiguous."""


class PatientSkipped(PrepareError):
    """A patient deliberately left out (e.g. a non-axial series with ``--axial-only``); not a failure."""


def check_volume_size(shape: Sequence[int], path="<volume>") -> None:
    """Refuse a (slices, rows, cols) shape that is empty or too large, before reading the voxels.

    Raises:
      VolumeSizeError: an axis of length 0; rows x cols above `MAX_SLICE_PIXELS`; slices x rows
        x cols above `MAX_VOLUME_VOXELS` (both read at call time, so they can be changed).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise VolumeSizeError(path, f"empty volume: shape (slices, rows, cols) {shape} has no "
                                    "voxels")
    slices, rows, cols = shape
    if rows * cols > MAX_SLICE_PIXELS:
        raise VolumeSizeError(path, f"slices of {rows} x {cols} pixels are larger than the limit "
                                    f"of {MAX_SLICE_PIXELS} pixels (lsnet_tf.data.volumes."
                                    "MAX_SLICE_PIXELS); crop or downsample them first")
    if slices * rows * cols > MAX_VOLUME_VOXELS:
        raise VolumeSizeError(path, f"volume of {slices} x {rows} x {cols} voxels is larger than "
                                    f"the limit of {MAX_VOLUME_VOXELS} voxels (lsnet_tf.data."
                                    "volumes.MAX_VOLUME_VOXELS); split it into parts of fewer "
                                    "slices")


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Convert a 4x4 voxel->RAS affine (NIfTI) to voxel->LPS (DICOM): negate the x and y rows."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)


def axis_codes(affine: np.ndarray) -> str:
    """Signed patient axis of each array axis of a voxel->LPS affine, e.g. ``'+z+y+x'``."""
    codes = []
    for j in range(3):
        col = affine[:3, j]
        w = int(np.argmax(np.abs(col)))
        codes.append(("+" if col[w] >= 0 else "-") + _WORLD[w])
    return "".join(codes)


def canonical_axes(affine: np.ndarray, path="<volume>",
                   max_oblique_deg: float = MAX_OBLIQUE_DEG) -> tuple[list[int], list[bool]]:
    """How to reach the canonical layout from a voxel->LPS affine: ``(perm, flips)``.

    ``perm[j]`` is the array axis that becomes canonical axis j (z, y, x); ``flips[j]`` whether
    canonical axis j is then reversed. Raises `GeometryError` for an axis of zero length, two
    array axes closest to the same patient axis, or an axis more oblique than `max_oblique_deg`.
    """
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"a voxel affine is 4x4, got shape {affine.shape}")
    steps = affine[:3, :3]
    norms = np.linalg.norm(steps, axis=0)
    if np.any(norms <= 0) or not np.all(np.isfinite(steps)):
        raise GeometryError(path, f"degenerate voxel affine (axis lengths {norms.tolist()} mm)")
    dirs = steps / norms
    world = [int(np.argmax(np.abs(dirs[:, j]))) for j in range(3)]
    if sorted(world) != [0, 1, 2]:
        raise GeometryError(path, f"two array axes point along the same patient axis "
                                  f"(directions {np.round(dirs.T, 4).tolist()})")
    cosines = [abs(dirs[world[j], j]) for j in range(3)]
    worst = math.degrees(math.acos(min(1.0, min(cosines))))
    if worst > max_oblique_deg:
        raise GeometryError(path, f"oblique volume: an axis is {worst:.2f} degrees from the "
                                  f"closest patient axis (limit {max_oblique_deg}); slices would "
                                  "need resampling, which prepare does not do")
    perm = [world.index(w) for w in (2, 1, 0)]  # array axes along z, y, x
    flips = [bool(steps[w, perm[j]] < 0) for j, w in enumerate((2, 1, 0))]
    return perm, flips


def canonicalize(array: np.ndarray, affine: np.ndarray, path="<volume>",
                 max_oblique_deg: float = MAX_OBLIQUE_DEG) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip the axes of a 3-D array to the canonical (slice, row, col) layout.

    Args:
      array: 3-D voxel array in any axis order, e.g. a nibabel array stored (x, y, z) or a DICOM
        stack (slice, row, col) in any ImageOrientationPatient.
      affine: (4, 4) voxel->LPS affine of `array` (see the module docstring).
      path: named in errors.
      max_oblique_deg: largest allowed angle between an array axis and its closest patient axis.

    Returns:
      ``(canonical_array, canonical_affine)``: the array with axis 0 along +z, axis 1 along +y
      and axis 2 along +x (contiguous), and its voxel->LPS affine, whose 3x3 part is then (nearly)
      anti-diagonal and positive: column 0 (slice step) along +z, column 1 (row step) along +y,
      column 2 (column step) along +x.

    Raises:
      GeometryError: see `canonical_axes`.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"canonicalize needs a 3-D array, got shape {array.shape}")
    perm, flips = canonical_axes(affine, path, max_oblique_deg)
    out = np.transpose(array, perm)
    aff = np.asarray(affine, np.float64).copy()
    aff[:3, :3] = aff[:3, perm]
    for j, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis=j)
            aff[:3, 3] = aff[:3, 3] + aff[:3, j] * (out.shape[j] - 1)
            aff[:3, j] = -aff[:3, j]
    return np.ascontiguousarray(out), aff


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """(row, col, slice) spacing in mm of a canonical voxel affine."""
    n = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return (float(n[1]), float(n[2]), float(n[0]))


def geometry_mismatches(ref_affine: np.ndarray, ref_shape: Sequence[int], affine: np.ndarray,
                        shape: Sequence[int], origin_tol_mm: float = ORIGIN_TOLERANCE_MM,
                        spacing_rtol: float = SPACING_RTOL,
                        direction_atol: float = DIRECTION_ATOL) -> list[str]:
    """Differences between two canonical geometries, as sentences (empty when they agree).

    Both affines are canonical voxel->LPS affines (``canonicalize``) of arrays of the given
    (slice, row, col) shapes. Compared: the shape; the spacing of each axis (relative tolerance;
    the slice spacing is not compared when there is one slice); the axis directions; the position
    of the first voxel (absolute tolerance in mm).
    """
    ref_shape, shape = tuple(int(s) for s in ref_shape), tuple(int(s) for s in shape)
    if ref_shape != shape:
        return [f"shape (slice, row, col) {shape} differs from {ref_shape}"]
    problems = []
    ref_n = np.linalg.norm(ref_affine[:3, :3], axis=0)
    n = np.linalg.norm(affine[:3, :3], axis=0)
    for j, name in enumerate(("slice", "row", "col")):
        if j == 0 and shape[0] == 1:
            continue
        if abs(n[j] - ref_n[j]) > spacing_rtol * ref_n[j]:
            problems.append(f"{name} spacing {n[j]:.6g} mm differs from {ref_n[j]:.6g} mm")
    dirs, ref_dirs = affine[:3, :3] / n, ref_affine[:3, :3] / ref_n
    if np.max(np.abs(dirs - ref_dirs)) > direction_atol:
        problems.append(f"axis directions {np.round(dirs.T, 5).tolist()} differ from "
                        f"{np.round(ref_dirs.T, 5).tolist()}")
    delta = float(np.linalg.norm(affine[:3, 3] - ref_affine[:3, 3]))
    if delta > origin_tol_mm:
        problems.append(f"first voxel at LPS {np.round(affine[:3, 3], 4).tolist()} mm is "
                        f"{delta:.4g} mm from {np.round(ref_affine[:3, 3], 4).tolist()} mm "
                        f"(tolerance {origin_tol_mm} mm)")
    return problems


def hu_to_int16(hu: np.ndarray) -> tuple[np.ndarray, int]:
    """Round HU to int16; returns the array and the number of voxels clipped to the int16 range."""
    hu = np.rint(np.asarray(hu, np.float64))
    clipped = int(np.count_nonzero((hu < -32768) | (hu > 32767)))
    return np.clip(hu, -32768, 32767).astype(np.int16), clipped


def parse_label_values(text: str | None) -> tuple[int, ...] | None:
    """``"1,2"`` -> (1, 2); None or ``""`` -> None (every non-zero label value is target)."""
    if text is None or not str(text).strip():
        return None
    try:
        values = tuple(sorted({int(v) for v in str(text).split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"label values must be comma-separated integers, got {text!r}") from None
    if not values or any(v == 0 for v in values):
        raise ValueError(f"label values must be non-empty and non-zero (0 is background), got {text!r}")
    return values


def target_mask(labels: np.ndarray, label_values: Iterable[int] | None) -> np.ndarray:
    """Binary target (uint8): the union of `label_values`, or every non-zero label when None."""
    labels = np.asarray(labels)
    if label_values is None:
        return (labels != 0).astype(np.uint8)
    return np.isin(labels, np.asarray(list(label_values))).astype(np.uint8)


def kfold_split(patient_ids: Iterable[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Patient-level K-fold assignment: {patient_id: fold}.

    The sorted ids are shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin, so
    fold sizes differ by at most one and the result depends only on the set of ids, `folds` and
    `seed` (not on the order the ids are given in). Every patient is in exactly one fold.
    """
    ids = [str(p) for p in patient_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise ValueError(f"duplicate patient ids {dup}: each patient must appear once")
    if int(folds) < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    ids = sorted(ids)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    return {ids[int(i)]: k % int(folds) for k, i in enumerate(order)}


@dataclasses.dataclass
class LabelledVolume:
    """A patient's canonical volume and its labels, to prepare: `hu` (slice, row, col) int16,
    `labels` same shape (label values as integers), `affine` the canonical voxel->LPS affine,
    `spacing` (row, col, slice) mm. (An input of ``python -m lsnet_tf.predict``, without labels,
    is a ``lsnet_tf.inference.readers.Volume``.)"""

    hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple
    skipped_files: list = dataclasses.field(default_factory=list)  # [(path, reason)]
    notes: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.hu.ndim != 3 or self.labels.shape != self.hu.shape:
            raise ValueError(f"hu and labels must be 3-D of one shape, got {self.hu.shape} and "
                             f"{self.labels.shape}")


@dataclasses.dataclass
class PatientSource:
    """One patient to prepare: its id, a loader returning its `LabelledVolume`, and its input paths."""

    patient_id: str
    load: Callable[[], LabelledVolume]
    sources: dict = dataclasses.field(default_factory=dict)


def volume_records(volume: LabelledVolume, patient_id: str, fold: int, label_values=None):
    """Yield one `records.SliceRecord` per axial slice, slice_index in z order (0 = lowest z)."""
    mask = target_mask(volume.labels, label_values)
    for k in range(volume.hu.shape[0]):
        yield records.SliceRecord(volume.hu[k], mask[k], patient_id, k,
                                  spacing=tuple(volume.spacing), fold=fold)
