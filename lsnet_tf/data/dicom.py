"""Read one CT series from a folder of DICOM files into a canonical HU volume.

``read_series(folder)`` does, in order:

1. Collects the files under `folder` (recursively): names ending in ``.dcm`` (any case) or with
   no extension; hidden files and ``DICOMDIR`` are ignored. None -> `DicomSeriesError` (empty).
2. Reads every header with ``pydicom.dcmread`` (pixel data located but not loaded). A file
   that is not DICOM at all (zero bytes, or no ``DICM`` prefix and no dataset pydicom
   recognises: a stray note or thumbnail among the slices) is left out and reported as
   skipped (``not DICOM: ...``; the steps below still require a complete series), unless no
   file is DICOM (then the first one's error). A DICOM file that cannot be read to its end, or
   whose elements used here cannot be decoded -> `DicomSeriesError` naming it.
3. Leaves out localizer/scout images (ImageType containing ``LOCALIZER``) and non-image objects
   (a known SOP class that is not an image storage class: structured reports, RT structure
   sets, plans and doses, presentation states, ...), reported as skipped. A folder with only
   such files -> `DicomSeriesError`.
4. Groups the rest by SeriesInstanceUID. Several series -> `DicomSeriesError` listing them
   (UID, description, modality, slice count), unless `series_uid` names exactly one of them
   (the others are then skipped; ``--series-uid`` of ``predict`` and ``prepare``).
5. Requires every file of the series to be a single-frame, single-sample image with positive
   Rows and Columns, PixelSpacing, ImagePositionPatient, ImageOrientationPatient ("not an image
   slice" otherwise) and pixel data that the file really holds (a file cut short before or
   inside its PixelData is reported as truncated). Files whose orientation or size differs from
   the series majority are left out as localizer-like images (reported); without a strict
   majority -> error. Slices larger than ``volumes.MAX_SLICE_PIXELS`` or a series larger than
   ``volumes.MAX_VOLUME_VOXELS`` -> `volumes.VolumeSizeError`, before any pixel is read.
6. Sorts slices by ImagePositionPatient projected on the slice normal n = r x c (the cross
   product of the row and column direction cosines of ImageOrientationPatient) — never by
   InstanceNumber or file name. Duplicate positions, gaps (a missing slice), non-uniform spacing
   and positions that drift off the normal (gantry tilt / shear) -> `DicomSeriesError` with the
   positions and files.
7. Reads the pixels: HU = stored value * RescaleSlope + RescaleIntercept, per file (identity with
   a note when the tags are absent; a slope or intercept that is not a finite number -> error);
   rounded to int16.
8. Brings the stack to the canonical orientation of `lsnet_tf.data.volumes` (slice 0 = lowest z,
   row 0 = anterior, column 0 = patient right) by axis flips/permutations derived from the
   geometry. A row direction of (-1, 0, 0), for example, means the stored columns run from the
   patient's left to right: the columns are flipped. Labels go through the same rule (see
   `lsnet_tf.data.nifti`), so they stay on the same anatomy.

The geometry of the stacked array (slice k in projection order, row r, column c) is
``P0 + k * step + r * dr * c_dir + c * dc * r_dir`` with P0 the first slice's position, `step`
the mean slice-to-slice offset, (dr, dc) = PixelSpacing (row spacing, column spacing), r_dir and
c_dir the row and column direction cosines.

Errors
------
Every refusal of input is a `lsnet_tf.data.volumes.PrepareError` (a `ValueError`) whose `path`
names the file or folder at fault and whose message says why: `DicomSeriesError` for what is
wrong with the files (unreadable, truncated, not an image, mixed series, gaps, bad tags, pixel
data that cannot be decoded), `volumes.GeometryError` for an oblique series,
`volumes.VolumeSizeError` for an empty or oversized one, and `volumes.PatientSkipped` for a
non-axial series with ``axial_only``. `read_header`, `read_hu`, `sort_slices` and `read_series`
raise nothing else for any file content (a property-based test feeds them random bytes and
random headers).
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from lsnet_tf.data import volumes
from lsnet_tf.data.volumes import PatientSkipped, PrepareError

# Two slice positions closer than this along the normal are duplicates (mm).
DUPLICATE_TOL_MM = 1e-3
# Slice spacing may vary by max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * median) before it counts as
# non-uniform; a step above GAP_FACTOR * median is reported as a gap.
SPACING_ABS_TOL_MM = 0.01
SPACING_REL_TOL = 0.01
GAP_FACTOR = 1.5
# Largest distance (mm) of a slice position from the line through the first one along the normal.
DRIFT_TOL_MM = 0.1

_REQUIRED = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")
# Every element this module reads; decoded when the header is read, so that a malformed value is
# reported as the file's fault there.
_USED = ("SOPClassUID", "Modality", "SeriesInstanceUID", "SeriesDescription", "ImageType",
         "NumberOfFrames", "SamplesPerPixel", "RescaleSlope", "RescaleIntercept",
         "SpacingBetweenSlices", "SliceThickness") + _REQUIRED
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Values longer than this stay on disk when a header is read (the pixel data, in practice).
_DEFER_BYTES = 4096
# How the reason of a file left out as not DICOM at all starts (in `DicomVolume.skipped_files`).
NOT_DICOM = "not DICOM"


class DicomSeriesError(PrepareError):
    """A DICOM file or series that cannot be read into a volume; `path` names the file or folder."""


@dataclasses.dataclass
class DicomVolume:
    """A series in canonical orientation.

    hu: (slice, row, col) int16 HU. affine: canonical voxel->LPS affine (4, 4).
    spacing: (row, col, slice) mm; the slice spacing is 0.0 when unknown (one slice and no
    SpacingBetweenSlices/SliceThickness). files: the slices' files in canonical (z) order for an
    axial series (in acquisition order for a series re-cut from another plane).
    skipped_files: [(path, reason)] left out (localizers, other series, minority orientation).
    source_orientation: ImageOrientationPatient of the series as stored.
    """

    hu: np.ndarray
    affine: np.ndarray
    spacing: tuple
    series_uid: str
    files: list
    skipped_files: list
    notes: list
    source_orientation: tuple


def list_dicom_files(folder: str) -> list[str]:
    """Candidate DICOM files under `folder`, sorted (``*.dcm`` or no extension; no hidden files,
    no DICOMDIR)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            ext = os.path.splitext(name)[1]
            if ext == "" or ext.lower() == ".dcm":
                out.append(os.path.join(root, name))
    return out


