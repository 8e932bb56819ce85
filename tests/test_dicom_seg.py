"""lsnet_tf.dicom_seg: a canonical mask written as a DICOM SEG lands on the CT slices it was
predicted on. Synthetic CT series (pydicom) stored out of order (file names and InstanceNumber
not following position) in mirrored, transposed and coronal orientations are read with
lsnet_tf.data.dicom.read_series; the SEG is read back with highdicom and every frame is checked
against the mask at the frame's pixels' own patient positions (from the CT file's header, not
from the writer's mapping)."""
import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lsnet_tf import __version__
from lsnet_tf.inference import dicom_seg
from lsnet_tf.data import dicom
from lsnet_tf.data.dicom import DicomSeriesError

ROWS, COLS, N = 24, 32, 5
PIXEL_SPACING = (0.8, 0.7)  # row spacing, column spacing (mm)
STEP = 2.5

# (row direction, column direction, slice step direction): stored orientations of one anatomy.
ORIENTATIONS = {
    # columns run from the patient's left to right and the normal r x c points down (-z): sorted by
    # position, the stack runs head to feet, so both the columns and the slices are flipped
    "mirrored_decreasing_z": ((-1, 0, 0), (0, 1, 0), (0, 0, -1)),
    "rows_posterior_to_anterior": ((1, 0, 0), (0, -1, 0), (0, 0, 1)),
    "transposed": ((0, 1, 0), (1, 0, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),  # re-cut into axial slices by read_series
}


def write_series(folder, row_dir, col_dir, step_dir, seed=0, patient_id="P001", study=None):
    """N slices of ROWS x COLS HU with random pixels; slice k (by position along step_dir) is in
    file ``img<o>.dcm`` with InstanceNumber o + 1 for a random permutation o of the positions."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    study = study or generate_uid()
    series, frame = generate_uid(), generate_uid()
    order = rng.permutation(N)
    paths = []
    for k in range(N):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.Modality = "CT"
        ds.PatientID, ds.PatientName = patient_id, "Test^Patient"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "7", "ACC1"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.SeriesNumber, ds.InstanceNumber = 3, int(order[k]) + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = list(np.array([10.0, -20.0, 100.0]) + STEP * k * np.array(step_dir))
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.SliceThickness = STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, size=(ROWS, COLS)).astype(np.int16).tobytes()
        path = os.path.join(folder, f"img{order[k]:03d}.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def canonical_mask(shape, seed=1):
    """Distinct content per canonical slice (a random pattern, value 2 in places: any non-zero
    value is the target), canonical slice 1 empty."""
    rng = np.random.default_rng(seed)
    mask = (rng.uniform(size=shape) < 0.25).astype(np.uint8)
    mask[rng.uniform(size=shape) < 0.05] = 2
    mask[1] = 0
    return mask


def expected_frame(mask, affine, ds):
    """The mask at the patient position of each pixel (row r, column c) of the CT slice `ds`:
    IPP + c * column spacing * row direction + r * row spacing * column direction, looked up in
    the canonical volume through its affine."""
    o = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    pos = (np.asarray(ds.ImagePositionPatient, float)[:, None, None]
           + c[None] * dc * o[:3, None, None] + r[None] * dr * o[3:, None, None])
    ijk = np.linalg.solve(affine[:3, :3], pos.reshape(3, -1) - affine[:3, 3:4])
    idx = np.rint(ijk).astype(int)
    assert np.allclose(ijk, idx, atol=1e-6)
    return mask[idx[0], idx[1], idx[2]].reshape(ds.Rows, ds.Columns) != 0


def _series(tmp_path_factory, name):
    folder = str(tmp_path_factory.mktemp(name))
    paths = write_series(folder, *ORIENTATIONS[name])
    return name, folder, paths, dicom.read_series(folder)


@pytest.fixture(scope="module", params=sorted(ORIENTATIONS))
def series(request, tmp_path_factory):
    return _series(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The series stored with mirrored columns and decreasing z, for what does not depend on the
    orientation."""
    return _series(tmp_path_factory, "mirrored_decreasing_z")


def test_layout_agrees_with_read_series(series):
    name, folder, paths, vol = series
    layout = dicom_seg.series_layout(reversed(paths))  # any order in
    assert layout.canonical_shape == vol.hu.shape
    np.testing.assert_allclose(layout.affine, vol.affine, atol=1e-9)
    # The stored stack, canonicalized by the layout's permutation and flips, is read_series' HU,
    # and to_stored takes it back to the files' own pixels.
    stack = np.stack([pydicom.dcmread(n).pixel_array.astype(np.int16) - 1024 for n in layout.names])
    canonical = np.transpose(stack, layout.perm)
    for axis, flip in enumerate(layout.flips):
        if flip:
            canonical = np.flip(canonical, axis)
    np.testing.assert_array_equal(canonical, vol.hu)
    np.testing.assert_array_equal(dicom_seg.to_stored(vol.hu, layout), stack)
    if name == "coronal":
        assert layout.canonical_slices is None and vol.hu.shape == (ROWS, N, COLS)
    else:
        assert [layout.names[i] for i in layout.canonical_slices] == vol.files
    if name == "mirrored_decreasing_z":
        assert layout.flips == [True, False, True]
        # Sorting is by position: neither InstanceNumber nor the file name follows it.
        numbers = [int(ds.InstanceNumber) for ds in layout.datasets]
        assert numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
        assert layout.names != sorted(layout.names)


def test_each_frame_is_the_mask_of_the_slice_it_references(series, tmp_path):
    name, folder, paths, vol = series
    mask = canonical_mask(vol.hu.shape)
    out = str(tmp_path / "seg" / "mask.seg.dcm")
    assert dicom_seg.write_dicom_seg(mask, paths, out) == out
    seg = hd.seg.segread(out)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    with_target = {uid for uid, ds in by_uid.items() if expected_frame(mask, vol.affine, ds).any()}
    assert 0 < len(with_target)
    if name != "coronal":  # canonical slice 1 is empty: its CT slice gets no frame
        assert len(with_target) == N - 1
    frames = seg.pixel_array.reshape(-1, ROWS, COLS)
    refs = []
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        ct = by_uid[uid]
        np.testing.assert_array_equal(frames[i] != 0, expected_frame(mask, vol.affine, ct))
        # The frame lies on its CT slice: same position and orientation.
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   ct.ImagePositionPatient)
        refs.append(uid)
    assert sorted(refs) == sorted(with_target)  # one frame per slice with a target, no empty one
    np.testing.assert_allclose(
        seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        by_uid[refs[0]].ImageOrientationPatient)
    # highdicom's own look-up by source instance gives the same pixels.
    for uid in refs:
        got = seg.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, :, :, 0]
        np.testing.assert_array_equal(got != 0, expected_frame(mask, vol.affine, by_uid[uid]))


