"""Data in a bucket: lsnet_tf.utils.files on gs:// URLs against a real Cloud Storage emulator
(gcp-storage-emulator, tests/gcs_emulator.py) reached by the production client, and the
commands that read cases from a bucket and write into one: prepare (records equal to those of
the same cases in a local folder), predict (one case and a folder of cases, cases.csv, NIfTI
masks, a DICOM SEG, resuming) and the folder evaluator. Errors name the URL."""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from gcs_emulator import bucket, gcs_emulator  # noqa: F401 - fixtures
from lsnet_tf import evaluate, predict, prepare
from lsnet_tf.data import records
from lsnet_tf.evaluation.folder import evaluate_folder
from lsnet_tf.inference import cases as predict_cases
from lsnet_tf.inference import many, predictors
from lsnet_tf.utils import files, gcs, staging
from test_batch_predict import make_cases, read_csv
from test_dicom import CT5N, copy_series
from test_evaluate_folder import box, save
from test_prepare import msd_arrays, msd_case, write_ct5n_label


def quiet(*args, **kwargs):
    pass


def upload(folder, url):
    files.upload_tree(str(folder), url)
    return url


def raw_records(path, tmp_path):
    """The serialized records of shard `path` (a gs:// shard is downloaded first)."""
    import tensorflow as tf

    if gcs.is_gcs(path):
        local = tmp_path / ("dl-" + os.path.basename(path))
        files.copy_file(path, str(local))
        path = str(local)
    return [r.numpy() for r in tf.data.TFRecordDataset(path)]


# --------------------------------------------------------------------------- the file layer
def test_files_on_a_bucket_write_read_list_copy_and_remove(bucket, tmp_path):
    base = bucket + "/ds"
    assert files.write_text(base + "/a.json", '{"a": 1}') == base + "/a.json"
    files.write_bytes(base + "/fold-0/p.tfrecord", b"\x00\x01")
    files.write_json(base + "/fold-1/q.json", {"b": [1, 2]})
    assert files.read_text(base + "/a.json") == '{"a": 1}'
    assert json.loads(files.read_text(base + "/fold-1/q.json")) == {"b": [1, 2]}
    assert files.isfile(base + "/a.json") and not files.isdir(base + "/a.json")
    assert files.isdir(base) and files.isdir(base + "/fold-0/") and not files.isfile(base)
    assert files.exists(base + "/fold-1") and not files.exists(base + "/fold-2")
    assert files.listdir(base) == ["a.json", "fold-0", "fold-1"]
    assert files.walk_files(base) == ["a.json", "fold-0/p.tfrecord", "fold-1/q.json"]
    assert files.glob(base + "/fold-*/*.tfrecord") == [base + "/fold-0/p.tfrecord"]
    assert files.glob(base + "/*.json") == [base + "/a.json"]  # * stays within one level
    assert files.getsize(base + "/fold-0/p.tfrecord") == 2
    files.copy_file(base + "/a.json", str(tmp_path / "x" / "a.json"))
    assert (tmp_path / "x" / "a.json").read_text() == '{"a": 1}'
    files.copy_file(base + "/a.json", base + "/copy.json")
    assert files.read_bytes(base + "/copy.json") == b'{"a": 1}'
    assert files.download_tree(base, str(tmp_path / "mirror")) == files.walk_files(base)
    assert (tmp_path / "mirror" / "fold-0" / "p.tfrecord").read_bytes() == b"\x00\x01"
    files.remove(base + "/copy.json")
    files.rmtree(base + "/fold-1")
    assert files.walk_files(base) == ["a.json", "fold-0/p.tfrecord"]
    # The dataset readers go through the layer: dataset.json and shard listing.
    records.write_info(base, {"folds": 2})
    assert records.read_info(base)["folds"] == 2
    assert records.list_shards(base, [0, 1]) == [base + "/fold-0/p.tfrecord"]


