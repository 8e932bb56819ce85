"""NIfTI label and image volumes, brought to the canonical orientation of `lsnet_tf.data.volumes`.

Array order
-----------
nibabel returns a NIfTI array indexed ``(i, j, k)`` with ``img.affine`` mapping ``(i, j, k, 1)``
to RAS mm. Volumes converted from DICOM, among them the TCIA Pancreas-CT labels
(``TCIA_pancreas_labels-02-05-2017/labelNNNN.nii.gz``), are stored ``(x, y, z) = (col, row,
slice)``: the transpose of the DICOM stack ``(slice, row, col)``.

Nothing here assumes that order. `read_label` converts the affine to LPS (``volumes.ras_to_lps``),
finds the patient axis each array axis runs along, transposes the array to (z, y, x) and flips
the axes that run backwards (``volumes.canonicalize``) — the rule the DICOM stack goes through in
`lsnet_tf.data.dicom`. For a label stored (col, row, slice) with the DICOM geometry in its affine
this is ``label.transpose(2, 1, 0)`` followed by exactly the flips applied to the image (for
example, a row direction of (-1, 0, 0) flips the columns of both). Then the canonical geometries
are compared (shape, spacing, directions, first-voxel position within a tolerance); a mismatch is
a `volumes.GeometryError`, never a silent resampling.

The MSD layout (``imagesTr/x.nii.gz`` with ``labelsTr/x.nii.gz``) goes through the same
canonicalization for both files (rather than nibabel's ``as_closest_canonical``, which gives RAS
order), so both layouts give slices in one orientation.

Errors
------
All are `volumes.PrepareError`s (`ValueError`s) naming the file: `NiftiError` (missing or
unreadable file, not 3-D, no orientation, image voxels that are not finite real numbers, label
values that are not integers >= 0), `volumes.VolumeSizeError` (an axis of length 0, or a volume
above ``volumes.MAX_SLICE_PIXELS`` / ``MAX_VOLUME_VOXELS``, checked from the header before the
voxels are read) and `volumes.GeometryError` (oblique, or a label off the image's grid).
"""
from __future__ import annotations

import os

import numpy as np

from lsnet_tf.data import volumes
from lsnet_tf.data.volumes import GeometryError, PrepareError


class NiftiError(PrepareError):
    """A NIfTI file that cannot be used as a label or image volume; `path` names it."""


def load(path: str):
    """``nibabel.load`` with a `NiftiError` naming the file when it is missing or unreadable."""
    import nibabel as nib

    if not os.path.isfile(path):
        raise NiftiError(path, "file not found")
    try:
        img = nib.load(path)
        img.header  # noqa: B018 - force the header to be parsed
    except Exception as e:
        raise NiftiError(path, f"unreadable NIfTI file ({type(e).__name__}: {e})") from e
    return img


def affine_lps(img, path: str) -> np.ndarray:
    """The voxel->LPS affine of a NIfTI image; refuses files with no spatial orientation."""
    header = img.header
    if hasattr(header, "get_sform"):
        sform_code = int(header.get_sform(coded=True)[1] or 0)
        qform_code = int(header.get_qform(coded=True)[1] or 0)
        if sform_code == 0 and qform_code == 0:
            raise NiftiError(path, "no spatial orientation (sform_code and qform_code are 0): "
                                   "cannot tell which way the array lies in the patient")
    return volumes.ras_to_lps(img.affine)