def read_header(path: str):
    """The dataset of one file with its pixel data located but not loaded.

    Raises `DicomSeriesError` naming the file when it is not readable DICOM or when an element
    this module uses cannot be decoded.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except Exception as e:  # InvalidDicomError, OSError, truncated or malformed elements
        raise DicomSeriesError(path, f"unreadable DICOM file ({type(e).__name__}: {e})") from e
    for keyword in _USED:
        _get(ds, keyword, path)
    return ds


def _get(ds, keyword: str, path: str, default=None):
    """``ds.get(keyword, default)``; a value that cannot be decoded -> `DicomSeriesError`."""
    try:
        return ds.get(keyword, default)
    except Exception as e:  # pydicom decodes raw values lazily: bad numbers, bad lengths, ...
        raise DicomSeriesError(path, f"unreadable DICOM element {keyword} "
                                     f"({type(e).__name__}: {e})") from e


def sop_class_name(ds) -> str:
    """The name of the file's SOP class (SOPClassUID, else the file meta's
    MediaStorageSOPClassUID); '' when absent or not a known UID."""
    from pydicom.uid import UID_dictionary

    try:
        uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    except Exception:  # an undecodable UID names no known class
        return ""
    entry = UID_dictionary.get(str(uid or "").strip())
    return str(entry[0]) if entry else ""


def is_non_image(ds) -> bool:
    """True for a file of a known SOP class that is not an image storage class (structured
    reports, RT structure sets, plans and doses, presentation states, ...)."""
    name = sop_class_name(ds)
    return name.endswith("Storage") and "Image" not in name


def _as_list(value) -> list:
    """The items of a multi-valued element; a single value (a number, a string) as one item."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return [value]
    return list(value)


def _image_type(ds) -> list[str]:
    value = ds.get("ImageType")
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        value = value.split("\\")
    return [str(v).strip().upper() for v in _as_list(value)]


