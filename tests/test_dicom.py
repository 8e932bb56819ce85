"""DICOM series reading, NIfTI labels, canonical orientation and the K-fold split.

Known answers come from pydicom's own test files (a real 5-slice CT series whose InstanceNumber
runs against z, real localizers, a real series with a gap) and from pydicom-data's slice of the
TCIA Pancreas-CT collection (stored with a flipped column direction, ImageOrientationPatient
(1, 0, 0, 0, -1, 0)); the references are pydicom's own pixel reading and nibabel's orientation
tools.
"""
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale

from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.data.dicom import DicomSeriesError
from lsnet_tf.data.nifti import NiftiError
from lsnet_tf.data.volumes import GeometryError, PatientSkipped

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT5N = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"       # 5 axial slices, IN against z
GAP_SERIES = TEST_FILES / "dicomdirtests" / "77654033" / "CT2"  # 4 slices, 202.5 mm gap
LOCALIZER = TEST_FILES / "dicomdirtests" / "98892001" / "CT2N" / "6293"
CT_SMALL = TEST_FILES / "CT_small.dcm"                          # 128x128 CT slice
RTPLAN = TEST_FILES / "rtplan.dcm"                              # DICOM without pixels


def tcia_slice():
    """pydicom-data's slice of TCIA Pancreas-CT (PANCREAS_0001, JPEG 2000, 512x512)."""
    import data_store

    return Path(data_store.__file__).parent / "data" / "explicit_VR-UN.dcm"


def ct5n_files():
    return sorted(CT5N.iterdir())


def copy_series(dst, files=None, edit=None):
    """Copy DICOM files into `dst`, optionally editing each dataset (edit(ds, index))."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files if files is not None else ct5n_files()):
        if edit is None:
            shutil.copy(f, dst / f.name)
        else:
            ds = pydicom.dcmread(f)
            edit(ds, i)
            ds.save_as(dst / f.name)
    return dst


def reference_hu_by_z(files):
    """pydicom's own reading: modality LUT applied, slices sorted by z (IOP is (1,0,0,0,1,0))."""
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([apply_rescale(d.pixel_array, d) for d in dss]), dss


# ---------------------------------------------------------------- sorting, HU, orientation


def test_ct5n_is_a_series_whose_instance_number_runs_against_z():
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct5n_files()]
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    inst = [int(d.InstanceNumber) for d in dss]
    assert len(dss) == 5
    assert np.argsort(inst).tolist() == np.argsort(z)[::-1].tolist()  # the premise of the tests


def test_slices_sorted_by_position_with_hu_from_pydicom():
    vol = dicom.read_series(str(CT5N))
    ref, dss = reference_hu_by_z(ct5n_files())
    assert vol.hu.dtype == np.int16 and vol.hu.shape == (5, 16, 16)
    np.testing.assert_array_equal(vol.hu, ref.astype(np.int16))
    assert [os.path.basename(f) for f in vol.files] == ["3353", "3023", "2693", "2392", "2062"]
    assert vol.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    # first voxel at the lowest slice's position; slice axis +z, rows +y, cols +x
    np.testing.assert_allclose(vol.affine[:3, 3], [-72.199997, -143.0, -1.2375], atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, 0.488281], [0, 0.488281, 0], [2.5, 0, 0]],
                               atol=1e-6)
    assert vol.skipped_files == [] and vol.notes == []


def test_hu_is_slope_times_pixel_plus_intercept_per_file(tmp_path):
    slopes, intercepts = [2, 1, 0.5, 3, 1], [-7, -1024, 10, -2000, 0]

    def edit(ds, i):
        ds.RescaleSlope, ds.RescaleIntercept = slopes[i], intercepts[i]

    folder = copy_series(tmp_path / "s", edit=edit)
    vol = dicom.read_series(str(folder))
    raw = {float(pydicom.dcmread(f).ImagePositionPatient[2]): (pydicom.dcmread(f).pixel_array, i)
           for i, f in enumerate(ct5n_files())}
    for k, z in enumerate(sorted(raw)):
        pixels, i = raw[z]
        expected = np.rint(pixels.astype(np.float64) * slopes[i] + intercepts[i])
        np.testing.assert_array_equal(vol.hu[k], expected.astype(np.int16))


