"""Bad input a user can give lsnet_tf: each gets a documented error naming the file (or a
documented behaviour), and a property-based fuzz test of the DICOM reader.

Covered: DICOM files that are truncated, garbage, without pixels, with non-finite or empty
headers, oversized; NIfTI volumes with NaN/inf, negative or undocumented label values, empty or
oversized (header-only fakes: nothing large is allocated); label directions off the image's;
``python -m lsnet_tf.predict`` inputs of the wrong rank, channels or size, 1 x 1 slices and the
per-call pixel cap; all-zero heatmaps through target encoding and the localization loss (known
values, finite gradients); SavedModel serving requests of the wrong dtype or rank, called the way
TF Serving calls them (``signatures["serving_default"]`` of ``tf.saved_model.load``).
Hand-computed references: the focal/Dice value of an all-zero target, the half-pixel bilinear
resize of a 64 x 64 output to 1 x 1, the PixelData byte counts of pydicom's CT5N series.
"""
import json
import os
import re
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lsnet_tf import predict, prepare
from lsnet_tf.inference import predictors, readers, volume
from lsnet_tf.config import load_config
from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.data.dicom import DicomSeriesError
from lsnet_tf.data.nifti import NiftiError
from lsnet_tf.data.targets import encode_targets
from lsnet_tf.data.volumes import GeometryError, VolumeSizeError
from lsnet_tf.export import saved_model
from lsnet_tf.losses.localization import localization_loss
from lsnet_tf.ops import boxes as box_ops

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT5N = TEST_FILES / "dicomdirtests" / "98892001" / "CT5N"  # 5 axial 16 x 16 slices, int16
SR = TEST_FILES / "test-SR.dcm"                             # Comprehensive SR: no image


def ct5n(tmp_path, edit=None):
    """A copy of CT5N in tmp_path/s, each dataset optionally edited by ``edit(ds, name)``."""
    folder = tmp_path / "s"
    folder.mkdir()
    for f in sorted(CT5N.iterdir()):
        if edit is None:
            shutil.copy(f, folder / f.name)
        else:
            ds = pydicom.dcmread(f)
            edit(ds, f.name)
            ds.save_as(folder / f.name)
    return folder


def write_nifti(path, array, affine_lps=None):
    """Save `array` (stored order (x, y, z)) with a voxel->LPS affine (default: 1 mm, axes
    -x, -y, +z in RAS terms, i.e. x towards the patient's left: canonical after a transpose)."""
    if affine_lps is None:
        affine_lps = np.eye(4)
    nifti.write_volume(str(path), np.asarray(array), affine_lps)
    return str(path)


def header_only_nifti(path, shape):
    """A .nii file whose header claims `shape` (int16) and which holds no voxel data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    header.set_qform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        header.write_to(f)  # 348 bytes and the 4-byte extension flag: the data would start here
    return str(path)


def header_only_npy(path, shape, dtype="<f4"):
    """A .npy file whose header claims `shape` and which holds no data."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return str(path)


# ================================================================== DICOM files


def test_truncated_header_is_reported_as_truncated_not_as_another_series(tmp_path):
    folder = ct5n(tmp_path)
    (folder / "2062").write_bytes((folder / "2062").read_bytes()[:1000])
    with pytest.raises(DicomSeriesError,
                       match=r"2062: no pixel data \(no PixelData element; SOP class .*CT Image "
                             r"Storage.*truncated before its pixels \(1000 bytes\)") as err:
        dicom.read_series(str(folder))
    assert err.value.path == str(folder / "2062")


def test_truncated_pixel_data_gives_the_declared_and_actual_sizes(tmp_path):
    folder = ct5n(tmp_path)
    data = (folder / "2062").read_bytes()
    (folder / "2062").write_bytes(data[:-100])
    offset = len(data) - 16 * 16 * 2  # the 512 bytes of 16 x 16 int16 pixels end the file
    with pytest.raises(DicomSeriesError, match=rf"2062: truncated file: PixelData declares 512 "
                       rf"bytes at byte {offset}, but the file ends after {len(data) - 100} bytes"):
        dicom.read_series(str(folder))


def test_garbage_with_a_dcm_name_is_named(tmp_path):
    folder = ct5n(tmp_path)
    (folder / "junk.dcm").write_bytes(bytes(128) + b"DICM" + bytes(range(256)) * 2)
    with pytest.raises(DicomSeriesError, match=r"junk.dcm: no pixel data \(no PixelData element; "
                                               r"SOP class \?, modality \?\)") as err:
        dicom.read_series(str(folder))
    assert err.value.path == str(folder / "junk.dcm")