def _int(ds, keyword: str, path: str, default=None) -> int:
    """An integer element (`default` when absent or empty); `DicomSeriesError` otherwise."""
    value = _get(ds, keyword, path)
    if value is None or value == "":
        if default is None:
            raise DicomSeriesError(path, f"no {keyword}")
        return default
    try:
        out = int(value)
        if out != float(value):
            raise ValueError("not an integer")
    except Exception as e:
        raise DicomSeriesError(path, f"{keyword} is not an integer: {value!r}") from e
    return out


def _float(ds, keyword: str, path: str, default=None):
    """A finite number element (`default` when absent or empty); `DicomSeriesError` otherwise."""
    value = _get(ds, keyword, path)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except Exception as e:
        raise DicomSeriesError(path, f"{keyword} is not a number: {value!r}") from e
    if not np.isfinite(out):
        raise DicomSeriesError(path, f"{keyword} must be a finite number, got {value!r}")
    return out


def _floats(ds, keyword: str, n: int, path: str) -> np.ndarray:
    value = _get(ds, keyword, path)
    if value is None or value == "":
        raise DicomSeriesError(path, f"no {keyword}")
    try:
        values = np.array([float(v) for v in _as_list(value)], np.float64)
    except Exception as e:
        raise DicomSeriesError(path, f"{keyword} is not numeric: {value!r}") from e
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise DicomSeriesError(path, f"{keyword} must hold {n} finite numbers, got {values.tolist()}")
    return values


def slice_normal(orientation) -> np.ndarray:
    """Unit normal r x c of a slice with ImageOrientationPatient `orientation` (r then c)."""
    o = np.asarray(orientation, np.float64)
    n = np.cross(o[:3], o[3:])
    return n / np.linalg.norm(n)


def _describe(ds) -> str:
    name = sop_class_name(ds)
    return (f"SOP class {ds.get('SOPClassUID', '?')}{f' ({name})' if name else ''}, modality "
            f"{ds.get('Modality', '?')}")