def test_missing_rescale_tags_give_stored_values_with_a_note(tmp_path):
    def edit(ds, i):
        del ds.RescaleSlope
        del ds.RescaleIntercept

    vol = dicom.read_series(str(copy_series(tmp_path / "s", edit=edit)))
    ref, _ = reference_hu_by_z(ct5n_files())
    np.testing.assert_array_equal(vol.hu, (ref + 1024).astype(np.int16))
    assert len(vol.notes) == 1 and "5 of 5 slices have no RescaleSlope" in vol.notes[0]


def _mirror_columns(ds, i):
    """Same anatomy stored with row direction (-1, 0, 0): columns reversed, x origin moved."""
    px = ds.pixel_array
    dc = float(ds.PixelSpacing[1])
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [ipp[0] + (px.shape[1] - 1) * dc, ipp[1], ipp[2]]
    ds.PixelData = np.ascontiguousarray(px[:, ::-1]).tobytes()


def _transpose_in_plane(ds, i):
    """Same anatomy stored with row direction +y and column direction +x (rows <-> columns)."""
    px = ds.pixel_array
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.PixelData = np.ascontiguousarray(px.T).tobytes()


@pytest.mark.parametrize("edit", [_mirror_columns, _transpose_in_plane])
def test_stored_orientation_does_not_change_the_canonical_volume(tmp_path, edit):
    standard = dicom.read_series(str(CT5N))
    other = dicom.read_series(str(copy_series(tmp_path / "s", edit=edit)))
    np.testing.assert_array_equal(other.hu, standard.hu)
    np.testing.assert_allclose(other.affine, standard.affine, atol=1e-4)
    assert other.spacing == pytest.approx(standard.spacing)
    assert [os.path.basename(f) for f in other.files] == [os.path.basename(f) for f in standard.files]


def test_mirrored_columns_really_are_stored_reversed(tmp_path):
    folder = copy_series(tmp_path / "s", edit=_mirror_columns)
    stored = pydicom.dcmread(folder / "2062").pixel_array
    original = pydicom.dcmread(CT5N / "2062").pixel_array
    assert not np.array_equal(stored, original)
    np.testing.assert_array_equal(stored, original[:, ::-1])


def test_real_tcia_slice_with_flipped_column_direction_is_flipped_to_canonical(tmp_path):
    src = tcia_slice()
    ds = pydicom.dcmread(src)
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]
    shutil.copy(src, tmp_path / src.name)
    vol = dicom.read_series(str(tmp_path))
    raw = apply_rescale(ds.pixel_array, ds)
    assert vol.hu.shape == (1, 512, 512)
    np.testing.assert_array_equal(vol.hu[0], raw[::-1].astype(np.int16))
    # canonical row 0 is the most anterior (lowest y): the last stored row, y = 0 - 511 * 0.859375
    np.testing.assert_allclose(vol.affine[:3, 3], [0.0, -511 * 0.859375, -121.0], atol=1e-6)
    assert vol.spacing == (0.859375, 0.859375, 0.0)  # one slice, no SliceThickness: unknown


def test_coronal_series_is_recut_axially_or_skipped_with_axial_only(tmp_path):
    def coronal(ds, i):  # rows along x, columns along -z (down), slices stepping along +y
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-72.2, -143.0 + 2.5 * i, 20.0]

    folder = copy_series(tmp_path / "s", edit=coronal)
    with pytest.raises(PatientSkipped, match="not an axial series"):
        dicom.read_series(str(folder), axial_only=True)
    vol = dicom.read_series(str(folder))
    stored = np.stack([apply_rescale(pydicom.dcmread(f).pixel_array, pydicom.dcmread(f))
                       for f in ct5n_files()])  # (y step i, z row, x col)
    assert vol.hu.shape == (16, 5, 16)
    # canonical [z, y, x] = stored[y, 15 - z, x]: stored rows run downwards (-z)
    np.testing.assert_array_equal(vol.hu, stored.transpose(1, 0, 2)[::-1].astype(np.int16))
    assert vol.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    assert any("re-cut" in n for n in vol.notes)


# ---------------------------------------------------------------- localizers and skipped files


def test_localizer_is_left_out_of_the_series(tmp_path):
    folder = copy_series(tmp_path / "s")
    shutil.copy(LOCALIZER, folder / "scout")
    vol = dicom.read_series(str(folder))
    assert vol.hu.shape == (5, 16, 16)
    assert [(os.path.basename(p), "LOCALIZER" in why) for p, why in vol.skipped_files] == [("scout", True)]


