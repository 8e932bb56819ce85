"""python -m lsnet_tf.experiments: the tables' rows and configs, budgets, the written table,
resumability, and one tiny table end to end."""
import json
import os

import numpy as np
import pytest

from lsnet_tf.config import load_config
from lsnet_tf.experiments.catalogue import (CLAIM_METRICS, Claim, DATASET_CONFIGS, DATASET_INFO,
                                            ExperimentError, Row, TABLES, Table, _claims)
from lsnet_tf.experiments.claims import claims_markdown, claims_ratio, evaluate_claims, _row_name
from lsnet_tf.experiments.cli import main, stop_on_sigterm
from lsnet_tf.experiments.plots import seed_curve, size_curve, size_plot
from lsnet_tf.experiments.provenance import CPU_FILE, _commit_label, _git_commit, _trained_at_note
from lsnet_tf.experiments.runs import RECORDS_MARKER, run_row, run_table
from lsnet_tf.experiments.tables import (FINDING, STALL_RATIO, finding, finding_markdown,
                                         stall_markdown, stalls, summarize_row, table_markdown)
from lsnet_tf.experiments.units import (RunLock, Unit, default_configs_dir, parse_folds,
                                        parse_seeds, parse_seeds_for, row_config, run_folder,
                                        unit_name, unit_overrides, units_text, _check_same_config,
                                        _row_config_path, _seeds_of_rows)

CONFIGS = default_configs_dir()
ONE_STAGE = {"unet", "attention_unet", "fcn"}


def cfg_of(dataset, row):
    return load_config(os.path.join(CONFIGS, dataset, row + ".yaml"))


def all_rows():
    return sorted({r.config for t in TABLES.values() for r in t.rows})


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
    table2 = [cfg_of("pancreas", r.config) for r in TABLES["table2"].rows]
    assert [c.loss.kind for c in table2] == ["bce", "focal_dice", "focal_dice", "focal_dice"]
    assert [c.model.architecture for c in table2] == ["unet", "unet", "lnet_crop", "lsnet"]
    for r in TABLES["table4"].rows:
        assert cfg_of("pancreas", r.config).train.gamma == float(r.label)
        assert cfg_of("pancreas", r.config).model.architecture == "lsnet"
    assert TABLES["table4"].splits == ("val", "train") and TABLES["table1"].splits == ("val",)
    assert TABLES["table1"].rows[3].paper == {"dsc": 88.20, "precision": 92.50, "recall": 90.45}


def test_budget_scales_the_schedule_and_the_run_folder_is_set(tmp_path):
    path = os.path.join(CONFIGS, "pancreas", "unet.yaml")
    cfg = row_config(path, str(tmp_path / "unet"), budget_epochs=12)
    assert (cfg.train.epochs, cfg.train.lr_decay_epochs) == (12, 5)  # 12 * 25 / 60
    assert cfg.train.output_dir == str(tmp_path / "unet") and cfg.export.dir == ""
    cfg = row_config(path, "r", ["train.epochs=100"], budget_epochs=1)  # round(0.25) -> 1
    assert (cfg.train.epochs, cfg.train.lr_decay_epochs) == (1, 1)
    assert row_config(path, "r").train.epochs == 60
    with pytest.raises(ExperimentError, match="--budget-epochs must be >= 1, received 0"):
        row_config(path, "r", budget_epochs=0)


def test_a_run_trained_with_another_config_is_refused(tmp_path):
    path = os.path.join(CONFIGS, "synthetic", "unet.yaml")
    run = str(tmp_path / "unet")
    cfg = row_config(path, run, budget_epochs=2)
    os.makedirs(run)
    cfg.save(os.path.join(run, "config.yaml"))
    _check_same_config(run, cfg)  # same config: fine
    _check_same_config(run, row_config(path, run, ["train.verbose=0", "export.name=x"],
                                       budget_epochs=2))  # logging and export: fine
    with pytest.raises(ExperimentError, match=r"differs in train\.epochs, train\.lr_decay_epochs\)"):
        _check_same_config(run, row_config(path, run, budget_epochs=10))
    with pytest.raises(ExperimentError, match=r"differs in model\.architecture, model\.family\)"):
        _check_same_config(run, row_config(os.path.join(CONFIGS, "synthetic", "fcn.yaml"),
                                           run, budget_epochs=2))


def test_table_markdown_puts_ours_beside_the_paper():
    table = TABLES["table2"]
    summary = {r.config: {"seeds": [0, 1, 2], "ours": {
        "dsc": {"mean": 80.0 + i, "sd": 1.5, "n": 3},
        "case_dsc": {"mean": None, "sd": None, "n": 0}}} for i, r in enumerate(table.rows)}
    summary["snet_bce"]["seeds"] = [0]
    summary["snet_bce"]["ours"]["dsc"] = {"mean": 80.0, "sd": None, "n": 1}
    summary["lsnet_unet"]["ours"]["case_dsc"] = {"mean": 70.25, "sd": 0.5, "n": 2}
    text = table_markdown(table, "synthetic", table.rows, summary, "include", "A note.")
    lines = text.splitlines()
    assert lines[0] == "### Table 2: ablation (U-Net family) — synthetic"
    assert "| S-Net | Loss | L-Net | RR | n | DSC(%) | DSC per case(%) |" in lines
    assert "| ✓ |  |  |  | 1 | 80.00 / 84.69 | – |" in lines  # one seed: the value alone
    assert "| ✓ | ✓ |  |  | 3 | 81.00 ± 1.50 / 86.51 | – |" in lines
    # A cell with fewer values than the row has seeds says its n.
    assert "| ✓ | ✓ | ✓ | ✓ | 3 | 83.00 ± 1.50 / 88.20 | 70.25 ± 0.50 (n=2) |" in lines
    assert "A note." in lines and "averaged over all slices" in text
    assert "mean ± sample standard deviation over the row's n seeds" in text


def test_size_curve_bins_per_slice_dsc():
    # 100-pixel slices; shares 2 %, 3 %, 30 %; one empty slice (ignored) and one outside the edges.
    slices = [dict(tp=2, n_true=2, n_pred=2, pixels=100),     # 2 %, DSC 1
              dict(tp=0, n_true=3, n_pred=0, pixels=100),     # 3 %, DSC 0
              dict(tp=10, n_true=30, n_pred=10, pixels=100),  # 30 %, DSC 20 / 40 = 0.5
              dict(tp=0, n_true=0, n_pred=5, pixels=100),     # no target
              dict(tp=1, n_true=90, n_pred=1, pixels=100)]    # 90 %, beyond the last edge
    c = size_curve(slices, [1.0, 10.0, 50.0, 60.0])
    assert c["n"].tolist() == [2, 1, 0]
    np.testing.assert_allclose(c["mean"][:2], [0.5, 0.5])
    np.testing.assert_allclose(c["sem"][:2], [np.std([1.0, 0.0], ddof=1) / np.sqrt(2), 0.0])
    assert np.isnan(c["mean"][2]) and np.isnan(c["sem"][2])
    # The last bin includes its top edge.
    assert size_curve(slices[2:3], [1.0, 30.0])["n"].tolist() == [1]
    with pytest.raises(ExperimentError, match="no slice with a target"):
        size_plot("/nonexistent/x.png", {"A": [slices[3:4]]}, "t")