def check_pixels_present(ds, path: str) -> None:
    """`DicomSeriesError` unless the file holds pixel data: a PixelData (or float pixel data)
    element whose declared length the file really contains."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise DicomSeriesError(path, f"no pixel data (no PixelData element; {_describe(ds)}): an "
                                     "image header without pixels, or a file truncated before "
                                     f"its pixels ({os.path.getsize(path)} bytes)")
    raw = ds._dict.get(0x7FE00010)  # still on disk (deferred): check the file really holds it
    length, tell = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if isinstance(length, int) and isinstance(tell, int) and length != 0xFFFFFFFF:
        size = os.path.getsize(path)
        if tell + length > size:
            raise DicomSeriesError(path, f"truncated file: PixelData declares {length} bytes at "
                                         f"byte {tell}, but the file ends after {size} bytes")


def _check_image(ds, path: str) -> None:
    missing = [k for k in _REQUIRED if k not in ds or ds[k].value in (None, "")]
    if missing:
        raise DicomSeriesError(path, f"not an image slice: no {', '.join(missing)} "
                                     f"({_describe(ds)})")
    frames = _int(ds, "NumberOfFrames", path, default=1)
    if frames != 1:
        raise DicomSeriesError(path, f"multi-frame image ({frames} frames) is not a CT slice series")
    spp = _int(ds, "SamplesPerPixel", path, default=1)
    if spp != 1:
        raise DicomSeriesError(path, f"{spp} samples per pixel (colour image), expected 1")
    rows, cols = _int(ds, "Rows", path), _int(ds, "Columns", path)
    if rows < 1 or cols < 1:
        raise DicomSeriesError(path, f"empty image: Rows x Columns is {rows} x {cols}")
    check_pixels_present(ds, path)
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        _float(ds, keyword, path)
    o = _floats(ds, "ImageOrientationPatient", 6, path)
    r, c = o[:3], o[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise DicomSeriesError(path, f"ImageOrientationPatient {o.tolist()} is not two orthogonal "
                                     "unit vectors")
    ps = _floats(ds, "PixelSpacing", 2, path)
    if np.any(ps <= 0):
        raise DicomSeriesError(path, f"PixelSpacing must be positive, got {ps.tolist()}")
    _floats(ds, "ImagePositionPatient", 3, path)


def _not_dicom(path: str, error: DicomSeriesError) -> str | None:
    """The skip reason of a file that is not DICOM at all (zero bytes, or pydicom's
    ``InvalidDicomError``: no DICM prefix and no dataset it recognises), else None."""
    from pydicom.errors import InvalidDicomError

    try:
        if os.path.getsize(path) == 0:
            return f"{NOT_DICOM}: an empty file (0 bytes)"
    except OSError:
        return None
    if isinstance(error.__cause__, InvalidDicomError):
        return f"{NOT_DICOM}: no DICM prefix and no DICOM dataset"
    return None


def _pick_series(headers: dict, folder: str, series_uid, skipped: list) -> dict:
    groups = collections.defaultdict(dict)
    for path, ds in headers.items():
        groups[str(ds.get("SeriesInstanceUID", ""))][path] = ds
    if len(groups) == 1:
        return next(iter(groups.values()))
    wanted = {series_uid} if isinstance(series_uid, str) else set(series_uid or ())
    chosen = [uid for uid in groups if uid in wanted]
    if len(chosen) == 1:
        for uid, files in groups.items():
            if uid != chosen[0]:
                skipped += [(p, f"other series {uid}") for p in files]
        return groups[chosen[0]]
    desc = "; ".join(
        f"{uid or '<no SeriesInstanceUID>'} ({len(files)} slices, modality "
        f"{next(iter(files.values())).get('Modality', '?')}, "
        f"description {str(next(iter(files.values())).get('SeriesDescription', ''))!r}, "
        f"e.g. {os.path.basename(sorted(files)[0])})"
        for uid, files in sorted(groups.items()))
    asked = (f"--series-uid {', '.join(sorted(wanted))} names none of them; " if wanted and
             not chosen else "")
    raise DicomSeriesError(folder, f"folder mixes {len(groups)} series: {desc}; {asked}keep one "
                                   "series per folder or pick one with --series-uid UID")


def _majority(headers: dict, folder: str, skipped: list) -> dict:
    def key(path, ds):
        o = tuple(np.round(_floats(ds, "ImageOrientationPatient", 6, path), 3).tolist())
        return o, int(ds.Rows), int(ds.Columns)

    keys = {p: key(p, ds) for p, ds in headers.items()}
    counts = collections.Counter(keys.values())
    (best, n_best), = counts.most_common(1)
    if n_best * 2 <= len(keys):
        raise DicomSeriesError(folder, "no majority orientation/size among the slices: "
                                       + "; ".join(f"{n} x orientation {k[0]} size {k[1]}x{k[2]}"
                                                   for k, n in counts.most_common()))
    kept = {}
    for p, ds in headers.items():
        k = keys[p]
        if k == best:
            kept[p] = ds
        elif k[0] != best[0]:
            skipped.append((p, f"orientation {k[0]} differs from the series majority {best[0]} "
                               "(localizer-like image)"))
        else:
            skipped.append((p, f"size {k[1]}x{k[2]} differs from the series majority "
                               f"{best[1]}x{best[2]} (localizer-like image)"))
    spacings = {p: tuple(_floats(ds, "PixelSpacing", 2, p)) for p, ds in kept.items()}
    ref = spacings[min(spacings)]
    for p, s in sorted(spacings.items()):
        if np.max(np.abs(np.subtract(s, ref))) > 1e-4:
            raise DicomSeriesError(p, f"PixelSpacing {list(s)} differs from {list(ref)} of "
                                      f"{min(spacings)} in the same series")
    return kept


def sort_slices(headers: dict, folder: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Order the files of one series along the slice normal and check the spacing.

    Args:
      headers: {path: dataset} of one series, one orientation.
    Returns:
      ``(paths, positions, step)``: paths by increasing projection of ImagePositionPatient on
      the normal, those projections (mm), and the mean slice-to-slice offset (3-vector, mm; zero
      for a single slice).
    Raises:
      DicomSeriesError: duplicate positions, a gap, non-uniform spacing, or drift off the normal.
    """
    paths = list(headers)
    first = headers[paths[0]]
    normal = slice_normal(_floats(first, "ImageOrientationPatient", 6, paths[0]))
    ipp = {p: _floats(headers[p], "ImagePositionPatient", 3, p) for p in paths}
    paths.sort(key=lambda p: (float(ipp[p] @ normal), p))
    pos = np.array([ipp[p] @ normal for p in paths])
    if len(paths) == 1:
        return paths, pos, np.zeros(3)
    diffs = np.diff(pos)
    for k in np.nonzero(diffs < DUPLICATE_TOL_MM)[0]:
        raise DicomSeriesError(folder, f"two slices at the same position {pos[k]:.4f} mm along the "
                                       f"normal: {paths[k]} and {paths[k + 1]}")
    med = float(np.median(diffs))
    tol = max(SPACING_ABS_TOL_MM, SPACING_REL_TOL * med)

    def between(k):
        return (f"{diffs[k]:.4g} mm between {pos[k]:.4f} ({os.path.relpath(paths[k], folder)}) and "
                f"{pos[k + 1]:.4f} ({os.path.relpath(paths[k + 1], folder)})")

    gaps = [k for k in range(len(diffs)) if diffs[k] > GAP_FACTOR * med]
    if gaps:
        where = "; ".join(between(k) for k in gaps)
        raise DicomSeriesError(folder, f"gap in the series (slice spacing {med:.4g} mm): {where}; "
                                       "missing slices?")
    bad = [k for k in range(len(diffs)) if abs(diffs[k] - med) > tol]
    if bad:
        where = "; ".join(between(k) for k in bad)
        raise DicomSeriesError(folder, f"non-uniform slice spacing (median {med:.4g} mm, tolerance "
                                       f"{tol:.3g} mm): {where}")
    offsets = np.array([ipp[p] - ipp[paths[0]] for p in paths])
    drift = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    k = int(np.argmax(drift))
    if drift[k] > DRIFT_TOL_MM:
        raise DicomSeriesError(paths[k], f"slice position is {drift[k]:.3g} mm off the slice normal "
                                         "through the first slice (gantry tilt or sheared series; "
                                         "would need resampling)")
    return paths, pos, (ipp[paths[-1]] - ipp[paths[0]]) / (len(paths) - 1)


