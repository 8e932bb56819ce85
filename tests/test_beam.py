"""``prepare`` and ``validate`` as Apache Beam pipelines (``--runner``) against the in-process path.

The DirectRunner runs in multi-processing mode with 2 workers (`MULTI`), once for ``prepare tcia``
(as ``python -m lsnet_tf.prepare`` in a subprocess: the user's path, where the module is
``__main__``) and once for ``validate all``; each worker process imports TensorFlow, so these
two runs are shared by the tests through module-scoped fixtures, and those tests are marked slow
(worker start-up dominates: about 1 to 2 minutes per run on the shared 2-core machine). The other
pipelines are the in-memory DirectRunner in this process (MSD to a ``ram://`` filesystem, the
validation errors).

TCIA data: the helpers of test_prepare (5 patients of the 5-slice CT5N series, each with its HU
shifted by 10 x its number, and PANCREAS_0003, in the middle, an RT plan and no image slice);
``--folds 2 --seed 0`` puts patients 2, 3, 4 in fold 0 and 1, 5 in fold 1.
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf import prepare
from lsnet_tf.utils import beam, files
from lsnet_tf import validate as V
from lsnet_tf.data import records, volumes
from lsnet_tf.preparation.statistics import (VALIDATED_FEATURES, available_folds, folds_of,
                                             read_feature_batches, statistics_schema,
                                             statistics_view)
from test_prepare import _non_image, copy_series, msd_arrays, msd_case, read_shard, tcia_layout

REPO = Path(__file__).resolve().parents[1]
MULTI = "--direct_num_workers=2 --direct_running_mode=multi_processing"
GOOD = ["PANCREAS_0001", "PANCREAS_0002", "PANCREAS_0004", "PANCREAS_0005"]
BROKEN = "PANCREAS_0003"


def build_tcia(root):
    """The TCIA test layout under `root` (see the module doc): returns (images, labels)."""
    def shifted(n):
        def edit(ds, i):
            ds.RescaleIntercept = -1024 + 10 * n

        return lambda d: copy_series(d, edit=edit)

    patients = {n: (shifted(n), True) for n in (1, 2, 4, 5)}
    patients[3] = (_non_image, True)
    return tcia_layout(Path(root), dict(sorted(patients.items())))


def _in_process(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = fn(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    """The TCIA layout prepared in process and by `python -m lsnet_tf.prepare --runner
    DirectRunner` with 2 worker processes."""
    root = tmp_path_factory.mktemp("beam")
    images, labels = build_tcia(root)
    argv = ["tcia", "--images", str(images), "--labels", str(labels), "--folds", "2"]
    local, beamed = root / "local", root / "beam"
    status, out, err = _in_process(prepare.main, argv + ["--out", str(local)])
    proc = subprocess.run(
        [sys.executable, "-m", "lsnet_tf.prepare", *argv, "--out", str(beamed),
         "--runner", "DirectRunner", "--beam-options", MULTI],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return {"images": images, "labels": labels, "local": local, "beam": beamed,
            "local_run": (status, out, err),
            "beam_run": (proc.returncode, proc.stdout, proc.stderr)}


@pytest.mark.slow
def test_a_broken_patient_is_reported_with_file_and_reason_and_the_others_are_written(tcia):
    status, out, err = tcia["beam_run"]
    assert status == 1, err[-3000:]
    broken = tcia["images"] / BROKEN / "1.2.3-study" / "4.5.6-series" / "plan.dcm"
    line = f"  {BROKEN}: {broken}: not an image slice"
    assert "1 of 5 patients failed:" in err and line in err
    assert f"[3/5] {BROKEN} (fold 0): FAILED: {broken}: not an image slice" in out
    assert "prepared 4 patients (20 slices), skipped 0, failed 1" in out
    assert f"with Beam DirectRunner ({MULTI})" in out
    info = records.read_info(str(tcia["beam"]))
    assert info["failed"][BROKEN].startswith(f"{broken}: not an image slice")
    assert sorted(info["patient_details"]) == GOOD and info["complete"] is False
    written = sorted(p.relative_to(tcia["beam"]).as_posix() for p in tcia["beam"].glob("fold-*/*"))
    assert written == [
        "fold-0/PANCREAS_0002.tfrecord", "fold-0/PANCREAS_0004.tfrecord",
        "fold-1/PANCREAS_0001.tfrecord", "fold-1/PANCREAS_0005.tfrecord"]  # no .tmp left
    # the same report as in process, line for line
    local_status, local_out, local_err = tcia["local_run"]
    assert local_status == 1 and err.splitlines()[-2:] == local_err.splitlines()[-2:]
    tail = lambda text: text[text.index("[1/5]"):].splitlines()  # noqa: E731
    assert tail(out) == tail(local_out)


@pytest.mark.slow
def test_shards_hold_the_same_records_as_in_process(tcia):
    info = records.read_info(str(tcia["beam"]))
    for pid in GOOD:
        shard = info["patient_details"][pid]["shard"]
        a, b = read_shard(tcia["local"] / shard), read_shard(tcia["beam"] / shard)
        assert len(a) == len(b) == 5
        for ra, rb in zip(a, b):
            assert ra.keys() == rb.keys()
            for key in ra:
                np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{pid} {key}")
        assert a[0]["patient_id"] == pid.encode()
        assert [int(r["slice_index"]) for r in b] == [0, 1, 2, 3, 4]
        # HU shifted by 10 x the patient number: the records are each patient's own
        n = int(pid[-4:])
        np.testing.assert_array_equal(
            b[0]["image_hu"] - read_shard(tcia["beam"] / info["patient_details"]["PANCREAS_0001"]
                                          ["shard"])[0]["image_hu"], 10 * (n - 1))
        raw = lambda p: [r.numpy() for r in tf.data.TFRecordDataset(str(p))]  # noqa: E731
        assert raw(tcia["local"] / shard) == raw(tcia["beam"] / shard)  # byte for byte


@pytest.mark.slow
def test_dataset_json_and_fold_split_are_identical(tcia):
    a, b = records.read_info(str(tcia["local"])), records.read_info(str(tcia["beam"]))
    ca, cb = a.pop("command"), b.pop("command")
    assert a == b
    assert b["fold_assignment"] == volumes.kfold_split(GOOD + [BROKEN], 2, 0)
    assert b["patients"] == {"0": ["PANCREAS_0002", "PANCREAS_0004"],
                             "1": ["PANCREAS_0001", "PANCREAS_0005"]}
    assert (ca["args"]["runner"], cb["args"]["runner"]) == (None, "DirectRunner")
    assert cb["args"]["beam_options"] == MULTI
    for args in (ca["args"], cb["args"]):
        for key in ("out", "runner", "beam_options"):
            args.pop(key)
    assert ca["args"] == cb["args"]
    for d in (tcia["local"], tcia["beam"]):  # the same text layout: keys sorted, indent 2
        text = (d / records.INFO_FILE).read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)


# ---------------------------------------------------------------------------------- validate
@pytest.fixture(scope="module")
def validated(tcia, tmp_path_factory):
    """`validate all` of the Beam-prepared dataset in process and with the DirectRunner."""
    root = tmp_path_factory.mktemp("validate")
    dataset = str(tcia["beam"])
    local, beamed = root / "local", root / "beam"
    runs = {
        "local": _in_process(V.main, ["all", "--dataset", dataset, "--out", str(local)]),
        "beam": _in_process(V.main, ["all", "--dataset", dataset, "--out", str(beamed),
                                     "--runner", "DirectRunner", "--beam-options", MULTI]),
    }
    return {"local": local, "beam": beamed, "runs": runs, "dataset": tcia["beam"]}


def _feature_stats(path):
    import tensorflow_data_validation as tfdv

    stats = tfdv.load_stats_binary(str(path))
    (ds,) = stats.datasets
    return ds, {".".join(f.path.step): f for f in ds.features}


@pytest.mark.slow
def test_statistics_match_the_in_process_ones(validated):
    (s_local, _, err_local), (s_beam, out, err) = (validated["runs"][k] for k in ("local", "beam"))
    assert s_beam == s_local == 0, err_local + err
    assert "statistics with Beam DirectRunner" in out
    for split, slices in (("train", 10), ("eval", 10)):
        ds_a, a = _feature_stats(validated["local"] / f"{split}_stats.pb")
        ds_b, b = _feature_stats(validated["beam"] / f"{split}_stats.pb")
        assert ds_a.num_examples == ds_b.num_examples == slices and ds_b.name == split
        assert sorted(a) == sorted(b) == sorted(VALIDATED_FEATURES)
        for name in a:
            fa, fb = a[name], b[name]
            assert fa.type == fb.type, name
            if name == "num_boxes":  # categorical: counts of each box count
                assert fa.string_stats.top_values == fb.string_stats.top_values
                assert fa.string_stats.unique == fb.string_stats.unique
                continue
            na, nb = fa.num_stats, fb.num_stats
            for field in ("min", "max", "median", "num_zeros"):
                assert getattr(na, field) == getattr(nb, field), (split, name, field)
            for field in ("mean", "std_dev"):
                assert getattr(nb, field) == pytest.approx(getattr(na, field), rel=1e-9, abs=1e-9)
            assert na.common_stats == nb.common_stats, (split, name)
            assert [h.buckets for h in na.histograms] == [h.buckets for h in nb.histograms]

    # known answers from the records themselves (numpy): fold 0 is eval, fold 1 train
    for split, fold in (("train", 1), ("eval", 0)):
        _, b = _feature_stats(validated["beam"] / f"{split}_stats.pb")
        recs = [r for shard in records.list_shards(str(validated["dataset"]), [fold])
                for r in read_shard(shard)]
        assert len(recs) == 10
        hu_means = [r["image_hu"].mean() for r in recs]
        assert b["hu_mean"].num_stats.mean == pytest.approx(np.mean(hu_means), rel=1e-6)
        assert b["hu_min"].num_stats.min == min(r["image_hu"].min() for r in recs)
        assert b["foreground_area"].num_stats.max == max(r["mask"].sum() for r in recs)


@pytest.mark.slow
def test_schema_and_anomalies_are_the_same_and_no_temporary_files_remain(validated):
    read = lambda d, f: (d / f).read_text()  # noqa: E731
    assert read(validated["local"], "schema.pbtxt") == read(validated["beam"], "schema.pbtxt")
    for name in ("train_anomalies.json", "eval_anomalies.json"):
        a, b = (json.loads(read(validated[k], name)) for k in ("local", "beam"))
        assert a.pop("schema", None) == (str(validated["local"] / "schema.pbtxt")
                                         if name.startswith("eval") else None)
        b.pop("schema", None)
        assert a == b and a["anomalies"] == [] and bool(a["drift"]) == name.startswith("eval")
    assert sorted(os.listdir(validated["local"])) == sorted(os.listdir(validated["beam"]))


@pytest.mark.slow
def test_the_stand_in_schema_computes_what_the_inferred_schema_does(validated):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = tfdv.load_schema_text(str(validated["beam"] / "schema.pbtxt"))
    assert statistics_view(schema) == statistics_view(statistics_schema())
    assert statistics_view(statistics_schema())[0] == [("num_boxes", schema_pb2.INT)]
    tfdv.get_feature(schema, "slice_index").int_domain.is_categorical = True
    assert statistics_view(schema) != statistics_view(statistics_schema())  # second pass


# ------------------------------------------------------------------- MSD to another filesystem
def test_msd_with_beam_writes_the_same_dataset_to_a_tensorflow_filesystem_url(tmp_path):
    """In-memory DirectRunner (this process) writing to TensorFlow's ram:// filesystem: shards
    and dataset.json go through tf.io.gfile, written under a temporary name, then renamed."""
    root = tmp_path / "Task07"
    for k, name in enumerate(("pancreas_001", "pancreas_002", "pancreas_003")):
        image, labels = msd_arrays(k)
        msd_case(root, name, labels, image)
    os.remove(root / "labelsTr" / "pancreas_002.nii.gz")
    local, url = tmp_path / "local", f"ram://{uuid.uuid4().hex}/dataset"
    argv = ["msd", "--root", str(root), "--folds", "2", "--label-values", "2"]
    assert _in_process(prepare.main, argv + ["--out", str(local)])[0] == 1
    status, out, err = _in_process(prepare.main, argv + ["--out", url, "--runner", "DirectRunner"])
    assert status == 1, err
    image = root / "imagesTr" / "pancreas_002.nii.gz"
    assert f"pancreas_002: {image}: no label file" in err
    a, b = records.read_info(str(local)), records.read_info(url)
    assert a.pop("command")["args"]["out"] == str(local) and b.pop("command")["args"]["out"] == url
    assert a == b and sorted(b["patient_details"]) == ["pancreas_001", "pancreas_003"]
    for pid, d in b["patient_details"].items():
        raw = lambda p: [r.numpy() for r in tf.data.TFRecordDataset(p)]  # noqa: E731
        assert raw(os.path.join(url, d["shard"])) == raw(str(local / d["shard"]))
        assert len(raw(os.path.join(url, d["shard"]))) == 3
    assert records.list_shards(url, [0, 1]) == sorted(
        os.path.join(url, d["shard"]) for d in b["patient_details"].values())
    assert tf.io.gfile.glob(url + "/fold-*/*.tmp") == [] and not tf.io.gfile.exists(
        url + "/dataset.json.tmp")
    tf.io.gfile.rmtree(url.rsplit("/", 1)[0])


# ------------------------------------------------------------------------- files via gfile
def test_write_to_a_url_writes_then_renames_and_removes_its_temporary_file_on_error(monkeypatch):
    base = f"ram://{uuid.uuid4().hex}"
    path = base + "/sub/x.json"
    assert files.write_text(path, '{"a": 1}') == path
    with tf.io.gfile.GFile(path, "rb") as f:
        assert f.read() == b'{"a": 1}'

    def broken_rename(*a, **k):
        raise OSError("rename failed")

    monkeypatch.setattr(tf.io.gfile, "rename", broken_rename)
    with pytest.raises(OSError, match="rename failed"):
        files.write_bytes(path, b"new")
    with tf.io.gfile.GFile(path, "rb") as f:
        assert f.read() == b'{"a": 1}'  # the old content stays, no temporary file
    assert tf.io.gfile.listdir(base + "/sub") == ["x.json"]
    tf.io.gfile.rmtree(base)


def test_shards_and_dataset_json_on_a_url(tmp_path):
    base = f"ram://{uuid.uuid4().hex}/ds"
    rec = records.SliceRecord(np.arange(12, dtype=np.int16).reshape(3, 4),
                              np.eye(3, 4, dtype=np.uint8), "p", 0)
    with records.ShardWriter(records.shard_path(base, 1, "p")) as w:
        w.write(rec)
        w.write(rec)
    with pytest.raises(RuntimeError):
        with records.ShardWriter(records.shard_path(base, 0, "q")) as w:
            w.write(rec)
            raise RuntimeError("interrupted")
    assert records.list_shards(base, [0, 1]) == [base + "/fold-1/p.tfrecord"]
    assert tf.io.gfile.listdir(base + "/fold-0") == []  # no shard, no temporary file
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        records.read_info(base)
    records.write_info(base, {"folds": 2})
    assert records.read_info(base)["folds"] == 2
    assert available_folds(base) == [0, 1]
    assert folds_of(base, "train", 0) == [1]
    batches = read_feature_batches(base, [1])
    assert sum(b.num_rows for b in batches) == 2
    files.write_text(base + "/validation/x.txt", "text")
    assert files.read_text(base + "/validation/x.txt") == "text"
    tf.io.gfile.rmtree(base.rsplit("/", 1)[0])


# ------------------------------------------------------------------------------ usage errors
def test_pipeline_options():
    import argparse

    ns = lambda runner, text="": argparse.Namespace(runner=runner, beam_options=text)  # noqa: E731
    assert beam.pipeline_options(ns(None)) is None
    options = beam.pipeline_options(ns("DirectRunner", MULTI), ["--job_name", "x"])
    assert options.get_all_options()["direct_num_workers"] == 2
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
    assert options.get_all_options()["job_name"] == "x"
    assert beam.describe(options) == ("Beam DirectRunner (--direct_num_workers=2 "
                                      "--direct_running_mode=multi_processing --job_name=x)")
    assert beam.split_argv(["a", "--", "--b=1", "--", "c"]) == (["a"], ["--b=1", "--", "c"])
    cases = [
        (ns(None, "--direct_num_workers=2"), "need --runner NAME"),
        (ns("DirectRunner", "--runner=FlinkRunner"), "give the runner with --runner only"),
        (ns("DirectRunner", "--direct_num_wrkers=2 --foo"),
         "unknown Beam pipeline option(s): --direct_num_wrkers, --foo"),
        (ns("DirectRunner", "'unclosed"), "cannot be split: No closing quotation"),
    ]
    for args, message in cases:
        with pytest.raises(beam.BeamOptionsError) as e:
            beam.pipeline_options(args)
        assert message in str(e.value)


def test_command_line_usage_errors_exit_2(tmp_path):
    images, labels = build_tcia(tmp_path / "data")
    existing = tmp_path / "existing"
    records.write_info(str(existing), {"folds": 2})
    base = ["tcia", "--images", str(images), "--labels", str(labels)]
    cases = [
        (base + ["--out", str(tmp_path / "a"), "--beam-options=--direct_num_workers=2"],
         "need --runner NAME"),
        (base + ["--out", str(tmp_path / "a"), "--runner", "DirectRunner", "--",
                 "--direct_num_wrkers=2"], "unknown Beam pipeline option(s): --direct_num_wrkers"),
        (base + ["--out", "ram://somewhere/ds"],
         "--out ram://somewhere/ds is not a local folder: writing there needs --runner"),
        (base + ["--out", str(existing), "--runner", "DirectRunner"],
         "already holds a prepared dataset"),
    ]
    for argv, message in cases:
        status, _, err = _in_process(prepare.main, argv)
        assert status == 2 and message in err, (argv, err)
    status, _, err = _in_process(V.main, ["stats", "--dataset", str(existing), "--runner",
                                          "DirectRunner", "--", "--no_such_option"])
    assert status == 2 and "unknown Beam pipeline option(s): --no_such_option" in err
    status, _, err = _in_process(V.main, ["stats", "--dataset", str(existing), "--folds", "5",
                                          "--runner", "DirectRunner"])
    assert status == 2 and "folds [5] of" in err and "have no shards" in err


def test_validate_with_beam_refuses_foreign_and_empty_shards(tmp_path):
    d = str(tmp_path / "ds")
    records.write_info(d, {"folds": 2})
    foreign = tf.train.Example(features=tf.train.Features(feature={
        "other": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    os.makedirs(os.path.join(d, "fold-0"))
    with tf.io.TFRecordWriter(os.path.join(d, "fold-0", "x.tfrecord")) as w:
        w.write(foreign.SerializeToString())
    with records.ShardWriter(records.shard_path(d, 1, "empty")):
        pass
    for folds, message in (("0", "hold none of the features"),
                           ("1", "hold no records (1 empty shard(s))")):
        argv = ["stats", "--dataset", d, "--folds", folds]
        local = _in_process(V.main, argv)
        status, _, err = _in_process(V.main, argv + ["--runner", "DirectRunner"])
        assert local[0] == status == 2 and message in local[2] and message in err, err
    assert [n for n in os.listdir(os.path.join(d, "validation")) if n.startswith(".beam")] == []
