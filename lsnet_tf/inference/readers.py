"""The inputs of ``python -m lsnet_tf.predict``, read into a `Volume`: ``read_input(path)``.

``--input``:

- a DICOM folder: one CT series (``lsnet_tf.data.dicom.read_series``: slices sorted by position,
  HU from the rescale tags, canonical orientation), told by DICOM files directly in the folder;
  ``--series-uid UID`` picks one of several series in it (the error for such a folder lists
  them with their descriptions and slice counts); files among the slices that are not DICOM
  at all (zero bytes, a stray note) are left out with a warning naming them;
- a NIfTI file (``.nii``/``.nii.gz``): a 3-D volume, brought to the canonical orientation for
  inference (``lsnet_tf.data.volumes.canonicalize``) and the mask brought back to the file's own
  axis order;
- a ``.npy`` file: raw HU, one slice ``(H, W)`` or a volume ``(slices, H, W)`` in the canonical
  layout (no geometry: ``--spacing``);
- a ``.png`` file: one slice. 8-bit gray is taken as a display image in the model's HU window
  (value v is ``center - width / 2 + v / 255 * width`` HU, which the model's window maps back to
  v / 255); 16-bit gray as HU + 32768 (the DeepLesion convention). Colour PNGs must be gray.
- many cases (`lsnet_tf.inference.many`, `lsnet_tf.inference.batch`): a folder of cases (NIfTI
  files and DICOM series folders, found recursively: any folder without DICOM files directly in
  it) or a ``.txt``/``.lst`` file listing inputs one a line; each case is read here.

Canonical orientation (as in training): slice 0 the lowest z, row 0 the most anterior, column 0
the patient's right (``lsnet_tf.data.volumes``).

Sizes: a slice may have any size from 1 x 1 pixels (the model resizes it to its input size and
the outputs back). Larger than ``lsnet_tf.data.volumes.MAX_SLICE_PIXELS`` (8192 x 8192) per
slice or ``MAX_VOLUME_VOXELS`` (2**31) in all, or with an axis of length 0, the input is refused
from its header (DICOM tags, NIfTI header, .npy header, PNG size) before any voxel is read.

Refused inputs (`PredictError`; the command's exit status 1, the message names the file): a
missing path or unknown extension; an array that is not 2-D or 3-D, or a 3-D ``.npy`` whose
last axis has 1, 3 or 4 entries with both others >= 8 (an ``(H, W, C)`` image, not
``(slices, H, W)``); values that are not real numbers, or NaN/infinite values (``.npy``,
NIfTI); a colour or 1-bit PNG; the DICOM and NIfTI readers' own errors
(`lsnet_tf.data.volumes.PrepareError`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from lsnet_tf.data import dicom, nifti, volumes

__all__ = ["PredictError", "Volume", "read_input", "not_dicom_note", "DEFAULT_WINDOW",
           "INPUT_KINDS"]

DEFAULT_WINDOW = (40.0, 400.0)
INPUT_KINDS = "a DICOM folder, a NIfTI file (.nii, .nii.gz), a .npy array or a .png image"


class PredictError(ValueError):
    """The input or the model cannot be used; the message names the path and the reason."""



@dataclasses.dataclass
class Volume:
    """An input volume ready for inference.

    hu: (slices, rows, cols) float32 raw HU in the canonical orientation (NPY/PNG: as given).
    spacing: (row, col, slice) mm. spacing_source: where the spacing comes from.
    kind: "dicom", "nifti", "npy" or "png". files: per-slice source files (axial DICOM), else [].
    source_files: DICOM: all the series' slice files, any orientation (for the DICOM SEG).
    info: more about the source for the summary (DICOM: series UID, skipped files).
    write_mask: ``write_mask(array, path, dtype=np.uint8)`` writes a (slices, rows, cols) array
      (the mask; the disagreement map as float32) to a NIfTI path in the input's geometry.
    affine: the canonical voxel->LPS affine of `hu` (DICOM/NIfTI), else None.
    """

    hu: np.ndarray
    spacing: tuple
    spacing_source: str
    kind: str
    write_mask: Callable[[np.ndarray, str], None]
    affine: np.ndarray | None = None
    files: list = dataclasses.field(default_factory=list)
    source_files: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    info: dict = dataclasses.field(default_factory=dict)


def _canonical_affine(spacing) -> np.ndarray:
    """Voxel->LPS affine of a canonical (slice, row, col) array at the origin."""
    dr, dc, ds = (float(s) for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, dc], [0.0, dr, 0.0], [ds, 0.0, 0.0]]
    return affine


def _write_canonical(affine):
    def write(mask, path, dtype=np.uint8):
        nifti.write_volume(path, mask.astype(dtype), affine)
    return write


def _read_dicom(folder: str, series_uid=None) -> Volume:
    vol = dicom.read_series(folder, series_uid=series_uid)
    # Files map to canonical slices only for an axial series (a re-cut one has none per slice).
    axial = int(np.argmax(np.abs(dicom.slice_normal(vol.source_orientation)))) == 2
    return Volume(hu=vol.hu.astype(np.float32), spacing=tuple(vol.spacing), spacing_source="dicom",
                  kind="dicom", write_mask=_write_canonical(vol.affine), affine=vol.affine,
                  files=list(vol.files) if axial else [], source_files=list(vol.files),
                  notes=list(vol.notes) + not_dicom_note(vol.skipped_files),
                  info={"series_uid": vol.series_uid,
                        "skipped_files": [list(f) for f in vol.skipped_files]})


def not_dicom_note(skipped) -> list:
    """A note naming the files of a DICOM folder that were left out as not DICOM at all."""
    files = [path for path, reason in skipped if reason.startswith(dicom.NOT_DICOM)]
    return [f"left out {len(files)} file(s) that are not DICOM: {', '.join(files)}"] if files \
        else []


def _read_nifti(path: str) -> Volume:
    import nibabel as nib

    img = nifti.load(path)
    data = nifti.read_image_array(img, path)
    stored_shape = data.shape
    affine = nifti.affine_lps(img, path)
    perm, flips = volumes.canonical_axes(affine, path)
    hu, affine_c = volumes.canonicalize(data.astype(np.float32), affine, path)

    def write(mask, out_path, dtype=np.uint8):
        # Undo canonicalize: the flips (on canonical axes), then the axis permutation.
        stored = mask
        for axis, flip in enumerate(flips):
            if flip:
                stored = np.flip(stored, axis=axis)
        stored = np.ascontiguousarray(np.transpose(stored, np.argsort(perm))).astype(dtype)
        assert stored.shape == stored_shape[:3], (stored.shape, stored_shape)
        header = img.header.copy()
        header.set_data_dtype(dtype)
        header.set_slope_inter(1.0, 0.0)
        out = nib.Nifti1Image(stored, img.affine, header)
        sform, sform_code = img.header.get_sform(coded=True)
        qform, qform_code = img.header.get_qform(coded=True)
        out.set_sform(sform if sform_code else img.affine, code=int(sform_code or 0))
        out.set_qform(qform if qform_code else img.affine, code=int(qform_code or 0))
        nib.save(out, out_path)

    return Volume(hu=hu, spacing=volumes.spacing_of(affine_c), spacing_source="nifti",
                  kind="nifti", write_mask=write, affine=affine_c)


def _check_shape(shape, path: str) -> tuple:
    """The (slices, H, W) shape of an input array of `shape`, checked before its values are read:
    rank 2 or 3, not an (H, W, C) image, not empty, within the size limits."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise PredictError(f"{path}: expected a 2-D slice (H, W) or a 3-D volume (slices, H, W), "
                           f"got shape {shape}")
    if shape[-1] in (1, 3, 4) and min(shape[:2]) >= 8:
        raise PredictError(f"{path}: shape {shape} looks like an (H, W, C) image with "
                           f"{shape[-1]} channel(s); save one gray slice as (H, W) or a volume as "
                           "(slices, H, W)")
    if min(shape) < 1:
        raise PredictError(f"{path}: empty array of shape {shape}")
    try:
        volumes.check_volume_size(shape, path)
    except volumes.VolumeSizeError as e:
        raise PredictError(str(e)) from e
    return shape