def test_a_file_that_is_not_dicom_beside_the_slices_is_left_out_and_named(tmp_path):
    folder = ct5n(tmp_path)
    (folder / "junk.dcm").write_bytes(b"not DICOM at all " * 30)
    vol = dicom.read_series(str(folder))
    assert vol.hu.shape == (5, 16, 16)
    assert vol.skipped_files == [(str(folder / "junk.dcm"),
                                  "not DICOM: no DICM prefix and no DICOM dataset")]


def test_structured_report_alone_is_not_an_image(tmp_path):
    (tmp_path / "s").mkdir()
    shutil.copy(SR, tmp_path / "s" / "report.dcm")
    with pytest.raises(DicomSeriesError, match=r"report.dcm: not an image slice: no Rows, "
                       r"Columns.*\(Comprehensive SR Storage\), modality SR"):
        dicom.read_series(str(tmp_path / "s"))


def test_structured_report_beside_a_series_is_left_out_and_reported(tmp_path):
    folder = ct5n(tmp_path)
    shutil.copy(SR, folder / "report.dcm")
    vol = dicom.read_series(str(folder))
    assert vol.hu.shape == (5, 16, 16)
    assert [(os.path.basename(p), why.split(" (")[0]) for p, why in vol.skipped_files] == \
        [("report.dcm", "not an image")]


def test_ct_slice_with_pixel_data_deleted_is_named(tmp_path):
    def edit(ds, name):
        if name == "2392":
            del ds.PixelData

    folder = ct5n(tmp_path, edit)
    with pytest.raises(DicomSeriesError, match=r"2392: no pixel data \(no PixelData element; "
                       r"SOP class 1.2.840.10008.5.1.4.1.1.2 \(CT Image Storage\), modality CT\)"):
        dicom.read_series(str(folder))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("keyword,value,message", [
    ("RescaleSlope", "nan", "RescaleSlope must be a finite number"),
    ("RescaleIntercept", "inf", "RescaleIntercept must be a finite number"),
    ("Rows", 0, "empty image: Rows x Columns is 0 x 16"),
])
def test_non_finite_rescale_and_zero_rows_are_refused(tmp_path, keyword, value, message):
    def edit(ds, name):
        if name == "2693":
            setattr(ds, keyword, value)

    with pytest.raises(DicomSeriesError, match="2693: " + message):
        dicom.read_series(str(ct5n(tmp_path, edit)))


def test_oversized_slices_are_refused_from_the_header_before_reading_pixels(tmp_path):
    def edit(ds, name):  # the pixel data stays 16 x 16: reading it would fail differently
        ds.Rows, ds.Columns = 60000, 60000

    with pytest.raises(VolumeSizeError, match=r"slices of 60000 x 60000 pixels are larger than "
                       rf"the limit of {volumes.MAX_SLICE_PIXELS} pixels"):
        dicom.read_series(str(ct5n(tmp_path, edit)))


def test_size_limits_are_inclusive_and_read_at_call_time(tmp_path, monkeypatch):
    folder = str(ct5n(tmp_path))
    monkeypatch.setattr(volumes, "MAX_SLICE_PIXELS", 16 * 16)
    monkeypatch.setattr(volumes, "MAX_VOLUME_VOXELS", 5 * 16 * 16)
    assert dicom.read_series(folder).hu.shape == (5, 16, 16)
    monkeypatch.setattr(volumes, "MAX_VOLUME_VOXELS", 5 * 16 * 16 - 1)
    with pytest.raises(VolumeSizeError, match="volume of 5 x 16 x 16 voxels is larger than the "
                                              "limit of 1279 voxels"):
        dicom.read_series(folder)
    monkeypatch.setattr(volumes, "MAX_SLICE_PIXELS", 16 * 16 - 1)
    with pytest.raises(VolumeSizeError, match="slices of 16 x 16 pixels"):
        dicom.read_series(folder)
    with pytest.raises(VolumeSizeError, match=r"empty volume: shape \(slices, rows, cols\) "
                                              r"\(0, 16, 16\)"):
        volumes.check_volume_size((0, 16, 16), folder)