def test_localizer_like_images_of_the_same_series_are_left_out(tmp_path):
    folder = copy_series(tmp_path / "s")
    uid = pydicom.dcmread(CT5N / "2062").SeriesInstanceUID
    tilted = pydicom.dcmread(CT5N / "2062")  # same series, not flagged LOCALIZER, other plane
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    tilted.save_as(folder / "sideways")
    small = pydicom.dcmread(CT_SMALL)  # same series, other size
    small.SeriesInstanceUID = uid
    small.save_as(folder / "other_size.dcm")
    vol = dicom.read_series(str(folder))
    np.testing.assert_array_equal(vol.hu, dicom.read_series(str(CT5N)).hu)
    reasons = {os.path.basename(p): why for p, why in vol.skipped_files}
    assert set(reasons) == {"sideways", "other_size.dcm"}
    assert "orientation" in reasons["sideways"] and "size 128x128" in reasons["other_size.dcm"]


def test_non_dicom_names_and_hidden_files_are_ignored(tmp_path):
    folder = copy_series(tmp_path / "s")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    assert dicom.read_series(str(folder)).hu.shape == (5, 16, 16)


# ---------------------------------------------------------------- bad input


def test_gap_is_reported_with_positions_and_files():
    with pytest.raises(DicomSeriesError) as err:
        dicom.read_series(str(GAP_SERIES))
    msg = str(err.value)
    assert err.value.path == str(GAP_SERIES)
    assert "gap" in msg and "-99.4800" in msg and "103.0200" in msg and "17106" in msg and "17136" in msg


def test_non_uniform_spacing_is_refused(tmp_path):
    def edit(ds, i):
        if i == 2:
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 0.7]

    with pytest.raises(DicomSeriesError, match="non-uniform slice spacing.*2693"):
        dicom.read_series(str(copy_series(tmp_path / "s", edit=edit)))


def test_duplicate_positions_are_refused(tmp_path):
    folder = copy_series(tmp_path / "s")
    shutil.copy(CT5N / "2062", folder / "again.dcm")
    with pytest.raises(DicomSeriesError, match="same position.*(2062|again)"):
        dicom.read_series(str(folder))


def test_gantry_tilt_drift_is_refused(tmp_path):
    def edit(ds, i):  # positions move in y as z changes: a sheared stack
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.5 * i, ipp[2]]

    with pytest.raises(DicomSeriesError, match="off the slice normal"):
        dicom.read_series(str(copy_series(tmp_path / "s", edit=edit)))


def test_oblique_series_is_refused(tmp_path):
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))

    def edit(ds, i):
        ds.ImageOrientationPatient = [c, s, 0, -s, c, 0]

    with pytest.raises(GeometryError, match="oblique"):
        dicom.read_series(str(copy_series(tmp_path / "s", edit=edit)))


def test_folder_mixing_series_lists_them_and_one_can_be_picked(tmp_path):
    folder = copy_series(tmp_path / "s")
    for f in GAP_SERIES.iterdir():
        shutil.copy(f, folder / f.name)
    uids = {pydicom.dcmread(CT5N / "2062").SeriesInstanceUID,
            pydicom.dcmread(GAP_SERIES / "17106").SeriesInstanceUID}
    with pytest.raises(DicomSeriesError) as err:
        dicom.read_series(str(folder))
    assert err.value.path == str(folder)
    assert "mixes 2 series" in str(err.value) and all(u in str(err.value) for u in uids)
    assert "(5 slices, modality CT, description " in str(err.value)
    assert str(err.value).endswith("keep one series per folder or pick one with --series-uid UID")
    vol = dicom.read_series(str(folder), series_uid=pydicom.dcmread(CT5N / "2062").SeriesInstanceUID)
    assert vol.hu.shape == (5, 16, 16) and len(vol.skipped_files) == 4


def test_files_that_are_not_dicom_among_the_slices_are_left_out_and_named(tmp_path):
    """Issue 32, 5: a zero-byte or stray file refused the whole series ("Use force=True")."""
    folder = copy_series(tmp_path / "s")
    (folder / "broken.dcm").write_bytes(b"this is not DICOM" * 20)
    (folder / "empty").write_bytes(b"")
    vol = dicom.read_series(str(folder))
    assert vol.hu.shape == (5, 16, 16)
    assert sorted(vol.skipped_files) == [
        (str(folder / "broken.dcm"), "not DICOM: no DICM prefix and no DICOM dataset"),
        (str(folder / "empty"), "not DICOM: an empty file (0 bytes)")]
    (folder / "2693").unlink()  # the rest must still be a whole series: a missing slice is a gap
    with pytest.raises(DicomSeriesError, match="gap in the series"):
        dicom.read_series(str(folder))