def read_array(img, path: str, dtype=None) -> np.ndarray:
    """The voxel array as 3-D (trailing length-1 axes dropped).

    The shape is checked from the header first: `NiftiError` when it is not 3-D,
    `volumes.VolumeSizeError` when it is empty or too large (``volumes.check_volume_size``, on
    the shape in canonical (slice, row, col) order).
    """
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise NiftiError(path, f"expected a 3-D volume, got shape {shape}")
    try:  # canonical order for the size limits; an oblique affine is refused later, not here
        perm = volumes.canonical_axes(volumes.ras_to_lps(img.affine), path)[0]
    except (ValueError, TypeError):
        perm = [2, 1, 0]
    volumes.check_volume_size(tuple(shape[p] for p in perm), path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise NiftiError(path, f"voxel data cannot be read ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(path, f"expected a 3-D volume, got shape {data.shape}")
    return data if dtype is None else data.astype(dtype)


def read_image_array(img, path: str) -> np.ndarray:
    """`read_array` for an image: real-number voxels, all finite (`NiftiError` otherwise, with
    the count and the first stored index of a NaN/infinite voxel)."""
    data = read_array(img, path)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise NiftiError(path, f"image voxels of type {data.dtype} are not real numbers")
    if not np.issubdtype(data.dtype, np.integer):
        bad = ~np.isfinite(data)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise NiftiError(path, f"{int(bad.sum())} of {data.size} image voxels are NaN or "
                                   f"infinite (first at stored index {first}); fix or mask them "
                                   "before preparing or predicting")
    return data


def _integer_labels(data: np.ndarray, path: str) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise NiftiError(path, f"label voxels of type {data.dtype} are not numbers")
    if not np.issubdtype(data.dtype, np.integer):
        finite = np.isfinite(data)
        if not finite.all():
            raise NiftiError(path, f"{int((~finite).sum())} label voxels are NaN or infinite; a "
                                   "label holds integer class values")
        if not np.array_equal(data, np.round(data)):
            bad = data[data != np.round(data)].ravel()[:3]
            raise NiftiError(path, f"label values must be integers, found {bad.tolist()} "
                                   "(is this an image rather than a label?)")
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0:
        negative = np.unique(data[data < 0])[:5].astype(np.int64).tolist()
        raise NiftiError(path, f"negative label values {negative}: labels are class values >= 0 "
                               "(0 = background)")
    dtype = np.uint8 if 0 <= lo and hi <= 255 else np.int32
    return data.astype(dtype)


def read_label(path: str, ref_affine: np.ndarray, ref_shape, reference: str = "the image",
               origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM) -> np.ndarray:
    """Read a label volume in the canonical orientation and check it lies on the image grid.

    Args:
      path: NIfTI label file.
      ref_affine: canonical voxel->LPS affine of the image (``DicomVolume.affine``).
      ref_shape: canonical (slice, row, col) shape of the image.
      reference: how to name the image in errors (e.g. its folder).
      origin_tol_mm: allowed distance between the first voxels of label and image.

    Returns:
      (slice, row, col) integer label array (uint8 when the values fit), same layout as the image.

    Raises:
      NiftiError: missing/unreadable file, not 3-D, no orientation, values that are not
        integers >= 0 (NaN, infinite, fractional, negative).
      volumes.VolumeSizeError: an empty or too large volume.
      GeometryError: oblique label, or a shape/spacing/direction/origin differing from the image.
    """
    img = load(path)
    data = _integer_labels(read_array(img, path), path)
    aff = affine_lps(img, path)
    labels, aff_c = volumes.canonicalize(data, aff, path)
    problems = volumes.geometry_mismatches(ref_affine, ref_shape, aff_c, labels.shape,
                                           origin_tol_mm=origin_tol_mm)
    if problems:
        raise GeometryError(path, f"label geometry does not match {reference} (stored shape "
                                  f"{tuple(data.shape)}, axes {volumes.axis_codes(aff)}): "
                                  + "; ".join(problems) + "; labels are never resampled")
    return labels


def read_image_and_label(image_path: str, label_path: str,
                         origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM
                         ) -> volumes.LabelledVolume:
    """An MSD image/label pair as a canonical `volumes.LabelledVolume` (HU rounded to int16)."""
    img = load(image_path)
    data = read_image_array(img, image_path)
    aff = affine_lps(img, image_path)
    hu, clipped = volumes.hu_to_int16(data)
    hu_c, aff_c = volumes.canonicalize(hu, aff, image_path)
    notes = [f"{clipped} voxels outside the int16 range were clipped"] if clipped else []
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        notes.append("image values were rounded to integer HU")
    labels = read_label(label_path, aff_c, hu_c.shape, reference=image_path,
                        origin_tol_mm=origin_tol_mm)
    return volumes.LabelledVolume(hu=hu_c, labels=labels, affine=aff_c,
                                  spacing=volumes.spacing_of(aff_c), notes=notes)


def write_volume(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D array (any axis order) whose voxel->LPS affine is `affine` as NIfTI, with the
    RAS affine in both sform and qform (code 1). What `load`/`affine_lps` read back."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array), volumes.ras_to_lps(affine))  # the flip is its own inverse
    img.header.set_sform(img.affine, code=1)
    img.header.set_qform(img.affine, code=1)
    nib.save(img, path)