def test_seg_attributes_are_copied_and_described(mirrored, tmp_path):
    name, folder, paths, vol = mirrored
    mask = canonical_mask(vol.hu.shape)
    ct = pydicom.dcmread(paths[0])
    # Datasets with their pixels loaded work as well as paths.
    out = dicom_seg.write_dicom_seg(mask, [pydicom.dcmread(p) for p in paths],
                                    str(tmp_path / "seg.dcm"))
    seg = hd.seg.segread(out)
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                "FrameOfReferenceUID"):
        assert seg[key].value == ct[key].value, key
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.SeriesInstanceUID != ct.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    assert seg.SeriesDescription == dicom_seg.SERIES_DESCRIPTION
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("lsnet_tf", "lsnet_tf")
    assert seg.SoftwareVersions == __version__
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "Pancreas"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.Organ.value
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Pancreas.value
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("lsnet_tf", __version__)
    # A second write is a new series and instance.
    again = hd.seg.segread(dicom_seg.write_dicom_seg(mask, paths, str(tmp_path / "again.dcm")))
    assert again.SeriesInstanceUID != seg.SeriesInstanceUID
    assert again.SOPInstanceUID != seg.SOPInstanceUID
    # The label name picks the SNOMED CT code; other codes can be given.
    liver = hd.seg.segread(dicom_seg.write_dicom_seg(mask, paths, str(tmp_path / "liver.dcm"),
                                                     label="Liver"))
    assert liver.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    lesion = hd.seg.segread(dicom_seg.write_dicom_seg(
        mask, paths, str(tmp_path / "lesion.dcm"), label="Pancreatic lesion",
        property_type=("52988006", "SCT", "Lesion"),
        property_category=codes.SCT.MorphologicallyAbnormalStructure))
    s = lesion.SegmentSequence[0]
    assert s.SegmentLabel == "Pancreatic lesion"
    assert s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == \
        codes.SCT.MorphologicallyAbnormalStructure.value