def test_unreadable_file_is_named_when_no_file_is_dicom(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "broken.dcm").write_bytes(b"this is not DICOM" * 20)
    with pytest.raises(DicomSeriesError, match="broken.dcm: unreadable DICOM") as err:
        dicom.read_series(str(tmp_path / "s"))
    assert err.value.path == str(tmp_path / "s" / "broken.dcm")


def test_truncated_pixel_data_is_named(tmp_path):
    folder = copy_series(tmp_path / "s")
    data = (folder / "2693").read_bytes()
    (folder / "2693").write_bytes(data[:-100])
    with pytest.raises(DicomSeriesError, match="2693") as err:
        dicom.read_series(str(folder))
    assert err.value.path.endswith("2693")


def test_non_image_dicom_is_named(tmp_path):
    (tmp_path / "s").mkdir()
    shutil.copy(RTPLAN, tmp_path / "s" / "plan.dcm")
    with pytest.raises(DicomSeriesError, match="plan.dcm: not an image slice: no Rows") as err:
        dicom.read_series(str(tmp_path / "s"))
    assert err.value.path == str(tmp_path / "s" / "plan.dcm")


def test_empty_folder_and_localizers_only_are_empty_series(tmp_path):
    (tmp_path / "empty" / "study").mkdir(parents=True)
    with pytest.raises(DicomSeriesError, match="empty series"):
        dicom.read_series(str(tmp_path / "empty"))
    (tmp_path / "scouts").mkdir()
    shutil.copy(LOCALIZER, tmp_path / "scouts" / "a.dcm")
    with pytest.raises(DicomSeriesError, match="empty series: all 1 DICOM files are localizers"):
        dicom.read_series(str(tmp_path / "scouts"))
    with pytest.raises(DicomSeriesError, match="not a folder"):
        dicom.read_series(str(tmp_path / "nowhere"))


def test_series_errors_are_value_errors_with_a_path():
    err = DicomSeriesError("/x/y.dcm", "bad")
    assert isinstance(err, ValueError) and err.path == "/x/y.dcm" and str(err) == "/x/y.dcm: bad"


# ---------------------------------------------------------------- NIfTI labels


def dicom_label_affine(files):
    """voxel->LPS affine of a label stored (col, row, slice) in the given file order, built
    directly from the headers (independently of lsnet_tf)."""
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    o = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in dss[0].PixelSpacing)
    p0 = np.array([float(v) for v in dss[0].ImagePositionPatient])
    step = np.array([float(v) for v in dss[1].ImagePositionPatient]) - p0 if len(dss) > 1 \
        else np.cross(o[:3], o[3:])
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = o[:3] * dc, o[3:] * dr, step, p0
    return a


