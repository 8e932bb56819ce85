"""python -m lsnet_tf.experiments: the tables' rows and configs, budgets, the written table,
resumability, and one tiny table end to end."""
import json
import os

import numpy as np
import pytest

from lsnet_tf import experiments as ex
from lsnet_tf.config import load_config

CONFIGS = ex.default_configs_dir()
ONE_STAGE = {"unet", "attention_unet", "fcn"}


def cfg_of(dataset, row):
    return load_config(os.path.join(CONFIGS, dataset, row + ".yaml"))


def all_rows():
    return sorted({r.config for t in ex.TABLES.values() for r in t.rows})


@pytest.mark.parametrize("row", all_rows())
def test_every_row_has_a_pancreas_and_a_synthetic_config_with_the_same_diff(row):
    pan, syn = cfg_of("pancreas", row), cfg_of("synthetic", row)
    # The paper's settings (Sec. 3.1) on Pancreas-CT.
    assert (pan.train.epochs, pan.train.lr_decay_epochs, pan.train.lr_decay_factor) == (60, 25, 0.1)
    assert (pan.model.lnet_depth, pan.model.snet_depth, pan.model.width, pan.model.margin) == (18, 34, 64, 15.0)
    assert pan.model.lnet_preset == "resnet_18_imagenet"
    assert pan.model.snet_preset == "resnet_vd_34_imagenet"
    assert pan.data.dataset == "data/pancreas-ct" and pan.train.output_dir == f"runs/pancreas/{row}"
    # The synthetic row: same model, loss and gamma; CPU sizing, the embedded dataset.
    for section, keys in (("model", ("architecture", "family", "train_crop", "crop_mode",
                                     "lnet_depth", "snet_depth", "margin")),
                          ("loss", ("kind", "dice_weight", "focal_alpha", "focal_gamma")),
                          ("train", ("gamma", "top_k"))):
        for key in keys:
            assert getattr(getattr(syn, section), key) == getattr(getattr(pan, section), key), key
    assert syn.data.dataset == "" and syn.model.width < 64 and syn.model.snet_preset == ""
    assert syn.train.output_dir == f"runs/synthetic/{row}"
    # Rows other than L-SNet do not log L-SNet's heatmap/RoI images.
    assert (pan.train.image_log_epochs == 0) == (pan.model.architecture != "lsnet")


def test_rows_say_what_their_tables_say():
    arch = {r: (cfg_of("pancreas", r).model.architecture, cfg_of("pancreas", r).model.family)
            for r in all_rows()}
    assert arch["unet"] == ("unet", "unet") and arch["fcn"] == ("fcn", "fcn")
    assert arch["attention_unet"] == ("attention_unet", "attention_unet")
    assert arch["c2f_unet"] == ("coarse_to_fine", "unet") and arch["c2f_fcn"] == ("coarse_to_fine", "fcn")
    assert arch["lsnet_unet"] == ("lsnet", "unet") and arch["lsnet_fcn"] == ("lsnet", "fcn")
    assert arch["lnet_crop"] == ("lnet_crop", "unet")
    assert cfg_of("pancreas", "c2f_unet").model.train_crop == "truth"
    assert cfg_of("pancreas", "lnet_crop").model.train_crop == "predicted"
    table2 = [cfg_of("pancreas", r.config) for r in ex.TABLES["table2"].rows]
    assert [c.loss.kind for c in table2] == ["bce", "focal_dice", "focal_dice", "focal_dice"]
    assert [c.model.architecture for c in table2] == ["unet", "unet", "lnet_crop", "lsnet"]
    for r in ex.TABLES["table4"].rows:
        assert cfg_of("pancreas", r.config).train.gamma == float(r.label)
        assert cfg_of("pancreas", r.config).model.architecture == "lsnet"
    assert ex.TABLES["table4"].splits == ("val", "train") and ex.TABLES["table1"].splits == ("val",)
    assert ex.TABLES["table1"].rows[3].paper == {"dsc": 88.20, "precision": 92.50, "recall": 90.45}