def test_label_whose_directions_differ_from_the_image_is_a_geometry_error(tmp_path):
    vol = dicom.read_series(str(CT5N))
    a = np.radians(0.5)  # below the 1-degree oblique limit: canonical, but off the image's axes
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = vol.affine.copy()
    aff[:3, :3] = rot @ aff[:3, :3]
    path = write_nifti(tmp_path / "rotated.nii.gz", np.zeros(vol.hu.shape, np.uint8), aff)
    with pytest.raises(GeometryError, match=r"rotated.nii.gz: label geometry does not match "
                                            r".*axis directions .* differ from") as err:
        nifti.read_label(path, vol.affine, vol.hu.shape)
    assert err.value.path == path


# ================================================================== NIfTI volumes


def image_label_pair(tmp_path, image, labels):
    """Canonical (z, y, x) arrays saved as an MSD-style pair with one affine."""
    aff = np.zeros((4, 4))
    aff[:3, :3] = [[0, 0, 0.7], [0, 0.8, 0], [2.0, 0, 0]]
    aff[3, 3] = 1
    return (write_nifti(tmp_path / "img.nii.gz", image, aff),
            write_nifti(tmp_path / "lab.nii.gz", labels, aff))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_voxels_are_refused_with_count_and_index(tmp_path, bad):
    image = np.zeros((3, 8, 9), np.float32)
    image[1, 2, 5] = bad
    image[2, 0, 0] = bad
    img, lab = image_label_pair(tmp_path, image, np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(NiftiError, match=r"img.nii.gz: 2 of 216 image voxels are NaN or infinite "
                                         r"\(first at stored index \(1, 2, 5\)\)"):
        nifti.read_image_and_label(img, lab)
    with pytest.raises(NiftiError, match="2 of 216 image voxels are NaN or infinite"):
        readers.read_input(img)


@pytest.mark.parametrize("value,message", [
    (np.nan, "lab.nii.gz: 1 label voxels are NaN or infinite"),
    (np.inf, "lab.nii.gz: 1 label voxels are NaN or infinite"),
    (-1.0, r"lab.nii.gz: negative label values \[-1\]"),
    (1.5, r"lab.nii.gz: label values must be integers, found \[1.5\]"),
])
def test_bad_label_values_are_refused(tmp_path, value, message):
    labels = np.zeros((3, 8, 9), np.float32)
    labels[1, 4, 4] = value
    img, lab = image_label_pair(tmp_path, np.zeros((3, 8, 9), np.int16), labels)
    with pytest.raises(NiftiError, match=message):
        nifti.read_image_and_label(img, lab)


def test_msd_label_value_outside_the_task_classes_fails_that_patient(tmp_path, capsys):
    root = tmp_path / "Task"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for name, top in (("good", 2), ("odd", 3)):
        labels = np.zeros((3, 8, 9), np.uint8)
        labels[1, 2:4, 2:5] = 1
        labels[2, 5, 5] = top
        image_label_pair(tmp_path, np.zeros((3, 8, 9), np.int16), labels)
        shutil.move(tmp_path / "img.nii.gz", root / "imagesTr" / f"{name}.nii.gz")
        shutil.move(tmp_path / "lab.nii.gz", root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "pancreas", "2": "cancer"}}))
    out = tmp_path / "ds"
    assert prepare.main(["msd", "--root", str(root), "--out", str(out), "--folds", "2"]) == 1
    with open(out / "dataset.json", encoding="utf-8") as f:
        info = json.load(f)
    assert list(info["patient_details"]) == ["good"]
    assert info["failed"]["odd"] == (
        f"{root / 'labelsTr' / 'odd.nii.gz'}: label values [3] are not classes of this task "
        "(dataset.json labels {0: 'background', 1: 'pancreas', 2: 'cancer'})")
    assert "odd: " in capsys.readouterr().err