def test_seed_curve_averages_the_seeds_bin_means():
    edges = [1.0, 10.0, 50.0, 60.0]
    seed0 = [dict(tp=2, n_true=2, n_pred=2, pixels=100),      # 2 %: DSC 1
             dict(tp=0, n_true=3, n_pred=0, pixels=100),      # 3 %: DSC 0  -> bin 0 mean 0.5
             dict(tp=10, n_true=30, n_pred=10, pixels=100)]   # 30 %: DSC 0.5
    seed1 = [dict(tp=2, n_true=2, n_pred=2, pixels=100),      # bin 0: 1 and 1 -> 1.0
             dict(tp=3, n_true=3, n_pred=3, pixels=100),
             dict(tp=0, n_true=30, n_pred=0, pixels=100)]     # 30 %: DSC 0
    c = seed_curve([seed0, seed1], edges)
    assert c["n"].tolist() == [2, 1, 0] and c["seeds"].tolist() == [2, 2, 0]
    np.testing.assert_allclose(c["mean"][:2], [0.75, 0.25])
    np.testing.assert_allclose(c["sd"][:2], [np.std([0.5, 1.0], ddof=1),
                                             np.std([0.5, 0.0], ddof=1)])
    assert np.isnan(c["mean"][2]) and np.isnan(c["sd"][2])
    one = seed_curve([seed0], edges)  # one seed: its means, no spread
    np.testing.assert_allclose(one["mean"][:2], [0.5, 0.5])
    assert np.isnan(one["sd"]).all() and one["seeds"].tolist() == [1, 1, 0]


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ExperimentError, match="unknown table 'table9'"):
        run_table("table9", "synthetic")
    with pytest.raises(ExperimentError,
                       match="dataset must be one of synthetic, synthetic-hard, synthetic-evidence, "
                       "synthetic-hard-evidence, pancreas"):
        run_table("table1", "msd")
    with pytest.raises(ExperimentError, match=r"table3 has no rows \['unet'\]"):
        run_table("table3", "synthetic", rows=["unet"])
    with pytest.raises(ExperimentError, match="no config for row 'nope'"):
        run_row(Row("nope", "Nope", {}), "synthetic", runs_dir=str(tmp_path))
    assert main(["run", "table1", "--dataset", "synthetic", "--rows", "x",
                 "--runs-dir", str(tmp_path)]) == 2


