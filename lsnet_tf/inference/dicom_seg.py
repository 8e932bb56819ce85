"""A predicted mask as a DICOM Segmentation (SEG) object that references the CT series, for PACS and
radiology viewers (OHIF, 3D Slicer): ``write_dicom_seg(mask, source_datasets, out_path)``.

`mask` is the (slice, row, col) mask in the canonical orientation of `lsnet_tf.data.volumes`, as
``python -m lsnet_tf.predict`` produces it for a DICOM series read by
``lsnet_tf.data.dicom.read_series``. Writing it back onto the CT slices undoes that reader's steps
from the slices' own headers (`series_layout`):

1. the slices are sorted by ImagePositionPatient projected on the slice normal (the reader's
   ``sort_slices``, never InstanceNumber or file name), giving the stored stack (k, row, col);
2. the stack's voxel affine is built as the reader builds it, and ``volumes.canonical_axes`` of
   it gives the axis permutation and flips that took the stack to the canonical layout;
3. the mask goes back through the inverse (flips undone, then the permutation), so that frame k
   is stored slice k in that file's own pixel orientation (a series stored with a row direction
   of (-1, 0, 0) or with decreasing z gets its mask mirrored back). An axial series maps each
   canonical slice to one CT slice; a sagittal or coronal series that the reader re-cut into axial
   slices maps back too (each CT slice gets the mask's plane through it).

The SEG (highdicom): a BINARY segmentation in the CT's Frame of Reference; one frame per CT slice
whose mask has a target voxel (empty frames omitted), whose source image reference is that CT
slice's SOP Instance UID (its plane position and orientation are the slice's own); one segment,
the target: any non-zero mask value (a several-class label map is written as one segment),
labelled `label` with the SNOMED CT property category and type codes (default Organ / Pancreas;
`property_type` and `property_category` take other codes, a pydicom ``Code`` or ``(value,
scheme, meaning)``), segment algorithm type AUTOMATIC, algorithm name ``lsnet_tf`` and version
the package version; patient, study and frame of reference attributes copied from the CT by
highdicom; a new Series Instance UID and SOP Instance UID; Manufacturer, model name, software
version filled; pixel spacing and slice thickness those of the CT (slices without a
SliceThickness, a type 2 attribute, get the slice spacing). The file is written atomically
(``files.atomic_write``).

An empty mask writes nothing and returns None. Errors (`DicomSegError`, a `ValueError`, naming
the file at fault): no datasets, a mask whose shape is not the series' canonical shape, datasets
of different series, studies or frames of reference, a multi-frame or non-image dataset, slices
whose orientation or size differs, and the series errors of ``data.dicom.sort_slices`` (duplicate
positions, gaps, non-uniform spacing) and of ``volumes.canonical_axes`` (oblique series).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import os

import numpy as np

from lsnet_tf import __version__
from lsnet_tf.data import dicom, volumes
from lsnet_tf.utils.files import atomic_write

__all__ = ["DicomSegError", "SeriesLayout", "series_layout", "to_stored", "write_dicom_seg"]

ALGORITHM_NAME = "lsnet_tf"
DEFAULT_LABEL = "Pancreas"
SERIES_DESCRIPTION = "lsnet_tf segmentation"
SERIES_NUMBER = 900
ORIENTATION_TOL = 1e-4
# What a CT slice needs for its place in the series (as in data.dicom).
_GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient")


class DicomSegError(ValueError):
    """The mask or the CT datasets cannot make a DICOM SEG; the message says which file and why."""


@dataclasses.dataclass
class SeriesLayout:
    """How the CT slices relate to the canonical volume of ``read_series``.

    datasets: the slices sorted by position along the normal (the stored stack's order).
    names: each sorted slice's file path (or ``dataset N`` for an in-memory dataset).
    perm, flips: ``volumes.canonical_axes`` of the stack's affine (canonical axis j is stack axis
      ``perm[j]``, then reversed when ``flips[j]``).
    canonical_shape: the (slice, row, col) shape of the canonical volume.
    affine: the canonical voxel->LPS affine (``DicomVolume.affine``).
    canonical_slices: for an axial series, the index into `datasets` of each canonical slice
      (canonical slice k lies on ``datasets[canonical_slices[k]]``, whose file is
      ``names[canonical_slices[k]]``: ``DicomVolume.files[k]``); None for a re-cut series.
    slice_spacing: the mean distance between neighbouring slices in mm (0 for one slice).
    """

    datasets: list
    names: list
    perm: list
    flips: list
    canonical_shape: tuple
    affine: np.ndarray
    canonical_slices: list | None
    slice_spacing: float = 0.0


def _name(ds, index: int) -> str:
    filename = getattr(ds, "filename", None)
    return filename if isinstance(filename, str) and filename else f"dataset {index}"


def _load(source_datasets) -> list:
    import pydicom

    out = []
    for i, item in enumerate(source_datasets):
        if isinstance(item, (str, os.PathLike)):
            try:
                item = pydicom.dcmread(os.fspath(item), stop_before_pixels=True)
            except Exception as e:
                raise DicomSegError(f"{os.fspath(item)}: not readable DICOM "
                                    f"({type(e).__name__}: {e})") from e
        out.append(item)
    return out


def _check_series(datasets: list, names: list) -> None:
    """One series, study and frame of reference; single-frame images of one orientation and size."""
    first, name0 = datasets[0], names[0]
    for key in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID",
                "SOPClassUID"):
        missing = [n for ds, n in zip(datasets, names) if not str(ds.get(key, "") or "")]
        if missing:
            raise DicomSegError(f"{missing[0]}: no {key}; a SEG references CT slices of one "
                                "series by their UIDs")
    for key, what in (("SeriesInstanceUID", "series"), ("StudyInstanceUID", "study"),
                      ("FrameOfReferenceUID", "frame of reference")):
        ref = str(first.get(key))
        for ds, n in zip(datasets, names):
            if str(ds.get(key)) != ref:
                raise DicomSegError(f"{n}: {key} {ds.get(key)} differs from {ref} of {name0}: the "
                                    f"datasets must be the slices of one {what}")
    seen = {}
    for ds, n in zip(datasets, names):
        uid = str(ds.SOPInstanceUID)
        if uid in seen:
            raise DicomSegError(f"{n}: SOPInstanceUID {uid} is also that of {seen[uid]}")
        seen[uid] = n
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise DicomSegError(f"{n}: a multi-frame image; the SEG writer takes a series of "
                                "single-frame CT slices (as read_series does)")
        missing = [k for k in _GEOMETRY if k not in ds or ds[k].value in (None, "")]
        if missing:
            raise DicomSegError(f"{n}: not an image slice (no {', '.join(missing)})")
    # Orientation and size: those of most slices; the first slice that differs is named.
    keys = [(tuple(np.round(np.asarray(ds.ImageOrientationPatient, np.float64), 4).tolist()),
             int(ds.Rows), int(ds.Columns)) for ds in datasets]
    (o0, rows, cols), _ = collections.Counter(keys).most_common(1)[0]
    for (o, r, c), n in zip(keys, names):
        if len(o) != 6 or np.max(np.abs(np.subtract(o, o0))) > ORIENTATION_TOL:
            raise DicomSegError(f"{n}: ImageOrientationPatient {list(o)} differs from {list(o0)} "
                                "of the other slices (pass only the slices read_series used: "
                                "DicomVolume.files)")
        if (r, c) != (rows, cols):
            raise DicomSegError(f"{n}: {r} x {c} pixels, the other slices have {rows} x {cols}")


def series_layout(source_datasets) -> SeriesLayout:
    """The relation between the CT slices (pydicom datasets or file paths, any order) and the
    canonical volume ``read_series`` makes of them (module docstring, steps 1-2)."""
    datasets = _load(source_datasets)
    if not datasets:
        raise DicomSegError("no CT datasets given: the SEG references the slices of the series")
    names = [_name(ds, i) for i, ds in enumerate(datasets)]
    if len(set(names)) != len(names):  # the same file twice: keys must be unique to sort
        names = [f"{n} (dataset {i})" for i, n in enumerate(names)]
    _check_series(datasets, names)
    by_name = dict(zip(names, datasets))
    folder = os.path.commonpath([n for n in names if os.path.isabs(n)] or [os.getcwd()])
    paths, _, step = dicom.sort_slices(by_name, folder)
    first = by_name[paths[0]]
    orientation = np.asarray(first.ImageOrientationPatient, np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    dr, dc = (float(v) for v in first.PixelSpacing)
    if len(paths) == 1:  # as read_series: the header's spacing, or 1 mm along the normal
        spacing = _positive(first, "SpacingBetweenSlices") or _positive(first, "SliceThickness")
        step = dicom.slice_normal(orientation) * (spacing or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_dir * dr
    affine[:3, 2] = row_dir * dc
    affine[:3, 3] = np.asarray(first.ImagePositionPatient, np.float64)
    perm, flips = volumes.canonical_axes(affine, folder)
    stack_shape = (len(paths), int(first.Rows), int(first.Columns))
    canonical_shape = tuple(stack_shape[p] for p in perm)
    affine_c = affine.copy()  # volumes.canonicalize's affine, without moving any voxel
    affine_c[:3, :3] = affine[:3, perm]
    for j, flip in enumerate(flips):
        if flip:
            affine_c[:3, 3] += affine_c[:3, j] * (canonical_shape[j] - 1)
            affine_c[:3, j] = -affine_c[:3, j]
    canonical_slices = None
    if perm[0] == 0:  # axial: canonical slice k is one stored slice
        n = len(paths)
        canonical_slices = [n - 1 - k if flips[0] else k for k in range(n)]
    return SeriesLayout(datasets=[by_name[p] for p in paths], names=list(paths), perm=list(perm),
                        flips=list(flips), canonical_shape=canonical_shape, affine=affine_c,
                        canonical_slices=canonical_slices,
                        slice_spacing=float(np.linalg.norm(step)))


def to_stored(mask: np.ndarray, layout: SeriesLayout) -> np.ndarray:
    """The canonical (slice, row, col) `mask` as the stored stack: frame k is
    ``layout.datasets[k]``'s slice in its own (Rows, Columns) pixel order (module docstring,
    step 3)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(layout.canonical_shape):
        n, rows, cols = (tuple(layout.canonical_shape[j] for j in np.argsort(layout.perm)))
        raise DicomSegError(f"{layout.names[0]}: mask shape {tuple(mask.shape)} does not match the "
                            f"series' canonical (slice, row, col) shape "
                            f"{tuple(layout.canonical_shape)} ({n} slices of {rows} x {cols})")
    stored = mask
    for axis, flip in enumerate(layout.flips):
        if flip:
            stored = np.flip(stored, axis=axis)
    return np.ascontiguousarray(np.transpose(stored, np.argsort(layout.perm)))


