"""Dataset validation with TFDV (`python -m lsnet_tf.validate`) on tiny hand-built datasets.

The base dataset has 4 patients x 3 slices of 32 x 32 HU in 2 folds (patients 0, 2 in fold 0,
patients 1, 3 in fold 1); each patient has slices with 0, 1 and 1 boxes. With the default val
fold 0, train = fold 1 and eval = fold 0. Planted-anomaly datasets are copies of it (schema and
training statistics included) whose fold-0 shards are rewritten.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lsnet_tf import validate as V
from lsnet_tf.data import records
from lsnet_tf.preparation.anomalies import DEFAULT_LINF_THRESHOLD
from lsnet_tf.preparation.report import summary_rows
from lsnet_tf.preparation.schema import DEFAULT_HU_RANGE, infer_dataset_schema
from lsnet_tf.preparation.statistics import (VALIDATED_FEATURES, ValidationError,
                                             compute_statistics, folds_of, parse_folds,
                                             read_feature_batches)

SIZE = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mask(num_boxes: int) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    if num_boxes >= 1:
        m[4:10, 5:12] = 1  # 7 wide, 6 high
    if num_boxes >= 2:
        m[20:23, 20:24] = 1  # 4 wide, 3 high, not 8-connected to the first
    return m


def _slices(patient: int, fold: int, box_counts=(0, 1, 1), hu_offset=0):
    rng = np.random.default_rng(patient)
    out = []
    for s, nb in enumerate(box_counts):
        img = (rng.normal(0, 100, (SIZE, SIZE)) + hu_offset).astype(np.int16)
        out.append(records.SliceRecord(img, _mask(nb), f"p{patient}", s, (0.7, 0.7, 2.5), fold))
    return out


def _write_patient(dataset_dir, patient, fold, **kw):
    recs = _slices(patient, fold, **kw)
    with records.ShardWriter(records.shard_path(dataset_dir, fold, f"p{patient}")) as w:
        for r in recs:
            w.write(r)
    return recs


def _replace_fold0(dataset_dir, **kw):
    for path in records.list_shards(dataset_dir, [0]):
        os.remove(path)
    return [r for p in (0, 2) for r in _write_patient(dataset_dir, p, 0, **kw)]


def _run(capsys, *argv):
    status = V.main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A prepared dataset with its schema inferred from the training split (fold 1)."""
    d = str(tmp_path_factory.mktemp("ds") / "base")
    written = {p: _write_patient(d, p, p % 2) for p in range(4)}
    records.write_info(d, {"folds": 2})
    status = V.main(["infer-schema", "--dataset", d])
    return {"dir": d, "written": written, "infer_status": status}


@pytest.fixture
def copy(base, tmp_path):
    """A copy of the base dataset (with its validation folder) to plant anomalies in."""
    d = str(tmp_path / "copy")
    shutil.copytree(base["dir"], d)
    return d