def read_hu(path: str, rows: int, cols: int) -> np.ndarray:
    """HU of one slice as float64 (rows, cols): stored value * RescaleSlope + RescaleIntercept
    (slope 1 and intercept 0 when the tags are absent). `DicomSeriesError` when the pixels cannot
    be decoded, do not have that shape, or the slope/intercept/pixels are not finite numbers."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:
        raise DicomSeriesError(path, f"pixel data cannot be read ({type(e).__name__}: {e})") from e
    if pixels.shape != (rows, cols):
        raise DicomSeriesError(path, f"pixel array shape {pixels.shape} differs from Rows x Columns "
                                     f"{rows}x{cols}")
    slope = _float(ds, "RescaleSlope", path, default=1.0)
    intercept = _float(ds, "RescaleIntercept", path, default=0.0)
    if not np.issubdtype(pixels.dtype, np.number) or not np.all(np.isfinite(pixels)):
        raise DicomSeriesError(path, "pixel data holds values that are not finite numbers")
    return pixels.astype(np.float64) * slope + intercept


def read_series(folder: str, series_uid=None, axial_only: bool = False) -> DicomVolume:
    """Read the CT series under `folder` into a canonical HU volume (see the module docstring).

    Args:
      folder: a patient (or series) folder; files are collected recursively.
      series_uid: a SeriesInstanceUID, or a collection of them, to pick when the folder holds
        several series.
      axial_only: skip (`PatientSkipped`) a series whose slice normal is not closest to z; without
        it, an axis-aligned sagittal or coronal series is re-cut into axial slices by permuting
        axes (no interpolation).

    Raises:
      DicomSeriesError: bad input, with the file or folder at fault and the reason.
      volumes.GeometryError: an oblique series.
      PatientSkipped: a non-axial series with `axial_only`.
    """
    if not os.path.isdir(folder):
        raise DicomSeriesError(folder, "not a folder")
    files = list_dicom_files(folder)
    if not files:
        raise DicomSeriesError(folder, "empty series: no DICOM files (*.dcm or no extension) found")
    skipped, notes = [], []
    headers = {}
    non_image = {}
    not_dicom = []
    for path in files:
        try:
            ds = read_header(path)
        except DicomSeriesError as e:
            reason = _not_dicom(path, e)
            if reason is None:
                raise
            not_dicom.append((path, reason, e))
            continue
        image_type = _image_type(ds)
        if "LOCALIZER" in image_type:
            skipped.append((path, f"localizer (ImageType {'/'.join(image_type)})"))
        elif is_non_image(ds):
            non_image[path] = ds
        else:  # before grouping: a truncated file must not pose as a series of its own
            check_pixels_present(ds, path)
            headers[path] = ds
    if not_dicom and not headers and not non_image and not skipped:
        raise not_dicom[0][2]  # no file is DICOM: the first one's error
    skipped += [(path, reason) for path, reason, _ in not_dicom]
    if not headers and non_image:  # nothing but reports, structure sets, ...: name the first
        path = min(non_image)
        _check_image(non_image[path], path)
        raise DicomSeriesError(path, f"not an image slice ({_describe(non_image[path])})")
    skipped += [(p, f"not an image ({_describe(ds)})") for p, ds in sorted(non_image.items())]
    if not headers:
        raise DicomSeriesError(folder, f"empty series: all {len(files)} DICOM files are localizers")
    headers = _pick_series(headers, folder, series_uid, skipped)
    for path, ds in headers.items():
        _check_image(ds, path)
    headers = _majority(headers, folder, skipped)
    paths, _, step = sort_slices(headers, folder)
    first = headers[paths[0]]
    orientation = _floats(first, "ImageOrientationPatient", 6, paths[0])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = slice_normal(orientation)
    if axial_only and int(np.argmax(np.abs(normal))) != 2:
        raise PatientSkipped(folder, f"not an axial series (slice normal {np.round(normal, 4).tolist()})")
    dr, dc = _floats(first, "PixelSpacing", 2, paths[0])
    slice_spacing = float(np.linalg.norm(step))
    if len(paths) == 1:  # the normal gives the direction; the spacing only if the header says it
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            value = _float(first, key, paths[0])
            if value is not None and value > 0:
                slice_spacing = value
                break
        step = normal * (slice_spacing or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * dr
    affine[:3, 2] = row_dir * dc
    affine[:3, 3] = _floats(first, "ImagePositionPatient", 3, paths[0])
    volumes.canonical_axes(affine, folder)  # refuse an oblique series before reading pixels
    rows, cols = int(first.Rows), int(first.Columns)
    volumes.check_volume_size((len(paths), rows, cols), folder)
    hu = np.empty((len(paths), rows, cols), np.int16)
    clipped = 0
    for k, path in enumerate(paths):  # one slice at a time: a float volume would be large
        hu[k], n = volumes.hu_to_int16(read_hu(path, rows, cols))
        clipped += n
    no_rescale = [p for p in paths if headers[p].get("RescaleSlope") is None
                  or headers[p].get("RescaleIntercept") is None]
    if no_rescale:
        notes.append(f"{len(no_rescale)} of {len(paths)} slices have no RescaleSlope/"
                     f"RescaleIntercept (e.g. {no_rescale[0]}): stored values taken as HU")
    if clipped:
        notes.append(f"{clipped} voxels outside the int16 range were clipped")
    modality = str(first.get("Modality", ""))
    if modality and modality != "CT":
        notes.append(f"modality {modality}, not CT: values are rescaled stored values, not HU")
    hu_c, affine_c = volumes.canonicalize(hu, affine, folder)
    spacing = volumes.spacing_of(affine_c)
    if slice_spacing == 0.0:
        spacing = (spacing[0], spacing[1], 0.0)
    slice_axis = int(np.argmax(np.abs(affine[:3, :3]), axis=0)[0])
    if slice_axis != 2:
        notes.append(f"series acquired along {'xyz'[slice_axis]}; re-cut into axial slices")
    order = paths[::-1] if slice_axis == 2 and affine[2, 0] < 0 else paths
    return DicomVolume(hu=hu_c, affine=affine_c, spacing=spacing,
                       series_uid=str(first.get("SeriesInstanceUID", "")), files=list(order),
                       skipped_files=skipped, notes=notes,
                       source_orientation=tuple(float(v) for v in orientation))