def test_budget_scales_the_schedule_and_the_run_folder_is_set(tmp_path):
    path = os.path.join(CONFIGS, "pancreas", "unet.yaml")
    cfg = ex.row_config(path, str(tmp_path / "unet"), budget_epochs=12)
    assert (cfg.train.epochs, cfg.train.lr_decay_epochs) == (12, 5)  # 12 * 25 / 60
    assert cfg.train.output_dir == str(tmp_path / "unet") and cfg.export.dir == ""
    cfg = ex.row_config(path, "r", ["train.epochs=100"], budget_epochs=1)  # round(0.25) -> 1
    assert (cfg.train.epochs, cfg.train.lr_decay_epochs) == (1, 1)
    assert ex.row_config(path, "r").train.epochs == 60
    with pytest.raises(ex.ExperimentError, match="--budget-epochs must be >= 1, received 0"):
        ex.row_config(path, "r", budget_epochs=0)


def test_a_run_trained_with_another_config_is_refused(tmp_path):
    path = os.path.join(CONFIGS, "synthetic", "unet.yaml")
    run = str(tmp_path / "unet")
    cfg = ex.row_config(path, run, budget_epochs=2)
    os.makedirs(run)
    cfg.save(os.path.join(run, "config.yaml"))
    ex._check_same_config(run, cfg)  # same config: fine
    ex._check_same_config(run, ex.row_config(path, run, ["train.verbose=0", "export.name=x"],
                                             budget_epochs=2))  # logging and export: fine
    with pytest.raises(ex.ExperimentError, match=r"differs in train\.epochs, train\.lr_decay_epochs\)"):
        ex._check_same_config(run, ex.row_config(path, run, budget_epochs=10))
    with pytest.raises(ex.ExperimentError, match=r"differs in model\.architecture, model\.family\)"):
        ex._check_same_config(run, ex.row_config(os.path.join(CONFIGS, "synthetic", "fcn.yaml"),
                                                 run, budget_epochs=2))


def test_table_markdown_puts_ours_beside_the_paper():
    table = ex.TABLES["table2"]
    results = {r.config: {"dsc": 80.0 + i, "case_dsc": None} for i, r in enumerate(table.rows)}
    text = ex.table_markdown(table, "synthetic", table.rows, results, "include", "A note.")
    lines = text.splitlines()
    assert lines[0] == "### Table 2: ablation (U-Net family) — synthetic"
    assert "| S-Net | Loss | L-Net | RR | DSC(%) | DSC per case(%) |" in lines
    assert "| ✓ |  |  |  | 80.00 / 84.69 | – |" in lines
    assert "| ✓ | ✓ | ✓ | ✓ | 83.00 / 88.20 | – |" in lines
    assert "A note." in lines and "averaged over all slices" in text


def test_size_curve_bins_per_slice_dsc():
    # 100-pixel slices; shares 2 %, 3 %, 30 %; one empty slice (ignored) and one outside the edges.
    slices = [dict(tp=2, n_true=2, n_pred=2, pixels=100),     # 2 %, DSC 1
              dict(tp=0, n_true=3, n_pred=0, pixels=100),     # 3 %, DSC 0
              dict(tp=10, n_true=30, n_pred=10, pixels=100),  # 30 %, DSC 20 / 40 = 0.5
              dict(tp=0, n_true=0, n_pred=5, pixels=100),     # no target
              dict(tp=1, n_true=90, n_pred=1, pixels=100)]    # 90 %, beyond the last edge
    c = ex.size_curve(slices, [1.0, 10.0, 50.0, 60.0])
    assert c["n"].tolist() == [2, 1, 0]
    np.testing.assert_allclose(c["mean"][:2], [0.5, 0.5])
    np.testing.assert_allclose(c["sem"][:2], [np.std([1.0, 0.0], ddof=1) / np.sqrt(2), 0.0])
    assert np.isnan(c["mean"][2]) and np.isnan(c["sem"][2])
    # The last bin includes its top edge.
    assert ex.size_curve(slices[2:3], [1.0, 30.0])["n"].tolist() == [1]
    with pytest.raises(ex.ExperimentError, match="no slice with a target"):
        ex.size_plot("/nonexistent/x.png", {"A": slices[3:4]}, "t")


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ex.ExperimentError, match="unknown table 'table9'"):
        ex.run_table("table9", "synthetic")
    with pytest.raises(ex.ExperimentError, match="dataset must be one of synthetic, pancreas"):
        ex.run_table("table1", "msd")
    with pytest.raises(ex.ExperimentError, match=r"table3 has no rows \['unet'\]"):
        ex.run_table("table3", "synthetic", rows=["unet"])
    with pytest.raises(ex.ExperimentError, match="no config for row 'nope'"):
        ex.run_row(ex.Row("nope", "Nope", {}), "synthetic", runs_dir=str(tmp_path))
    assert ex.main(["run", "table1", "--dataset", "synthetic", "--rows", "x",
                    "--runs-dir", str(tmp_path)]) == 2