def test_empty_mask_writes_nothing(series, tmp_path):
    name, folder, paths, vol = series
    out = str(tmp_path / "seg.dcm")
    assert dicom_seg.write_dicom_seg(np.zeros(vol.hu.shape, np.uint8), paths, out) is None
    assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_without_highdicom_the_error_says_what_to_install(series, tmp_path, monkeypatch):
    name, folder, paths, vol = series
    monkeypatch.setitem(__import__("sys").modules, "highdicom", None)  # import raises
    with pytest.raises(dicom_seg.DicomSegError,
                       match=r"seg.dcm: writing a DICOM SEG needs highdicom \(pip install "
                             r"highdicom==0.28.2\); predict --no-dicom-seg does without it"):
        dicom_seg.write_dicom_seg(np.ones(vol.hu.shape, np.uint8), paths,
                                  str(tmp_path / "seg.dcm"))


def test_errors(mirrored, tmp_path):
    name, folder, paths, vol = mirrored
    mask = canonical_mask(vol.hu.shape)
    out = str(tmp_path / "seg.dcm")
    with pytest.raises(dicom_seg.DicomSegError, match=r"mask shape \(5, 32, 24\) does not match "
                                                      r"the series' canonical \(slice, row, col\) "
                                                      r"shape \(5, 24, 32\) \(5 slices of 24 x "
                                                      r"32\)"):
        dicom_seg.write_dicom_seg(mask.transpose(0, 2, 1), paths, out)
    with pytest.raises(dicom_seg.DicomSegError, match="no CT datasets given"):
        dicom_seg.write_dicom_seg(mask, [], out)
    other = write_series(str(tmp_path / "other"), *ORIENTATIONS[name], seed=3)
    with pytest.raises(dicom_seg.DicomSegError, match=r"img\d+.dcm: SeriesInstanceUID .* differs "
                                                      r"from .* the datasets must be the slices of "
                                                      r"one series"):
        dicom_seg.write_dicom_seg(mask, paths[:-1] + other[:1], out)
    localizer = pydicom.dcmread(paths[0])
    localizer.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    localizer.filename = None  # an in-memory dataset is named by its place in the list
    with pytest.raises(dicom_seg.DicomSegError, match=r"dataset 0: ImageOrientationPatient "
                                                      r"\[1.0, 0.0, 0.0, 0.0, 0.0, -1.0\] differs from "
                                                      r"\[-1.0, 0.0, 0.0, 0.0, 1.0, 0.0\] of the "
                                                      r"other slices"):
        dicom_seg.write_dicom_seg(mask, [localizer] + paths[1:], out)
    with pytest.raises(DicomSeriesError, match="two slices at the same position"):
        dicom_seg.write_dicom_seg(mask, paths[:1] + paths[1:-1] + [_same_place(paths[0])], out)
    with pytest.raises(dicom_seg.DicomSegError, match=r"no SNOMED CT code named 'Nothing' for the "
                                                      r"label 'nothing'; pass property_type"):
        dicom_seg.write_dicom_seg(mask, paths, out, label="nothing")
    assert not os.path.exists(out)


def _same_place(path):
    """Another slice of the series (new SOP Instance UID) at the position of `path`."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.filename = None
    return ds


def test_slices_without_slice_thickness_and_a_single_slice(mirrored, tmp_path):
    name, folder, paths, vol = mirrored
    mask = canonical_mask(vol.hu.shape)
    cts = [pydicom.dcmread(p) for p in paths]
    for ds in cts:  # type 2: may be absent; the SEG takes the slice spacing
        del ds.SliceThickness
    seg = hd.seg.segread(dicom_seg.write_dicom_seg(mask, cts, str(tmp_path / "a.dcm")))
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) \
        == STEP
    assert all("SliceThickness" not in ds for ds in cts)  # the caller's datasets are untouched
    # One slice on its own: read_series of a folder holding just that file gives its canonical
    # slice, and the SEG's one frame is that slice in the file's (mirrored) column order.
    one = tmp_path / "one"
    one.mkdir()
    src = pydicom.dcmread(paths[0])
    src.save_as(str(one / "slice.dcm"))
    single = dicom.read_series(str(one))
    m = np.zeros(single.hu.shape, np.uint8)
    m[0, 2:5, 1:4] = 1
    seg = hd.seg.segread(dicom_seg.write_dicom_seg(m, [str(one / "slice.dcm")],
                                                   str(tmp_path / "b.dcm")))
    assert seg.NumberOfFrames == 1
    item = seg.PerFrameFunctionalGroupsSequence[0]
    assert item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == \
        src.SOPInstanceUID
    np.testing.assert_array_equal(seg.pixel_array.reshape(ROWS, COLS) != 0, m[0][:, ::-1] != 0)
    np.testing.assert_array_equal(seg.pixel_array.reshape(ROWS, COLS) != 0,
                                  expected_frame(m, single.affine, src))
