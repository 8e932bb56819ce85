"""python -m lsnet_tf.evaluate: the metric math (metrics.evaluation) on hand-made predictions, the
evaluation dataset with slice identities (data.pipeline.eval_dataset), the folds of a split
(data.records.split_folds), loading a run folder and the command line."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf import evaluate as ev
from lsnet_tf.config import load_config
from lsnet_tf.data import pipeline, records
from lsnet_tf.evaluation import EvaluationError
from lsnet_tf.evaluation.report import markdown
from lsnet_tf.evaluation.slices import SLICE_KEYS, evaluate_run, load_run
from lsnet_tf.metrics import evaluation as mev
from lsnet_tf.metrics.segmentation import slice_scores

N = 20  # toy slices are 20 x 20 = 400 pixels: 2 px = 0.5 % (small), 10 px = 2.5 %, 20 px = 5 %


def _mask(*regions):
    m = np.zeros((N, N), "float32")
    for rows, cols in regions:
        m[rows, cols] = 1
    return m


def toy_rows():
    """Two patients, hand-computed (see each slice's comment: tp, |T|, |P|)."""
    slices = [  # patient, truth, prediction, true boxes, predicted boxes (+ valid flags)
        ("p1", _mask((slice(0, 4), slice(0, 5))), _mask((slice(0, 4), slice(0, 5))),  # 20, 20, 20
         [[0, 0, 5, 4]], [[0, 0, 5, 4]], [True]),
        ("p1", _mask((slice(5, 6), slice(5, 7))), _mask(),                           # 0, 2, 0
         [[5, 5, 7, 6]], [[0, 0, 0, 0]], [False]),
        ("p2", _mask((slice(0, 2), slice(0, 5))), _mask((slice(0, 6), slice(0, 5))),  # 10, 10, 30
         [[0, 0, 5, 2]], [[0, 0, 5, 6], [5, 5, 7, 6]], [True, False]),
        ("p2", _mask(), _mask(), [], [], []),                                          # empty, ok
        ("p2", _mask(), _mask((slice(10, 11), slice(0, 5))), [], [[0, 10, 5, 11]], [True]),  # FP
        ("p2", _mask(), _mask(), [], [], []),                                          # empty, ok
    ]
    rows = []
    for i, (pid, truth, pred, tb, pb, pv) in enumerate(slices):
        tb_arr = np.zeros((1, 3, 4), "float32")
        tb_arr[0, :len(tb)] = np.reshape(tb, (-1, 4))
        pb_arr = np.zeros((1, 2, 4), "float32")
        pv_arr = np.zeros((1, 2), bool)
        pb_arr[0, :len(pb)] = np.reshape(pb, (-1, 4))
        pv_arr[0, :len(pv)] = pv
        rows += mev.slice_rows([pid.encode()], [i], truth[None], pred[None], tb_arr, [len(tb)],
                              pb_arr, pv_arr)
    return rows


def test_slice_rows_counts():
    rows = toy_rows()
    assert [(r["tp"], r["n_true"], r["n_pred"]) for r in rows] == [
        (20, 20, 20), (0, 2, 0), (10, 10, 30), (0, 0, 0), (0, 0, 5), (0, 0, 0)]
    assert [r["patient_id"] for r in rows] == ["p1", "p1", "p2", "p2", "p2", "p2"]
    assert rows[0]["box_ious"] == [1.0] and rows[1]["box_ious"] == [0.0]
    assert rows[2]["box_ious"] == [pytest.approx(1 / 3)]  # the invalid box is ignored
    assert rows[3]["box_ious"] == [] and rows[3]["union_iou"] is None


def test_per_slice_and_per_case_on_a_two_patient_toy():
    rows = toy_rows()
    ex = mev.summarize(rows, "exclude")
    assert (ex["n_slices"], ex["n_target_slices"], ex["n_empty_slices"], ex["fp_empty_slices"]) == (6, 3, 3, 1)
    assert ex["dsc"]["mean"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert ex["precision"]["mean"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert ex["recall"]["mean"] == pytest.approx((1 + 0 + 1) / 3)
    assert (ex["dsc"]["min"], ex["dsc"]["max"], ex["dsc"]["n"]) == (0.0, 1.0, 3)
    # Per case: 2 Σtp / (Σ|T| + Σ|P|) over each patient's slices, empty slices included.
    p1, p2 = 2 * 20 / (22 + 20), 2 * 10 / (10 + 35)
    assert ex["per_case"]["cases"] == {"p1": pytest.approx(p1), "p2": pytest.approx(p2)}
    assert ex["per_case"]["mean"] == pytest.approx((p1 + p2) / 2)
    assert ex["per_case"]["std"] == pytest.approx(abs(p1 - p2) / 2)
    assert (ex["per_case"]["min"], ex["per_case"]["max"]) == (pytest.approx(p2), pytest.approx(p1))
    # Per slice and per case differ: p1's missed 2-pixel slice costs a whole slice's DSC.
    assert ex["dsc"]["mean"] != pytest.approx(ex["per_case"]["mean"])
    assert ex["box_miou"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert ex["dsc_by_size"] == {"small": {"n": 1, "dsc": 0.0}, "medium": {"n": 1, "dsc": 0.5},
                                 "large": {"n": 1, "dsc": 1.0}}


def test_empty_slice_option_changes_the_average_as_documented():
    rows = toy_rows()
    ex, inc = mev.summarize(rows, "exclude"), mev.summarize(rows, "include")
    # include: an empty slice scores DSC = precision = 1 without prediction, 0 with one; recall 1.
    assert inc["dsc"]["mean"] == pytest.approx((1 + 0 + 0.5 + 1 + 0 + 1) / 6)
    assert inc["precision"]["mean"] == pytest.approx((1 + 0 + 1 / 3 + 1 + 0 + 1) / 6)
    assert inc["recall"]["mean"] == pytest.approx((1 + 0 + 1 + 1 + 1 + 1) / 6)
    assert inc["dsc"]["n"] == 6 and ex["dsc"]["n"] == 3
    # Everything that does not average slices is the same.
    for key in ("per_case", "box_miou", "dsc_by_size", "fp_empty_slices", "n_empty_slices"):
        assert inc[key] == ex[key]
    with pytest.raises(ValueError, match="empty_slices must be one of exclude, include, "
                                         "received 'skip'"):
        mev.summarize(rows, "skip")


def test_slice_scores_known_answers_and_dice_is_f1():
    from lsnet_tf.metrics.segmentation import scores_from_counts
    truth = np.zeros((4, 4), bool)
    truth[0, :4] = True
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True
    assert slice_scores(truth, pred) == pytest.approx({"dsc": 2 / 3, "precision": 1.0, "recall": 0.5})
    assert scores_from_counts(0, 0, 0) == {"dsc": 1.0, "precision": 1.0, "recall": 1.0}
    assert scores_from_counts(0, 0, 3) == {"dsc": 0.0, "precision": 0.0, "recall": 1.0}
    assert scores_from_counts(0, 3, 0) == {"dsc": 0.0, "precision": 0.0, "recall": 0.0}
    rng = np.random.default_rng(0)
    for _ in range(50):  # invariant: DSC is the harmonic mean of precision and recall
        truth = rng.uniform(size=(6, 6)) < 0.3
        pred = rng.uniform(size=(6, 6)) < 0.3
        s = slice_scores(truth, pred)
        if s["precision"] > 0 and s["recall"] > 0:
            assert s["dsc"] == pytest.approx(2 * s["precision"] * s["recall"] / (s["precision"] + s["recall"]))


def test_box_miou_per_box_and_union():
    true = np.array([[[0, 0, 2, 2], [4, 4, 6, 6]]], "float32")
    truth = _mask((slice(0, 2), slice(0, 2)), (slice(4, 6), slice(4, 6)))[None]
    both = mev.slice_rows(["a"], [0], truth, truth, true, [2], true, [[True, True]])[0]
    assert both["box_ious"] == [1.0, 1.0] and both["union_iou"] == 1.0
    one = mev.slice_rows(["a"], [0], truth, truth, true, [2], true, [[True, False]])[0]
    assert one["box_ious"] == [1.0, 0.0]
    assert one["union_iou"] == pytest.approx(4 / 36)  # [0,0,2,2] against the box [0,0,6,6]
    summary = mev.summarize([both, one])
    assert summary["box_miou"] == pytest.approx(3 / 4)
    assert summary["box_miou_union"] == pytest.approx((1 + 4 / 36) / 2)
    with pytest.raises(ValueError, match=r"truth and pred must both be \(B, H, W\)"):
        mev.slice_rows(["a"], [0], truth, truth[0], true, [2], true, [[True, True]])


# ----------------------------------------------------------------------------- data and runs

def write_dataset(root):
    """Patients 'a' (fold 0, 3 slices) and 'b' (fold 1, 2 slices) of 40 x 40 HU slices."""
    rng = np.random.default_rng(1)
    counts = {}
    for pid, fold, n in (("a", 0, 3), ("b", 1, 2)):
        with records.ShardWriter(records.shard_path(root, fold, pid)) as w:
            for k in range(n):
                mask = np.zeros((40, 40), np.uint8)
                if pid == "a" and k == 1:  # three components
                    mask[2:6, 2:6] = mask[20:25, 10:20] = mask[30:35, 30:38] = 1
                elif pid == "b" and k == 0:
                    mask[10:20, 10:20] = 1
                hu = rng.integers(-200, 200, size=(40, 40)).astype(np.int16)
                w.write(records.SliceRecord(hu, mask, pid, slice_index=k, fold=fold))
        counts[str(fold)] = n
    records.write_info(root, {"folds": 2, "num_slices": counts, "patients": {"0": ["a"], "1": ["b"]}})
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("ds")))


def tiny_cfg(dataset_dir, *extra):
    return load_config(None, ["model.architecture=fcn", "model.family=fcn", "model.width=4",
                              "data.image_size=32", "data.max_boxes=2", f"data.dataset={dataset_dir}",
                              "data.batch_size=2", *extra])


def test_eval_dataset_keeps_identities_and_all_boxes(dataset_dir):
    cfg = tiny_cfg(dataset_dir)
    batches = list(pipeline.eval_dataset(cfg.data, dataset_dir, [0, 1]))
    ids = [p.decode() for b in batches for p in b["patient_id"].numpy()]
    idx = [int(i) for b in batches for i in b["slice_index"].numpy()]
    assert list(zip(ids, idx)) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    first = batches[0]
    assert tuple(first["image"].shape) == (2, 32, 32, 1) and tuple(first["mask"].shape) == (2, 32, 32, 1)
    img = first["image"].numpy()
    assert img.min() >= 0 and img.max() <= 1
    assert set(np.unique(first["mask"].numpy())) <= {0.0, 1.0}
    # Slice a/1 keeps its three boxes although data.max_boxes is 2; boxes scale by 32 / 40.
    assert int(first["num_boxes"][1]) == 3
    np.testing.assert_allclose(first["boxes"][1, 0].numpy(), np.array([2, 2, 6, 6]) * 0.8)
    with pytest.raises(records.NoShardsError, match=r"no shards for folds \[5\]"):
        pipeline.eval_dataset(cfg.data, dataset_dir, [5])


def test_split_folds(dataset_dir):
    assert records.split_folds(dataset_dir, 0, "val") == [0]
    assert records.split_folds(dataset_dir, 0, "train") == [1]
    assert records.split_folds(dataset_dir, 1, "all") == [0, 1]
    with pytest.raises(records.FoldError, match="split must be one of val, train, all"):
        records.split_folds(dataset_dir, 0, "test")
    with pytest.raises(records.FoldError, match="val_fold=2 but .* has folds 0..1"):
        records.split_folds(dataset_dir, 2, "val")
    # Folds found otherwise (python -m lsnet_tf.validate also counts fold-K folders).
    assert records.split_folds(dataset_dir, 3, "train", folds=[5, 3, 1]) == [1, 5]
    assert records.split_folds(dataset_dir, 3, "all", folds=[5, 3, 1]) == [1, 3, 5]
    with pytest.raises(records.FoldError, match=r"val fold 2 is not a fold of .* \(folds: \[1, 3\]\)"):
        records.split_folds(dataset_dir, 2, "val", folds=[3, 1])


def make_run(run_dir, cfg):
    """A run folder as the trainer writes it: config.yaml and a checkpoint of every network
    and optimizer (``build.checkpoint_objects``) plus the epoch counter."""
    from lsnet_tf.models.build import build_model, checkpoint_objects, compile_model

    os.makedirs(run_dir, exist_ok=True)
    cfg.save(os.path.join(run_dir, "config.yaml"))
    model = build_model(cfg)
    compile_model(model, cfg, 1)
    last = model.snet.get_layer("decoder_score_p3")
    last.bias.assign([3.0])  # a weight a freshly built model does not have
    ckpt = tf.train.Checkpoint(**checkpoint_objects(model), epoch=tf.Variable(1, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, os.path.join(run_dir, "checkpoints"), 3).save(1)
    return model


def test_load_and_evaluate_a_run(tmp_path, dataset_dir):
    from lsnet_tf.models.build import count_trainable_params

    run = str(tmp_path / "run")
    saved = make_run(run, tiny_cfg(dataset_dir))
    cfg, model, checkpoint = load_run(run)
    assert checkpoint.endswith("ckpt-1") and cfg.model.architecture == "fcn"
    assert float(model.snet.get_layer("decoder_score_p3").bias.numpy()[0]) == 3.0
    result = evaluate_run(run, split="all", log=lambda *a: None)
    with pytest.raises(EvaluationError, match="split must be one of val, train, all"):
        evaluate_run(run, split="test")
    empty = str(tmp_path / "empty")
    records.write_info(empty, {"folds": 2, "num_slices": {"0": 0, "1": 0}})
    with pytest.raises(EvaluationError, match=r"no shards for folds \[0\]"):
        evaluate_run(run, dataset=empty, log=lambda *a: None)
    assert result["n_slices"] == 5 and result["folds"] == [0, 1]
    # The kept per-slice counts give back the summary (box IoUs aside).
    assert len(result["slices"]) == 5 and set(result["slices"][0]) == set(SLICE_KEYS)
    again = mev.summarize([{**r, "box_ious": [], "union_iou": 0.0} for r in result["slices"]])
    for key in ("dsc", "precision", "recall", "dsc_by_size", "per_case"):
        assert again[key] == result[key], key
    assert sorted(result["per_case"]["cases"]) == ["a", "b"]
    assert result["complexity"]["params"]["snet"] == count_trainable_params(saved.snet)
    assert result["complexity"]["flops"]["total"] == result["complexity"]["flops"]["snet"] > 0
    text = markdown(result, "FCN")
    assert "| Method | DSC(%) | Precision(%) | Recall(%) |" in text and "| FCN | " in text


def test_command_line_writes_json_and_markdown(tmp_path, dataset_dir):
    run = str(tmp_path / "run")
    make_run(run, tiny_cfg(dataset_dir))
    out = str(tmp_path / "out" / "fcn.json")
    assert ev.main(["--run", run, "--out", out, "--empty-slices", "include", "--no-flops",
                    "--label", "FCN"]) == 0
    with open(out) as f:
        result = json.load(f)
    assert result["empty_slices"] == "include" and result["split"] == "val"
    assert result["n_slices"] == 3 and result["dsc"]["n"] == 3  # every slice of fold 0 counts
    assert "flops" not in result["complexity"]
    with open(str(tmp_path / "out" / "fcn.md")) as f:
        assert "| FCN | " in f.read()


def test_run_folder_errors(tmp_path, dataset_dir, capsys):
    with pytest.raises(EvaluationError, match="no config.yaml"):
        load_run(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    tiny_cfg(dataset_dir).save(str(run / "config.yaml"))
    with pytest.raises(EvaluationError, match="no checkpoint found"):
        load_run(str(run))
    assert ev.main(["--run", str(run), "--out", str(tmp_path / "x.json")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
    with pytest.raises(EvaluationError, match="empty_slices must be one of"):
        evaluate_run(str(run), empty_slices="all")


def test_predict_rows_traces_once_for_a_smaller_last_batch(dataset_dir):
    """5 slices in batches of 2: the last batch (1 slice) runs the graph traced for the first,
    and the rows are those of the model called eagerly on each batch."""
    from lsnet_tf.models.build import build_model

    cfg = tiny_cfg(dataset_dir)
    model = build_model(cfg)
    batches = pipeline.eval_dataset(cfg.data, dataset_dir, [0, 1])
    assert [int(b["image"].shape[0]) for b in batches] == [2, 2, 1]
    eager = []
    for b in batches:
        pred = model.predict_masks(b["image"])
        eager += mev.slice_rows(b["patient_id"].numpy(), b["slice_index"].numpy(),
                                b["mask"].numpy()[..., 0], pred["mask"].numpy()[..., 0],
                                b["boxes"].numpy(), b["num_boxes"].numpy(),
                                pred["boxes"].numpy(), pred["valid"].numpy())
    traces = []
    original = model.predict_masks

    def counted(image):
        traces.append(tuple(image.shape))  # Python runs only while tracing
        return original(image)

    model.predict_masks = counted
    rows = mev.predict_rows(model, batches)
    assert traces == [(None, 32, 32, 1)]
    assert [(r["patient_id"], r["slice_index"]) for r in rows] == \
        [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert sum(r["n_pred"] for r in eager) > 0  # the untrained model marks pixels to compare
    for got, want in zip(rows, eager):
        assert {k: got[k] for k in ("tp", "n_true", "n_pred", "pixels")} == \
            {k: want[k] for k in ("tp", "n_true", "n_pred", "pixels")}
        np.testing.assert_allclose(got["box_ious"], want["box_ious"], atol=1e-5)
