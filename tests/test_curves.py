"""Training curves (``lsnet_tf.curves``, ``python -m lsnet_tf.experiments curves``) from
TensorBoard event files written here with known values; ``tests/test_train.py`` reads a real
training run's logs with them."""
import json
import os

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf import curves
from lsnet_tf.experiments import cli
from lsnet_tf.experiments.curves import (CURVES_FILE, CurvesError, group_mean, read_scalars,
                                         run_curves)
from lsnet_tf.experiments.runs import keep_records


def write_scalars(log_dir, tag, values, start=0):
    """Scalars `values` at steps start, start+1, ... as the Keras TensorBoard callback writes
    them (tensor summaries), in a new event file of `log_dir`."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for step, value in enumerate(values, start):
            tf.summary.scalar(tag, value, step=step)
    writer.close()


def fake_run(run, train_loss, dsc, every=2):
    """A run folder with the trainer's tags: `train_loss` every epoch, the validation pass's
    `dsc` (and a loss of 1 - dsc) every `every` epochs from epoch `every`."""
    write_scalars(run / "logs" / "train", "epoch_loss", train_loss)
    writer = tf.summary.create_file_writer(str(run / "logs" / "validation"))
    with writer.as_default():
        for k, value in enumerate(dsc):
            step = (k + 1) * every - 1
            tf.summary.scalar("epoch_dsc", value, step=step)
            tf.summary.scalar("epoch_loss", 1.0 - value, step=step)
    writer.close()
    return str(run)


def test_read_scalars_later_values_win_and_images_are_skipped(tmp_path):
    write_scalars(tmp_path, "epoch_loss", [0.5, 0.4, 0.3])
    # A resumed session writes epoch 3 (step 2) again, and epoch 4; then an image summary.
    write_scalars(tmp_path, "epoch_loss", [0.25, 0.2], start=2)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        tf.summary.image("input", tf.zeros([1, 4, 4, 1]), step=0)
    writer.close()
    got = read_scalars(str(tmp_path))
    assert list(got) == ["epoch_loss"]
    assert got["epoch_loss"] == pytest.approx({0: 0.5, 1: 0.4, 2: 0.25, 3: 0.2})
    assert read_scalars(str(tmp_path / "none")) == {}


def test_a_truncated_event_file_is_read_up_to_the_cut(tmp_path):
    write_scalars(tmp_path, "epoch_loss", [0.5, 0.4, 0.3])
    path, = [p for p in tmp_path.iterdir() if p.name.startswith("events.out")]
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last record (step 2) cut short, as by a crash
    assert read_scalars(str(tmp_path))["epoch_loss"] == pytest.approx({0: 0.5, 1: 0.4})


def test_run_curves_reads_the_trainer_tags_by_epoch(tmp_path):
    run = fake_run(tmp_path / "run", [0.9, 0.5, 0.3, 0.2], [0.25, 0.75])
    got = run_curves(run)
    assert got["train_loss"] == pytest.approx({1: 0.9, 2: 0.5, 3: 0.3, 4: 0.2})
    assert got["validation_dsc"] == pytest.approx({2: 0.25, 4: 0.75})
    assert got["validation_loss"] == pytest.approx({2: 0.75, 4: 0.25})


def test_run_curves_errors_name_the_folder(tmp_path):
    with pytest.raises(CurvesError, match=f"{tmp_path / 'absent'}: no such run folder"):
        run_curves(str(tmp_path / "absent"))
    (tmp_path / "empty" / "logs" / "train").mkdir(parents=True)
    with pytest.raises(CurvesError, match="empty: no TensorBoard scalars under"):
        run_curves(str(tmp_path / "empty"))


def test_group_mean_is_taken_at_the_epochs_every_run_has():
    assert group_mean([{1: 0.2, 2: 0.4, 3: 0.9}, {2: 0.6, 3: 0.5}]) == pytest.approx(
        {2: 0.5, 3: 0.7})
    assert group_mean([]) == {}


def test_cli_draws_runs_and_groups(tmp_path, capsys):
    a = fake_run(tmp_path / "a", [0.9, 0.5], [0.5])
    b = fake_run(tmp_path / "b", [0.8, 0.4], [0.7])
    c = fake_run(tmp_path / "c", [0.6, 0.2, 0.1, 0.05], [0.1, 0.3])
    out = tmp_path / "fig" / "curves.png"
    assert curves.main([c, "--group", f"two={a},{b}", "--out", str(out)]) == 0
    image = matplotlib.image.imread(str(out))
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    doc = json.loads((tmp_path / "fig" / "curves.json").read_text())
    assert list(doc["groups"]) == [os.path.normpath(c), "two"]
    two = doc["groups"]["two"]
    assert two["mean"]["validation_dsc"] == pytest.approx({"2": 0.6})
    assert two["mean"]["train_loss"] == pytest.approx({"1": 0.85, "2": 0.45})
    assert two["runs"][a]["validation_dsc"] == pytest.approx({"2": 0.5})
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--out", "x.png"], "give run folders or --group"),
    (["--group", "nolabel", "--out", "x.png"], "--group takes LABEL=RUN,RUN"),
    (["RUN", "--out", "x.svg"], "--out must name a .png file"),
])
def test_cli_errors(tmp_path, capsys, args, message):
    assert curves.main(args) == 2
    assert message in capsys.readouterr().err


def test_cli_error_for_a_folder_without_logs(tmp_path, capsys):
    assert curves.main([str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "no TensorBoard scalars" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_experiments_curves_draws_the_rows_seeds_and_names_the_missing(tmp_path, capsys):
    runs = tmp_path / "runs"
    root = runs / "synthetic"
    fake_run(root / "unet" / "seed0", [0.5, 0.3], [0.6])
    fake_run(root / "unet" / "seed1", [0.7, 0.5], [0.8])
    fake_run(root / "lsnet_unet" / "seed0", [1.5, 1.0], [0.9])
    out = tmp_path / "out"
    assert cli.main(["curves", "table1", "--dataset", "synthetic", "--rows",
                     "unet,lsnet_unet", "--seeds", "0,1", "--runs-dir", str(runs),
                     "--out", str(out)]) == 0
    assert f"no training logs in {root / 'lsnet_unet' / 'seed1'}: left out" in \
        capsys.readouterr().out
    doc = json.loads((out / "table1-synthetic-curves.json").read_text())
    assert list(doc["groups"]) == ["U-Net (unet)", "L-SNet (U-Net) (lsnet_unet)"]
    unet = doc["groups"]["U-Net (unet)"]
    assert sorted(unet["runs"]) == ["seed 0", "seed 1"]
    assert unet["mean"]["validation_dsc"] == pytest.approx({"2": 0.7})
    assert (out / "table1-synthetic-curves.png").is_file()
    # Nothing trained at all: an error, exit status 2.
    assert cli.main(["curves", "table4", "--dataset", "synthetic", "--rows",
                     "lsnet_unet_gamma1", "--runs-dir", str(runs), "--out",
                     str(out)]) == 2
    assert "no run of table4 on synthetic has training logs" in capsys.readouterr().err


def test_keep_copies_each_finished_runs_record_and_its_curves(tmp_path, capsys):
    """``experiments keep``: the record files byte for byte and the curves as ``curves.json``,
    which ``run_curves`` reads back equal to the logs; no checkpoints or logs, no unfinished
    run; ``experiments curves`` draws the records as it draws the runs."""
    runs = tmp_path / "runs"
    finished = runs / "synthetic" / "unet" / "seed0"
    fake_run(finished, [0.9, 0.5, 0.3, 0.2], [0.25, 0.75])
    record = {"config.yaml": "model:\n  architecture: unet\n", "eval.json": '{"dsc": 0.5}',
              "train-cpu.json": '{"cpu_seconds": 3.0}', "evaluation-val-exclude.json": '{"a": 1}',
              "evaluation-train-exclude.json": '{"b": 2}'}
    for name, text in record.items():
        (finished / name).write_text(text)
    (finished / "checkpoints").mkdir()
    (finished / "checkpoints" / "ckpt-1.index").write_bytes(b"weights")
    (finished / "notes.txt").write_text("not a record file")
    unfinished = runs / "synthetic" / "unet" / "seed1"  # still training: no eval.json
    fake_run(unfinished, [0.9], [])
    (unfinished / "config.yaml").write_text("x")

    to = tmp_path / "records"
    assert cli.main(["keep", "--runs-dir", str(runs), "--to", str(to)]) == 0
    assert "kept the records of 1 run in" in capsys.readouterr().out
    kept = to / "synthetic" / "unet" / "seed0"
    assert sorted(p.name for p in kept.iterdir()) == sorted([*record, CURVES_FILE])
    assert all((kept / name).read_text() == text for name, text in record.items())
    assert not (to / "synthetic" / "unet" / "seed1").exists()
    assert run_curves(str(kept)) == run_curves(str(finished))
    assert run_curves(str(kept))["validation_dsc"] == pytest.approx({2: 0.25, 4: 0.75})
    # Keeping again (the records themselves, or the runs) gives the same files.
    again = tmp_path / "again"
    keep_records(str(to), str(again), log=lambda *a: None)
    assert (again / "synthetic" / "unet" / "seed0" / CURVES_FILE).read_text() == \
        (kept / CURVES_FILE).read_text()
    for root in (runs, to):
        out = tmp_path / f"curves-{root.name}"
        assert cli.main(["curves", "table1", "--dataset", "synthetic", "--rows", "unet",
                         "--seeds", "0", "--runs-dir", str(root), "--out", str(out)]) == 0
    drawn = [json.loads((tmp_path / f"curves-{r}" / "table1-synthetic-curves.json").read_text())
             ["groups"] for r in ("runs", "records")]
    assert drawn[0] == drawn[1]


def test_keep_errors(tmp_path, capsys):
    assert cli.main(["keep", "--runs-dir", str(tmp_path), "--to", str(tmp_path / "r")]) == 2
    assert "no finished run (<dataset>/<row>/[fold<f>/]seed<k>/eval.json) under" in capsys.readouterr().err
    run = tmp_path / "synthetic" / "unet" / "seed0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    assert cli.main(["keep", "--runs-dir", str(tmp_path), "--to", str(tmp_path)]) == 2
    assert "--to must be another folder than --runs-dir" in capsys.readouterr().err
    # A finished run without logs is kept without its curves, and says so.
    assert cli.main(["keep", "--runs-dir", str(tmp_path), "--to",
                     str(tmp_path / "r")]) == 0
    assert "no training logs, its curves are not kept" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "r" / "synthetic" / "unet" / "seed0").iterdir()) \
        == ["eval.json"]
