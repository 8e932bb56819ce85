"""Whole-volume prediction (``python -m lsnet_tf.predict``): geometry, outputs, errors.

Known answers: the mask of a NIfTI input comes back with the input's shape and affine, and
canonicalizing it again gives exactly the mask predicted on the canonical volume; for pydicom's
5-slice CT series (InstanceNumber running against z) the mask's affine equals the one built
from the headers by hand and each mask slice equals the prediction of the file at that z;
the JSON volume is the voxel count times the voxel volume. A tiny random model whose heatmap head
is scaled so that RoIs are valid gives non-empty masks.
"""
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_rescale

from lsnet_tf import predict
from lsnet_tf.inference import cases as predict_cases
from lsnet_tf.inference import outputs, predictors, readers, volume
from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.data.pipeline import window

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def models(tiny_saved_model, tiny_tflite):
    """A tiny random model exported as a SavedModel (serving layout) and as float32 TFLite
    (conftest's `tiny_export`)."""
    return {"saved_model": tiny_saved_model, "tflite": tiny_tflite}


@pytest.fixture(scope="module")
def saved_predictor(models):
    return predictors.load_predictor(models["saved_model"])


def hu_volume(shape, seed=0):
    return np.random.default_rng(seed).uniform(-300, 300, shape).astype(np.float32)


def read_summary(out_dir):
    with open(Path(out_dir) / "summary.json", encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ small parts


def test_progress_bar_draws_the_fraction_done():
    class Stream:
        text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    stream = Stream()
    volume.progress_bar(3, 6, stream=stream, width=10)
    assert stream.text == "\rpredicting [#####.....] 3/6 slices"
    volume.progress_bar(6, 6, stream=stream, width=10)
    assert stream.text.endswith("[##########] 6/6 slices\n")


def test_label_map_of_several_classes():
    mask = np.zeros((1, 2, 2, 2), np.uint8)
    mask[0, 0, 0, 0] = 1
    mask[0, 0, 1, 1] = 1
    mask[0, 1, 1] = 1  # both classes: the later one wins
    np.testing.assert_array_equal(volume._label_map(mask)[0], [[1, 2], [0, 2]])


def test_summary_volume_is_voxel_count_times_voxel_volume():
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1, :2, :3] = 1
    mask[2, 0, 0] = 1
    k = 4
    pred = {"mask": mask, "boxes": np.zeros((3, k, 4)), "scores": np.zeros((3, k)),
            "keypoints": np.zeros((3, k, 2)), "valid": np.zeros((3, k), bool)}
    pred["valid"][0, 0] = True
    pred["boxes"][0, 0] = [1, 2, 3, 4]
    vol = readers.Volume(hu=np.zeros((3, 4, 4), np.float32), spacing=(0.5, 0.8, 2.5),
                         spacing_source="test", kind="npy", write_mask=None)
    s = outputs.summarize(vol, pred)
    assert s["mask_voxels"] == 7
    assert s["voxel_volume_mm3"] == pytest.approx(0.5 * 0.8 * 2.5)
    assert s["volume_ml"] == pytest.approx(7 * 1.0 / 1000)
    assert s["slice_range"] == [1, 2] and s["slices_with_mask"] == 2
    assert [e["index"] for e in s["slices"]] == [0, 1, 2]  # slice 0 has a box and no mask
    assert s["slices"][0]["boxes"][0]["box"] == [1.0, 2.0, 3.0, 4.0]
    assert s["slices"][1]["area_mm2"] == pytest.approx(6 * 0.5 * 0.8)


# ------------------------------------------------------------------ input errors


def test_missing_input_unsupported_extension_and_4d_array(tmp_path):
    with pytest.raises(readers.PredictError, match="input not found"):
        readers.read_input(str(tmp_path / "nothing.nii.gz"))
    (tmp_path / "scan.txt").write_text("hello")
    with pytest.raises(readers.PredictError, match=r"unsupported input \(expected a DICOM folder"):
        readers.read_input(str(tmp_path / "scan.txt"))
    np.save(tmp_path / "four.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(readers.PredictError,
                       match=r"expected a 2-D slice \(H, W\) or a 3-D volume \(slices, H, W\), "
                             r"got shape \(2, 3, 8, 8\)"):
        readers.read_input(str(tmp_path / "four.npy"))
    with pytest.raises(readers.PredictError, match="three positive mm values"):
        readers.read_input(str(tmp_path / "four.npy"), spacing=(1, 0, 1))