def _positive(ds, keyword: str) -> float | None:
    """A positive number of the dataset (mm), or None when absent, empty, not a number or <= 0."""
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _thickness(ds) -> float | None:
    return _positive(ds, "SliceThickness")


def _code(value, what: str):
    from pydicom.sr.coding import Code

    if isinstance(value, Code):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return Code(*(str(v) for v in value))
    raise DicomSegError(f"{what} must be a pydicom Code or (value, scheme, meaning), got {value!r}")


def _property_type(label: str, property_type):
    from pydicom.sr.codedict import codes

    if property_type is not None:
        return _code(property_type, "property_type")
    keyword = "".join(word[:1].upper() + word[1:] for word in label.replace("-", " ").split())
    try:
        return getattr(codes.SCT, keyword)
    except AttributeError:
        raise DicomSegError(f"no SNOMED CT code named {keyword!r} for the label {label!r}; pass "
                            "property_type=(value, 'SCT', meaning)") from None


def write_dicom_seg(mask: np.ndarray, source_datasets, out_path: str, *,
                    label: str = DEFAULT_LABEL, property_type=None, property_category=None,
                    series_description: str = SERIES_DESCRIPTION,
                    series_number: int = SERIES_NUMBER, manufacturer: str = ALGORITHM_NAME,
                    device_serial_number: str = "0") -> str | None:
    """Write `mask` (canonical (slice, row, col), non-zero = target) as a DICOM SEG referencing
    `source_datasets`, the CT slices it was predicted on (pydicom datasets, with or without pixel
    data, or file paths; any order, e.g. ``DicomVolume.files``), to `out_path`.

    `label` names the segment; its SNOMED CT type code is looked up by name among pydicom's
    ``codes.SCT`` (e.g. "Pancreas", "Liver", "Kidney") unless `property_type` gives it;
    `property_category` defaults to SCT Organ.

    Returns:
      `out_path`, or None when the mask has no target voxel (nothing written).
    Raises:
      DicomSegError: see the module docstring (also the reader's `DicomSeriesError` and
        `GeometryError` for the series' geometry, all `ValueError`s).
    """
    try:
        import highdicom as hd
    except ImportError as e:  # a LiteRT-only device installed without it
        raise DicomSegError(f"{out_path}: writing a DICOM SEG needs highdicom (pip install "
                            "highdicom==0.28.2); predict --no-dicom-seg does without it") from e
    from pydicom.sr.codedict import codes

    layout = series_layout(source_datasets)
    stored = to_stored(mask, layout) != 0
    category = (codes.SCT.Organ if property_category is None
                else _code(property_category, "property_category"))
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=_property_type(label, property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=__version__,
            family=codes.cid7162.ArtificialIntelligence),
    )
    if not stored.any():
        return None
    # SliceThickness is type 2 in a CT (may be empty or absent); highdicom reads it from the
    # first slice, so slices without one get the slice spacing in a copy.
    sources = layout.datasets
    thickness = _thickness(sources[0]) or layout.slice_spacing or 1.0
    if any(_thickness(ds) is None for ds in sources):
        sources = [copy.deepcopy(ds) for ds in sources]
        for ds in sources:
            ds.SliceThickness = thickness
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=[float(v) for v in sources[0].PixelSpacing], slice_thickness=thickness)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stored.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=__version__,
        device_serial_number=device_serial_number,
        series_description=series_description,
        content_label="SEGMENTATION",
        content_description=f"{label} predicted by {ALGORITHM_NAME}",
        pixel_measures=measures,
        omit_empty_frames=True,
    )
    _check_references(seg, layout, stored)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_write(out_path, "wb") as f:
        seg.save_as(f)
    return out_path


def _check_references(seg, layout: SeriesLayout, stored: np.ndarray) -> None:
    """Every frame of `seg` references a CT slice by its SOP Instance UID and holds that slice's
    mask, and every slice with a target has a frame (highdicom orders the frames by its own
    reading of the slice positions: this guards the mapping, not the order)."""
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(layout.datasets)}
    frames = np.asarray(seg.pixel_array).reshape((-1,) + stored.shape[1:])
    seen = []
    for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k = index.get(uid)
        if k is None or not np.array_equal(frames[i] != 0, stored[k]):
            raise RuntimeError(f"SEG frame {i + 1} does not hold the mask of the CT slice it "
                               f"references ({uid}); highdicom {_highdicom_version()} wrote it")
        seen.append(k)
    wanted = [k for k in range(stored.shape[0]) if stored[k].any()]
    if sorted(seen) != wanted:
        raise RuntimeError(f"SEG frames reference slices {sorted(seen)}, expected {wanted}")


def _highdicom_version() -> str:
    import highdicom as hd

    return hd.__version__
