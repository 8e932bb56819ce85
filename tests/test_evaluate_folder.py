"""python -m lsnet_tf.evaluate --predictions DIR --labels DIR: the volume metrics
(lsnet_tf.metrics.volumes) on hand-computed boxes and against a brute-force surface distance, the
pairing of cases, the geometry check, and the command line end to end."""
import json
import os

import nibabel as nib
import numpy as np
import pytest

from lsnet_tf import evaluate as ev
from lsnet_tf.evaluation import EvaluationError
from lsnet_tf.evaluation.folder import evaluate_folder
from lsnet_tf.evaluation.report import output_paths
from lsnet_tf.metrics import volumes as vm

SHAPE = (20, 16, 18)
SPACING = (2.5, 0.7, 0.9)  # mm per array axis


def affine_of(spacing=SPACING, origin=(10.0, -20.0, 5.0)):
    """A voxel->RAS affine whose first axis runs backwards (x decreasing): the spacing is the
    columns' norms whatever their sign."""
    a = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


def box(lo, hi, shape=SHAPE, value=1):
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return m


def save(path, data, affine=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine_of() if affine is None else affine), path)
    return path


# ----------------------------------------------------------------------------- metrics

def test_two_boxes_overlap_and_volumes_by_hand():
    label = box((2, 2, 2), (12, 12, 12))          # 10 x 10 x 10 = 1000 voxels
    pred = box((5, 2, 2), (15, 12, 14))           # 10 x 10 x 12 = 1200, shifted 3 along axis 0
    m = vm.case_metrics(pred, label, affine_of())
    tp = 7 * 10 * 10                              # axis 0 overlap 5..11, the rest of the label
    assert (m["tp_voxels"], m["pred_voxels"], m["label_voxels"]) == (tp, 1200, 1000)
    assert m["dsc"] == pytest.approx(2 * 700 / 2200)
    assert m["precision"] == pytest.approx(700 / 1200)
    assert m["recall"] == pytest.approx(700 / 1000)
    voxel_ml = 2.5 * 0.7 * 0.9 / 1000
    assert vm.voxel_volume_ml(affine_of()) == pytest.approx(voxel_ml)
    assert m["pred_ml"] == pytest.approx(1200 * voxel_ml)
    assert m["label_ml"] == pytest.approx(1000 * voxel_ml)
    assert m["volume_diff_ml"] == pytest.approx(200 * voxel_ml)
    assert m["abs_volume_diff_ml"] == pytest.approx(200 * voxel_ml)
    swapped = vm.case_metrics(label, pred, affine_of())
    assert swapped["volume_diff_ml"] == pytest.approx(-200 * voxel_ml)
    assert (swapped["precision"], swapped["recall"]) == (m["recall"], m["precision"])


@pytest.mark.parametrize("axis,k", [(0, 3), (1, 2), (2, 4)])
def test_hd95_of_a_box_shifted_along_one_axis_is_the_shift_in_mm(axis, k):
    """The faces across the shift (a fifth of the pooled surface distances) lie k voxels from the
    other box's face and no surface point lies further: HD95 = HD100 = k x that axis' spacing."""
    lo, hi = [3, 3, 3], [13, 11, 12]
    label = box(lo, hi)
    lo[axis] += k
    hi[axis] += k
    pred = box(lo, hi)
    assert vm.hd95(pred, label, SPACING) == pytest.approx(k * SPACING[axis])
    assert vm.hd95(pred, label, SPACING, percentile=100) == pytest.approx(k * SPACING[axis])
    assert vm.hd95(pred, label, SPACING, pooled=False) == pytest.approx(k * SPACING[axis])
    assert vm.case_metrics(pred, label, affine_of())["hd95_mm"] == pytest.approx(k * SPACING[axis])
    assert vm.hd95(label, label, SPACING) == 0.0