def test_errors_name_the_url(bucket, gcs_emulator):
    missing = "gs://no-such-bucket-here/ds/a.json"
    for call in (lambda: files.read_text(missing), lambda: files.write_text(missing, "x"),
                 lambda: files.listdir("gs://no-such-bucket-here/ds"),
                 lambda: files.makedirs("gs://no-such-bucket-here/ds")):
        with pytest.raises(gcs.BucketNotFound) as e:
            call()
        assert "gs://no-such-bucket-here" in str(e.value) and "does not exist" in str(e.value)
        assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(gcs.ObjectNotFound, match=f"^{bucket}/nothing.json: no such object"):
        files.read_bytes(bucket + "/nothing.json")
    with pytest.raises(gcs.ObjectNotFound, match=f"^{bucket}/none: no such folder"):
        files.listdir(bucket + "/none")
    with pytest.raises(gcs.ObjectNotFound, match=f"{bucket}/nothing.json"):
        files.remove(bucket + "/nothing.json")
    # An object whose bytes do not match the checksum the service gives for it (the emulator
    # lets a client patch the recorded MD5; a cut-short download reads the same way).
    url = files.write_bytes(bucket + "/cut.bin", b"0123456789")
    blob = gcs.client().bucket(bucket[5:]).get_blob("cut.bin")
    blob.md5_hash = "AAAAAAAAAAAAAAAAAAAAAA=="
    blob.patch()
    with pytest.raises(gcs.TruncatedObject, match=f"^{url}: "):
        files.read_bytes(url)


def test_a_refusal_of_the_service_names_the_url(bucket, tmp_path, capsys):
    """A bucket the caller may read and not write (`read_only`: the emulator behind a proxy
    that answers every write with the service's 403): reading works; a write, a removal and
    `prepare` into the bucket end with `AccessDenied` (a `PermissionError`) naming the URL."""
    from gcs_emulator import read_only_proxy

    image, lab = msd_arrays(0)
    msd_case(tmp_path / "Task07", "pancreas_001", lab, image)
    root = upload(tmp_path / "Task07", bucket + "/Task07")
    server = read_only_proxy(os.environ["STORAGE_EMULATOR_HOST"])
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert files.listdir(root) == ["imagesTr", "labelsTr"]
        url = root + "/imagesTr/pancreas_001.nii.gz"
        assert files.read_bytes(url) == \
            (tmp_path / "Task07" / "imagesTr" / "pancreas_001.nii.gz").read_bytes()
        for call, target in ((lambda: files.write_text(bucket + "/new.json", "{}"),
                              bucket + "/new.json"),
                             (lambda: files.remove(url), url)):
            with pytest.raises(gcs.AccessDenied) as e:
                call()
            assert isinstance(e.value, PermissionError)
            assert str(e.value).startswith(f"{target}: access denied (403")
            assert "storage.objects.create" in str(e.value)
        assert prepare.main(["msd", "--root", root, "--out", bucket + "/ds"]) == 2
        err = capsys.readouterr().err
        assert f"{bucket}/ds" in err and "access denied (403" in err, err
    finally:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator
        server.shutdown()
        server.server_close()
    assert files.read_bytes(url)  # the object was not removed


def test_staging_copies_one_case_and_errors_name_its_url(bucket):
    url = upload(CT5N, bucket + "/archive/P1/series")
    with staging.local_copies(url, None, "/local/path") as (staged, (local, none, same)):
        assert none is None and same == "/local/path"
        assert sorted(os.listdir(local)) == sorted(p.name for p in CT5N.iterdir())
        assert os.path.basename(local) == "series"
        assert staged.to_source(os.path.join(local, "a.dcm")) == url + "/a.dcm"
        folder = os.path.dirname(local)
    assert not os.path.exists(folder)  # removed with the block
    with pytest.raises(ValueError) as e:
        with staging.local_copies(url) as (_, (local,)):
            raise ValueError(f"{local}/x.dcm: broken")
    assert str(e.value) == f"{url}/x.dcm: broken"