def test_4d_nifti_is_refused(tmp_path):
    path = str(tmp_path / "dyn.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), path)
    with pytest.raises(nifti.NiftiError, match="expected a 3-D volume"):
        readers.read_input(path)


def test_cli_reports_input_and_model_errors(tmp_path, capsys):
    np.save(tmp_path / "four.npy", np.zeros((1, 1, 4, 4), np.float32))
    (tmp_path / "weights.h5").write_text("")
    cases = [
        (["--model", str(tmp_path / "none.tflite"), "--input", str(tmp_path / "four.npy")],
         "model not found"),
        (["--model", str(tmp_path / "weights.h5"), "--input", str(tmp_path / "four.npy")],
         "unsupported model"),
        (["--model", str(tmp_path), "--input", str(tmp_path / "four.npy")], "no saved_model.pb"),
    ]
    for argv, message in cases:
        assert predict.main(argv + ["--out", str(tmp_path / "out")]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_cli_reports_a_4d_array(models, tmp_path, capsys):
    np.save(tmp_path / "four.npy", np.zeros((1, 1, 4, 4), np.float32))
    code = predict.main(["--model", models["tflite"], "--input", str(tmp_path / "four.npy"),
                         "--out", str(tmp_path / "out")])
    assert code == 1
    assert "expected a 2-D slice (H, W) or a 3-D volume" in capsys.readouterr().err


# ------------------------------------------------------------------ NIfTI


@pytest.mark.slow
def test_nifti_in_nifti_out_with_the_same_affine_and_shape(saved_predictor, models, tmp_path):
    # Stored (x, y, z) with a mirrored first axis and rows running posterior-to-anterior: the
    # canonical orientation needs a transpose and flips, which the output must undo.
    data = hu_volume((40, 48, 3), seed=1)
    affine = np.array([[-0.7, 0.0, 0.0, 120.0], [0.0, 0.75, 0.0, -60.0],
                       [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    source = str(tmp_path / "ct.nii.gz")
    nib.save(img, source)

    summary = predict_cases.run(models["saved_model"], source, str(tmp_path / "out"), log=quiet,
                          progress=None)
    out = nib.load(str(tmp_path / "out" / "mask.nii.gz"))
    assert out.shape == (40, 48, 3)
    np.testing.assert_array_equal(out.affine, nib.load(source).affine)  # as stored (float32)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    stored = np.asarray(out.dataobj)
    assert stored.dtype == np.uint8

    canonical_hu, canonical_affine = volumes.canonicalize(data, volumes.ras_to_lps(affine))
    assert canonical_hu.shape == (3, 48, 40)
    expected = saved_predictor.predict(canonical_hu)["mask"][..., 0]
    assert 0 < expected.sum() < expected.size
    back, back_affine = volumes.canonicalize(stored, nifti.affine_lps(out, "out"))
    np.testing.assert_array_equal(back, expected)
    np.testing.assert_allclose(back_affine, canonical_affine)
    assert summary["mask_voxels"] == int(expected.sum())
    assert summary["spacing_mm"] == pytest.approx({"row": 0.75, "col": 0.7, "slice": 2.5})
    assert summary["volume_ml"] == pytest.approx(expected.sum() * 0.7 * 0.75 * 2.5 / 1000)


# ------------------------------------------------------------------ DICOM


def header_affine(files):
    """The canonical voxel->LPS affine from the headers, by hand (IOP is (1,0,0,0,1,0))."""
    dss = sorted((pydicom.dcmread(f) for f in files),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    assert [float(v) for v in dss[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    dr, dc = (float(v) for v in dss[0].PixelSpacing)
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, (z[-1] - z[0]) / (len(z) - 1)]  # slice step along +z
    affine[:3, 1] = [0.0, dr, 0.0]  # rows along the column direction (0, 1, 0)
    affine[:3, 2] = [dc, 0.0, 0.0]  # columns along the row direction (1, 0, 0)
    affine[:3, 3] = [float(v) for v in dss[0].ImagePositionPatient]
    return affine, dss


@pytest.mark.slow
def test_dicom_series_mask_is_aligned_with_the_series(saved_predictor, models, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    summary = predict_cases.run(models["saved_model"], str(folder), str(tmp_path / "out"), log=quiet,
                          progress=None)
    out = nifti.load(str(tmp_path / "out" / "mask.nii.gz"))
    mask = np.asarray(out.dataobj)
    assert mask.shape == (5, 16, 16)

    expected_affine, dss = header_affine(sorted(folder.iterdir()))
    np.testing.assert_allclose(nifti.affine_lps(out, "mask"), expected_affine, atol=1e-4)
    np.testing.assert_allclose(nifti.affine_lps(out, "mask"), dicom.read_series(str(folder)).affine,
                               atol=1e-4)
    # slice k of the mask is the prediction of the file with the k-th lowest z
    by_z = [Path(d.filename).name for d in dss]
    assert by_z == ["3353", "3023", "2693", "2392", "2062"]  # not InstanceNumber order
    stacked = np.stack([apply_rescale(d.pixel_array, d) for d in dss]).astype(np.float32)
    np.testing.assert_array_equal(mask, saved_predictor.predict(stacked)["mask"][..., 0])
    assert 0 < mask.sum() < mask.size
    files = {e["index"]: Path(e["file"]).name for e in summary["slices"]}
    assert files and all(files[k] == by_z[k] for k in files)
    assert summary["input_format"] == "dicom"
    assert summary["series_uid"] == str(dss[0].SeriesInstanceUID)
    assert summary["spacing_source"] == "dicom"
    assert summary["volume_ml"] == pytest.approx(mask.astype(bool).sum() * 0.488281 ** 2 * 2.5
                                                 / 1000, rel=1e-5)

    # The DICOM SEG beside it: one frame per slice with a finding, each on the CT file whose
    # mask it is (by SOP Instance UID), equal to mask.nii.gz there.
    import highdicom as hd

    assert summary["dicom_seg_file"] == "mask.seg.dcm"
    seg = hd.seg.segread(str(tmp_path / "out" / "mask.seg.dcm"))
    by_uid = {str(d.SOPInstanceUID): k for k, d in enumerate(dss)}
    assert [float(v) for v in dss[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]  # rows as stored
    frames = seg.pixel_array.reshape(-1, 16, 16)
    refs = [str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence]
    assert sorted(by_uid[u] for u in refs) == [k for k in range(5) if mask[k].any()]
    for uid, frame in zip(refs, frames):
        np.testing.assert_array_equal(frame, mask[by_uid[uid]] > 0)
    assert str(seg.PatientID) == str(dss[0].PatientID)
    assert str(seg.StudyInstanceUID) == str(dss[0].StudyInstanceUID)
    assert str(seg.FrameOfReferenceUID) == str(dss[0].FrameOfReferenceUID)


class EmptyPredictor:
    """A predictor that finds nothing (the interface of `predictors.load_predictor`'s)."""

    path, format, batch_size, window = "empty", "stub", 8, None

    def predict(self, hu):
        n, h, w = hu.shape
        return {"mask": np.zeros((n, h, w, 1), np.uint8), "boxes": np.zeros((n, 1, 4)),
                "scores": np.zeros((n, 1)), "keypoints": np.zeros((n, 1, 2)),
                "valid": np.zeros((n, 1), bool)}


def test_dicom_seg_is_not_written_for_an_empty_mask_nor_with_no_dicom_seg(models, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(CT5N, folder)
    lines = []
    summary = predict_cases.predict_case(EmptyPredictor(), str(folder), str(tmp_path / "empty"),
                                   log=lines.append, progress=None)
    assert summary["dicom_seg_file"] is None and summary["mask_voxels"] == 0
    assert not (tmp_path / "empty" / "mask.seg.dcm").exists()
    assert "empty mask: no DICOM SEG written" in lines
    assert predict.main(["--model", models["saved_model"], "--input", str(folder),
                         "--out", str(tmp_path / "off"), "--no-dicom-seg", "--no-overlays"]) == 0
    assert (tmp_path / "off" / "mask.nii.gz").exists()
    assert not (tmp_path / "off" / "mask.seg.dcm").exists()
    assert read_summary(tmp_path / "off")["dicom_seg_file"] is None


# ------------------------------------------------------------------ PNG and NPY


def test_8bit_png_is_read_as_a_display_image_in_the_window(tmp_path):
    pixels = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) % 256
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(tmp_path / "slice.png")
    vol = readers.read_input(str(tmp_path / "slice.png"), window=(40.0, 400.0))
    assert vol.hu.shape == (1, 64, 64) and vol.kind == "png"
    np.testing.assert_allclose(window(vol.hu[0], 40.0, 400.0).numpy(), pixels / 255.0, atol=1e-6)


def test_16bit_png_is_hu_plus_32768(tmp_path):
    hu = np.array([[-1024, 0], [40, 3000]], np.int32)
    Image.fromarray((hu + 32768).astype(np.uint16)).save(tmp_path / "slice16.png")
    vol = readers.read_input(str(tmp_path / "slice16.png"))
    np.testing.assert_array_equal(vol.hu[0], hu.astype(np.float32))


def test_colour_png_is_refused_and_gray_with_alpha_is_read(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "colour.png")
    with pytest.raises(readers.PredictError, match=r"colour PNG \(mode RGB\)"):
        readers.read_input(str(tmp_path / "colour.png"))
    gray = np.stack([np.full((8, 8), 255, np.uint8), np.full((8, 8), 255, np.uint8)], -1)
    Image.fromarray(gray, mode="LA").save(tmp_path / "gray_alpha.png")
    vol = readers.read_input(str(tmp_path / "gray_alpha.png"), window=(40.0, 400.0))
    np.testing.assert_allclose(vol.hu, 240.0)  # the top of the window [-160, 240]


@pytest.mark.slow
def test_png_prediction_writes_mask_overlays_and_summary(models, tmp_path):
    pixels = (np.random.default_rng(2).uniform(0, 255, (64, 64))).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "slice.png")
    out_dir = tmp_path / "out"
    assert predict.main(["--model", models["saved_model"], "--input", str(tmp_path / "slice.png"),
                         "--out", str(out_dir), "--spacing", "0.5", "0.5", "2"]) == 0
    summary = read_summary(out_dir)
    mask = np.asarray(nib.load(str(out_dir / "mask.nii.gz")).dataobj)
    assert mask.shape == (1, 64, 64)
    assert summary["input_format"] == "png" and summary["spacing_source"] == "--spacing"
    assert summary["mask_voxels"] == int(np.count_nonzero(mask)) > 0
    assert summary["volume_ml"] == pytest.approx(np.count_nonzero(mask) * 0.5 * 0.5 * 2 / 1000)
    assert summary["overlays"] == ["overlays/slice_0000.png"]
    overlay = np.array(Image.open(out_dir / "overlays" / "slice_0000.png"))
    assert overlay.shape == (64, 64, 3)
    assert (overlay[..., 1] > overlay[..., 0]).any()  # green mask tint
    assert summary["slices"][0]["boxes"]  # the random model's RoIs are reported


@pytest.mark.slow
def test_npy_volume_with_savedmodel_and_tflite_agree(models, tmp_path, capsys):
    hu = hu_volume((3, 50, 60), seed=3)
    np.save(tmp_path / "vol.npy", hu)
    summaries, masks = {}, {}
    for kind in ("saved_model", "tflite"):
        out_dir = tmp_path / kind
        summaries[kind] = predict_cases.run(models[kind], str(tmp_path / "vol.npy"), str(out_dir),
                                      batch_size=2, log=quiet)
        masks[kind] = np.asarray(nib.load(str(out_dir / "mask.nii.gz")).dataobj)
        assert masks[kind].shape == (3, 50, 60)
        assert read_summary(out_dir) == json.loads(json.dumps(summaries[kind]))
    err = capsys.readouterr().err
    assert "predicting [" in err and "] 3/3 slices" in err
    assert summaries["tflite"]["model_format"] == "tflite"
    a, b = masks["saved_model"], masks["tflite"]
    assert a.sum() > 0
    assert np.mean(a == b) > 0.999  # float32 round-off can only flip pixels at p = 0.5
    s = summaries["saved_model"]
    assert s["spacing_source"].startswith("assumed 1 mm")
    assert s["voxel_volume_mm3"] == 1.0 and s["volume_ml"] == pytest.approx(a.sum() / 1000)
    boxes_a = [bx["box"] for e in s["slices"] for bx in e["boxes"]]
    boxes_b = [bx["box"] for e in summaries["tflite"]["slices"] for bx in e["boxes"]]
    np.testing.assert_allclose(boxes_a, boxes_b, atol=1e-3)


@pytest.mark.slow
def test_2d_npy_is_one_slice(saved_predictor, models, tmp_path):
    hu = hu_volume((40, 40), seed=4)
    np.save(tmp_path / "slice.npy", hu)
    summary = predict_cases.run(models["saved_model"], str(tmp_path / "slice.npy"),
                          str(tmp_path / "out"), log=quiet, progress=None, overlays=False)
    mask = np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(mask[0], saved_predictor.predict(hu[None])["mask"][0, ..., 0])
    assert summary["shape"] == [1, 40, 40] and summary["overlays"] == []
    assert not (tmp_path / "out" / "overlays").exists()


# ------------------------------------------------------------------ hostile input (issue 32)


def two_series(folder):
    """CT5N and a copy of it as a second series ("copy", new UIDs) in one folder; the UIDs."""
    folder.mkdir()
    second = pydicom.uid.generate_uid()
    for f in sorted(CT5N.iterdir()):
        shutil.copy(f, folder / f.name)
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesDescription = second, "copy"
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"b{f.name}")
    return pydicom.dcmread(CT5N / "2062").SeriesInstanceUID, second


def test_series_uid_picks_a_series_of_a_folder_that_holds_several(saved_predictor, tmp_path,
                                                                  monkeypatch, capsys):
    """Issue 32, 5: the error told the user to pass --series-uid, which predict refused."""
    first, second = two_series(tmp_path / "s")
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: saved_predictor)
    argv = ["--model", "m", "--input", str(tmp_path / "s"), "--no-overlays", "--no-dicom-seg"]
    assert predict.main(argv + ["--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 's'}: folder mixes 2 series: " in err
    assert f"{second} (5 slices, modality CT, description 'copy', e.g. b2062)" in err
    assert "pick one with --series-uid UID" in err
    assert predict.main(argv + ["--out", str(tmp_path / "out"), "--series-uid", second]) == 0
    summary = read_summary(tmp_path / "out")
    assert summary["series_uid"] == second and summary["shape"] == [5, 16, 16]
    assert len(summary["skipped_files"]) == 5 and all(
        reason == f"other series {first}" for _, reason in summary["skipped_files"])
    assert predict.main(argv + ["--out", str(tmp_path / "x"), "--series-uid", "1.2.3"]) == 1
    assert "--series-uid 1.2.3 names none of them" in capsys.readouterr().err


def test_files_that_are_not_dicom_among_the_slices_are_named_in_a_warning(
        saved_predictor, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "s"
    shutil.copytree(CT5N, folder)
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "Thumbs").write_bytes(b"\xff\xd8 a thumbnail, not DICOM" * 10)
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: saved_predictor)
    assert predict.main(["--model", "m", "--input", str(folder), "--out", str(tmp_path / "out"),
                         "--no-overlays", "--no-dicom-seg"]) == 0
    note = f"left out 2 file(s) that are not DICOM: {folder / 'Thumbs'}, {folder / 'empty.dcm'}"
    assert f"warning: {folder}: {note}" in capsys.readouterr().err
    summary = read_summary(tmp_path / "out")
    assert summary["shape"] == [5, 16, 16] and note in summary["notes"]


def damaged_models(root, saved_model):
    """SavedModels that cannot serve: truncated variables, no signature, another program's."""
    import tensorflow as tf

    truncated = root / "truncated"
    shutil.copytree(saved_model, truncated)
    data = truncated / "1" / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(module, str(root / "unsigned"), signatures={})
    tf.saved_model.save(module, str(root / "other"), signatures={"serving_default": module.f})
    return {
        truncated / "1": "the SavedModel cannot be loaded (damaged or incomplete: ",
        root / "unsigned": "no serving_default signature (signatures: none): not a model of "
                           "python -m lsnet_tf.export",
        root / "other": "serving_default takes ['x'] and returns ['output_0'], not hu -> mask, "
                        "boxes, scores, keypoints, valid: not a model of python -m lsnet_tf.export",
    }


@pytest.mark.slow
def test_a_savedmodel_that_cannot_serve_is_one_line_naming_it(models, tmp_path, capsys):
    """Issue 32, 4: a truncated variables file gave a 39-line traceback."""
    np.save(tmp_path / "ct.npy", hu_volume((2, 8, 8)))
    for path, fault in damaged_models(tmp_path, models["saved_model"]).items():
        assert predict.main(["--model", str(path.parent if path.name == "1" else path), "--input",
                             str(tmp_path / "ct.npy"), "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {fault}"), err
        assert not (tmp_path / "out").exists()
    (tmp_path / "cases").mkdir()  # on Beam too: not a traceback from each worker's setup
    nifti.write_volume(str(tmp_path / "cases" / "ct.nii.gz"), hu_volume((8, 8, 2)), np.eye(4))
    assert predict.main(["--model", str(tmp_path / "truncated"), "--input",
                         str(tmp_path / "cases"), "--out", str(tmp_path / "out"),
                         "--runner", "DirectRunner"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"error: {tmp_path / 'truncated' / '1'}: the SavedModel cannot be loaded (damaged or "
        "incomplete: IndexError: Read less bytes than requested)"]