def _as_slices(array: np.ndarray, path: str) -> np.ndarray:
    array = np.reshape(array, _check_shape(array.shape, path))
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise PredictError(f"{path}: values of type {array.dtype} are not real numbers")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise PredictError(f"{path}: holds NaN or infinite values")
    return array


def _npy_shape(path: str) -> tuple:
    """The shape stored in a .npy header (the data is not read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)[0]
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)[0]
    return np.load(path, mmap_mode="r", allow_pickle=False).shape


def _read_npy(path: str, spacing, source) -> Volume:
    try:
        shape = _npy_shape(path)
    except Exception as e:
        raise PredictError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    _check_shape(shape, path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:
        raise PredictError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    hu = _as_slices(array, path)
    return Volume(hu=hu, spacing=tuple(spacing), spacing_source=source, kind="npy",
                  write_mask=_write_canonical(_canonical_affine(spacing)))


def _read_png(path: str, spacing, source, window) -> Volume:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            _check_shape((im.height, im.width), path)
            pixels = np.array(im.convert("RGBA") if mode in ("P", "PA") else im)
    except PredictError:
        raise
    except Exception as e:
        raise PredictError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from e
    if pixels.ndim == 3:  # LA, RGB, RGBA (palette images were expanded to RGBA)
        channels = pixels[..., :1] if pixels.shape[-1] == 2 else pixels[..., :3]
        if not all(np.array_equal(channels[..., 0], channels[..., c])
                   for c in range(1, channels.shape[-1])):
            raise PredictError(f"{path}: colour PNG (mode {mode}); a CT slice must be gray")
        pixels = channels[..., 0]
    notes = []
    if pixels.dtype == np.uint8:
        center, width = window
        hu = center - width / 2.0 + pixels.astype(np.float32) / 255.0 * width
        notes.append(f"8-bit PNG read as a display image in the window (center {center}, width "
                     f"{width}) HU")
    elif pixels.dtype in (np.uint16, np.int32) and mode.startswith("I"):
        hu = pixels.astype(np.float32) - 32768.0
        notes.append("16-bit PNG read as HU + 32768")
    else:
        raise PredictError(f"{path}: PNG of mode {mode} ({pixels.dtype}); expected 8- or "
                           "16-bit gray")
    return Volume(hu=_as_slices(hu, path), spacing=tuple(spacing), spacing_source=source,
                  kind="png", write_mask=_write_canonical(_canonical_affine(spacing)), notes=notes)


def read_input(path: str, spacing=None, window=DEFAULT_WINDOW, series_uid=None) -> Volume:
    """Read `path` (see the module docstring) into a `Volume`.

    `spacing` ``(row, col, slice)`` mm applies to NPY/PNG input (default 1 mm, noted as assumed).
    `window` ``(center, width)`` reads 8-bit PNGs. `series_uid` picks a series of a DICOM folder
    that holds several.

    Raises:
      PredictError: a missing path, an unsupported extension, an array that is not 2-D or 3-D
        or looks like an (H, W, C) image, an empty or too large array, values that are not finite
        real numbers, unreadable contents. DICOM and NIfTI readers raise their own `PrepareError`s
        (``DicomSeriesError``, ``NiftiError``, ``GeometryError``, ``VolumeSizeError``: also
        `ValueError`s).
    """
    if not os.path.exists(path):
        raise PredictError(f"{path}: input not found")
    if spacing is None:
        spacing, source = (1.0, 1.0, 1.0), "assumed 1 mm (no geometry in the input; --spacing)"
    else:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise PredictError(f"spacing must be three positive mm values (row, col, slice), "
                               f"got {spacing}")
        source = "--spacing"
    if os.path.isdir(path):
        return _read_dicom(path, series_uid)
    if series_uid:
        raise PredictError(f"{path}: --series-uid picks a series of a DICOM folder; this input "
                           "is a file")
    lower = path.lower()
    if lower.endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    if lower.endswith(".npy"):
        return _read_npy(path, spacing, source)
    if lower.endswith(".png"):
        return _read_png(path, spacing, source, window)
    raise PredictError(f"{path}: unsupported input (expected {INPUT_KINDS})")

