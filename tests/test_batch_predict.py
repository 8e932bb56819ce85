"""Many cases in one run (``python -m lsnet_tf.predict --input FOLDER_OR_LIST``).

Known answers: every case's mask, affine and summary equal those of a single-case prediction of
the same input; the model is loaded once; the summary rows hold each case's slices and volume
as its summary.json does; a killed run leaves only complete case folders, and the rerun skips
them untouched (same mtime) and does the rest; ``--overwrite`` rewrites them.
"""
import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from lsnet_tf import predict
from lsnet_tf.utils import files
from lsnet_tf.inference import cases as predict_cases
from lsnet_tf.inference import many, predictors
from lsnet_tf.inference.batch import CASE_COLUMNS

CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def model_path(tiny_saved_model):
    """A tiny random model exported as a SavedModel (serving layout), RoIs valid (conftest)."""
    return tiny_saved_model


def write_nifti(path, shape, seed):
    data = np.random.default_rng(seed).uniform(-300, 300, shape).astype(np.float32)
    affine = np.array([[-0.7, 0.0, 0.0, 120.0], [0.0, 0.75, 0.0, -60.0],
                       [0.0, 0.0, 2.5, -30.0], [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def make_cases(root):
    """Two NIfTI cases (one with the Decathlon channel suffix, one in a subfolder), one DICOM
    series two folders down, and a file that is no case."""
    write_nifti(root / "liver_1_0000.nii.gz", (40, 48, 3), seed=1)
    write_nifti(root / "more" / "liver_2.nii", (32, 36, 2), seed=2)
    shutil.copytree(CT5N, root / "dicom" / "CT5N")
    (root / "README").write_text("test set\n")
    return {"liver_1": root / "liver_1_0000.nii.gz", "liver_2": root / "more" / "liver_2.nii",
            "dicom__CT5N": root / "dicom" / "CT5N"}


def read_mask(folder):
    img = nib.load(str(Path(folder) / "mask.nii.gz"))
    return np.asarray(img.dataobj), img.affine


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def thumbnails(summary):
    """The review page's thumbnails a case summary lists (``review_slices``)."""
    return [p for entry in summary["review_slices"] for p in entry["images"].values()]


def read_csv(out):
    with open(Path(out) / "cases.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def without_seconds(summary):
    """A summary without its time and its outputs' checksums (a DICOM SEG has new UIDs each
    time it is written)."""
    return {k: v for k, v in summary.items() if k not in ("seconds", "outputs")}


@pytest.fixture(scope="module")
def counted_loads(model_path):
    """``predictors.load_predictor`` loading the test model once for the module, counting calls."""
    loaded = predictors.load_predictor(model_path)
    calls = []

    def load(path, batch_size=8, model_sha256=None):
        calls.append(path)
        return loaded

    return load, calls


@pytest.fixture(scope="module")
def batch(model_path, counted_loads, tmp_path_factory):
    """The folder of cases predicted in one CLI run, and each case predicted on its own."""
    root = tmp_path_factory.mktemp("batch")
    inputs = make_cases(root / "cases")
    load, calls = counted_loads
    err, out = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(out):
        mp.setattr(predictors, "load_predictor", load)
        before = len(calls)
        code = predict.main(["--model", model_path, "--input", str(root / "cases"),
                             "--out", str(root / "out")])
        loads = len(calls) - before
        singles = {}
        for name, path in inputs.items():
            singles[name] = predict_cases.run(model_path, str(path), str(root / "single" / name),
                                        log=quiet, progress=None)
    return {"root": root, "inputs": inputs, "out": root / "out", "code": code, "loads": loads,
            "err": err.getvalue(), "stdout": out.getvalue(), "singles": singles}


# ------------------------------------------------------------------ finding cases


def test_a_folder_with_dicom_files_in_it_is_one_series_and_its_parent_a_folder_of_cases(tmp_path):
    shutil.copytree(CT5N, tmp_path / "patient" / "CT5N")
    assert not many.is_batch_input(str(tmp_path / "patient" / "CT5N"))
    assert many.is_batch_input(str(tmp_path / "patient"))
    # A file without an extension that is not DICOM (no DICM at byte 128) makes no series.
    (tmp_path / "patient" / "README").write_text("x" * 200)
    assert many.is_batch_input(str(tmp_path / "patient"))
    (tmp_path / "list.lst").write_text("patient/CT5N\n")
    assert many.is_batch_input(str(tmp_path / "list.lst"))
    assert not many.is_batch_input(str(tmp_path / "patient" / "README"))


def test_case_names():
    assert many.file_case_name("/d/liver_132_0000.nii.gz") == "liver_132"
    assert many.file_case_name("liver_132_0001.nii.gz") == "liver_132_0001"
    assert many.file_case_name("CT.NII") == "CT"
    assert many.file_case_name("_0000.nii") == "_0000"
    assert many.file_case_name("slice.png") == "slice"
    assert many.folder_case_name(os.path.join("P001", "study", "CT")) == "P001__study__CT"


def test_find_cases_in_a_folder(tmp_path):
    inputs = make_cases(tmp_path / "cases")
    (tmp_path / "cases" / ".hidden.nii.gz").write_text("")
    (tmp_path / "cases" / "out").mkdir()
    write_nifti(tmp_path / "cases" / "out" / "mask.nii.gz", (4, 4, 2), seed=0)
    cases = many.find_cases(str(tmp_path / "cases"), str(tmp_path / "cases" / "out"),
                                     log=quiet)
    assert [(c.name, c.input) for c in cases] == sorted(
        (name, str(path)) for name, path in inputs.items())


def test_cases_sharing_a_name_each_fail_and_the_others_run(tmp_path, monkeypatch, capsys,
                                                            counted_loads, model_path):
    for path in ("a/ct.nii.gz", "b/ct.nii.gz", "CT_0000.nii.gz", "other.nii"):
        write_nifti(tmp_path / "cases" / path, (4, 4, 2), seed=0)
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    code = predict.main(["--model", model_path, "--input", str(tmp_path / "cases"),
                         "--out", str(tmp_path / "out"), "--no-overlays"])
    assert code == 1
    err = capsys.readouterr().err
    shared = [str(tmp_path / "cases" / p) for p in ("a/ct.nii.gz", "b/ct.nii.gz",
                                                     "CT_0000.nii.gz")]
    rows = read_csv(tmp_path / "out")
    assert [(r["case"], r["status"]) for r in rows] == [
        ("CT", "failed"), ("ct", "failed"), ("ct", "failed"), ("other", "done")]
    assert sorted(r["input"] for r in rows[:3]) == sorted(shared)
    for row in rows[:3]:  # letter case aside: one folder on a case-insensitive file system
        path = row["input"]
        others = ", ".join(r["input"] for r in rows[:3] if r["input"] != path)
        assert row["error"] == (f"{path}: the case name {row['case']!r} is shared with {others} "
                                "(their outputs would overwrite each other); rename one of them")
        assert f"error: case {row['case']}: {row['error']}" in err
    assert sorted(os.listdir(tmp_path / "out")) == ["cases.csv", "cases.json", "other",
                                                    "review.html"]


def test_a_folder_or_list_without_cases_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here\n")
    (tmp_path / "empty" / "sub").mkdir()
    assert predict.main(["--model", "m", "--input", str(tmp_path / "empty"),
                         "--out", str(tmp_path / "out")]) == 1
    assert (f"{tmp_path / 'empty'}: no cases found: no NIfTI files (.nii, .nii.gz) and no "
            "folders with DICOM files under it") in capsys.readouterr().err
    (tmp_path / "none.txt").write_text("# nothing yet\n\n")
    assert predict.main(["--model", "m", "--input", str(tmp_path / "none.txt"),
                         "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'none.txt'}: the list names no cases" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_be_loaded_writes_nothing(tmp_path, capsys):
    write_nifti(tmp_path / "cases" / "ct.nii.gz", (4, 4, 2), seed=0)
    assert predict.main(["--model", str(tmp_path / "none.tflite"), "--input",
                         str(tmp_path / "cases"), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'none.tflite'}: model not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a folder of cases


def test_folder_of_cases_gives_the_single_case_outputs(batch):
    assert batch["code"] == 0
    assert batch["loads"] == 1
    out = batch["out"]
    assert sorted(p.name for p in out.iterdir()) == ["cases.csv", "cases.json", "dicom__CT5N",
                                                     "liver_1", "liver_2", "review.html"]
    for name in batch["inputs"]:
        mask, affine = read_mask(out / name)
        single_mask, single_affine = read_mask(batch["root"] / "single" / name)
        assert mask.sum() > 0
        np.testing.assert_array_equal(mask, single_mask)
        np.testing.assert_array_equal(affine, single_affine)
        summary = read_json(out / name / "summary.json")
        assert thumbnails(summary)  # the review page's, which a single case does not write
        assert without_seconds({k: v for k, v in summary.items() if k != "review_slices"}) == \
            without_seconds(json.loads(json.dumps(batch["singles"][name])))
        assert sorted(os.listdir(out / name / "overlays")) == sorted(
            os.path.basename(p) for p in summary["overlays"])


def test_the_summary_rows_hold_each_case(batch):
    rows = read_csv(batch["out"])
    assert [r["case"] for r in rows] == ["dicom__CT5N", "liver_1", "liver_2"]
    assert list(rows[0]) == list(CASE_COLUMNS)
    as_json = read_json(batch["out"] / "cases.json")
    for row, entry in zip(rows, as_json):
        summary = read_json(batch["out"] / row["case"] / "summary.json")
        assert row["status"] == entry["status"] == "done" and row["error"] == ""
        assert row["input"] == entry["input"] == str(batch["inputs"][row["case"]])
        assert int(row["slices"]) == entry["slices"] == summary["shape"][0]
        assert float(row["volume_ml"]) == entry["volume_ml"] == summary["volume_ml"]
        assert float(row["seconds"]) == entry["seconds"] == summary["seconds"]
    assert [e["slices"] for e in as_json] == [5, 3, 2]


def test_progress_over_cases_and_slices_on_stderr(batch):
    err = batch["err"]
    for i, name in enumerate(["dicom__CT5N", "liver_1", "liver_2"]):
        assert f"] {i}/3 {name}\n" in err
    assert "cases [##############################] 3/3 3 done, 0 skipped, 0 failed\n" in err
    assert "] 5/5 slices\n" in err and "] 2/2 slices\n" in err
    assert "left out 1 files that are neither NIfTI nor in a DICOM folder" in batch["stdout"]


def test_list_file_with_comments_relative_and_absolute_paths(batch, model_path, counted_loads,
                                                             tmp_path, monkeypatch):
    inputs = batch["inputs"]
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copytree(CT5N, lists / "series" / "CT5N")
    (lists / "cases.txt").write_text(
        "# test set\n"
        f"  {os.path.relpath(inputs['liver_2'], lists)}  \n\n"
        "series/CT5N\n"
        f"{inputs['liver_1']}\n")
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    code = predict.main(["--model", model_path, "--input", str(lists / "cases.txt"),
                         "--out", str(tmp_path / "out"), "--no-overlays"])
    assert code == 0
    rows = read_csv(tmp_path / "out")
    assert [r["case"] for r in rows] == ["liver_2", "series__CT5N", "liver_1"]  # list order
    assert [r["status"] for r in rows] == ["done"] * 3
    assert rows[1]["input"] == str(lists / "series" / "CT5N")
    for name, reference in (("liver_2", "liver_2"), ("series__CT5N", "dicom__CT5N"),
                            ("liver_1", "liver_1")):
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / name)[0],
                                      read_mask(batch["out"] / reference)[0])
        assert not (tmp_path / "out" / name / "overlays").exists()


def test_broken_cases_are_reported_and_the_others_written(batch, model_path, counted_loads,
                                                          tmp_path, monkeypatch, capsys):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(batch["inputs"]["liver_2"], cases / "good.nii")
    (cases / "garbage.nii.gz").write_bytes(b"not a NIfTI file")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), str(cases / "dyn.nii"))
    (cases / "empty").mkdir()
    (cases / "cases.lst").write_text("good.nii\ngarbage.nii.gz\ndyn.nii\nempty\nmissing.nii.gz\n")
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    code = predict.main(["--model", model_path, "--input", str(cases / "cases.lst"),
                         "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    rows = {r["case"]: r for r in read_csv(tmp_path / "out")}
    assert [r["status"] for r in rows.values()] == ["done", "failed", "failed", "failed",
                                                    "failed"]
    reasons = {
        "garbage": f"{cases / 'garbage.nii.gz'}: unreadable NIfTI file",
        "dyn": f"{cases / 'dyn.nii'}: expected a 3-D volume, got shape (4, 4, 3, 2)",
        "empty": f"{cases / 'empty'}: empty series: no DICOM files",
        "missing": f"{cases / 'missing.nii.gz'}: input not found",
    }
    for name, reason in reasons.items():
        assert rows[name]["error"].startswith(reason), rows[name]["error"]
        assert rows[name]["slices"] == rows[name]["volume_ml"] == ""
        assert f"error: case {name}: {reason}" in err
        assert not (tmp_path / "out" / name).exists()
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "good")[0],
                                  read_mask(batch["out"] / "liver_2")[0])
    assert sorted(os.listdir(tmp_path / "out")) == ["cases.csv", "cases.json", "good",
                                                    "review.html"]


# ------------------------------------------------------------------ resuming


def test_outputs_of_another_input_under_a_case_name_are_refused(batch, tmp_path, monkeypatch,
                                                                capsys):
    write_nifti(tmp_path / "cases" / "liver_1.nii.gz", (4, 4, 2), seed=0)
    out = tmp_path / "out"
    shutil.copytree(batch["out"] / "liver_1", out / "liver_1")
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    assert predict.main(["--model", "m", "--input", str(tmp_path / "cases"),
                         "--out", str(out)]) == 1
    assert (f"{out}: case folders hold the predictions of other inputs (choose another --out, "
            f"or --overwrite to replace them): {out / 'liver_1'} holds "
            f"{batch['inputs']['liver_1']}, not {tmp_path / 'cases' / 'liver_1.nii.gz'}"
            ) in capsys.readouterr().err


def test_a_killed_run_is_resumed_and_overwrite_redoes_every_case(batch, model_path, counted_loads,
                                                                 tmp_path, monkeypatch):
    cases = tmp_path / "cases"
    make_cases(cases)
    out = tmp_path / "predictions"
    argv = ["--model", model_path, "--input", str(cases), "--out", str(out)]
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])

    # The run is killed while the second case writes its summary (after its mask).
    real_write_json = files.write_json
    writes = []

    def killed_on_second(path, data, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            raise KeyboardInterrupt
        return real_write_json(path, data, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(predict_cases, "write_json", killed_on_second)
        with pytest.raises(KeyboardInterrupt):
            predict.main(argv)
    assert sorted(os.listdir(out)) == [".liver_1.partial", "cases.csv", "cases.json",
                                       "dicom__CT5N"]
    assert (out / ".liver_1.partial" / "mask.nii.gz").exists()
    assert [(r["case"], r["status"]) for r in read_csv(out)] == [("dicom__CT5N", "done")]
    first = {p: os.stat(out / "dicom__CT5N" / p).st_mtime_ns
             for p in ("mask.nii.gz", "summary.json")}

    assert predict.main(argv) == 0
    rows = read_csv(out)
    assert [(r["case"], r["status"]) for r in rows] == [
        ("dicom__CT5N", "skipped"), ("liver_1", "done"), ("liver_2", "done")]
    summary = read_json(out / "dicom__CT5N" / "summary.json")
    assert int(rows[0]["slices"]) == 5 and float(rows[0]["volume_ml"]) == summary["volume_ml"]
    assert float(rows[0]["seconds"]) == summary["seconds"]
    assert {p: os.stat(out / "dicom__CT5N" / p).st_mtime_ns for p in first} == first
    assert sorted(os.listdir(out)) == ["cases.csv", "cases.json", "dicom__CT5N", "liver_1",
                                       "liver_2", "review.html"]
    for name in batch["inputs"]:
        np.testing.assert_array_equal(read_mask(out / name)[0], read_mask(batch["out"] / name)[0])

    assert predict.main(argv) == 0  # all complete: all skipped
    assert [r["status"] for r in read_csv(out)] == ["skipped"] * 3

    assert predict.main(argv + ["--overwrite"]) == 0
    assert [r["status"] for r in read_csv(out)] == ["done"] * 3
    assert all(os.stat(out / "dicom__CT5N" / p).st_mtime_ns > first[p] for p in first)
    np.testing.assert_array_equal(read_mask(out / "dicom__CT5N")[0],
                                  read_mask(batch["out"] / "dicom__CT5N")[0])
    assert sorted(os.listdir(out)) == ["cases.csv", "cases.json", "dicom__CT5N", "liver_1",
                                       "liver_2", "review.html"]


def test_cases_predicted_by_another_model_are_predicted_again(batch, counted_loads, model_path,
                                                              tmp_path, monkeypatch, capsys):
    """A model re-exported at the same path (here: a file added to the SavedModel folder) makes
    the complete cases stale; each summary names the content it was predicted with."""
    loaded = counted_loads[0](model_path)

    class Loaded:  # the module's loaded model, with the fingerprint load_predictor would give
        def __init__(self, path, model_sha256):
            self.fingerprint = files.fingerprint(path) if model_sha256 is None else model_sha256

        def __getattr__(self, name):
            return getattr(loaded, name)

    monkeypatch.setattr(predictors, "load_predictor",
                        lambda path, batch_size=8, model_sha256=None: Loaded(path, model_sha256))
    hashed = []  # the model is hashed once per command, not again when it is loaded
    monkeypatch.setattr(predict_cases, "fingerprint",
                        lambda path: hashed.append(path) or files.fingerprint(path))
    model = tmp_path / "model"
    shutil.copytree(model_path, model)
    cases = tmp_path / "cases"
    make_cases(cases)
    argv = ["--model", str(model), "--input", str(cases), "--out", str(tmp_path / "out")]
    assert predict.main(argv) == 0
    old = files.fingerprint(str(model))
    assert read_json(tmp_path / "out" / "liver_1" / "summary.json")["model_sha256"] == old
    assert hashed == [str(model)]
    assert predict.main(argv) == 0
    assert [r["status"] for r in read_csv(tmp_path / "out")] == ["skipped"] * 3

    (model / "1" / "note.txt").write_text("retrained\n")
    capsys.readouterr()
    assert predict.main(argv) == 0
    assert "3 cases: 3 to predict (3 of them predicted by another model), 0 complete" in (
        capsys.readouterr().out)
    assert [r["status"] for r in read_csv(tmp_path / "out")] == ["done"] * 3
    new = files.fingerprint(str(model))
    assert new != old
    assert read_json(tmp_path / "out" / "liver_1" / "summary.json")["model_sha256"] == new
    assert predict.main(argv) == 0
    assert [r["status"] for r in read_csv(tmp_path / "out")] == ["skipped"] * 3


# ------------------------------------------------------------------ Apache Beam


@pytest.mark.slow
def test_direct_runner_with_two_workers_gives_the_in_process_outputs(batch, model_path, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # for the workers
    inputs = batch["inputs"]
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a NIfTI file")
    (tmp_path / "cases.txt").write_text(
        "".join(f"{inputs[name]}\n" for name in ("liver_1", "liver_2", "dicom__CT5N"))
        + "garbage.nii.gz\n")
    out = tmp_path / "out"
    shutil.copytree(batch["out"] / "liver_2", out / "liver_2")  # complete already
    code = predict.main(["--model", model_path, "--input", str(tmp_path / "cases.txt"),
                         "--out", str(out), "--runner", "DirectRunner", "--beam-options",
                         "--direct_num_workers=2 --direct_running_mode=multi_processing"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: case garbage: {tmp_path / 'garbage.nii.gz'}: unreadable NIfTI file" in err
    rows = read_csv(out)
    assert [(r["case"], r["status"]) for r in rows] == [
        ("liver_1", "done"), ("liver_2", "skipped"), ("CT5N", "done"), ("garbage", "failed")]
    assert read_json(out / "cases.json")[2]["slices"] == 5
    for name, reference in (("liver_1", "liver_1"), ("liver_2", "liver_2"),
                            ("CT5N", "dicom__CT5N")):
        np.testing.assert_array_equal(read_mask(out / name)[0],
                                      read_mask(batch["out"] / reference)[0])
        assert without_seconds(read_json(out / name / "summary.json")) == without_seconds(
            read_json(batch["out"] / reference / "summary.json"))
    assert sorted(os.listdir(out)) == ["CT5N", "cases.csv", "cases.json", "liver_1", "liver_2",
                                       "review.html"]


def test_runner_options_apply_to_many_cases_only(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(SystemExit):
        predict.main(["--model", "m", "--input", str(tmp_path / "one.npy"), "--out",
                      str(tmp_path / "out"), "--runner", "DirectRunner"])
    assert "--runner and Beam pipeline options apply to many cases" in capsys.readouterr().err


# ------------------------------------------------------------------ hostile input (issue 32)


def tree(root, leave_out):
    """{relative path: (size, mtime_ns)} of every file and folder under `root` except
    `leave_out`, and of `root`'s parent folder's entries (what a stray rename would touch)."""
    out = {}
    for base, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if Path(base, d) != leave_out]
        for name in dirs + names:
            path = Path(base, name)
            out[str(path.relative_to(root))] = (path.stat().st_size, path.stat().st_mtime_ns)
    out["<parent>"] = sorted(os.listdir(Path(root).parent))
    return out


HOSTILE = {  # file -> (case name, why it cannot be a case folder under OUT)
    "...nii.gz": ("..", "the case name '..' would be the output folder's parent"),
    "..nii.gz": (".", "the case name '.' would be the output folder itself"),
    "cases.csv.nii.gz": ("cases.csv", "the case name 'cases.csv' is the name of a file the batch "
                                      "writes in its output folder"),
    "..dots.nii.gz": ("..dots", "the case name '..dots' starts with '.' (kept for hidden files "
                                "and the batch's work folders .<case>.partial and .<case>.old)"),
}


def hostile_cases(root):
    """A folder `root/cases` of one good case, the files of `HOSTILE`, and a DICOM series in a
    folder named ``cases.json``; a list of them all (`root/cases/list.txt`)."""
    cases = root / "cases"
    write_nifti(cases / "good.nii.gz", (4, 4, 2), seed=0)
    for name in HOSTILE:
        shutil.copy(cases / "good.nii.gz", cases / name)
    shutil.copytree(CT5N, cases / "cases.json")
    (cases / "list.txt").write_text("".join(f"{n}\n" for n in HOSTILE) + "cases.json\ngood.nii.gz\n")
    return cases


def check_hostile_run(root, cases, out, rows, err, listed, good="done"):
    """The good case is done, each hostile one failed alone naming its file, and nothing outside
    `out` changed (no rename of its parent, no stray files)."""
    reasons = {"cases.json": (str(cases / "cases.json"), "the case name 'cases.json' is the name "
                              "of a file the batch writes in its output folder")}
    reasons.update({name: (str(cases / file), why) for file, (name, why) in HOSTILE.items()
                    if listed or not file.startswith(".")})  # hidden files: no cases in a folder
    assert {r["case"]: r["status"] for r in rows} == {"good": good,
                                                      **{name: "failed" for name in reasons}}
    for row in rows:
        if row["case"] in reasons:
            path, why = reasons[row["case"]]
            assert row["input"] == path
            assert row["error"] == f"{path}: {why}; rename the input"
            assert f"error: case {row['case']}: {row['error']}" in err
    assert sorted(os.listdir(out)) == ["cases.csv", "cases.json", "good", "review.html"]
    assert os.path.isfile(out / "cases.json")  # the summary, not a case folder


def test_hostile_case_names_fail_alone_and_nothing_leaves_out(counted_loads, model_path,
                                                              tmp_path, monkeypatch, capsys):
    """Issue 32, 1: names that would be '..', '.', the summary files or hidden work folders."""
    cases = hostile_cases(tmp_path)
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    for listed in (False, True):
        out = tmp_path / f"out_{'list' if listed else 'folder'}"
        before = tree(tmp_path, out)
        argv = ["--model", model_path, "--input", str(cases / "list.txt" if listed else cases),
                "--out", str(out), "--no-overlays"]
        for good in ("done", "skipped"):  # the rerun reads the summary it wrote
            assert predict.main(argv) == 1
            captured = capsys.readouterr()
            check_hostile_run(tmp_path, cases, out, read_csv(out), captured.err, listed, good)
        assert tree(tmp_path, out) == {**before, "<parent>": before["<parent>"]}
        if not listed:  # hidden files are left out in folder mode, but not without a word
            assert (f"warning: {cases}: left out 3 hidden NIfTI file(s) (names starting with '.'; "
                    f"rename them to predict them): {cases / '...nii.gz'}, "
                    f"{cases / '..dots.nii.gz'}, {cases / '..nii.gz'}") in captured.out


def test_case_paths_stay_directly_under_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "linked")
    assert many.case_path(str(out), "ok") == str(out / "ok")
    assert many.case_path(str(out), "ok", ".{}.partial") == str(out / ".ok.partial")
    for name in ("..", ".", "", "a/b", "cases.CSV", ".x", "x" * 300):
        with pytest.raises(many.BatchError, match="nothing written"):
            many.case_path(str(out), name)
    with pytest.raises(many.BatchError, match=r"outside --out .*nothing written"):
        many.case_path(str(out), "linked")


@pytest.mark.slow
def test_hostile_case_names_on_the_direct_runner(model_path, tmp_path, capsys):
    cases = hostile_cases(tmp_path)
    out = tmp_path / "out"
    before = tree(tmp_path, out)
    assert predict.main(["--model", model_path, "--input", str(cases / "list.txt"), "--out",
                         str(out), "--no-overlays", "--runner", "DirectRunner"]) == 1
    check_hostile_run(tmp_path, cases, out, read_csv(out), capsys.readouterr().err, listed=True)
    assert [r["case"] for r in read_csv(out)] == [n for n, _ in HOSTILE.values()] + [
        "cases.json", "good"]  # list order
    assert tree(tmp_path, out) == before


def test_a_list_file_with_a_byte_order_mark(counted_loads, model_path, tmp_path, monkeypatch):
    """Issue 32, 5: a list saved by an editor that writes a UTF-8 BOM."""
    write_nifti(tmp_path / "ct.nii.gz", (4, 4, 2), seed=0)
    (tmp_path / "list.txt").write_bytes("ct.nii.gz\n".encode("utf-8-sig"))
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    assert predict.main(["--model", model_path, "--input", str(tmp_path / "list.txt"),
                         "--out", str(tmp_path / "out"), "--no-overlays"]) == 0
    assert [(r["case"], r["status"], r["input"]) for r in read_csv(tmp_path / "out")] == [
        ("ct", "done", str(tmp_path / "ct.nii.gz"))]


def test_out_that_is_or_lies_in_the_input_or_is_a_file_is_refused_before_the_model_loads(
        tmp_path, monkeypatch, capsys):
    """Issue 32, 2: a rerun with --out equal to --input read its own outputs as cases."""
    cases = tmp_path / "cases"
    write_nifti(cases / "ct.nii.gz", (4, 4, 2), seed=0)
    shutil.copytree(CT5N, cases / "series")
    (tmp_path / "list.txt").write_text("cases/ct.nii.gz\ncases/series\n")
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: pytest.fail("model loaded"))
    refused = [
        (cases, cases, f"--out {cases} is the input folder {cases}"),
        (cases, cases / "preds", f"--out {cases / 'preds'} lies inside the input folder {cases}"),
        (tmp_path / "list.txt", cases / "series" / "out",
         f"--out {cases / 'series' / 'out'} lies inside the input folder {cases / 'series'}"),
        (cases / "series", cases / "series",  # one series: its outputs would be read as slices
         f"--out {cases / 'series'} is the input folder {cases / 'series'}"),
        (cases, tmp_path / "file", f"--out {tmp_path / 'file'} is an existing file, not a folder"),
        (cases / "ct.nii.gz", tmp_path / "file",
         f"--out {tmp_path / 'file'} is an existing file, not a folder"),
        (cases / "ct.nii.gz", tmp_path / "file" / "sub",
         f"--out {tmp_path / 'file' / 'sub'} lies under {tmp_path / 'file'}, which is a file"),
    ]
    for input_path, out, message in refused:
        listing = sorted(os.listdir(cases))
        assert predict.main(["--model", "m", "--input", str(input_path), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"error: {message}" in err, err
        assert sorted(os.listdir(cases)) == listing


def test_a_case_whose_outputs_changed_is_predicted_again(batch, counted_loads, model_path,
                                                        tmp_path, monkeypatch, capsys):
    """Issue 32, 3: resume trusted summary.json alone."""
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    argv = ["--model", model_path, "--input", str(batch["root"] / "cases"), "--out", str(out)]
    assert predict.main(argv) == 0
    assert [r["status"] for r in read_csv(out)] == ["skipped"] * 3
    summary = read_json(out / "liver_2" / "summary.json")
    overlay = out / "liver_2" / summary["overlays"][0]
    size = overlay.stat().st_size

    (out / "liver_1" / "mask.nii.gz").unlink()
    overlay.write_bytes(overlay.read_bytes()[:100])
    seg = out / "dicom__CT5N" / "mask.seg.dcm"
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    seg.write_bytes(bytes(data))
    capsys.readouterr()
    assert predict.main(argv) == 0
    log = capsys.readouterr().out
    assert [r["status"] for r in read_csv(out)] == ["done"] * 3
    for line in (
            "case dicom__CT5N: not complete (mask.seg.dcm differs from the file written "
            "(SHA-256)): predicted again",
            "case liver_1: not complete (mask.nii.gz is missing): predicted again",
            f"case liver_2: not complete ({summary['overlays'][0]} has 100 bytes, not the "
            f"{size} recorded): predicted again",
            "3 cases: 3 to predict (3 with outputs missing or changed), 0 complete"):
        assert line in log, log
    for name in batch["inputs"]:
        np.testing.assert_array_equal(read_mask(out / name)[0], read_mask(batch["out"] / name)[0])
        summary = read_json(out / name / "summary.json")  # what the summary records
        assert set(summary["outputs"]) == {"mask.nii.gz", *summary["overlays"],
                                           *thumbnails(summary)} | (
            {"mask.seg.dcm"} if summary["dicom_seg_file"] else set())
        for file, entry in summary["outputs"].items():
            assert entry == {"bytes": os.path.getsize(out / name / file),
                             "sha256": files.fingerprint(str(out / name / file))}
    assert predict.main(argv) == 0
    assert [r["status"] for r in read_csv(out)] == ["skipped"] * 3


def test_a_file_that_cannot_be_written_is_named_with_what_it_is(counted_loads, model_path,
                                                                 tmp_path, monkeypatch, capsys):
    """Issue 32, 5: a bare [Errno 13] said neither which file nor what it was."""
    write_nifti(tmp_path / "cases" / "ct.nii.gz", (4, 4, 2), seed=0)
    monkeypatch.setattr(predictors, "load_predictor", counted_loads[0])
    real_makedirs = os.makedirs

    def denied(path, *args, **kwargs):
        if str(path) == str(tmp_path / "out"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_makedirs(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "makedirs", denied)
        assert predict.main(["--model", model_path, "--input", str(tmp_path / "cases"),
                             "--out", str(tmp_path / "out")]) == 1
    assert (f"error: {tmp_path / 'out'}: cannot write the output folder (Permission denied)"
            ) in capsys.readouterr().err

    def no_summary(path, data, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(predict_cases, "write_json", no_summary)
    assert predict.main(["--model", model_path, "--input", str(tmp_path / "cases"),
                         "--out", str(tmp_path / "out")]) == 1
    summary = tmp_path / "out" / ".ct.partial" / "summary.json"
    assert (f"error: case ct: {tmp_path / 'cases' / 'ct.nii.gz'}: {summary}: cannot write the "
            "summary (Permission denied)"
            ) in capsys.readouterr().err