# ------------------------------------------------------------------------------- prepare
def tcia_and_msd(root):
    """Two TCIA patients (CT5N with a label; one without a label) and two MSD cases."""
    images, labels = root / "tcia" / "Pancreas-CT", root / "tcia" / "labels"
    for num in (1, 2):
        copy_series(images / f"PANCREAS_{num:04d}" / "study" / "series")
    labels.mkdir(parents=True)
    write_ct5n_label(labels / "label0001.nii.gz")
    msd = root / "Task07"
    for k, name in enumerate(("pancreas_001", "pancreas_002")):
        image, lab = msd_arrays(k)
        msd_case(msd, name, lab, image)
    return images, labels, msd


def test_prepare_from_a_bucket_into_a_bucket_gives_the_local_records(bucket, tmp_path, capsys):
    images, labels, msd = tcia_and_msd(tmp_path / "in")
    upload(tmp_path / "in", bucket + "/archive")
    runs = {
        "tcia": (["tcia", "--images", str(images), "--labels", str(labels)],
                 ["tcia", "--images", bucket + "/archive/tcia/Pancreas-CT",
                  "--labels", bucket + "/archive/tcia/labels"]),
        "msd": (["msd", "--root", str(msd)], ["msd", "--root", bucket + "/archive/Task07"]),
    }
    for layout, (local_argv, url_argv) in runs.items():
        local, url = tmp_path / layout, f"{bucket}/{layout}"
        assert prepare.main(local_argv + ["--out", str(local), "--folds", "2"]) == \
            (1 if layout == "tcia" else 0)
        assert prepare.main(url_argv + ["--out", url, "--folds", "2"]) == \
            (1 if layout == "tcia" else 0)
        a, b = records.read_info(str(local)), records.read_info(url)
        assert sorted(b["patient_details"]) == sorted(a["patient_details"])
        assert len(b["patient_details"]) == 1 + (layout == "msd")
        for pid, d in b["patient_details"].items():
            assert d["slices"] == a["patient_details"][pid]["slices"] and d["slices"] >= 3
            assert raw_records(files.join(url, d["shard"]), tmp_path) == \
                raw_records(str(local / d["shard"]), tmp_path)
            assert all(v.startswith(bucket + "/archive/") for v in d["sources"].values() if v)
        assert records.list_shards(url, [0, 1]) == sorted(
            files.join(url, d["shard"]) for d in b["patient_details"].values())
        for key in ("fold_assignment", "num_slices", "patients", "label_values_found"):
            assert a[key] == b[key]
        if layout == "tcia":  # the patient without a label fails naming its URL
            assert b["failed"] == {"PANCREAS_0002": f"{bucket}/archive/tcia/Pancreas-CT/"
                                   "PANCREAS_0002: no label file with number 2 in "
                                   f"{bucket}/archive/tcia/labels"}
    capsys.readouterr()


@pytest.mark.slow
def test_prepare_on_the_direct_runner_with_two_worker_processes(bucket, tmp_path, capsys):
    """Each worker process reads its patients from the bucket and writes their shards there
    (the workers inherit STORAGE_EMULATOR_HOST); the records equal the local in-process ones."""
    msd = tmp_path / "Task07"
    for k, name in enumerate(("pancreas_001", "pancreas_002", "pancreas_003")):
        image, lab = msd_arrays(k)
        msd_case(msd, name, lab, image)
    root = upload(msd, bucket + "/Task07")
    local, url = tmp_path / "local", bucket + "/beam"
    assert prepare.main(["msd", "--root", str(msd), "--folds", "2", "--out", str(local)]) == 0
    assert prepare.main(["msd", "--root", root, "--folds", "2", "--out", url, "--runner",
                         "DirectRunner", "--beam-options",
                         "--direct_num_workers=2 --direct_running_mode=multi_processing"]) == 0
    a, b = records.read_info(str(local)), records.read_info(url)
    assert sorted(b["patient_details"]) == ["pancreas_001", "pancreas_002", "pancreas_003"]
    assert a["fold_assignment"] == b["fold_assignment"]
    for pid, d in b["patient_details"].items():
        assert raw_records(files.join(url, d["shard"]), tmp_path) == \
            raw_records(str(local / d["shard"]), tmp_path)
    capsys.readouterr()