def test_empty_nifti_volume_is_refused(tmp_path):
    path = str(tmp_path / "empty.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 0), np.int16), np.eye(4)), path)
    with pytest.raises(VolumeSizeError, match=r"empty.nii.gz: empty volume: shape \(slices, rows, "
                                              r"cols\) \(0, 4, 4\) has no voxels"):
        readers.read_input(path)


def test_oversized_nifti_is_refused_from_its_header(tmp_path):
    path = header_only_nifti(tmp_path / "huge.nii", (30000, 30000, 2))
    assert os.path.getsize(path) == 352  # no voxels: reading them would fail another way
    with pytest.raises(VolumeSizeError, match=r"huge.nii: slices of 30000 x 30000 pixels are "
                                              "larger than the limit"):
        readers.read_input(path)
    with pytest.raises(VolumeSizeError, match="slices of 30000 x 30000 pixels"):
        nifti.read_label(path, np.eye(4), (2, 30000, 30000))


# ================================================================== predict inputs


@pytest.mark.parametrize("shape,message", [
    ((100000, 100000), r"slices of 100000 x 100000 pixels are larger than the limit"),
    ((40000, 8192, 8192), r"volume of 40000 x 8192 x 8192 voxels is larger than the limit"),
    ((64, 64, 3), r"shape \(64, 64, 3\) looks like an \(H, W, C\) image with 3 channel\(s\)"),
    ((64, 64, 1), r"shape \(64, 64, 1\) looks like an \(H, W, C\) image with 1 channel\(s\)"),
    ((0, 64, 64), r"empty array of shape \(0, 64, 64\)"),
    ((5,), r"expected a 2-D slice \(H, W\) or a 3-D volume \(slices, H, W\), got shape \(5,\)"),
    ((1, 2, 3, 8, 8), r"expected a 2-D slice .* got shape \(1, 2, 3, 8, 8\)"),
])
def test_npy_shape_is_checked_from_the_header(tmp_path, shape, message):
    path = header_only_npy(tmp_path / "x.npy", shape)  # no data: only the header is read
    with pytest.raises(readers.PredictError, match="x.npy: " + message):
        readers.read_input(path)


def test_npy_values_must_be_finite_real_numbers(tmp_path):
    x = np.zeros((2, 8, 8), np.float32)
    x[1, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(readers.PredictError, match="nan.npy: holds NaN or infinite values"):
        readers.read_input(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "mask.npy", np.zeros((8, 8), bool))
    with pytest.raises(readers.PredictError, match="values of type bool are not real numbers"):
        readers.read_input(str(tmp_path / "mask.npy"))


def test_a_volume_of_three_slices_is_not_mistaken_for_channels(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(3 * 64 * 64, dtype=np.int16).reshape(3, 64, 64))
    vol = readers.read_input(str(tmp_path / "v.npy"))
    assert vol.hu.shape == (3, 64, 64) and vol.hu[2, 63, 63] == 3 * 64 * 64 - 1


def test_png_bit_depth_and_size_are_checked(tmp_path, monkeypatch):
    Image.new("1", (8, 8)).save(tmp_path / "bits.png")
    with pytest.raises(readers.PredictError, match=r"bits.png: PNG of mode 1 \(bool\); expected "
                                                   "8- or 16-bit gray"):
        readers.read_input(str(tmp_path / "bits.png"))
    Image.new("L", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(volumes, "MAX_SLICE_PIXELS", 40 * 30 - 1)
    with pytest.raises(readers.PredictError, match="big.png: slices of 30 x 40 pixels are larger"):
        readers.read_input(str(tmp_path / "big.png"))


class CountingPredictor:
    """Stands in for a model: mask = HU > 0; records how many slices each call gets."""

    batch_size = 8

    def __init__(self):
        self.calls = []

    def predict(self, hu):
        self.calls.append(hu.shape[0])
        n = hu.shape[0]
        return {"mask": (hu > 0)[..., None].astype(np.uint8), "boxes": np.zeros((n, 1, 4)),
                "scores": np.zeros((n, 1)), "keypoints": np.zeros((n, 1, 2)),
                "valid": np.zeros((n, 1), bool)}


def test_each_model_call_gets_at_most_max_batch_pixels(monkeypatch):
    hu = np.random.default_rng(0).uniform(-1, 1, (5, 32, 32)).astype(np.float32)
    monkeypatch.setattr(volume, "MAX_BATCH_PIXELS", 2 * 32 * 32)
    p = CountingPredictor()
    out = volume.predict_volume(p, hu, progress=None)
    assert p.calls == [2, 2, 1]
    np.testing.assert_array_equal(out["mask"], (hu > 0).astype(np.uint8))
    monkeypatch.setattr(volume, "MAX_BATCH_PIXELS", 100)  # less than one slice: one at a time
    p = CountingPredictor()
    volume.predict_volume(p, hu, progress=None)
    assert p.calls == [1] * 5


# ================================================================== empty targets and losses


def test_no_boxes_give_zero_heatmap_and_distance_targets():
    for boxes in (np.zeros((0, 4), np.float32), tf.zeros([0, 4])):
        heat, ltrb = encode_targets(boxes, 64, 48)
        assert heat.shape == (16, 12, 1) and ltrb.shape == (16, 12, 4)
        assert not np.any(heat.numpy()) and not np.any(ltrb.numpy())
    traced = tf.function(lambda b: encode_targets(b, 64, 48),
                         input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    heat, ltrb = traced(tf.zeros([0, 4]))
    assert not np.any(heat.numpy()) and not np.any(ltrb.numpy())


def loss_cfg():
    return load_config(None, []).loss


def test_all_zero_heatmap_loss_is_finite_known_and_has_finite_gradients():
    cfg = loss_cfg()
    assert cfg.kind == "focal_dice" and cfg.heatmap_focal_normalizer == "positives"
    h, w, b = 4, 5, 2
    logits = tf.Variable(tf.zeros([b, h, w, 1]))  # p = 0.5 everywhere
    ltrb_pred = tf.Variable(tf.random.uniform([b, h, w, 4], 1.0, 9.0, seed=1))
    with tf.GradientTape() as tape:
        total, parts = localization_loss(logits, ltrb_pred, tf.zeros([b, h, w, 1]),
                                         tf.zeros([b, h, w, 4]), cfg, global_batch=b)
    g_logits, g_ltrb = tape.gradient(total, [logits, ltrb_pred])
    # No positives: the focal sum is divided by max(0, 1) = 1. Each of the h*w negatives gives
    # (1 - alpha) * p^gamma * -log(1 - p); Dice is 1 - smooth / (sum p + smooth) with smooth 1.
    focal = h * w * (1 - cfg.focal_alpha) * 0.5 ** cfg.focal_gamma * np.log(2.0)
    dice = 1.0 - 1.0 / (h * w * 0.5 + 1.0)
    np.testing.assert_allclose(float(parts["heatmap"]), focal + cfg.dice_weight * dice, rtol=1e-5)
    assert float(parts["box"]) == 0.0 and float(total) == pytest.approx(float(parts["heatmap"]))
    assert np.all(np.isfinite(g_logits.numpy())) and np.all(g_logits.numpy() > 0)  # pushes p down
    assert g_ltrb is not None and not np.any(g_ltrb.numpy())  # no positives: no box gradient


def test_box_loss_without_positives_is_zero_with_zero_gradient_even_for_degenerate_boxes():
    cfg = loss_cfg()
    for ltrb in (tf.zeros([1, 4, 4, 4]), tf.fill([1, 4, 4, 4], -3.0)):  # points, inverted boxes
        ltrb_pred = tf.Variable(ltrb)
        with tf.GradientTape() as tape:
            _, parts = localization_loss(tf.zeros([1, 4, 4, 1]), ltrb_pred, tf.zeros([1, 4, 4, 1]),
                                         tf.zeros([1, 4, 4, 4]), cfg, global_batch=1)
        grad = tape.gradient(parts["box"], ltrb_pred)
        assert float(parts["box"]) == 0.0
        assert grad is not None and np.all(np.isfinite(grad.numpy())) and not np.any(grad.numpy())


def test_an_image_without_positives_does_not_change_the_box_term():
    cfg = loss_cfg()
    heat = np.zeros((2, 4, 4, 1), np.float32)
    heat[0, 1, 2, 0] = 1.0
    heat[0, 2, 2, 0] = 0.8
    rng = np.random.default_rng(3)
    ltrb_true = rng.uniform(2, 10, (2, 4, 4, 4)).astype(np.float32)
    ltrb_pred = rng.uniform(2, 10, (2, 4, 4, 4)).astype(np.float32)
    logits = np.zeros((2, 4, 4, 1), np.float32)
    _, both = localization_loss(logits, ltrb_pred, heat, ltrb_true, cfg, global_batch=2)
    _, first = localization_loss(logits[:1], ltrb_pred[:1], heat[:1], ltrb_true[:1], cfg,
                                 global_batch=1)
    # The box term is the mean DIoU over the two positives of image 0, computed here directly.
    q = np.array([[(2 + 0.5) * 4, (1 + 0.5) * 4], [(2 + 0.5) * 4, (2 + 0.5) * 4]], np.float32)
    cells = [(1, 2), (2, 2)]
    t = np.stack([ltrb_true[0, i, j] for i, j in cells])
    p = np.stack([ltrb_pred[0, i, j] for i, j in cells])
    expected = box_ops.diou_loss(box_ops.ltrb_to_xyxy(q, t), box_ops.ltrb_to_xyxy(q, p)).numpy()
    np.testing.assert_allclose(float(both["box"]), expected.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(both["box"]), float(first["box"]), rtol=1e-6)


# ================================================================== serving and predict CLI


@pytest.fixture(scope="module")
def served(tiny_saved_model):
    """The session's tiny random SavedModel (tests/conftest.py: 64 x 64, its heatmap head
    scaled so that RoIs are valid and masks non-empty), loaded as TF Serving would
    (``tf.saved_model.load(...).signatures``)."""
    return predictors.load_predictor(tiny_saved_model)


@pytest.mark.slow
def test_serving_refuses_float64_and_integer_tensors_but_converts_python_values(served):
    serve = served.signature
    for dtype, name in ((tf.float64, "double"), (tf.int32, "int32"), (tf.int16, "int16")):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"expected to be a float tensor but is a {name} tensor"):
            serve(hu=tf.zeros([1, 8, 8], dtype))
    hu = np.random.default_rng(0).uniform(-200, 200, (1, 20, 24))
    as_float64 = serve(hu=hu)  # a NumPy float64 array is converted, as JSON numbers over REST
    as_float32 = serve(hu=tf.constant(hu.astype(np.float32)))
    for key in saved_model.OUTPUT_NAMES:
        np.testing.assert_array_equal(as_float64[key].numpy(), as_float32[key].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 8, 8, 1), (1, 8, 8, 3), (1, 8, 8, 1)])
def test_serving_refuses_wrong_rank_and_channels_naming_the_shape(served, shape):
    received = " ".join(str(s) for s in shape)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"hu must be a batch of slices \(batch, height, width\) of raw HU; "
                             rf"send one slice as a batch of one.*\[{received}\]"):
        served.signature(hu=tf.zeros(shape))