def test_one_voxel_plates_k_apart_every_distance_is_the_shift():
    label = box((4, 2, 3), (5, 10, 12))
    pred = box((6, 2, 3), (7, 10, 12))
    d_pl, d_lp = vm.surface_distances(pred, label, SPACING)
    assert d_pl.size == d_lp.size == 8 * 9  # every voxel of a one-voxel plate is on its surface
    np.testing.assert_allclose(np.concatenate([d_pl, d_lp]), 2 * 2.5)
    assert vm.case_metrics(pred, label, affine_of())["dsc"] == 0.0


def test_empty_masks():
    empty, full = np.zeros(SHAPE, np.uint8), box((2, 2, 2), (6, 6, 6))
    both = vm.case_metrics(empty, empty, affine_of())
    assert (both["dsc"], both["precision"], both["recall"], both["hd95_mm"]) == (1.0, 1.0, 1.0, 0.0)
    assert both["pred_ml"] == both["label_ml"] == both["volume_diff_ml"] == 0.0
    missed = vm.case_metrics(empty, full, affine_of())  # nothing predicted
    assert (missed["dsc"], missed["precision"], missed["recall"], missed["hd95_mm"]) == (
        0.0, 0.0, 0.0, None)
    assert missed["volume_diff_ml"] == pytest.approx(-64 * 2.5 * 0.7 * 0.9 / 1000)
    spurious = vm.case_metrics(full, empty, affine_of())  # a prediction on an empty label
    assert (spurious["dsc"], spurious["precision"], spurious["recall"], spurious["hd95_mm"]) == (
        0.0, 0.0, 1.0, None)
    with pytest.raises(ValueError, match="surface distances need two non-empty masks"):
        vm.surface_distances(full, empty, SPACING)
    with pytest.raises(ValueError, match=r"prediction shape \(20, 16, 18\) differs from label "
                                         r"shape \(20, 16, 17\)"):
        vm.case_metrics(full, empty[..., :-1], affine_of())