def test_prepare_errors_name_the_bucket_and_the_truncated_object(bucket, tmp_path, capsys):
    status = prepare.main(["msd", "--root", "gs://no-such-bucket-here/Task07", "--out",
                           str(tmp_path / "out")])
    assert status == 2
    assert "gs://no-such-bucket-here" in capsys.readouterr().err
    image, lab = msd_arrays(0)
    msd_case(tmp_path / "Task07", "pancreas_001", lab, image)
    data = (tmp_path / "Task07" / "imagesTr" / "pancreas_001.nii.gz").read_bytes()
    upload(tmp_path / "Task07", bucket + "/Task07")
    cut = files.write_bytes(bucket + "/Task07/imagesTr/pancreas_001.nii.gz", data[:len(data) // 2])
    assert prepare.main(["msd", "--root", bucket + "/Task07", "--out", bucket + "/ds"]) == 1
    err = capsys.readouterr().err
    assert f"pancreas_001: {cut}" in err and "lsnet_tf-case-" not in err


# ------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def model_path(tiny_saved_model):
    return tiny_saved_model


@pytest.fixture(scope="module")
def loaded(model_path):
    return predictors.load_predictor(model_path)


@pytest.fixture
def loaded_once(model_path, loaded, monkeypatch):
    """The model's path; the model is loaded once for the module and every command of a test
    reuses it."""
    monkeypatch.setattr(predictors, "load_predictor",
                        lambda path, batch_size=8, model_sha256=None: loaded)
    return model_path


def mask_of(data: bytes, tmp_path, name="m.nii.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_predict_a_folder_of_cases_from_a_bucket_into_a_bucket(bucket, loaded_once, tmp_path,
                                                               capsys):
    model_path = loaded_once
    inputs = make_cases(tmp_path / "cases")
    url_in, url_out = upload(tmp_path / "cases", bucket + "/cases"), bucket + "/preds"
    local_out = tmp_path / "local-preds"
    assert predict.main(["--model", model_path, "--input", str(tmp_path / "cases"),
                         "--out", str(local_out)]) == 0
    assert predict.main(["--model", model_path, "--input", url_in, "--out", url_out]) == 0
    rows = read_csv(local_out)
    text = files.read_text(url_out + "/cases.csv")
    assert text.splitlines()[0].startswith("case,input,slices")
    remote_rows = {r["case"]: r for r in json.loads(files.read_text(url_out + "/cases.json"))}
    assert sorted(remote_rows) == sorted(inputs) == sorted(r["case"] for r in rows)
    relative = {"liver_1": "liver_1_0000.nii.gz", "liver_2": "more/liver_2.nii",
                "dicom__CT5N": "dicom/CT5N"}
    for row in rows:
        name = row["case"]
        remote = remote_rows[name]
        assert remote["status"] == "done" and remote["input"] == f"{url_in}/{relative[name]}"
        assert int(remote["slices"]) == int(row["slices"])
        local_case, remote_case = local_out / name, f"{url_out}/{name}"
        assert files.walk_files(remote_case) == files.walk_files(str(local_case))
        got = mask_of(files.read_bytes(remote_case + "/mask.nii.gz"), tmp_path)
        want = mask_of((local_case / "mask.nii.gz").read_bytes(), tmp_path, "w.nii.gz")
        assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1])
        summary = json.loads(files.read_text(remote_case + "/summary.json"))
        assert summary["input"] == f"{url_in}/{relative[name]}"
        assert summary["outputs"]["mask.nii.gz"]["sha256"] == \
            json.loads((local_case / "summary.json").read_text())["outputs"]["mask.nii.gz"][
                "sha256"]
    dicom = json.loads(files.read_text(url_out + "/dicom__CT5N/summary.json"))
    assert all(s["file"].startswith(url_in + "/dicom/CT5N/") for s in dicom["slices"])
    if dicom["dicom_seg_file"]:  # a non-empty mask: its DICOM SEG is in the bucket too
        assert files.isfile(url_out + "/dicom__CT5N/mask.seg.dcm")
    assert files.isfile(url_out + "/review.html")
    # Run again: every case is complete in the bucket and skipped.
    assert predict.main(["--model", model_path, "--input", url_in, "--out", url_out]) == 0
    again = json.loads(files.read_text(url_out + "/cases.json"))
    assert [r["status"] for r in again] == ["skipped"] * 3
    capsys.readouterr()