@pytest.mark.slow
def test_one_pixel_slice_is_the_bilinear_resize_of_the_model_output(served):
    serve = served.signature
    for value in (-100.0, 200.0):
        one = serve(hu=tf.fill([1, 1, 1], value))
        full = serve(hu=tf.fill([1, 64, 64], value))  # the model's own size: no resize
        assert one["probability"].shape == (1, 1, 1, 1) and one["mask"].shape == (1, 1, 1, 1)
        # Half-pixel centres: the single output pixel samples the model grid at (31.5, 31.5).
        centre = full["probability"].numpy()[0, 31:33, 31:33, 0].mean()
        np.testing.assert_allclose(one["probability"].numpy()[0, 0, 0, 0], centre, atol=1e-6)
        assert one["mask"].numpy()[0, 0, 0, 0] == (centre > 0.5)
        # Boxes and keypoints scale by 1/64; the scaled head makes at least one detection.
        assert full["valid"].numpy().any() and full["boxes"].numpy().max() > 1.0
        np.testing.assert_array_equal(one["valid"].numpy(), full["valid"].numpy())
        np.testing.assert_allclose(one["boxes"].numpy(), full["boxes"].numpy() / 64.0, atol=1e-5)
        np.testing.assert_allclose(one["keypoints"].numpy(), full["keypoints"].numpy() / 64.0,
                                   atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("make,message", [
    (lambda d: np.save(d / "rgb.npy", np.zeros((64, 64, 3), np.float32)) or d / "rgb.npy",
     r"rgb.npy: shape \(64, 64, 3\) looks like an \(H, W, C\) image"),
    (lambda d: np.save(d / "row.npy", np.zeros(64, np.float32)) or d / "row.npy",
     r"row.npy: expected a 2-D slice \(H, W\) or a 3-D volume \(slices, H, W\), got shape \(64,\)"),
    (lambda d: Image.new("RGB", (16, 16), (200, 10, 10)).save(d / "red.png") or d / "red.png",
     r"red.png: colour PNG \(mode RGB\); a CT slice must be gray"),
])
def test_predict_cli_refuses_wrong_shaped_input(served, tmp_path, monkeypatch, capsys, make,
                                                message):
    monkeypatch.setattr(predictors, "load_predictor", lambda path, batch_size=8, **_: served)
    path = make(tmp_path)
    assert predict.main(["--model", "m", "--input", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert re.search("error: .*" + message, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_predict_cli_one_pixel_npy_gives_a_one_voxel_mask(served, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predictors, "load_predictor", lambda path, batch_size=8, **_: served)
    np.save(tmp_path / "px.npy", np.full((1, 1), 60.0, np.float32))
    assert predict.main(["--model", "m", "--input", str(tmp_path / "px.npy"), "--out",
                         str(tmp_path / "o"), "--no-overlays"]) == 0
    mask = nib.load(str(tmp_path / "o" / "mask.nii.gz"))
    expected = served.predict(np.full((1, 1, 1), 60.0, np.float32))["mask"]
    assert mask.shape == (1, 1, 1)
    assert int(np.asarray(mask.dataobj)[0, 0, 0]) == int(expected[0, 0, 0, 0])
    with open(tmp_path / "o" / "summary.json", encoding="utf-8") as f:
        assert json.load(f)["shape"] == [1, 1, 1]


@pytest.mark.slow
def test_predict_cli_refuses_a_slice_over_the_size_limit(served, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predictors, "load_predictor", lambda path, batch_size=8, **_: served)
    monkeypatch.setattr(volumes, "MAX_SLICE_PIXELS", 30 * 30)
    np.save(tmp_path / "big.npy", np.zeros((31, 30), np.float32))
    assert predict.main(["--model", "m", "--input", str(tmp_path / "big.npy"), "--out",
                         str(tmp_path / "o")]) == 1
    assert "big.npy: slices of 31 x 30 pixels are larger than the limit of 900 pixels" in \
        capsys.readouterr().err


# ================================================================== DICOM reader fuzzing

# The reader's documented errors (lsnet_tf.data.dicom module docstring).
DICOM_ERRORS = (DicomSeriesError, GeometryError, VolumeSizeError)
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UN", "UC", "UR"}
_CT = b"1.2.840.10008.5.1.4.1.1.2"


def _element(tag, vr, value: bytes) -> bytes:
    """One explicit-VR little-endian element, written byte by byte (any VR for any tag)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "OW", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _dicom_bytes(elements: dict) -> bytes:
    """Preamble, file meta and `elements` {tag: (vr, bytes)} in tag order."""
    meta = (_element(0x00020001, "OB", b"\0\1") + _element(0x00020002, "UI", _CT)
            + _element(0x00020003, "UI", b"1.2.3.4")
            + _element(0x00020010, "UI", b"1.2.840.10008.1.2.1"))
    meta = _element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta
    return bytes(128) + b"DICM" + meta + b"".join(
        _element(t, vr, v) for t, (vr, v) in sorted(elements.items()))


def _us(v):
    return struct.pack("<H", v)


def _slice_elements(k):
    """A valid 4 x 4 int16 CT slice at z = k (HU = stored - 1024)."""
    return {
        0x00080008: ("CS", b"ORIGINAL\\PRIMARY\\AXIAL"), 0x00080016: ("UI", _CT),
        0x00080018: ("UI", f"1.2.3.{k + 1}".encode()), 0x00080060: ("CS", b"CT"),
        0x0020000E: ("UI", b"1.2.3.99"), 0x00200032: ("DS", f"0\\0\\{k}".encode()),
        0x00200037: ("DS", b"1\\0\\0\\0\\1\\0"), 0x00280002: ("US", _us(1)),
        0x00280004: ("CS", b"MONOCHROME2"), 0x00280010: ("US", _us(4)),
        0x00280011: ("US", _us(4)), 0x00280030: ("DS", b"0.5\\0.5"),
        0x00280100: ("US", _us(16)), 0x00280101: ("US", _us(16)), 0x00280102: ("US", _us(15)),
        0x00280103: ("US", _us(1)), 0x00281052: ("DS", b"-1024"), 0x00281053: ("DS", b"1"),
        0x7FE00010: ("OW", (np.arange(16, dtype="<i2") + k).tobytes()),
    }


_FUZZED = {"ImageType": 0x00080008, "SOPClassUID": 0x00080016, "SeriesInstanceUID": 0x0020000E,
           "ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037,
           "SamplesPerPixel": 0x00280002, "NumberOfFrames": 0x00280008, "Rows": 0x00280010,
           "Columns": 0x00280011, "PixelSpacing": 0x00280030, "BitsAllocated": 0x00280100,
           "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103,
           "RescaleIntercept": 0x00281052, "RescaleSlope": 0x00281053, "PixelData": 0x7FE00010}
_numbers = st.one_of(st.integers(-5, 70000).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["", "nan", "inf", "1e400", "abc", " ", "0", "-0"]))
_values = st.one_of(
    st.none(),  # the element is deleted
    st.tuples(st.just("US"), st.integers(0, 65535).map(_us)),
    st.tuples(st.sampled_from(["DS", "IS"]),
              st.lists(_numbers, max_size=7).map(lambda v: "\\".join(v).encode())),
    st.tuples(st.sampled_from(["OW", "OB", "UN", "LO", "FD", "SQ"]), st.binary(max_size=40)),
)
_FUZZ = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow])


def _read_everything(folder, files):
    """Call the per-file and per-series readers; return the volume, or the documented error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values it reads
        for path in files:
            for call in (lambda: dicom.read_header(path), lambda: dicom.read_hu(path, 4, 4)):
                try:
                    call()
                except DicomSeriesError as e:
                    assert e.path == path and str(e).startswith(path + ": ")
        try:
            return dicom.read_series(folder)
        except DICOM_ERRORS as e:
            assert str(e).startswith(e.path + ": ") and e.path.startswith(folder)
            return e


def test_fuzz_helpers_write_a_readable_series():
    with tempfile.TemporaryDirectory() as d:
        for k in range(3):
            Path(d, f"{k}.dcm").write_bytes(_dicom_bytes(_slice_elements(k)))
        vol = dicom.read_series(d)
    stored = np.arange(16).reshape(1, 4, 4) + np.arange(3)[:, None, None]
    np.testing.assert_array_equal(vol.hu, stored - 1024)
    assert vol.spacing == (0.5, 0.5, 1.0)


@settings(max_examples=250, **_FUZZ)
@given(n=st.integers(1, 3), edits=st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(sorted(_FUZZED)), _values), max_size=4))
def test_fuzz_random_headers_give_a_volume_or_a_documented_error(n, edits):
    files = [_slice_elements(k) for k in range(n)]
    for i, keyword, value in edits:
        if value is None:
            files[i % n].pop(_FUZZED[keyword], None)
        else:
            files[i % n][_FUZZED[keyword]] = value
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, f"{k}.dcm") for k in range(n)]
        for path, elements in zip(paths, files):
            Path(path).write_bytes(_dicom_bytes(elements))
        out = _read_everything(d, paths)
    if not isinstance(out, Exception):
        assert out.hu.dtype == np.int16 and out.hu.ndim == 3 and min(out.hu.shape) >= 1
        assert out.hu.shape[0] + len(out.skipped_files) == n


