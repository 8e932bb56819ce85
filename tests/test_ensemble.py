"""Ensembles, test-time mirroring and the per-case agreement (``lsnet_tf.ensemble``, issue 31).

Known answers: an ensemble of one model, and of a model and itself, gives the model's own
probabilities and mask bit for bit, with a disagreement of 0, pairwise Dice 1, no volume spread
and no review flag; with mirroring, the output of x is the mirror of the output of mirror(x) for
any x (the views of the two are the same set), so a mirror-symmetric input gives a
mirror-symmetric output (the model itself is not equivariant: nothing more holds); the pairwise
Dice, volume spread and review flag of hand-made masks equal the hand-computed values; members
of another input size or HU window are an error naming both, before any model loads.
"""
import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml

from lsnet_tf import predict
from lsnet_tf.inference import cases as predict_cases
from lsnet_tf.inference import ensemble, predictors, volume
from lsnet_tf.data import nifti


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def saved(tiny_saved_model):
    """The tiny random SavedModel (conftest) and its loaded predictor."""
    return tiny_saved_model, predictors.load_predictor(tiny_saved_model)


def hu_volume(shape, seed=0):
    return np.random.default_rng(seed).uniform(-300, 300, shape).astype(np.float32)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ agreement by hand


def test_pairwise_dice_volume_spread_and_the_review_flag_by_hand():
    a, b, c = (np.zeros((2, 3, 4), np.uint8) for _ in range(3))
    a.flat[[0, 1, 2, 3]] = 1           # 4 voxels
    b.flat[[0, 1]] = 1                 # 2 voxels, inside a
    c.flat[[0, 1, 2, 3, 20, 21]] = 1   # 6 voxels, a and two more
    # Dice: ab 2*2/(4+2) = 2/3, ac 2*4/(4+6) = 0.8, bc 2*2/(2+6) = 0.5
    mean = (2 / 3 + 0.8 + 0.5) / 3
    stats = ensemble.case_agreement([a, b, c], voxel_mm3=2.0)
    assert stats["views"] == 3
    assert stats["mean_pairwise_dice"] == pytest.approx(mean)
    assert stats["min_pairwise_dice"] == pytest.approx(0.5)
    assert stats["view_volumes_ml"] == pytest.approx([0.008, 0.004, 0.012])
    assert stats["volume_sd_ml"] == pytest.approx(np.sqrt(8 / 3) * 0.002)  # (4, 2, 6) x 2 mm3
    assert stats["volume_range_ml"] == pytest.approx(0.008)
    assert stats["review_below"] == ensemble.REVIEW_BELOW == 0.9875
    assert stats["review"] is True  # 0.656 < 0.9875
    # The flag toggles at the threshold: below it, not at it.
    assert ensemble.case_agreement([a, b, c], review_below=mean - 1e-9)["review"] is False
    assert ensemble.case_agreement([a, b, c], review_below=mean + 1e-9)["review"] is True
    assert ensemble.case_agreement([a, a], review_below=1.0)["review"] is False  # Dice 1


def test_empty_masks_agree_and_an_unknown_spacing_gives_no_volumes():
    empty, one = np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool)
    one[0, 0, 0] = True
    both_empty = ensemble.case_agreement([empty, empty], voxel_mm3=None)
    assert both_empty["mean_pairwise_dice"] == 1.0 and both_empty["review"] is False
    assert both_empty["view_volumes_ml"] is None and both_empty["volume_sd_ml"] is None
    assert both_empty["volume_range_ml"] is None
    assert ensemble.case_agreement([empty, one])["mean_pairwise_dice"] == 0.0


def test_agreement_accumulated_over_batches_equals_that_of_the_whole_volume():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 5, 6, 7)) > 0.6
    agreement = ensemble.Agreement(3)
    agreement.add(masks[:, :2])
    agreement.add(masks[:, 2:])
    assert agreement.summary(1.5) == ensemble.case_agreement(masks, voxel_mm3=1.5)


# ------------------------------------------------------------------ finding and checking members