def _anomalies_json(dataset_dir, split="eval"):
    with open(os.path.join(dataset_dir, "validation", f"{split}_anomalies.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------
def test_infer_schema_writes_loadable_schema_with_domains(base):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    assert base["infer_status"] == 0  # the training split passes its own schema
    out = os.path.join(base["dir"], "validation")
    schema = tfdv.load_schema_text(os.path.join(out, "schema.pbtxt"))
    names = {f.name for f in schema.feature}
    assert names == set(VALIDATED_FEATURES)
    assert set(records.SCALAR_FEATURES) <= names
    assert not names & {"image", "mask", "boxes", "patient_id", "fold"}

    get = lambda n: tfdv.get_feature(schema, n)  # noqa: E731
    for n in ("hu_min", "hu_max", "hu_mean"):
        assert (get(n).float_domain.min, get(n).float_domain.max) == DEFAULT_HU_RANGE
        assert get(n).type == schema_pb2.FLOAT and get(n).float_domain.disallow_nan
    assert (get("hu_std").float_domain.min, get("hu_std").float_domain.max) == (0.0, 4096.0)
    assert (get("foreground_area").int_domain.min, get("foreground_area").int_domain.max) == (0, SIZE * SIZE)
    for n in ("box_max_side", "box_min_side"):
        assert (get(n).float_domain.min, get(n).float_domain.max) == (0.0, SIZE)
    # Training slices have only 0 or 1 box: inference alone would make num_boxes boolean.
    nb = get("num_boxes")
    assert not nb.HasField("bool_domain") and nb.int_domain.is_categorical and nb.int_domain.min == 0
    assert nb.drift_comparator.infinity_norm.threshold == DEFAULT_LINF_THRESHOLD
    assert get("spacing").shape.dim[0].size == 3

    stats = tfdv.load_stats_binary(os.path.join(out, "train_stats.pb"))
    assert stats.datasets[0].num_examples == 6 and stats.datasets[0].name == "train"
    with open(os.path.join(out, "schema_info.json")) as f:
        assert json.load(f)["folds"] == [1]


def test_statistics_match_numpy(base):
    """hu_mean / foreground_area statistics against values computed from the written arrays."""
    batches = read_feature_batches(base["dir"], [0])
    stats = compute_statistics(batches, name="eval")
    rows = {r["feature"]: r for r in summary_rows(stats)}
    recs = base["written"][0] + base["written"][2]
    hu_means = [float(r.image_hu.astype(np.float32).mean()) for r in recs]
    areas = [int(r.mask.sum()) for r in recs]
    assert stats.datasets[0].num_examples == 6
    np.testing.assert_allclose(rows["hu_mean"]["mean"], np.mean(hu_means), rtol=1e-5)
    np.testing.assert_allclose(rows["hu_mean"]["max"], np.max(hu_means), rtol=1e-5)
    assert (rows["foreground_area"]["min"], rows["foreground_area"]["max"]) == (0, 42)
    np.testing.assert_allclose(rows["foreground_area"]["mean"], np.mean(areas))
    assert (rows["box_max_side"]["max"], rows["box_min_side"]["max"]) == (7.0, 6.0)
    assert rows["spacing"]["count"] == 6 and rows["spacing"]["max"] == pytest.approx(2.5)


def test_check_clean_eval_split_passes_and_writes_report(base, capsys):
    status, out, _ = _run(capsys, "check", "--dataset", base["dir"])
    assert status == 0, out
    assert "eval split: 0 anomalies" in out
    assert "drift num_boxes: L_INFTY = 0" in out  # same box-count distribution in both folds
    doc = _anomalies_json(base["dir"])
    assert doc["anomalies"] == [] and doc["folds"] == [0]
    report = os.path.join(base["dir"], "validation", "eval_report.html")
    assert report in out
    text = open(report, encoding="utf-8").read()
    assert len(text) > 5000
    assert "<facets-overview" in text and "Anomalies: 0" in text
    assert "<h2>eval: 6 slices</h2>" in text and "<h2>train: 6 slices</h2>" in text
    assert "<td>hu_mean</td>" in text


def test_check_flags_out_of_range_hu(copy, capsys):
    _replace_fold0(copy, hu_offset=20000)
    status, out, _ = _run(capsys, "check", "--dataset", copy)
    assert status == 1
    assert "hu_max: Out-of-range values" in out and "20" in out
    rows = {r["feature"]: r for r in _anomalies_json(copy)["anomalies"]}
    assert set(rows) == {"hu_min", "hu_max", "hu_mean"}
    assert all(r["reasons"] == ["FLOAT_TYPE_BIG_FLOAT"] for r in rows.values())
    report = open(os.path.join(copy, "validation", "eval_report.html"), encoding="utf-8").read()
    assert "Anomalies: 3" in report and "<td>hu_max</td><td>Out-of-range values</td>" in report


def test_check_flags_missing_feature_and_type_change(copy, capsys):
    """Records without foreground_area and with hu_max written as an integer."""
    import tensorflow as tf

    for path in records.list_shards(copy, [0]):
        os.remove(path)
    with tf.io.TFRecordWriter(records.shard_path(copy, 0, "p0")) as w:
        for rec in _slices(0, 0):
            ex = tf.train.Example.FromString(records.encode(rec))
            del ex.features.feature["foreground_area"]
            hu_max = ex.features.feature["hu_max"].float_list.value[0]
            ex.features.feature["hu_max"].Clear()
            ex.features.feature["hu_max"].int64_list.value.append(int(hu_max))
            w.write(ex.SerializeToString())
    status, out, _ = _run(capsys, "check", "--dataset", copy)
    assert status == 1
    rows = {r["feature"]: r for r in _anomalies_json(copy)["anomalies"]}
    assert set(rows) == {"foreground_area", "hu_max"}, rows
    assert "foreground_area:" in out and "hu_max:" in out
    assert any("TYPE" in t for t in rows["hu_max"]["reasons"]), rows["hu_max"]


def test_check_flags_box_count_drift_and_accepts_unseen_counts(copy, capsys):
    # All eval slices empty: P(0 boxes) is 1 against 1/3 in training, L-infinity 2/3.
    _replace_fold0(copy, box_counts=(0, 0, 0))
    status, out, _ = _run(capsys, "check", "--dataset", copy)
    assert status == 1
    rows = {r["feature"]: r for r in _anomalies_json(copy)["anomalies"]}
    assert list(rows) == ["num_boxes"] and rows["num_boxes"]["reasons"] == ["COMPARATOR_L_INFTY_HIGH"]
    drift = _anomalies_json(copy)["drift"][0]
    assert drift["value"] == pytest.approx(2 / 3, abs=1e-6)
    # Thresholds from the command line override the schema's.
    assert _run(capsys, "check", "--dataset", copy, "--linf-threshold", "0.7")[0] == 0
    assert _run(capsys, "check", "--dataset", copy, "--no-drift")[0] == 0
    # Two boxes never occur in training (only 0 and 1) but are inside the domain: the only
    # anomaly is the drift (P(1 box) 1/3 against 2/3), and none without the drift check.
    _replace_fold0(copy, box_counts=(0, 2, 1))
    status, out, _ = _run(capsys, "check", "--dataset", copy)
    assert status == 1
    doc = _anomalies_json(copy)
    assert [r["reasons"] for r in doc["anomalies"]] == [["COMPARATOR_L_INFTY_HIGH"]]
    assert doc["drift"][0]["value"] == pytest.approx(1 / 3, abs=1e-6)
    status, out, _ = _run(capsys, "check", "--dataset", copy, "--no-drift")
    assert status == 0, out


def test_jsd_threshold_flags_numeric_drift(copy, capsys):
    # Shift HU by +500: inside the domain, but the hu_mean histograms no longer overlap.
    _replace_fold0(copy, hu_offset=500)
    assert _run(capsys, "check", "--dataset", copy)[0] == 0
    status, out, _ = _run(capsys, "check", "--dataset", copy, "--jsd-threshold", "0.5")
    assert status == 1
    rows = {r["feature"]: r for r in _anomalies_json(copy)["anomalies"]}
    assert rows["hu_mean"]["reasons"] == ["COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"]


def test_stats_and_all_commands(copy, capsys):
    import tensorflow_data_validation as tfdv

    shutil.rmtree(os.path.join(copy, "validation"))
    status, out, _ = _run(capsys, "stats", "--dataset", copy, "--folds", "0,1")
    assert status == 0
    stats = tfdv.load_stats_binary(os.path.join(copy, "validation", "folds-0_1_stats.pb"))
    assert stats.datasets[0].num_examples == 12
    assert os.path.getsize(os.path.join(copy, "validation", "folds-0_1_report.html")) > 2000

    status, out, _ = _run(capsys, "all", "--dataset", copy, "--val-fold", "1")
    assert status == 0, out
    with open(os.path.join(copy, "validation", "schema_info.json")) as f:
        assert json.load(f)["folds"] == [0]
    for name in ("schema.pbtxt", "train_stats.pb", "eval_stats.pb", "train_report.html",
                 "eval_report.html", "eval_anomalies.json", "eval_anomalies.pbtxt"):
        assert os.path.isfile(os.path.join(copy, "validation", name)), name


def test_train_split_out_of_domain_is_reported_by_infer_schema(copy, capsys):
    status, out, _ = _run(capsys, "infer-schema", "--dataset", copy, "--val-fold", "1",
                          "--hu-range", "-100", "100")
    assert status == 1  # fold 0 (now training) has HU beyond +-100
    assert "hu_max: Out-of-range values" in out and "hu_min: Out-of-range values" in out
    assert _anomalies_json(copy, "train")["folds"] == [0]


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
def test_error_missing_dataset(tmp_path, capsys):
    status, _, err = _run(capsys, "check", "--dataset", str(tmp_path / "nope"))
    assert status == 2 and "does not exist" in err
    status, _, err = _run(capsys, "stats", "--dataset", str(tmp_path))
    assert status == 2 and "not a prepared dataset" in err


def test_error_check_without_schema(copy, capsys):
    shutil.rmtree(os.path.join(copy, "validation"))
    status, _, err = _run(capsys, "check", "--dataset", copy)
    assert status == 2
    assert "no schema at" in err and "infer-schema" in err


def test_error_split_without_shards(copy, capsys):
    records.write_info(copy, {"folds": 3})  # fold 2 announced but never written
    status, _, err = _run(capsys, "check", "--dataset", copy, "--val-fold", "2")
    assert status == 2 and "have no shards" in err and "fold-K" in err
    status, _, err = _run(capsys, "check", "--dataset", copy, "--val-fold", "5")
    assert status == 2 and "val fold 5 is not a fold" in err


def test_error_empty_shards(copy, capsys):
    for path in records.list_shards(copy, [0]):
        with records.ShardWriter(path):
            pass
    status, _, err = _run(capsys, "check", "--dataset", copy)
    assert status == 2 and "hold no records" in err


def test_argument_errors():
    with pytest.raises(ValidationError, match="comma-separated integers, got '1,x'"):
        parse_folds("1,x")
    with pytest.raises(ValidationError, match="non-negative"):
        parse_folds("-1")
    with pytest.raises(ValidationError, match="split must be one of"):
        folds_of("/nonexistent", "test")
    with pytest.raises(ValidationError, match=r"low < high, got \(5.0, 5.0\)"):
        infer_dataset_schema(None, hu_range=(5.0, 5.0))
    with pytest.raises(SystemExit):
        V.build_parser().parse_args(["check", "--dataset", "x", "--linf-threshold", "2"])


@pytest.mark.slow
def test_module_entry_point_exit_status(copy):
    """`python -m lsnet_tf.validate` exits 1 on a planted anomaly (fresh interpreter)."""
    _replace_fold0(copy, hu_offset=20000)
    proc = subprocess.run([sys.executable, "-m", "lsnet_tf.validate", "check", "--dataset", copy],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "hu_mean: Out-of-range values" in proc.stdout