@settings(max_examples=150, **_FUZZ)
@given(data=st.data(), mode=st.sampled_from(["random", "truncate", "overwrite"]))
def test_fuzz_random_bytes_give_a_volume_or_a_documented_error(data, mode):
    valid = _dicom_bytes(_slice_elements(1))
    if mode == "random":
        prefix = data.draw(st.sampled_from([b"", bytes(128) + b"DICM"]))
        content = prefix + data.draw(st.binary(max_size=600))
    elif mode == "truncate":
        content = valid[:data.draw(st.integers(0, len(valid) - 1))]
    else:
        content = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 8))):
            content[data.draw(st.integers(132, len(valid) - 1))] = data.draw(st.integers(0, 255))
        content = bytes(content)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "0.dcm").write_bytes(_dicom_bytes(_slice_elements(0)))
        Path(d, "1.dcm").write_bytes(content)
        Path(d, "2.dcm").write_bytes(_dicom_bytes(_slice_elements(2)))
        out = _read_everything(d, [os.path.join(d, "1.dcm")])
    if not isinstance(out, Exception):
        assert out.hu.dtype == np.int16 and out.hu.shape[1:] == (4, 4)


def test_train_on_a_folder_that_is_not_a_prepared_dataset_ends_with_its_name(tmp_path, capsys):
    """No dataset.json, a dataset.json of another format or not JSON, and one without the slice
    counts: `python -m lsnet_tf.train` ends with exit status 2 and the file, not a traceback."""
    from lsnet_tf import train
    from lsnet_tf.data import records

    folder = tmp_path / "ds"
    folder.mkdir()
    argv = ["--set", f"data.dataset={folder}", "--set", f"train.output_dir={tmp_path / 'run'}",
            "--set", "export.dir="]
    for text, message in (
            (None, f"{folder} is not a prepared dataset (no dataset.json)"),
            ("[1, 2", f"{folder / 'dataset.json'}: not JSON"),
            ('{"format": "other"}', f"{folder / 'dataset.json'}: format 'other' is not "
                                    "'lsnet_tf-slices'"),
            ('{"format": "lsnet_tf-slices", "folds": 2}', "no shards for folds [1] under "),
            ("shards", f"{folder / 'dataset.json'}: no slice count for fold 1 (num_slices: "
                       "None); prepare the dataset again")):
        if text == "shards":  # shards, but dataset.json lacks the slice counts
            for k in (0, 1):
                with records.ShardWriter(records.shard_path(str(folder), k, f"p{k}")):
                    pass
        elif text is not None:
            (folder / "dataset.json").write_text(text)
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: " + message) and "Traceback" not in err, err