def test_list_prints_every_table(capsys):
    assert ex.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ex.TABLES:
        assert out.count(f"{name}: ") == 1
    assert "configs/synthetic/lnet_crop.yaml" in out


TINY = ["data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64",
        "data.synthetic.max_target_size=24", "data.image_size=64", "model.width=4",
        "data.batch_size=2", "data.max_boxes=2", "train.steps_per_epoch=1",
        "train.image_log_epochs=0", "train.verbose=0",
        # One replica: the experiment runner is under test, not tf.distribute (the test
        # session has two logical CPU devices, see conftest.py).
        "train.strategy=default"]


@pytest.mark.slow
def test_tiny_table_end_to_end_and_resumable(tmp_path, monkeypatch):
    from lsnet_tf import evaluate, train

    table = ex.Table("tiny", "A tiny table", ("Model",), ("dsc", "miou", "case_dsc"), (
        ex.Row("lsnet_unet", "L-SNet", {"dsc": 88.20}),
        ex.Row("lnet_crop", "L-Net + crop", {"dsc": 87.86, "miou": 86.58}),
    ))
    kwargs = dict(budget_epochs=1, runs_dir=str(tmp_path / "runs"), out_dir=str(tmp_path / "docs"),
                  overrides=TINY + [f"data.cache_dir={tmp_path / 'cache'}"], flops=False,
                  log=lambda *a: None)
    doc = ex.run_table(table, "synthetic", **kwargs)
    runs = tmp_path / "runs" / "synthetic-e1"
    for row in ("lsnet_unet", "lnet_crop"):
        assert (runs / row / "eval.json").is_file()
        assert (runs / row / "evaluation-val-exclude.json").is_file()
        assert load_config(str(runs / row / "config.yaml")).train.epochs == 1
    assert [r["config"] for r in doc["rows"]] == ["lsnet_unet", "lnet_crop"]
    assert all(set(r["ours"]) == {"dsc", "miou", "case_dsc"} for r in doc["rows"])
    md = (tmp_path / "docs" / "tiny-synthetic-e1.md").read_text()
    assert "| L-SNet | " in md and " / 88.20 |" in md and " / 86.58 |" in md
    with open(tmp_path / "docs" / "tiny-synthetic-e1.json") as f:
        assert json.load(f)["rows"] == doc["rows"]
    # Size breakdown: each row's buckets, as in its evaluation file.
    with open(runs / "lsnet_unet" / "evaluation-val-exclude.json") as f:
        by_size = json.load(f)["dsc_by_size"]
    assert doc["rows"][0]["dsc_by_size"] == by_size
    assert "| Method | small DSC(%) (slices) | medium DSC(%) (slices) | large DSC(%) (slices) |" in md
    cells = [("–" if v["dsc"] is None else f"{100 * v['dsc']:.2f} ({v['n']})")
             for v in by_size.values()]
    assert "| L-SNet | " + " | ".join(cells) + " |" in md
    # Provenance and the plot of both rows (both are in SIZE_PLOT_ROWS).
    assert doc["provenance"]["seeds"] == {"lsnet_unet": 0, "lnet_crop": 0}
    assert "seed 0 for every row" in md and "CPU cores" in md
    plot = tmp_path / "docs" / "tiny-synthetic-e1-dsc-vs-size.png"
    assert doc["plot"] == plot.name and f"]({plot.name})" in md
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Second call: nothing is trained or evaluated again, the same table is written.
    def fail(*args, **kw):
        raise AssertionError("a finished row was run again")

    monkeypatch.setattr(train, "run", fail)
    monkeypatch.setattr(evaluate, "evaluate_run", fail)
    stamp = os.path.getmtime(runs / "lnet_crop" / "checkpoints" / "checkpoint")
    again = ex.run_table(table, "synthetic", **kwargs)
    assert again["rows"] == doc["rows"]
    assert os.path.getmtime(runs / "lnet_crop" / "checkpoints" / "checkpoint") == stamp

    # An evaluation file without per-slice counts (written by an older version) is redone.
    path = runs / "lnet_crop" / "evaluation-val-exclude.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in old.items() if k != "slices"}))
    redone = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda run, **kw: redone.append(run) or old)
    ex.run_table(table, "synthetic", **kwargs)
    assert redone == [str(runs / "lnet_crop")]
    assert json.loads(path.read_text())["slices"] == old["slices"]