def fake_saved_model(folder, **data):
    """A SavedModel folder as far as `find_models`/`read_spec` look: saved_model.pb (empty: it
    cannot load) and a config with the `data` settings given."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "assets.extra").mkdir()
    config = {"data": {"image_size": 64, "window_center": 40.0, "window_width": 400.0,
                       "dataset": "", **data}, "model": {"num_classes": 1}}
    (folder / "assets.extra" / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_find_models_in_a_folder_of_fold_models(tmp_path):
    for fold in (1, 0):  # TF Serving layout: the model folder counts, not its versions
        fake_saved_model(tmp_path / "folds" / f"fold{fold}" / "lsnet" / "1")
    fake_saved_model(tmp_path / "folds" / "fold2")
    (tmp_path / "folds" / "fold3.tflite").write_bytes(b"x")
    (tmp_path / "folds" / ".hidden.tflite").write_bytes(b"x")
    (tmp_path / "folds" / "notes.txt").write_text("fold models\n")
    folds = tmp_path / "folds"
    assert ensemble.find_models(str(folds)) == [
        str(folds / "fold0" / "lsnet"), str(folds / "fold1" / "lsnet"), str(folds / "fold2"),
        str(folds / "fold3.tflite")]
    one = str(folds / "fold2")
    assert ensemble.find_models([one, one]) == [one, one]  # a member twice
    (tmp_path / "nothing").mkdir()
    (tmp_path / "weights.h5").write_text("")
    for path, message in ((tmp_path / "nothing", "no saved_model.pb here"),
                          (tmp_path / "weights.h5", "unsupported model"),
                          (tmp_path / "none", "model not found")):
        with pytest.raises(ensemble.MemberError, match=message):
            ensemble.find_models([one, str(path)])


def test_members_of_another_input_size_or_window_are_an_error_naming_both(
        tmp_path, tiny_tflite, monkeypatch, capsys):
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    a = fake_saved_model(tmp_path / "a")
    b = fake_saved_model(tmp_path / "b", image_size=128)
    c = fake_saved_model(tmp_path / "c", window_center=50.0, window_width=350.0)
    d = fake_saved_model(tmp_path / "d", dataset=str(tmp_path / "msd"))
    (tmp_path / "msd").mkdir()
    (tmp_path / "msd" / "dataset.json").write_text(json.dumps({"label_values": [1, 2]}))
    np.save(tmp_path / "ct.npy", hu_volume((1, 8, 8)))
    expected = {
        b: f"ensemble members differ in input size: {a} has 64 x 64, {b} has 128 x 128",
        c: (f"ensemble members differ in HU window: {tiny_tflite} has center 40, width 400 HU, "
            f"{c} has center 50, width 350 HU"),
        d: (f"ensemble members differ in label: {a} has synthetic, {d} has label values "
            "[1, 2]"),
    }
    for other, message in expected.items():
        first = tiny_tflite if other == c else str(a)
        code = predict.main(["--model", first, "--model", str(other), "--input",
                             str(tmp_path / "ct.npy"), "--out", str(tmp_path / "out")])
        assert code == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()
    # A folder of cases: refused before any case is predicted.
    (tmp_path / "cases").mkdir()
    nifti.write_volume(str(tmp_path / "cases" / "ct.nii.gz"), hu_volume((8, 8, 2)), np.eye(4))
    assert predict.main(["--model", str(a), "--model", str(b), "--input",
                         str(tmp_path / "cases"), "--out", str(tmp_path / "out")]) == 1
    assert expected[b] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_disagreement_map_needs_more_than_one_view(tmp_path, capsys):
    a = fake_saved_model(tmp_path / "a")
    np.save(tmp_path / "ct.npy", hu_volume((1, 8, 8)))
    assert predict.main(["--model", str(a), "--disagreement", "--input",
                         str(tmp_path / "ct.npy"), "--out", str(tmp_path / "out")]) == 1
    assert "--disagreement needs several models" in capsys.readouterr().err


# ------------------------------------------------------------------ known answers on a model


def test_an_ensemble_of_one_model_or_of_a_model_and_itself_is_the_model(saved):
    path, model = saved
    hu = hu_volume((3, 40, 50), seed=1)
    alone = model.predict(hu)
    assert alone["mask"].sum() > 0
    for members in ([(path, model)], [(path, model), (path, model)]):
        out = ensemble.EnsemblePredictor(members).predict(hu)
        np.testing.assert_array_equal(out["probability"], alone["probability"])
        np.testing.assert_array_equal(out["mask"], alone["mask"])
        np.testing.assert_array_equal(out["disagreement"], 0.0)
        k = alone["valid"].shape[1]
        np.testing.assert_array_equal(out["boxes"], np.concatenate([alone["boxes"]] * len(members),
                                                                   axis=1))
        np.testing.assert_array_equal(out["box_member"], np.repeat(np.arange(len(members)), k))
    twice = ensemble.EnsemblePredictor([(path, model), (path, model)], batch_size=2)
    pred = volume.predict_volume(twice, hu, progress=None, disagreement=True)
    np.testing.assert_array_equal(pred["mask"], volume.predict_volume(model, hu, None)["mask"])
    np.testing.assert_array_equal(pred["disagreement"], 0.0)
    stats = pred["agreement"].summary(1.0)
    assert stats["mean_pairwise_dice"] == 1.0 and stats["review"] is False
    assert stats["volume_sd_ml"] == 0.0 and stats["volume_range_ml"] == 0.0
    assert stats["view_volumes_ml"][0] == pytest.approx(pred["mask"].astype(bool).sum() / 1000)


def test_an_ensemble_of_a_tflite_model_and_itself_is_the_model(tiny_tflite):
    model = predictors.load_predictor(tiny_tflite)
    hu = hu_volume((2, 30, 40), seed=2)
    alone = model.predict(hu)
    out = ensemble.EnsemblePredictor([(tiny_tflite, model), (tiny_tflite, model)]).predict(hu)
    np.testing.assert_array_equal(out["probability"], alone["probability"])
    np.testing.assert_array_equal(out["mask"], alone["mask"])
    np.testing.assert_array_equal(out["disagreement"], 0.0)


def test_mirroring_gives_the_mirror_of_the_output_of_the_mirrored_input(saved):
    """output(x) == mirror(output(mirror(x))) for any x and each mirror of the mode; for a
    symmetric x, that makes the output symmetric."""
    path, model = saved
    hu = hu_volume((2, 36, 44), seed=3)
    for tta, axes_list in (("flip", [(2,)]), ("flip2", [(2,), (1,)])):
        tta_model = ensemble.EnsemblePredictor([(path, model)], tta=tta)
        assert tta_model.views == len(ensemble.MIRRORS[tta])
        out = tta_model.predict(hu)
        for axes in axes_list:
            mirrored = tta_model.predict(np.ascontiguousarray(np.flip(hu, axes)))
            for key in ("probability", "mask"):
                np.testing.assert_array_equal(out[key], np.flip(mirrored[key], axes))
            np.testing.assert_array_equal(out["disagreement"],
                                          np.flip(mirrored["disagreement"], axes))
    # A left-right symmetric input (the model alone is not equivariant: its output need not be).
    half = hu_volume((2, 36, 22), seed=4)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    out = ensemble.EnsemblePredictor([(path, model)], tta="flip").predict(symmetric)
    assert out["mask"].sum() > 0
    np.testing.assert_array_equal(out["probability"], out["probability"][:, :, ::-1])
    np.testing.assert_array_equal(out["mask"], out["mask"][:, :, ::-1])
    both = np.concatenate([symmetric, symmetric[:, ::-1]], axis=1)  # and up-down
    out = ensemble.EnsemblePredictor([(path, model)], tta="flip2").predict(both)
    np.testing.assert_array_equal(out["mask"], out["mask"][:, ::-1, ::-1])
    np.testing.assert_array_equal(out["mask"], out["mask"][:, :, ::-1])
    alone = model.predict(symmetric)["probability"]
    assert not np.array_equal(alone, alone[:, :, ::-1])  # what mirroring adds


def test_the_member_order_does_not_change_the_output(saved, tiny_tflite):
    path, model = saved
    lite = predictors.load_predictor(tiny_tflite)
    hu = hu_volume((2, 32, 32), seed=5)
    ab = ensemble.EnsemblePredictor([(path, model), (tiny_tflite, lite)], tta="flip").predict(hu)
    ba = ensemble.EnsemblePredictor([(tiny_tflite, lite), (path, model)], tta="flip").predict(hu)
    for key in ("probability", "mask", "disagreement"):
        np.testing.assert_array_equal(ab[key], ba[key])


# ------------------------------------------------------------------ the command


def read_csv(out):
    with open(out / "cases.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_command_with_a_model_twice_writes_the_model_s_mask_and_perfect_agreement(saved,
                                                                                 tmp_path):
    path, _ = saved
    np.save(tmp_path / "ct.npy", hu_volume((2, 40, 40), seed=6))
    single = predict_cases.run(path, str(tmp_path / "ct.npy"), str(tmp_path / "single"), log=quiet,
                         progress=None, spacing=(0.5, 0.5, 2.0))
    assert "mean_pairwise_dice" not in single and "members" not in single
    assert predict.main(["--model", path, "--model", path, "--disagreement", "--input",
                         str(tmp_path / "ct.npy"), "--out", str(tmp_path / "two"),
                         "--spacing", "0.5", "0.5", "2.0"]) == 0
    mask = np.asarray(nib.load(str(tmp_path / "two" / "mask.nii.gz")).dataobj)
    np.testing.assert_array_equal(
        mask, np.asarray(nib.load(str(tmp_path / "single" / "mask.nii.gz")).dataobj))
    assert mask.sum() > 0
    disagreement = nib.load(str(tmp_path / "two" / "disagreement.nii.gz"))
    assert disagreement.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(disagreement.dataobj), 0.0)
    np.testing.assert_array_equal(disagreement.affine,
                                  nib.load(str(tmp_path / "two" / "mask.nii.gz")).affine)
    s = read_json(tmp_path / "two" / "summary.json")
    assert s["views"] == 2 and s["tta"] == "none" and len(s["members"]) == 2
    assert s["mean_pairwise_dice"] == 1.0 and s["review"] is False
    assert s["volume_sd_ml"] == 0.0 and s["volume_range_ml"] == 0.0
    assert s["view_volumes_ml"] == [single["volume_ml"]] * 2
    assert s["volume_ml"] == single["volume_ml"]
    assert s["disagreement_file"] == "disagreement.nii.gz"
    assert "disagreement.nii.gz" in s["outputs"]
    members = {b["member"] for e in s["slices"] for b in e["boxes"]}
    assert members == {0, 1}


@pytest.mark.slow
def test_many_cases_with_mirroring_report_agreement_and_rerun_with_another_threshold(
        saved, tmp_path, capsys):
    path, _ = saved
    (tmp_path / "cases").mkdir()
    for i in range(2):
        nifti.write_volume(str(tmp_path / "cases" / f"ct{i}.nii.gz"),
                           hu_volume((20, 24, 2), seed=10 + i), np.diag([0.8, 0.8, 2.5, 1.0]))
    argv = ["--model", path, "--tta", "flip", "--input", str(tmp_path / "cases"), "--out",
            str(tmp_path / "out"), "--no-overlays"]
    assert predict.main(argv) == 0
    rows = read_csv(tmp_path / "out")
    as_json = read_json(tmp_path / "out" / "cases.json")
    for row, entry in zip(rows, as_json):
        s = read_json(tmp_path / "out" / row["case"] / "summary.json")
        assert s["views"] == 2 and s["tta"] == "flip"
        assert entry["mean_pairwise_dice"] == s["mean_pairwise_dice"]
        assert float(row["mean_pairwise_dice"]) == s["mean_pairwise_dice"]
        assert float(row["volume_sd_ml"]) == s["volume_sd_ml"] >= 0
        assert float(row["volume_range_ml"]) == s["volume_range_ml"]
        assert row["review"] == str(s["mean_pairwise_dice"] < ensemble.REVIEW_BELOW)
    dice = [e["mean_pairwise_dice"] for e in as_json]
    assert min(dice) < 1.0  # the random model is not mirror-equivariant
    # Another threshold on the finished cases: skipped, flagged against the new threshold.
    assert predict.main(argv + ["--review-below", "1.0"]) == 0
    rows = read_csv(tmp_path / "out")
    assert [r["status"] for r in rows] == ["skipped"] * 2
    assert [r["review"] for r in rows] == [str(d < 1.0) for d in dice]
    assert predict.main(argv + ["--review-below", "0"]) == 0
    assert [r["review"] for r in read_csv(tmp_path / "out")] == ["False"] * 2
    # Without mirroring the cases are predicted again (another fingerprint), with empty fields.
    capsys.readouterr()
    assert predict.main(argv[:2] + argv[4:]) == 0
    rows = read_csv(tmp_path / "out")
    assert [r["status"] for r in rows] == ["done"] * 2
    assert all(r[k] == "" for r in rows for k in ensemble.AGREEMENT_FIELDS)
    assert all(e["mean_pairwise_dice"] is None for e in read_json(tmp_path / "out" / "cases.json"))


@pytest.mark.slow
def test_a_tflite_ensemble_with_mirroring_runs_without_tensorflow(tiny_tflite, tmp_path):
    """The LiteRT path: members in sequence, in a process where importing TensorFlow fails."""
    import textwrap

    from test_litert import BLOCK_TENSORFLOW, run_without_tensorflow

    np.save(tmp_path / "vol.npy", hu_volume((2, 30, 40), seed=8))
    script = BLOCK_TENSORFLOW + textwrap.dedent(f"""
        import json
        from lsnet_tf import predict
        code = predict.main(["--model", {tiny_tflite!r}, "--model", {tiny_tflite!r}, "--tta",
                             "flip", "--disagreement", "--input",
                             {str(tmp_path / "vol.npy")!r}, "--out", {str(tmp_path / "out")!r}])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({{"code": code, "loaded": loaded}}))
    """)
    assert run_without_tensorflow(script)[0] == {"code": 0, "loaded": []}
    s = read_json(tmp_path / "out" / "summary.json")
    assert s["views"] == 4 and s["model_format"] == "tflite"
    assert (tmp_path / "out" / "disagreement.nii.gz").is_file()
    # a model twice with mirroring: the mask of the model once with mirroring
    model = predictors.load_predictor(tiny_tflite)
    tta = ensemble.EnsemblePredictor([(tiny_tflite, model)], tta="flip")
    hu = np.load(tmp_path / "vol.npy")
    want = volume.predict_volume(tta, hu, progress=None)["mask"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "out" / "mask.nii.gz"))
                                             .dataobj), want)