def test_sigterm_ends_a_training_session_through_its_finally(tmp_path, monkeypatch):
    """Under ``stop_on_sigterm`` (as ``python -m lsnet_tf.experiments`` runs), SIGTERM during a
    row's training session ends the command with SystemExit(143), and the session's CPU time is
    still added to the run's train-cpu.json (without it the process ended at once and the
    session went unrecorded)."""
    import signal
    import time

    from lsnet_tf.training import session

    def killed(cfg, log=print):
        os.makedirs(cfg.train.output_dir, exist_ok=True)  # as a session does first
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises here
        raise AssertionError("SIGTERM did not stop the session")

    monkeypatch.setattr(session, "run", killed)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(SystemExit) as stopped:
            run_row(Row("unet", "U-Net", {}), "synthetic", runs_dir=str(tmp_path), log=lambda m: None,
                    seed=0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143
    cpu = json.loads((tmp_path / "unet" / "seed0" / CPU_FILE).read_text())
    assert cpu["sessions"] == 1 and cpu["cpu_seconds"] >= 0


def test_margin_rows_differ_only_in_the_margin_scaled_to_the_slice():
    for dataset, size, scaled in (("synthetic", 128, 3.75), ("synthetic-hard", 128, 3.75),
                                  ("pancreas", 512, 15.0)):
        folder = DATASET_CONFIGS[dataset]
        plain, wide = (load_config(os.path.join(CONFIGS, folder, r + ".yaml"))
                       for r in ("lsnet_unet", "lsnet_unet_scaled"))
        assert plain.data.image_size == wide.data.image_size == size
        assert plain.model.input_margin(size) == 15.0
        assert wide.model.input_margin(size) == pytest.approx(scaled)
        a, b = plain.to_dict(), wide.to_dict()
        for cfg in (a, b):
            del cfg["model"]["margin_reference"], cfg["train"]["output_dir"], cfg["export"]["name"]
        assert a == b, dataset


def test_synthetic_hard_rows_come_from_configs_synthetic_hard(tmp_path):
    rows = ("unet", "attention_unet", "c2f_unet", "lsnet_unet", "lsnet_unet_scaled")
    for name in rows:
        row = Row(name, name, {})
        path = _row_config_path(row, "synthetic-hard", None)
        assert path == os.path.join(CONFIGS, "synthetic", "hard", name + ".yaml")
        assert load_config(path).data.synthetic.preset == "hard"
        assert load_config(_row_config_path(row, "synthetic", None)).data.synthetic.preset == \
            "standard"
    # Table 1's fcn rows have no hard config: the U-Net family is asked for with --rows.
    with pytest.raises(ExperimentError, match=r"no config for row 'fcn': .*synthetic/hard/fcn"):
        run_table("table1", "synthetic-hard", runs_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_list_prints_every_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in TABLES:
        assert out.count(f"{name}: ") == 1
    assert "configs/synthetic/lnet_crop.yaml" in out



def test_seeds_flags_parse():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("4") == (4,)
    assert parse_seeds_for(["lsnet_unet,unet,c2f_unet=0,1,2,3,4", "fcn=7"]) == {
        "lsnet_unet": (0, 1, 2, 3, 4), "unet": (0, 1, 2, 3, 4), "c2f_unet": (0, 1, 2, 3, 4),
        "fcn": (7,)}
    for bad in ("", "0,", "a", "-1", "1.5", "0;1"):
        with pytest.raises(ExperimentError, match="--seeds takes comma-separated non-negative "
                                                     "integers such as 0,1,2, received "):
            parse_seeds(bad)
    with pytest.raises(ExperimentError, match="--seeds names a seed twice: '1,2,1'"):
        parse_seeds("1,2,1")
    with pytest.raises(ExperimentError, match="--seeds-for takes ROWS=SEEDS"):
        parse_seeds_for(["unet"])
    with pytest.raises(ExperimentError, match=r"--seeds-for names rows that no table has: "
                                                 r"\['unte'\]"):
        parse_seeds_for(["unte,unet=0,1"])
    with pytest.raises(ExperimentError, match=r"--seeds-for unet= takes comma-separated"):
        parse_seeds_for(["unet=0,x"])
    # Which seeds each row gets: --seeds-for, else --seeds, else the config's train.seed.
    rows = TABLES["table3"].rows
    assert _seeds_of_rows(rows, "synthetic", None, [], (0, 1, 2), {"c2f_unet": (3, 4)}) == {
        "c2f_unet": (3, 4), "lnet_crop": (0, 1, 2)}
    assert _seeds_of_rows(rows, "synthetic", None, ["train.seed=5"], None, {}) == {
        "c2f_unet": (5,), "lnet_crop": (5,)}


def test_a_malformed_seeds_value_is_a_usage_error(tmp_path, capsys, monkeypatch):
    from lsnet_tf.training import session

    monkeypatch.setattr(session, "run", lambda *a, **k: pytest.fail("nothing may train"))
    common = ["run", "table3", "--dataset", "synthetic", "--runs-dir", str(tmp_path)]
    assert main(common + ["--seeds", "0,one"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --seeds takes comma-separated non-negative integers such as 0,1,2, "
        "received '0,one'")
    assert main(common + ["--seeds-for", "lnet_crop:0,1"]) == 2
    assert "error: --seeds-for takes ROWS=SEEDS" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_claims_are_the_papers():
    def rows(table):
        return {r.config for r in TABLES[table].rows}

    claims = {name: [(c.better, c.than, c.metric) for c in t.claims]
              for name, t in TABLES.items()}
    assert claims["table1"] == [
        ("lsnet_unet", "unet", "dsc"), ("lsnet_unet", "unet", "small"),
        ("lsnet_unet", "attention_unet", "dsc"), ("lsnet_unet", "attention_unet", "small"),
        ("lsnet_unet", "c2f_unet", "dsc"), ("lsnet_unet", "c2f_unet", "small"),
        ("lsnet_fcn", "fcn", "dsc"), ("lsnet_fcn", "fcn", "small"),
        ("lsnet_fcn", "c2f_fcn", "dsc"), ("lsnet_fcn", "c2f_fcn", "small")]
    assert claims["table2"] == [("unet", "snet_bce", "dsc"), ("lnet_crop", "unet", "dsc"),
                                ("lsnet_unet", "lnet_crop", "dsc")]
    assert claims["table3"] == [("lnet_crop", "c2f_unet", "miou"), ("lnet_crop", "c2f_unet", "dsc")]
    assert claims["table4"] == [("lsnet_unet", "lsnet_unet_gamma0", "dsc"),
                                ("lsnet_unet", "lsnet_unet_gamma0p01", "dsc"),
                                ("lsnet_unet", "lsnet_unet_gamma1", "dsc")]
    # Not the paper's: the scaled margin above 15 input pixels (its rows have no paper numbers).
    assert claims["margin"] == [("lsnet_unet_scaled", "lsnet_unet", "dsc"),
                                ("lsnet_unet_scaled", "lsnet_unet", "small"),
                                ("lsnet_unet_scaled", "lsnet_unet", "miou")]
    assert all(r.paper == {} for r in TABLES["margin"].rows)
    for name, table in TABLES.items():  # every claim is between rows of its table
        assert all({c.better, c.than} <= rows(name) and c.metric in CLAIM_METRICS
                   for c in table.claims)
    # In a claim, Table 4's rows are values of γ.
    t4 = TABLES["table4"]
    assert [_row_name(t4, r) for r in t4.rows] == ["γ = 0", "γ = 0.01", "γ = 0.1", "γ = 1"]


def _evaluation(dsc, small, miou=None):
    """The parts of an evaluation result that a table reads (fractions)."""
    by_size = {"small": {"n": 4, "dsc": small}, "medium": {"n": 3, "dsc": dsc},
               "large": {"n": 2, "dsc": None}}
    return {"val": {"dsc": {"mean": dsc}, "box_miou": miou, "per_case": {"mean": dsc},
                    "dsc_by_size": by_size, "slices": []}}


def test_finding_sorts_the_target_slices_into_found_missed_and_elsewhere():
    """Hand-made slices: 4 with a target found (one small: 4 of 1,000 pixels), 1 missed, 1
    predicted only elsewhere, 2 empty (not counted); 100 pixels unless said."""
    def s(tp, n_true, n_pred, pixels=100):
        return {"tp": tp, "n_true": n_true, "n_pred": n_pred, "pixels": pixels}

    slices = [s(10, 10, 10), s(5, 10, 10), s(2, 20, 2), s(1, 4, 1, pixels=1000),  # found
              s(0, 30, 0), s(0, 0, 7), s(0, 8, 9)]  # missed, empty, only elsewhere
    slices.append(s(0, 0, 0))
    got = finding(slices)
    dsc_found = np.mean([1.0, 2 * 5 / 20, 2 * 2 / 22, 2 * 1 / 5])
    assert got == {"found": 66.67, "missed": 16.67, "elsewhere": 16.67,
                   "dsc_found": round(100 * dsc_found, 2), "small_found": 100.0}
    assert finding([s(0, 0, 3)]) == dict.fromkeys(FINDING)  # no slice with a target
    assert finding([s(0, 4, 3, pixels=1000)])["small_found"] == 0.0  # small, not found
    table = Table("t", "T", ("Method",), ("dsc",), (Row("unet", "U-Net", {}),))
    row = summarize_row(table, {0: {"val": dict(_evaluation(0.8, 0.5)["val"], slices=slices)},
                                1: {"val": dict(_evaluation(0.8, 0.5)["val"],
                                                   slices=slices[:1])}})
    assert row["finding_per_seed"][0] == got and row["finding"]["found"]["mean"] == pytest.approx(
        (66.67 + 100.0) / 2)
    md = finding_markdown(table.rows, {"unet": row})
    assert "| U-Net | 2 | 83.34 ± 23.57 | 8.34 ± 11.79 |" in md  # (66.67 + 100) / 2, ...


def test_each_rows_lowest_run_against_its_median_names_the_stalls():
    """Hand-made per-run DSC: a row whose lowest run is 0.878 x its median (stalled), one at
    exactly 0.9 x (not stalled: the rule is below 0.9), one run alone (ratio 1), and one whose
    runs are mostly at DSC 0 (its median 0: every run at 0 has stalled, no ratio)."""
    rows = (Row("a", "Model A", {}), Row("b", "Model B", {}), Row("c", "Model C", {}),
            Row("d", "Model D", {}))
    summary = {
        "a": {"values": {Unit(0, 0): {"dsc": 91.17}, Unit(1, 0): {"dsc": 80.20},
                         Unit(2, 0): {"dsc": 91.51}, Unit(3, 0): {"dsc": 93.06}}},
        "b": {"values": {Unit(0, 0): {"dsc": 90.0}, Unit(1, 0): {"dsc": 100.0},
                         Unit(2, 0): {"dsc": 81.0}}},
        "c": {"values": {0: {"dsc": 50.0}}},
        "d": {"values": {Unit(0, 0): {"dsc": 0.0}, Unit(1, 0): {"dsc": 72.19},
                         Unit(2, 0): {"dsc": 0.0}, Unit(3, 0): {"dsc": 0.0}}}}
    got = stalls(rows, summary, unit_name)
    median_a = (91.17 + 91.51) / 2  # the median of an even count: the mean of the middle two
    assert got[0] == {"config": "a", "median": pytest.approx(median_a), "lowest": 80.20,
                      "unit": "fold 1 seed 0", "ratio": pytest.approx(80.20 / median_a),
                      "stalled": True, "stalled_units": [
                          {"unit": "fold 1 seed 0", "dsc": 80.20,
                           "ratio": pytest.approx(80.20 / median_a)}]}
    assert round(got[0]["ratio"], 3) == 0.878
    assert got[1]["ratio"] == pytest.approx(STALL_RATIO) and not got[1]["stalled"]
    assert got[2]["ratio"] == 1.0 and got[2]["unit"] == "seed 0" and not got[2]["stalled"]
    assert got[3]["median"] == 0.0 and got[3]["ratio"] is None and got[3]["stalled"]
    assert [u["unit"] for u in got[3]["stalled_units"]] == [
        "fold 0 seed 0", "fold 2 seed 0", "fold 3 seed 0"]
    md = stall_markdown(rows, got)
    assert "| Model A | 91.34 | fold 1 seed 0: 80.20 | **0.878** (stalled) |" in md
    assert "| Model B | 90.00 | fold 2 seed 0: 81.00 | 0.900 |" in md
    assert "| Model D | 0.00 | fold 0 seed 0: 0.00 | **–** (stalled) |" in md
    assert ("Stalled: Model A fold 1 seed 0 (0.878 ×); Model D fold 0 seed 0 (DSC 0, no target "
            "found), fold 2 seed 0 (DSC 0, no target found), fold 3 seed 0 (DSC 0, no target "
            "found).") in md
    assert "No run has stalled." in stall_markdown(rows, got[1:3])


def test_cells_over_seeds_and_claims_paired_by_seed():
    table = Table("t", "T", ("Method",), ("dsc", "miou"), (
        Row("unet", "U-Net", {"dsc": 86.56}), Row("lsnet_unet", "L-SNet", {"dsc": 88.2}),
        Row("fcn", "FCN", {})),
        (Claim("lsnet_unet", "unet", "dsc"), Claim("lsnet_unet", "unet", "small"),
         Claim("lsnet_unet", "fcn", "dsc"), Claim("unet", "snet_bce", "dsc")))
    unet = {0: _evaluation(0.80, 0.50), 1: _evaluation(0.70, 0.40),
            2: _evaluation(0.90, None), 3: _evaluation(0.60, 0.30)}
    lsnet = {0: _evaluation(0.85, 0.60, 0.7), 1: _evaluation(0.74, 0.45, 0.8),
             2: _evaluation(0.93, 0.70, None)}
    fcn = {5: _evaluation(0.5, 0.5)}
    row = summarize_row(table, lsnet)
    dsc = [85.0, 74.0, 93.0]
    assert row["seeds"] == [0, 1, 2] and row["values"][1] == {"dsc": 74.0, "miou": 80.0}
    assert row["ours"]["dsc"]["n"] == 3
    np.testing.assert_allclose([row["ours"]["dsc"]["mean"], row["ours"]["dsc"]["sd"]],
                               [np.mean(dsc), np.std(dsc, ddof=1)])
    assert row["ours"]["miou"]["n"] == 2  # seed 2 has no box mIoU
    small = row["dsc_by_size"]["small"]
    assert (small["n"], small["slices"]) == (3, 4)
    np.testing.assert_allclose([small["mean"], small["sd"]],
                               [np.mean([60, 45, 70]), np.std([60, 45, 70], ddof=1)])
    assert row["dsc_by_size"]["large"] == {"mean": None, "sd": None, "n": 0, "slices": 2}

    values = {name: {s: {m: get(e) for m, (_, get) in CLAIM_METRICS.items()}
                     for s, e in evs.items()}
              for name, evs in (("unet", unet), ("lsnet_unet", lsnet), ("fcn", fcn))}
    results = evaluate_claims(table.claims, values)
    # Pairs: the seeds both rows have (0, 1, 2; unet's seed 3 has no partner).
    overall, on_small, no_pair = results
    assert overall["units"] == [0, 1, 2] and overall["differences"] == [5.0, 4.0, 3.0]
    assert overall["mean"] == pytest.approx(4.0) and overall["n"] == 3
    # By hand: s = 1, se = 1 / sqrt(3) = 0.57735, t(0.975, 2) = 4.302653: 4 ± 2.484138;
    # t = 6.928203, two-sided p = 0.020204.
    assert [overall["low"], overall["high"]] == pytest.approx([1.515862, 6.484138], abs=1e-5)
    assert overall["p"] == pytest.approx(0.020204, abs=1e-5) and overall["verdict"] == "holds"
    # Two pairs (10, 5): se = 2.5, t(0.975, 1) = 12.706205: 7.5 ± 31.765512, undecided.
    assert on_small["differences"] == [10.0, 5.0, None] and on_small["n"] == 2
    assert on_small["low"] == pytest.approx(7.5 - 31.765512, abs=1e-5)
    assert on_small["verdict"] == "undecided" and on_small["holm"] is None
    assert no_pair["units"] == [] and no_pair["verdict"] == "undecided (n < 2)"
    # Holm over the two p-values (0.0202, 0.2048): 0.0202 <= 0.05 / 2, so "holds" survives.
    assert overall["holm"] is True
    assert len(results) == 3  # snet_bce was not run: its claim is left out
    text = claims_markdown(table, table.rows, results)
    lines = text.splitlines()
    assert lines[0] == ("| Claim | Metric | n pairs | Mean difference (points) | 95 % CI | p | "
                        "90 % CI (equivalence) | Verdict | Holm |")
    assert ("| L-SNet > U-Net | DSC | 3 | +4.00 | [+1.52, +6.48] | 0.020 | [+2.31, +5.69] | "
            "**holds** | survives |") in lines
    assert "| L-SNet > FCN | DSC | 0 | – | – | – | – | **undecided (n < 2)** | – |" in lines
    assert "paired by seed on one split" in text
    assert "Not tested (a row not run): unet > snet_bce (DSC)." in lines
    assert lines[-1] == ("**In plain words.** Of 3 claims tested, 1 holds, 0 do not hold, 0 are "
                         "equivalent (within ±1 point) and 2 are undecided (1 of them with fewer "
                         "than 2 pairs); 1 of the 1 decided verdict survives Holm's correction "
                         "across the 3 claims.")
    # The same numbers give the same intervals.
    assert evaluate_claims(table.claims, values) == results
    # Units of a 4-fold cross-validation: the variance is corrected by 1/n + 1/3,
    # se = sqrt(1/3 + 1/3) = 0.816497: 4 ± 3.513101.
    cv = evaluate_claims(table.claims[:1], values, ratio=claims_ratio("synthetic-evidence"))
    assert [cv[0]["low"], cv[0]["high"]] == pytest.approx([0.486899, 7.513101], abs=1e-5)
    assert "n_test/n_train = 0.333" in claims_markdown(table, table.rows, cv, 1 / 3)


def test_equivalent_and_does_not_hold_verdicts_and_holm_in_a_table():
    table = Table("t", "T", ("Method",), ("dsc",), (
        Row("unet", "U-Net", {}), Row("lsnet_unet", "L-SNet", {}), Row("fcn", "FCN", {})),
        (Claim("lsnet_unet", "unet", "dsc"), Claim("lsnet_unet", "fcn", "dsc")))
    units = [Unit(f, 0) for f in range(4)] + [Unit(f, 1) for f in range(4)]
    # L-SNet - U-Net: +0.1, -0.1 alternating (mean 0, s = 0.106904, se with the 4-fold
    # correction 0.106904 * sqrt(1/8 + 1/3) = 0.072375; 90 % interval 0 ± 1.894579 * 0.072375
    # = ±0.137121, inside ±1: equivalent). L-SNet - FCN: -3 ± 0.5 (clearly below 0).
    lsnet = {u: {"dsc": 80.0} for u in units}
    unet = {u: {"dsc": 80.0 - (0.1 if i % 2 == 0 else -0.1)} for i, u in enumerate(units)}
    fcn = {u: {"dsc": 83.0 + (0.5 if i % 2 == 0 else -0.5)} for i, u in enumerate(units)}
    results = evaluate_claims(table.claims, {"lsnet_unet": lsnet, "unet": unet, "fcn": fcn},
                              ratio=1 / 3)
    same, worse = results
    assert same["verdict"] == "equivalent" and same["n"] == 8
    assert [same["tost_low"], same["tost_high"]] == pytest.approx([-0.137121, 0.137121], abs=1e-5)
    assert same["units"][:2] == [{"fold": 0, "seed": 0}, {"fold": 1, "seed": 0}]
    assert worse["verdict"] == "does not hold" and worse["mean"] == pytest.approx(-3.0)
    assert same["holm"] is True and worse["holm"] is True
    text = claims_markdown(table, table.rows, results, 1 / 3)
    assert "1 is equivalent (within ±1 point)" in text and "2 decided verdicts survive" in text


def test_a_commit_is_dirty_only_for_changed_code(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "t.md").write_text("table\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = _git_commit(str(tmp_path))
    assert len(head["sha"]) == 40 and head["dirty"] is False
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "eval.json").write_text("{}")  # untracked: a run, a cache
    (tmp_path / "docs" / "results" / "t.md").write_text("table written again\n")
    assert _git_commit(str(tmp_path))["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _git_commit(str(tmp_path)) == {"sha": head["sha"], "dirty": True}
    assert _git_commit(str(tmp_path / "runs" / "..")) is not None
    assert _git_commit("/") is None


def test_units_of_a_cross_validated_dataset(tmp_path):
    assert DATASET_INFO["synthetic-evidence"].folds == 4
    assert DATASET_INFO["synthetic"].folds is None
    u = Unit(2, 1)
    assert (u.fold, u.seed, str(u)) == (2, 1, "fold 2 seed 1")
    assert sorted([Unit(1, 1), Unit(3, 0), Unit(0, 1)]) == [
        Unit(3, 0), Unit(0, 1), Unit(1, 1)]  # seed by seed, then fold
    assert run_folder("r", "unet", u) == os.path.join("r", "unet", "fold2", "seed1")
    assert run_folder("r", "unet", 3) == os.path.join("r", "unet", "seed3")
    over = unit_overrides("synthetic-evidence", u, ["train.epochs=2"])
    assert over == ["data.synthetic.seed=83267049", "data.synthetic.folds=4", "train.epochs=2",
                    "train.seed=1", "data.val_fold=2"]
    assert unit_overrides("synthetic", 3) == ["train.seed=3"]
    rows = [r for r in TABLES["table1"].rows if r.config in ("unet", "lsnet_unet")]
    units = _seeds_of_rows(rows, "synthetic-evidence", None, (), (0,), {"unet": (0, 1)},
                           folds=(1, 3))
    assert units == {"unet": (Unit(1, 0), Unit(3, 0), Unit(1, 1), Unit(3, 1)),
                     "lsnet_unet": (Unit(1, 0), Unit(3, 0))}
    every = _seeds_of_rows(rows[:1], "synthetic-evidence", None, (), (0,), None)
    assert every["unet"] == tuple(Unit(f, 0) for f in range(4))
    assert units_text(every["unet"]) == "folds 0-3 × seed 0"
    assert units_text([0, 1]) == "seeds 0, 1"
    assert parse_folds("0,3", "synthetic-evidence") == (0, 3)
    with pytest.raises(ExperimentError, match=r"folds 0-3, received \[4\]"):
        parse_folds("4", "synthetic-evidence")
    with pytest.raises(ExperimentError, match="synthetic is not cross-validated"):
        parse_folds("0", "synthetic")
    cfg = row_config(_row_config_path(rows[0], "synthetic-evidence", None),
                     str(tmp_path / "run"), over)
    assert (cfg.data.synthetic.seed, cfg.data.synthetic.folds, cfg.data.val_fold) == (
        83267049, 4, 2)
    assert claims_ratio("synthetic-evidence") == pytest.approx(1 / 3)
    assert claims_ratio("synthetic") == 0.0


TINY = ["data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64",
        "data.synthetic.max_target_size=24", "data.image_size=64", "model.width=4",
        "data.batch_size=2", "data.max_boxes=2", "train.steps_per_epoch=1",
        "train.image_log_epochs=0", "train.verbose=0",
        # ResNet-18 for S-Net too: a third less to trace for every row (the runner is under test).
        "model.snet_depth=18",
        # One replica: the experiment runner is under test, not tf.distribute (the test
        # session has two logical CPU devices, see conftest.py).
        "train.strategy=default"]


@pytest.mark.slow
def test_a_cross_validated_table_runs_each_fold_and_keeps_its_records(tmp_path, monkeypatch):
    """The two-stage rows of the evidence set at held-out fold 1 (1 epoch of 1 step each): each
    run holds out its fold, the table pairs by (fold, seed), ``keep`` copies the fold layout, and
    ``oracle`` feeds each second stage the true and the other's boxes."""
    from lsnet_tf.evaluation import slices as evaluate
    from lsnet_tf.experiments import oracle as oracle_module
    from lsnet_tf.training import session

    table = Table("tinycv", "A cross-validated table", ("Model",), ("dsc",), (
        Row("c2f_unet", "Coarse-to-fine U-Net", {}), Row("lsnet_unet", "L-SNet", {})),
        (Claim("lsnet_unet", "c2f_unet", "dsc"),))
    monkeypatch.setitem(TABLES, "tinycv", table)
    out, runs_dir = tmp_path / "docs", tmp_path / "runs"
    argv = ["run", "tinycv", "--dataset", "synthetic-evidence", "--budget-epochs", "1",
            "--no-flops", "--runs-dir", str(runs_dir), "--out", str(out), "--seeds", "0",
            "--folds", "1"]
    for item in TINY + [f"data.cache_dir={tmp_path / 'cache'}"]:
        argv += ["--set", item]
    assert main(argv) == 0
    runs = runs_dir / "synthetic-evidence-e1" / "lsnet_unet"
    for fold in (1,):
        saved = load_config(str(runs / f"fold{fold}" / "seed0" / "config.yaml"))
        assert saved.data.val_fold == fold and saved.data.synthetic.seed == 83267049
        result = json.loads((runs / f"fold{fold}" / "seed0" / "evaluation-val-exclude.json")
                            .read_text())
        assert result["folds"] == [fold]
    doc = json.loads((out / "tinycv-synthetic-evidence-e1.json").read_text())
    assert doc["role"] == "evidence" and doc["folds"] == 4
    assert doc["rows"][0]["seeds"] == [{"fold": 1, "seed": 0}]
    assert [(p["fold"], p["seed"]) for p in doc["rows"][0]["per_seed"]] == [(1, 0)]
    assert doc["claims"][0]["units"] == doc["rows"][0]["seeds"]
    assert doc["claims_test"]["ratio"] == pytest.approx(1 / 3)
    md = (out / "tinycv-synthetic-evidence-e1.md").read_text()
    assert "fold 1 × seed 0 for every row" in md
    assert "On an evidence set (generator seed 83267049" in md
    # One run a row: it is its row's lowest and median, so nothing has stalled.
    assert [(s["config"], s["unit"]) for s in doc["stalls"]] == [
        ("c2f_unet", "fold 1 seed 0"), ("lsnet_unet", "fold 1 seed 0")]
    assert all(s["lowest"] == s["median"] for s in doc["stalls"])
    # (a 1-step model may find no target: DSC 0 is a stall, and then the only one)
    assert all(s["stalled"] == (s["lowest"] == 0) for s in doc["stalls"])
    assert "#### Each row's lowest run" in md
    # The oracle on the trained units (their checkpoints), not on the records.
    assert main(["oracle", "--dataset", "synthetic-evidence", "--budget-epochs", "1",
                 "--runs-dir", str(runs_dir), "--out", str(out), "--seeds", "0"]) == 0
    oracle = json.loads((out / "oracle-unet-synthetic-evidence-e1.json").read_text())
    assert oracle["units"] == [{"fold": 1, "seed": 0}]
    for name in ("lsnet_unet", "c2f_unet"):
        truth = oracle["summary"][name]["truth"]["all"]["box_miou"]
        assert truth["mean"] == pytest.approx(100.0) and truth["n"] == 1
    assert set(oracle["gaps"]) == {"own", "truth", "swapped"}
    assert "| true boxes |" in (out / "oracle-unet-synthetic-evidence-e1.md").read_text()

    records = tmp_path / "records"
    assert main(["keep", "--runs-dir", str(runs_dir), "--to", str(records)]) == 0
    assert sorted(p.relative_to(records).as_posix() for p in records.glob("**/eval.json")) == [
        f"synthetic-evidence-e1/{row}/fold1/seed0/eval.json" for row in ("c2f_unet", "lsnet_unet")]
    # Each unit's analysis is kept with L-SNet's record, and the oracle is written again from
    # the records alone (no checkpoints there), to the same figures.
    assert [p.relative_to(records).as_posix() for p in records.glob("**/oracle-*.json")] == [
        "synthetic-evidence-e1/lsnet_unet/fold1/seed0/oracle-unet.json"]
    assert not list(records.glob("**/checkpoints"))

    def fail(*args, **kw):
        raise AssertionError("a kept run was run again")

    monkeypatch.setattr(oracle_module, "compare_pair", fail)
    assert main(["oracle", "--dataset", "synthetic-evidence", "--budget-epochs", "1",
                 "--runs-dir", str(records), "--out", str(tmp_path / "again"),
                 "--seeds", "0"]) == 0
    again = json.loads((tmp_path / "again" / "oracle-unet-synthetic-evidence-e1.json").read_text())
    assert again["summary"] == oracle["summary"] and again["gaps"] == oracle["gaps"]
    assert again["per_unit"][0]["runs"]["lsnet_unet"].startswith(str(records))

    monkeypatch.setattr(session, "run", fail)
    monkeypatch.setattr(evaluate, "evaluate_run", fail)
    again = [str(records) if a == str(runs_dir) else str(tmp_path / "again") if a == str(out)
             else a for a in argv]
    assert main(again) == 0
    redone = json.loads((tmp_path / "again" / "tinycv-synthetic-evidence-e1.json").read_text())
    assert redone["rows"][0]["ours"] == doc["rows"][0]["ours"]
    assert redone["claims"] == doc["claims"] and redone["stalls"] == doc["stalls"]


@pytest.mark.slow
def test_tiny_table_over_seeds_end_to_end_and_resumable(tmp_path, monkeypatch, capsys):
    """Two one-stage rows, 1 epoch of 1 step on 64 x 64 slices: U-Net at seeds 0 and 1 and FCN
    at seed 0, then FCN's seed 1 added, then FCN's seed 1 interrupted and resumed, then nothing
    to do. 4 trainings in all."""
    import subprocess

    from lsnet_tf.training import session
    from lsnet_tf.evaluation import slices as evaluate

    table = Table("tiny", "A tiny table", ("Model",), ("dsc", "miou", "case_dsc"), (
        Row("unet", "U-Net", {"dsc": 86.56}), Row("fcn", "FCN", {"dsc": 84.28})),
        _claims("unet", ("fcn",), ("dsc", "small")))
    monkeypatch.setitem(TABLES, "tiny", table)
    out = tmp_path / "docs"
    argv = ["run", "tiny", "--dataset", "synthetic", "--budget-epochs", "1", "--no-flops",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--seeds", "0,1"]
    for item in TINY + [f"data.cache_dir={tmp_path / 'cache'}"]:
        argv += ["--set", item]
    runs = tmp_path / "runs" / "synthetic-e1"

    def table_files():
        with open(out / "tiny-synthetic-e1.json") as f:
            return json.load(f), (out / "tiny-synthetic-e1.md").read_text()

    # 1. FCN at seed 0 only (--seeds-for): three runs, each in its seed folder.
    assert main(argv + ["--seeds-for", "fcn=0"]) == 0
    for row, seed in (("unet", 0), ("unet", 1), ("fcn", 0)):
        run = runs / row / f"seed{seed}"
        for name in ("eval.json", "evaluation-val-exclude.json", "train-cpu.json"):
            assert (run / name).is_file(), run / name
        saved = load_config(str(run / "config.yaml"))
        assert (saved.train.seed, saved.train.epochs) == (seed, 1)
    assert not (runs / "fcn" / "seed1").exists()
    doc, md = table_files()
    assert [r["seeds"] for r in doc["rows"]] == [[0, 1], [0]]
    assert "| FCN | 1 | " in md and "| U-Net > FCN | DSC | 1 | " in md
    assert "| **undecided (n < 2)** |" in md
    stamps = {p: os.path.getmtime(p) for p in runs.glob("*/seed*/eval.json")}
    assert len(stamps) == 3

    # 2. Every row at seeds 0 and 1: only FCN's seed 1 trains.
    trained = []
    real_run = session.run
    monkeypatch.setattr(session, "run", lambda cfg, **kw: trained.append(cfg.train.output_dir)
                        or real_run(cfg, **kw))
    assert main(argv) == 0
    assert trained == [str(runs / "fcn" / "seed1")]
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    doc, md = table_files()
    per_seed = {r["config"]: r["per_seed"] for r in doc["rows"]}
    for row in ("unet", "fcn"):
        assert [p["seed"] for p in per_seed[row]] == [0, 1]
        dsc = []
        for p in per_seed[row]:
            with open(os.path.join(p["run"], "evaluation-val-exclude.json")) as f:
                result = json.load(f)
            assert p["run"] == str(runs / row / f"seed{p['seed']}")
            assert p["ours"]["dsc"] == round(100 * result["dsc"]["mean"], 2)
            assert p["dsc_by_size"] == result["dsc_by_size"]
            assert p["finding"] == finding(result["slices"])
            dsc.append(p["ours"]["dsc"])
        ours = next(r for r in doc["rows"] if r["config"] == row)["ours"]["dsc"]
        assert ours["n"] == 2 and ours["mean"] == pytest.approx(np.mean(dsc))
        assert ours["sd"] == pytest.approx(np.std(dsc, ddof=1))
        spec = next(r for r in table.rows if r.config == row)
        cell = f"{ours['mean']:.2f} ± {ours['sd']:.2f} / {spec.paper['dsc']:.2f}"
        assert f"| {spec.label} | 2 | {cell} |" in md
    dsc_claim = doc["claims"][0]
    assert (dsc_claim["better"], dsc_claim["than"], dsc_claim["metric"]) == ("unet", "fcn", "dsc")
    assert dsc_claim["units"] == [0, 1] and dsc_claim["n"] == 2
    assert dsc_claim["differences"] == [round(u["ours"]["dsc"] - f["ours"]["dsc"], 4)
                                        for u, f in zip(per_seed["unet"], per_seed["fcn"])]
    assert dsc_claim["verdict"] in ("holds", "does not hold", "equivalent", "undecided")
    assert "#### Found, missed, elsewhere" in md
    assert "#### Claims" in md and f"| U-Net > FCN | DSC | 2 | {dsc_claim['mean']:+.2f} | " in md
    assert f"| **{dsc_claim['verdict']}** |" in md and "**In plain words.** Of 2 claims tested" in md
    assert doc["claims_test"] == {"level": 0.95, "margin": 1.0, "alpha": 0.05, "ratio": 0.0}
    assert doc["role"] == "tuning" and "On a tuning set" in md
    # Provenance: the commit, the command, the seeds, the machine and the training time.
    prov = doc["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(CONFIGS),
                          capture_output=True, text=True).stdout.strip()
    assert prov["commit"]["sha"] == head and isinstance(prov["commit"]["dirty"], bool)
    assert prov["seeds"] == {"unet": [0, 1], "fcn": [0, 1]} and prov["runs"] == 4
    assert prov["command"].startswith("python -m lsnet_tf.experiments run tiny --dataset synthetic")
    seconds = [json.loads((runs / r / f"seed{s}" / "eval.json").read_text())["train_seconds"]
               for r in ("unet", "fcn") for s in (0, 1)]
    assert prov["train_seconds"] == pytest.approx(sum(seconds), abs=0.11)
    assert prov["cpu_seconds_runs"] == 4 and prov["cpu_seconds"] > 0
    assert f"at commit {head[:12]}" in md and "seeds 0, 1 for every row" in md and "CPU cores" in md
    label = head + ("+dirty" if prov["commit"]["dirty"] else "")  # each run records its commit
    assert all(json.loads((runs / r / f"seed{k}" / CPU_FILE).read_text())["commits"] == [label]
               for r in ("unet", "fcn") for k in (0, 1))
    assert prov["trained_at"] == {label: 4} and prov["trained_at_unknown"] == 0
    assert "Every run was trained at that commit." in md
    plot = out / "tiny-synthetic-e1-dsc-vs-size.png"  # U-Net is a row of SIZE_PLOT_ROWS
    assert doc["plot"] == plot.name and f"]({plot.name})" in md
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bars ± 1 sample standard deviation across seeds" in md

    # 3. An interrupted run (its epoch checkpointed, no eval.json yet) resumes: no epoch again.
    fcn1 = runs / "fcn" / "seed1"
    (fcn1 / "eval.json").unlink()
    (fcn1 / "evaluation-val-exclude.json").unlink()
    checkpoint = os.path.getmtime(fcn1 / "checkpoints" / "checkpoint")
    trained.clear()
    assert main(argv) == 0
    assert trained == [str(fcn1)] and (fcn1 / "eval.json").is_file()
    assert os.path.getmtime(fcn1 / "checkpoints" / "checkpoint") == checkpoint
    assert json.loads((fcn1 / CPU_FILE).read_text())["sessions"] == 2
    assert json.loads((fcn1 / CPU_FILE).read_text())["commits"] == [label]  # once per commit

    # 4. Nothing left to do: nothing trains or evaluates, the same table is written; a run of
    # the layout before seed folders is named and left alone.
    def fail(*args, **kw):
        raise AssertionError("a finished run was run again")

    doc, _ = table_files()
    monkeypatch.setattr(session, "run", fail)
    monkeypatch.setattr(evaluate, "evaluate_run", fail)
    (runs / "unet" / "eval.json").write_text("{}")
    capsys.readouterr()
    assert main(argv) == 0
    assert "is a run of the layout before seed folders: not used" in capsys.readouterr().out
    again, _ = table_files()
    assert again["rows"] == doc["rows"] and again["claims"] == doc["claims"]

    # An evaluation file without per-slice counts (written by an older version) is redone.
    path = runs / "unet" / "seed1" / "evaluation-val-exclude.json"
    old = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in old.items() if k != "slices"}))
    redone = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda run, **kw: redone.append(run) or old)
    assert main(argv) == 0
    assert redone == [str(runs / "unet" / "seed1")]
    assert json.loads(path.read_text())["slices"] == old["slices"]

    # 5. The runs' records (``keep``: no checkpoints, no logs) write the same table elsewhere.
    records = tmp_path / "records"
    assert main(["keep", "--runs-dir", str(tmp_path / "runs"), "--to", str(records)]) == 0
    assert not list(records.glob("**/checkpoints")) and not list(records.glob("**/logs"))
    monkeypatch.setattr(evaluate, "evaluate_run", fail)
    elsewhere = tmp_path / "docs-from-records"
    argv_records = [str(records) if a == str(tmp_path / "runs") else
                    str(elsewhere) if a == str(out) else a for a in argv]
    assert main(argv_records) == 0
    doc, _ = table_files()
    again = json.loads((elsewhere / "tiny-synthetic-e1.json").read_text())
    assert again["claims"] == doc["claims"] and [r["ours"] for r in again["rows"]] == \
        [r["ours"] for r in doc["rows"]]
    assert again["provenance"]["trained_at"] == doc["provenance"]["trained_at"]
    # A records folder never trains: a seed without a record is an error, before anything runs.
    assert (records / RECORDS_MARKER).is_file()
    monkeypatch.setattr(session, "run", fail)
    capsys.readouterr()
    more_seeds = [("0,1,2" if a == "0,1" else a) for a in argv_records]
    assert main(more_seeds) == 2
    err = capsys.readouterr().err
    assert f"{records} holds run records (`experiments keep`), where nothing trains; no record " \
           "of unet seed 2, fcn seed 2: train them in a runs folder" in err, err
    assert not (records / "synthetic-e1" / "unet" / "seed2").exists()


def test_the_commits_runs_were_trained_at_are_stated():
    """A table written at one commit from runs trained at others (or not recorded, as runs of
    before the record) says so, with how many runs each."""
    a, b = "a" * 40, "b" * 40
    at_a = {"sha": a, "dirty": False}
    same = {"trained_at": {a: 3}, "trained_at_unknown": 0}
    assert _trained_at_note(same, at_a) == " Every run was trained at that commit."
    mixed = {"trained_at": {a: 2, b + "+dirty": 1}, "trained_at_unknown": 1}
    assert _trained_at_note(mixed, at_a) == (
        " Runs trained at (a resumed run counts at each commit it ran at): aaaaaaaaaaaa: 2 runs;"
        " bbbbbbbbbbbb (with uncommitted changes): 1 run; not recorded: 1 run.")
    assert _trained_at_note(same, {"sha": a, "dirty": True}) == (
        " Runs trained at (a resumed run counts at each commit it ran at): aaaaaaaaaaaa: 3 runs.")
    assert _trained_at_note({"trained_at": {}, "trained_at_unknown": 2}, None) == (
        " Runs trained at (a resumed run counts at each commit it ran at): not recorded: 2 runs.")
    assert _trained_at_note({"trained_at": {}, "trained_at_unknown": 0}, at_a) == ""
    assert _commit_label({"sha": a, "dirty": True}) == a + "+dirty"
    assert _commit_label(None) is None


# ----------------------------------------------------------------------------- --parallel

PARALLEL = Table("par", "Two rows", ("Method",), ("dsc",), (
    Row("fcn", "FCN", {}), Row("attention_unet", "Attention U-Net", {})), ())


def test_parallel_processes_share_the_runs_and_the_last_one_writes_the_table(
        tmp_path, monkeypatch, capsys):
    """``--parallel``: a run another process holds is left to it; a process done while a run is
    still held writes no table; one that finds every run done writes it; a run released while a
    process works is picked up before it ends."""
    monkeypatch.setitem(TABLES, "par", PARALLEL)
    ran = []

    def fake_run_row(row, dataset, splits, runs, *args, seed=None, **kw):
        ran.append((row.config, seed))
        if (row.config, seed) == ("attention_unet", 1) and hook:
            hook.pop()()
        return _evaluation(0.5 + 0.1 * seed, 0.4)

    hook = []
    monkeypatch.setattr("lsnet_tf.experiments.runs.run_row", fake_run_row)
    runs = tmp_path / "runs"
    out = tmp_path / "out"
    argv = ["run", "par", "--dataset", "synthetic", "--seeds", "0,1", "--no-flops", "--parallel",
            "--runs-dir", str(runs), "--out", str(out)]
    other = RunLock(run_folder(str(runs / "synthetic"), "fcn", 1))
    with other:  # another process trains FCN at seed 1 throughout
        assert other.held
        assert main(argv) == 0
        text = capsys.readouterr().out
    assert ran == [("fcn", 0), ("attention_unet", 0), ("attention_unet", 1)]
    assert text.count("[fcn seed 1] being run by another process (host ") == 1
    assert f", pid {os.getpid()}, since " in text
    assert text.splitlines()[-1] == (
        "1 run is still being run by other processes (fcn seed 1): the table is written by the "
        "process that finishes last (or run this command again)")
    assert not out.exists()
    assert (runs / "synthetic" / "fcn" / "seed1.lock").is_file()

    # FCN's seed 1 is released while this process runs its last unit: it is picked up at the
    # end, and the table is written.
    ran.clear()
    other = RunLock(run_folder(str(runs / "synthetic"), "fcn", 1)).__enter__()
    hook.append(lambda: other.__exit__(None, None, None))
    assert main(argv) == 0
    assert ran == [("fcn", 0), ("attention_unet", 0), ("attention_unet", 1), ("fcn", 1)]
    doc = json.loads((out / "par-synthetic.json").read_text())
    assert [r["seeds"] for r in doc["rows"]] == [[0, 1], [0, 1]]
    assert "still being run" not in capsys.readouterr().out
    # Without --parallel no lock is consulted.
    with RunLock(run_folder(str(runs / "synthetic"), "fcn", 0)):
        ran.clear()
        assert main([a for a in argv if a != "--parallel"]) == 0
        assert ("fcn", 0) in ran


def test_a_run_lock_ends_with_its_process(tmp_path):
    """The lock of a killed worker is free at once; while it lives, its owner is named."""
    import signal
    import subprocess
    import sys

    run = str(tmp_path / "runs" / "unet" / "seed0")
    code = ("import sys, time\n"
            "from lsnet_tf.experiments.units import RunLock\n"
            f"lock = RunLock({run!r}).__enter__()\n"
            "print('held' if lock.held else 'not held', flush=True)\n"
            "time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(CONFIGS))
    try:
        assert child.stdout.readline().strip() == "held"
        with RunLock(run) as lock:
            assert not lock.held and f"pid {child.pid}, since " in lock.owner
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        with RunLock(run) as lock:
            assert lock.held and lock.owner is None
            with RunLock(run) as again:  # a second lock of a held run, in one process too
                assert not again.held
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