def test_predict_one_case_from_a_bucket_and_a_truncated_one(bucket, loaded_once, tmp_path,
                                                            capsys):
    model_path = loaded_once
    inputs = make_cases(tmp_path / "cases")
    nii = files.copy_file(str(inputs["liver_1"]), bucket + "/in/liver_1_0000.nii.gz")
    summary = predict_cases.run(model_path, nii, bucket + "/one", log=quiet, progress=None)
    local = predict_cases.run(model_path, str(inputs["liver_1"]), str(tmp_path / "one"),
                              log=quiet, progress=None)
    assert summary["input"] == nii and summary["mask_voxels"] == local["mask_voxels"]
    assert files.read_bytes(bucket + "/one/mask.nii.gz") == \
        (tmp_path / "one" / "mask.nii.gz").read_bytes()
    assert json.loads(files.read_text(bucket + "/one/summary.json"))["input"] == nii
    data = inputs["liver_1"].read_bytes()
    cut = files.write_bytes(bucket + "/bad/liver_1_0000.nii.gz", data[: len(data) // 2])
    assert predict.main(["--model", model_path, "--input", cut, "--out",
                         str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert cut in err and "lsnet_tf-case-" not in err
    assert predict.main(["--model", model_path, "--input", bucket + "/nothing.nii.gz",
                         "--out", str(tmp_path / "none")]) == 1
    assert f"{bucket}/nothing.nii.gz: input not found" in capsys.readouterr().err


def test_cases_in_a_bucket_are_found_as_in_a_local_folder(bucket, tmp_path):
    make_cases(tmp_path / "cases")
    url = upload(tmp_path / "cases", bucket + "/cases")
    local = many.find_cases(str(tmp_path / "cases"), log=quiet)
    remote = many.find_cases(url, log=quiet)
    assert [c.name for c in remote] == [c.name for c in local] == \
        ["dicom__CT5N", "liver_1", "liver_2"]
    assert [c.input for c in remote] == [f"{url}/dicom/CT5N", f"{url}/liver_1_0000.nii.gz",
                                         f"{url}/more/liver_2.nii"]
    assert many.is_batch_input(url) and not many.is_batch_input(url + "/dicom/CT5N")
    assert not many.is_batch_input(url + "/liver_1_0000.nii.gz")
    listed = tmp_path / "list.txt"
    listed.write_text(f"# bucket cases\n{url}/liver_1_0000.nii.gz\n{url}/dicom/CT5N/\n")
    assert [(c.name, c.input) for c in many.find_cases(str(listed), log=quiet)] == [
        ("liver_1", f"{url}/liver_1_0000.nii.gz"), ("CT5N", f"{url}/dicom/CT5N")]
    files.copy_file(str(listed), url + "/list.txt")
    with pytest.raises(many.BatchError, match=f"^{url}/list.txt: a list of cases is read"):
        many.find_cases(url + "/list.txt", log=quiet)


# ------------------------------------------------------------------------------ evaluate
def test_the_folder_evaluator_on_bucket_folders(bucket, tmp_path, capsys):
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    save(str(labels / "a.nii.gz"), box((2, 2, 2), (12, 12, 12)))
    save(str(preds / "a" / "mask.nii.gz"), box((5, 2, 2), (15, 12, 14)))
    save(str(labels / "b.nii.gz"), box((1, 1, 1), (4, 4, 4)))
    save(str(preds / "b.nii.gz"), box((1, 1, 1), (4, 4, 4)))
    local = evaluate_folder(str(preds), str(labels), log=quiet)
    remote = evaluate_folder(upload(preds, bucket + "/preds"), upload(labels, bucket + "/labels"),
                             log=quiet)
    assert remote["predictions"] == bucket + "/preds" and remote["labels"] == bucket + "/labels"
    assert [c["prediction"] for c in remote["cases"]] == [bucket + "/preds/a/mask.nii.gz",
                                                         bucket + "/preds/b.nii.gz"]
    assert remote["cases"][0]["dsc"] == pytest.approx(2 * 700 / 2200)  # by hand
    for key in ("prediction", "label"):
        for c in remote["cases"] + local["cases"]:
            c.pop(key)
    for key in ("predictions", "labels"):
        remote.pop(key), local.pop(key)
    assert remote == local
    # The command names the URL of what it cannot read, and exits 2, without a traceback.
    out = str(tmp_path / "ev.json")
    assert evaluate.main(["--predictions", "gs://no-such-bucket-here/preds", "--labels",
                          bucket + "/labels", "--out", out]) == 2
    assert "gs://no-such-bucket-here" in capsys.readouterr().err
    blob = gcs.client().bucket(bucket[5:]).get_blob("labels/b.nii.gz")
    blob.md5_hash = "AAAAAAAAAAAAAAAAAAAAAA=="  # its bytes no longer match: read as cut short
    blob.patch()
    assert evaluate.main(["--predictions", bucket + "/preds", "--labels", bucket + "/labels",
                          "--out", out]) == 2
    assert f"error: {bucket}/labels/b.nii.gz: " in capsys.readouterr().err


# ------------------------------------------------------------------------------ validate
def test_validate_a_dataset_in_a_bucket_as_in_a_local_folder(bucket, tmp_path, capsys):
    """`python -m lsnet_tf.validate all` on a prepared dataset in a bucket, its outputs in the
    bucket: the schema, statistics and anomalies equal those of the same dataset in a local
    folder; a missing bucket ends with exit status 2 naming it."""
    from lsnet_tf import validate
    from test_validate import _write_patient

    local = tmp_path / "ds"
    for p in range(4):
        _write_patient(str(local), p, p % 2)
    records.write_info(str(local), {"folds": 2})
    url = upload(local, bucket + "/ds")
    assert validate.main(["all", "--dataset", str(local)]) == 0
    assert validate.main(["all", "--dataset", url]) == 0
    out = capsys.readouterr().out
    assert f"{url}/validation/eval_report.html" in out
    names = ["schema.pbtxt", "train_stats.pb", "eval_stats.pb", "eval_anomalies.pbtxt",
             "schema_info.json"]
    for name in names:
        assert files.read_bytes(f"{url}/validation/{name}") == \
            (local / "validation" / name).read_bytes(), name
    a = json.loads((local / "validation" / "eval_anomalies.json").read_text())
    b = json.loads(files.read_text(f"{url}/validation/eval_anomalies.json"))
    assert b.pop("schema") == f"{url}/validation/schema.pbtxt"
    assert a.pop("schema") == str(local / "validation" / "schema.pbtxt") and a == b
    assert "train_report.html" in files.listdir(url + "/validation")
    assert validate.main(["check", "--dataset", url, "--out", bucket + "/checked",
                          "--schema", url + "/validation/schema.pbtxt"]) == 0
    assert json.loads(files.read_text(bucket + "/checked/eval_anomalies.json"))["anomalies"] == []
    assert validate.main(["stats", "--dataset", "gs://no-such-bucket-here/ds"]) == 2
    assert "gs://no-such-bucket-here" in capsys.readouterr().err