def brute_force_surface(mask):
    """Surface voxels by shifting: in the mask with a face neighbour outside (zero padding)."""
    m = np.pad(mask.astype(bool), 1)
    inner = np.ones_like(mask, bool)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(m, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask.astype(bool) & ~inner


def brute_force_distances(pred, label, spacing):
    """Every surface point of one mask against every surface point of the other (numpy)."""
    sp = np.argwhere(brute_force_surface(pred)) * np.asarray(spacing)
    sl = np.argwhere(brute_force_surface(label)) * np.asarray(spacing)
    d = np.sqrt(((sp[:, None, :] - sl[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


def test_hd95_against_a_brute_force_of_all_surface_pairs():
    rng = np.random.default_rng(7)
    spacing = (1.7, 0.6, 1.1)
    for trial in range(6):
        shape = tuple(int(n) for n in rng.integers(6, 12, size=3))
        pred = rng.uniform(size=shape) < 0.35
        label = rng.uniform(size=shape) < 0.35
        if trial % 2:  # a blob away from the borders, so that the crop is a real one
            label = np.zeros(shape, bool)
            label[2:5, 1:4, 2:5] = True
            label[3, 2, 3] = False
        d_pl, d_lp = brute_force_distances(pred, label, spacing)
        np.testing.assert_array_equal(vm.surface(pred), brute_force_surface(pred))
        pooled = np.percentile(np.concatenate([d_pl, d_lp]), 95)
        directed = max(np.percentile(d_pl, 95), np.percentile(d_lp, 95))
        assert vm.hd95(pred, label, spacing) == pytest.approx(pooled, rel=1e-12)
        assert vm.hd95(pred, label, spacing, pooled=False) == pytest.approx(directed, rel=1e-12)
        got_pl, got_lp = vm.surface_distances(pred, label, spacing)
        np.testing.assert_allclose(np.sort(got_pl), np.sort(d_pl), rtol=1e-12)
        np.testing.assert_allclose(np.sort(got_lp), np.sort(d_lp), rtol=1e-12)


# ----------------------------------------------------------------------------- folders

LABEL_A = box((2, 2, 2), (12, 12, 12))
PRED_A = box((5, 2, 2), (15, 12, 12))


@pytest.fixture()
def folders(tmp_path):
    """Cases a (file .nii.gz), b (a case folder as batch predict writes it) and c (.nii, a
    two-valued label); an extra prediction z without a label and a report file to ignore."""
    pred, lab = tmp_path / "pred", tmp_path / "labels"
    save(str(lab / "a.nii.gz"), LABEL_A)
    save(str(pred / "a.nii.gz"), PRED_A)
    save(str(lab / "b.nii.gz"), box((4, 4, 4), (8, 8, 8)))
    save(str(pred / "b" / "mask.nii.gz"), box((4, 4, 4), (8, 8, 8), value=2))  # 1 + class 1
    label_c = box((2, 2, 2), (6, 6, 6)) + box((10, 2, 2), (12, 4, 4), value=2)
    save(str(lab / "c.nii"), label_c)
    save(str(pred / "c.nii.gz"), box((10, 2, 2), (12, 4, 4)))
    save(str(pred / "z.nii.gz"), LABEL_A)
    (pred / "summary.json").write_text("{}")
    (pred / "b" / "summary.json").write_text("{}")
    return str(pred), str(lab)


def quiet(*args):
    pass


def test_folder_scores_each_case_and_the_mean(folders):
    pred, lab = folders
    r = evaluate_folder(pred, lab, log=quiet)
    assert [c["case"] for c in r["cases"]] == ["a", "b", "c"]
    assert r["unlabelled_predictions"] == ["z"] and r["missing_predictions"] == []
    a, b, c = r["cases"]
    assert a["dsc"] == pytest.approx(0.7) and a["hd95_mm"] == pytest.approx(3 * 2.5)
    assert b["dsc"] == 1.0 and b["hd95_mm"] == 0.0  # value 2 counts: any non-zero is target
    assert c["label_voxels"] == 64 + 8 and c["tp_voxels"] == 8
    assert c["dsc"] == pytest.approx(16 / 80) and c["prediction"].endswith("c.nii.gz")
    assert b["prediction"] == os.path.join(pred, "b", "mask.nii.gz")
    assert a["spacing_mm"] == pytest.approx(list(SPACING))
    dscs = [0.7, 1.0, 0.2]
    assert r["summary"]["dsc"]["mean"] == pytest.approx(np.mean(dscs))
    assert r["summary"]["dsc"]["sd"] == pytest.approx(np.std(dscs, ddof=1))
    assert r["summary"]["dsc"]["n"] == 3
    # Only value 2 of the labels is the target: case c is then a perfect prediction, and a and b
    # have empty labels (DSC 0, HD95 undefined and left out of its mean).
    r2 = evaluate_folder(pred, lab, label_values=[2], log=quiet)
    a2, b2, c2 = r2["cases"]
    assert c2["dsc"] == 1.0 and c2["hd95_mm"] == 0.0
    assert a2["label_voxels"] == 0 and a2["hd95_mm"] is None and a2["recall"] == 1.0
    assert r2["hd95_undefined"] == ["a", "b"]
    assert r2["summary"]["hd95_mm"] == {"mean": 0.0, "sd": None, "n": 1}
    assert r2["label_values"] == [2]
    # Prediction values: b's prediction holds 2, not 1, so it is now empty.
    r3 = evaluate_folder(pred, lab, prediction_values=[1], log=quiet)
    assert r3["cases"][1]["pred_voxels"] == 0 and r3["cases"][1]["dsc"] == 0.0
    with pytest.raises(EvaluationError, match=r"--label-values must be non-zero integers "
                                                 r"\(0 is background\), got \[0, 1\]"):
        evaluate_folder(pred, lab, label_values=[0, 1], log=quiet)


def test_unpaired_cases(folders, tmp_path):
    pred, lab = folders
    os.remove(os.path.join(pred, "a.nii.gz"))
    with pytest.raises(EvaluationError, match=r"no prediction for 1 of the 3 labelled cases in "
                                                 r".*labels: a \(expected .*--allow-missing "
                                                 r"scores them as empty masks\)"):
        evaluate_folder(pred, lab, log=quiet)
    r = evaluate_folder(pred, lab, allow_missing=True, log=quiet)
    a = r["cases"][0]
    assert r["missing_predictions"] == ["a"] and a["prediction"] is None
    assert (a["dsc"], a["pred_voxels"], a["hd95_mm"]) == (0.0, 0, None)
    assert r["n_cases"] == 3 and r["hd95_undefined"] == ["a"]
    empty = tmp_path / "nolabels"
    empty.mkdir()
    with pytest.raises(EvaluationError, match=r"nolabels: no label files"):
        evaluate_folder(pred, str(empty), log=quiet)
    with pytest.raises(EvaluationError, match=r"missing: predictions folder not found"):
        evaluate_folder(str(tmp_path / "missing"), lab, log=quiet)


def test_a_case_with_two_files_is_an_error(folders):
    pred, lab = folders
    save(os.path.join(pred, "b.nii.gz"), LABEL_A)  # b also has b/mask.nii.gz
    with pytest.raises(EvaluationError, match=r"pred: case 'b' has two files, .*pred/b/mask"
                                                 r".nii.gz and .*pred/b.nii.gz; keep one"):
        evaluate_folder(pred, lab, log=quiet)
    os.remove(os.path.join(pred, "b.nii.gz"))
    save(os.path.join(lab, "c.nii.gz"), LABEL_A)  # beside c.nii
    with pytest.raises(EvaluationError, match=r"labels: case 'c' has two files, .*labels/c.nii "
                                                 r"and .*labels/c.nii.gz; keep one"):
        evaluate_folder(pred, lab, log=quiet)


def test_geometry_mismatch_names_the_case_shapes_and_affines(folders):
    pred, lab = folders
    moved = affine_of(origin=(10.0, -19.0, 5.0))  # 1 mm off
    save(os.path.join(pred, "a.nii.gz"), PRED_A, moved)
    with pytest.raises(EvaluationError) as e:
        evaluate_folder(pred, lab, log=quiet)
    text = str(e.value)
    assert "case 'a': prediction and label are not on one voxel grid (affines differ by up to 1 mm " \
           "(tolerance 0.01 mm)); masks are never resampled" in text
    assert "shape (20, 16, 18), affine" in text and str(moved[1].round(4).tolist()) in text
    assert str(affine_of()[1].round(4).tolist()) in text
    # Within a looser tolerance the pair is scored.
    assert evaluate_folder(pred, lab, affine_tol=1.5, log=quiet)["cases"][0]["dsc"] == \
        pytest.approx(0.7)
    save(os.path.join(pred, "a.nii.gz"), PRED_A[:, :, :-1])
    with pytest.raises(EvaluationError, match=r"case 'a': .*\(shape \(20, 16, 17\) vs "
                                                 r"\(20, 16, 18\)\)"):
        evaluate_folder(pred, lab, log=quiet)


def test_same_grid_in_another_axis_order_is_compared_in_the_canonical_orientation(folders):
    """A prediction stored (slice, row, col) as predict writes it for a DICOM series, against a
    label stored (x, y, z) with a reversed axis: the same voxels, permuted and flipped."""
    from lsnet_tf.data import volumes

    pred, lab = folders
    canonical, affine_lps = volumes.canonicalize(PRED_A, volumes.ras_to_lps(affine_of()))
    assert canonical.shape != PRED_A.shape  # really stored otherwise
    save(os.path.join(pred, "a.nii.gz"), canonical, volumes.ras_to_lps(affine_lps))
    a = evaluate_folder(pred, lab, log=quiet)["cases"][0]
    assert a["reoriented"] is True and a["shape"] == list(canonical.shape)
    assert a["dsc"] == pytest.approx(0.7) and a["hd95_mm"] == pytest.approx(3 * 2.5)
    assert sorted(a["spacing_mm"]) == pytest.approx(sorted(SPACING))
    # Shifted by a voxel, it is no longer the same grid.
    moved = volumes.ras_to_lps(affine_lps)
    moved[:3, 3] += moved[:3, 0]
    save(os.path.join(pred, "a.nii.gz"), canonical, moved)
    with pytest.raises(EvaluationError, match=r"case 'a': prediction and label are not on one "
                                                 r"voxel grid \(shape \(18, 16, 20\) vs "
                                                 r"\(20, 16, 18\)\)"):
        evaluate_folder(pred, lab, log=quiet)


def test_a_probability_map_is_refused(folders):
    pred, lab = folders
    save(os.path.join(pred, "a.nii.gz"), PRED_A.astype(np.float32) * 0.25)
    with pytest.raises(EvaluationError, match=r"a.nii.gz: prediction holds values that are not "
                                                 r"integers \(e.g. \[0.25, 0.25, 0.25\]\)"):
        evaluate_folder(pred, lab, log=quiet)


def test_output_paths():
    assert output_paths("out/res.json") == ("out/res.json", "out/res.md")
    assert output_paths("out/res") == ("out/res.json", "out/res.md")
    assert output_paths("out/") == (os.path.join("out/", "evaluation.json"),
                                       os.path.join("out/", "evaluation.md"))
    assert output_paths("out/res", "table.md") == ("out/res.json", "table.md")


def test_command_line_end_to_end(folders, tmp_path, capsys):
    pred, lab = folders
    out = str(tmp_path / "reports")
    os.makedirs(out)
    assert ev.main(["--predictions", pred, "--labels", lab, "--out", out, "--label", "L-SNet"]) == 0
    printed = capsys.readouterr()
    with open(os.path.join(out, "evaluation.json")) as f:
        result = json.load(f)
    expected = evaluate_folder(pred, lab, log=quiet)
    assert result == json.loads(json.dumps(expected))
    with open(os.path.join(out, "evaluation.md")) as f:
        table = f.read()
    assert table in printed.out
    assert "| a | 70.00 | 70.00 | 70.00 | 7.50 |" in table
    assert "| mean ± sd (n=3) | 63.33 ± 40.41 |" in table
    assert "predictions without a label, not scored: z" in table
    assert "[1/3] a: DSC 0.7000, HD95 7.50 mm" in printed.err
    # Values on the command line; an unpaired case is exit status 2 with the message.
    assert ev.main(["--predictions", pred, "--labels", lab, "--out", str(tmp_path / "v"),
                    "--label-values", "2"]) == 0
    with open(str(tmp_path / "v.json")) as f:
        assert json.load(f)["label_values"] == [2]
    os.remove(os.path.join(pred, "c.nii.gz"))
    assert ev.main(["--predictions", pred, "--labels", lab, "--out", str(tmp_path / "x")]) == 2
    assert "no prediction for 1 of the 3 labelled cases" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--out", "x"], "give either --run DIR or --predictions DIR --labels DIR"),
    (["--run", "r", "--predictions", "p", "--labels", "l", "--out", "x"],
     "give either --run DIR or --predictions DIR --labels DIR"),
    (["--predictions", "p", "--out", "x"], "folder mode needs both --predictions and --labels"),
    (["--predictions", "p", "--labels", "l", "--split", "all", "--out", "x"],
     "--split only applies with --run"),
    (["--run", "r", "--allow-missing", "--label-values", "1", "--out", "x"],
     "--label-values, --allow-missing only apply with --predictions/--labels"),
])
def test_command_line_mode_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