def write_nifti(path, array, affine_lps):
    """Save `array` with voxel->LPS `affine_lps` as NIfTI (RAS affine, sform/qform code 1)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    img.header.set_sform(img.affine, code=1)
    img.header.set_qform(img.affine, code=1)
    nib.save(img, str(path))
    return str(path)


def per_slice_pattern(n, rows, cols):
    """(slice, row, col) uint8 label: a different rectangle on each slice, value 1."""
    lab = np.zeros((n, rows, cols), np.uint8)
    for k in range(n):
        lab[k, 2:4 + k, 3 + k:7 + k] = 1
    return lab


def test_tcia_style_label_stored_col_row_slice_lands_on_the_dicom_slices(tmp_path):
    files = ct5n_files()  # stored order: z decreasing
    pattern = per_slice_pattern(5, 16, 16)  # pattern[k] belongs to files[k]
    path = write_nifti(tmp_path / "label0001.nii.gz", pattern.transpose(2, 1, 0),
                       dicom_label_affine(files))
    assert nib.load(path).shape == (16, 16, 5)  # (x, y, z) = (col, row, slice)
    vol = dicom.read_series(str(CT5N))
    labels = nifti.read_label(path, vol.affine, vol.hu.shape)
    by_name = {f.name: pattern[k] for k, f in enumerate(files)}
    for s, f in enumerate(vol.files):  # canonical slice s comes from file f
        np.testing.assert_array_equal(labels[s], by_name[os.path.basename(f)])


def test_label_stored_in_another_order_still_lands_on_the_same_voxels(tmp_path):
    vol = dicom.read_series(str(CT5N))
    pattern = per_slice_pattern(5, 16, 16)  # canonical layout
    # store as nibabel's RAS-canonical (x to the right, y anterior, z up): reverse x and y
    ras = pattern.transpose(2, 1, 0)[::-1, ::-1, :]
    aff = vol.affine[:, [2, 1, 0, 3]].copy()
    aff[:3, 3] = vol.affine[:3, 3] + aff[:3, 0] * 15 + aff[:3, 1] * 15
    aff[:3, 0] *= -1
    aff[:3, 1] *= -1
    path = write_nifti(tmp_path / "l.nii.gz", ras, aff)
    np.testing.assert_array_equal(nib.as_closest_canonical(nib.load(path)).get_fdata(), ras)
    np.testing.assert_array_equal(nifti.read_label(path, vol.affine, vol.hu.shape), pattern)


def test_label_geometry_mismatches_are_reported(tmp_path):
    vol = dicom.read_series(str(CT5N))
    files = ct5n_files()
    good = dicom_label_affine(files)
    shifted = good.copy()
    shifted[:3, 3] += [0.0, 5.0, 0.0]
    p = write_nifti(tmp_path / "shift.nii.gz", np.zeros((16, 16, 5), np.uint8), shifted)
    with pytest.raises(GeometryError, match="5 mm from") as err:
        nifti.read_label(p, vol.affine, vol.hu.shape)
    assert err.value.path == p
    p = write_nifti(tmp_path / "shape.nii.gz", np.zeros((16, 16, 4), np.uint8), good)
    with pytest.raises(GeometryError, match=r"shape \(slice, row, col\) \(4, 16, 16\) differs"):
        nifti.read_label(p, vol.affine, vol.hu.shape)
    scaled = good.copy()
    scaled[:3, 0] *= 1.1
    p = write_nifti(tmp_path / "spacing.nii.gz", np.zeros((16, 16, 5), np.uint8), scaled)
    with pytest.raises(GeometryError, match="col spacing"):
        nifti.read_label(p, vol.affine, vol.hu.shape)


def test_bad_label_files_are_named(tmp_path):
    vol = dicom.read_series(str(CT5N))
    aff = dicom_label_affine(ct5n_files())
    with pytest.raises(NiftiError, match="file not found"):
        nifti.read_label(str(tmp_path / "none.nii.gz"), vol.affine, vol.hu.shape)
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    with pytest.raises(NiftiError, match="junk.nii.gz: unreadable NIfTI"):
        nifti.read_label(str(tmp_path / "junk.nii.gz"), vol.affine, vol.hu.shape)
    p = write_nifti(tmp_path / "frac.nii.gz", np.full((16, 16, 5), 0.5, np.float32), aff)
    with pytest.raises(NiftiError, match="must be integers"):
        nifti.read_label(p, vol.affine, vol.hu.shape)
    p = str(tmp_path / "nocode.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 5), np.uint8), None), p)  # no affine: codes 0
    assert nib.load(p).header.get_sform(coded=True)[1] == 0
    with pytest.raises(NiftiError, match="no spatial orientation"):
        nifti.read_label(p, vol.affine, vol.hu.shape)


# ---------------------------------------------------------------- canonical orientation


@pytest.mark.parametrize("seed", range(6))
def test_canonicalize_agrees_with_nibabel_closest_canonical(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(2, 6, size=3))
    data = rng.integers(0, 1000, size=shape)
    perm = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    ras = np.eye(4)
    for j in range(3):
        ras[:3, j] = 0
        ras[perm[j], j] = signs[j] * (0.5 + j)
    ras[:3, 3] = rng.normal(size=3) * 50
    out, aff = volumes.canonicalize(data, volumes.ras_to_lps(ras))
    ref = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.int32), ras))
    expected = np.asarray(ref.dataobj).transpose(2, 1, 0)[:, ::-1, ::-1]  # RAS (x,y,z) -> LPS (z,y,x)
    np.testing.assert_array_equal(out, expected)
    steps = np.diag(np.fliplr(aff[:3, :3]))  # slice step along +z, row along +y, col along +x
    assert np.all(steps > 0) and np.allclose(np.fliplr(aff[:3, :3]), np.diag(steps))
    # the first canonical voxel is the most inferior, anterior, right corner: lowest LPS z, y, x
    corners = [ras @ np.array([i, j, k, 1.0]) for i in (0, shape[0] - 1)
               for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    lps = np.array([volumes.ras_to_lps(np.eye(4)) @ c for c in corners])[:, :3]
    np.testing.assert_allclose(aff[:3, 3], lps.min(axis=0))


def test_canonicalize_errors():
    with pytest.raises(GeometryError, match="same patient axis"):
        volumes.canonicalize(np.zeros((2, 2, 2)), np.diag([1.0, 1.0, 1.0, 1.0])[:, [0, 0, 2, 3]])
    with pytest.raises(GeometryError, match="degenerate"):
        volumes.canonicalize(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="3-D array, got shape"):
        volumes.canonicalize(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match="4x4, got shape"):
        volumes.canonicalize(np.zeros((2, 2, 2)), np.eye(3))
    with pytest.raises(GeometryError, match="oblique volume: an axis is 10.00 degrees"):
        c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
        volumes.canonicalize(np.zeros((2, 2, 2)), np.array(
            [[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))


def test_geometry_mismatches_known_answers():
    def canonical(slice_mm, px_mm):
        aff = np.eye(4)
        aff[:3, :3] = [[0, 0, px_mm], [0, px_mm, 0], [slice_mm, 0, 0]]
        return aff

    a = canonical(2.5, 0.5)
    assert volumes.geometry_mismatches(a, (3, 4, 4), a, (3, 4, 4)) == []
    b = a.copy()
    b[:3, 3] = [0.0, 0.05, 0.0]
    assert volumes.geometry_mismatches(a, (3, 4, 4), b, (3, 4, 4)) == []  # within 0.1 mm
    b[:3, 3] = [0.0, 0.3, 0.4]
    (msg,) = volumes.geometry_mismatches(a, (3, 4, 4), b, (3, 4, 4))
    assert "0.5 mm from" in msg
    c = canonical(9.0, 0.5)  # one slice: its spacing is not compared
    assert volumes.geometry_mismatches(a, (1, 4, 4), c, (1, 4, 4)) == []
    assert "slice spacing 9" in volumes.geometry_mismatches(a, (3, 4, 4), c, (3, 4, 4))[0]


# ---------------------------------------------------------------- K-fold split and labels


def test_kfold_split_is_a_deterministic_balanced_partition():
    ids = [f"P{i:03d}" for i in range(23)]
    split = volumes.kfold_split(ids, 4, seed=0)
    assert sorted(split) == ids  # each patient exactly once, so in one fold only
    sizes = np.bincount(list(split.values()), minlength=4)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 23
    assert volumes.kfold_split(reversed(ids), 4, seed=0) == split  # order of the input is irrelevant
    assert volumes.kfold_split(ids, 4, seed=1) != split
    # a patient's fold does not depend on the seed alone: ids keep their fold across calls
    assert all(volumes.kfold_split(ids, 4, seed=0)[p] == k for p, k in split.items())


def test_kfold_split_errors():
    with pytest.raises(ValueError, match="duplicate patient ids"):
        volumes.kfold_split(["a", "b", "a"], 2)
    with pytest.raises(ValueError, match="folds must be >= 2, got 1"):
        volumes.kfold_split(["a", "b"], 1)


def test_label_values_and_target_mask():
    labels = np.array([[0, 1, 2, 3]])
    assert volumes.parse_label_values("2, 1") == (1, 2)
    assert volumes.parse_label_values(None) is None
    np.testing.assert_array_equal(volumes.target_mask(labels, (1, 2)), [[0, 1, 1, 0]])
    np.testing.assert_array_equal(volumes.target_mask(labels, None), [[0, 1, 1, 1]])
    with pytest.raises(ValueError, match="comma-separated integers, got 'a,b'"):
        volumes.parse_label_values("a,b")
    with pytest.raises(ValueError, match="non-zero"):
        volumes.parse_label_values("0,1")


def test_hu_to_int16_counts_clipped_voxels():
    hu, clipped = volumes.hu_to_int16(np.array([-40000.0, -1024.4, 3071.6, 40000.0]))
    np.testing.assert_array_equal(hu, [-32768, -1024, 3072, 32767])
    assert hu.dtype == np.int16 and clipped == 2
