"""`python -m lsnet_tf.train` end to end on a tiny synthetic config: outputs, resume, errors."""
import json
import os

import numpy as np
import pytest

from lsnet_tf import train
from lsnet_tf.training import session
from lsnet_tf.experiments import curves
from lsnet_tf.models.build import lr_schedule
from lsnet_tf.config import load_config
from conftest import TINY_RUN


def tiny(tmp_path, *extra):
    return load_config(None, [
        *TINY_RUN, f"data.cache_dir={tmp_path / 'cache'}", f"train.output_dir={tmp_path / 'run'}",
        f"export.dir={tmp_path / 'export'}", "train.verbose=0", "train.lr_decay_epochs=1", *extra])


def validation_dsc(cfg, run):
    """Per-slice DSC (numpy) of the validation slices with a target, predicted by the model of
    the run's checkpoint through a traced predict_masks (as the evaluation runs it)."""
    import tensorflow as tf

    from lsnet_tf.data import pipeline, records
    from lsnet_tf.models.build import build_model, compile_model
    from lsnet_tf.training.callbacks import CheckpointCallback

    model = build_model(cfg)
    compile_model(model, cfg, 2)
    assert CheckpointCallback(str(run / "checkpoints"), model).restore() == cfg.train.epochs
    dataset_dir = pipeline.resolve_dataset(cfg.data)
    folds = records.split_folds(dataset_dir, cfg.data.val_fold, "val")
    predict = tf.function(model.predict_masks)
    scores = []
    for batch in pipeline.make_dataset(cfg.data, dataset_dir, folds, training=False):
        truth = batch["mask"].numpy()[..., 0] > 0.5
        pred = predict(batch["image"])["mask"].numpy()[..., 0] > 0.5
        scores += [2 * np.logical_and(t, p).sum() / (t.sum() + p.sum())
                   for t, p in zip(truth, pred) if t.any()]
    return scores


@pytest.mark.slow
def test_train_writes_outputs_and_resumes(tmp_path):
    lines = []
    cfg = tiny(tmp_path, "train.epochs=1")
    summary = session.run(cfg, log=lines.append)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "eval.json").is_file()
    assert load_config(str(run / "config.yaml")) == cfg
    assert any(l.startswith("parameters: lnet") for l in lines)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n_target_slices"] + ev["n_empty_slices"] == 8
    dsc = validation_dsc(cfg, run)
    assert ev["n_target_slices"] == len(dsc)
    assert ev["dsc"]["mean"] == pytest.approx(np.mean(dsc), abs=1e-6)
    assert os.path.isfile(os.path.join(summary["saved_model"], "saved_model.pb"))
    assert any(f.startswith("events.out") for f in os.listdir(run / "logs" / "train"))
    assert any(f.startswith("events.out") for f in os.listdir(run / "logs" / "images"))

    # The same command with more epochs resumes: epoch 1 is not trained again, the optimizer's
    # step counter and the decayed learning rate continue.
    lines.clear()
    cfg2 = tiny(tmp_path, "train.epochs=2", "export.dir=")  # the export: tested above
    session.run(cfg2, log=lines.append)
    assert any("resumed from" in l and "at epoch 1" in l for l in lines)
    from lsnet_tf.training.callbacks import CheckpointCallback
    from lsnet_tf.models.build import build_model, compile_model
    model = build_model(cfg2)
    compile_model(model, cfg2, 2)
    ckpt = CheckpointCallback(str(run / "checkpoints"), model)
    assert ckpt.restore() == 2
    steps = int(model.optimizer.iterations.numpy())
    assert steps == 4  # 2 epochs x 2 steps (8 training slices, batch 4)
    # lr decays x0.1 every epoch here: after two epochs it is 1e-3 * 0.1 ** 2.
    lr = float(model.optimizer.learning_rate.numpy())
    assert lr == pytest.approx(1e-5, rel=1e-4)
    # The curves of the two sessions (lsnet_tf.curves reads the trainer's own tags): the training
    # loss of epochs 1 and 2, the validation pass after each (the last epoch of each session).
    got = curves.run_curves(str(run))
    assert sorted(got["train_loss"]) == [1, 2] and sorted(got["validation_dsc"]) == [1, 2]
    assert sorted(got["validation_loss"]) == [1, 2]
    assert all(np.isfinite(v) and v > 0 for v in got["train_loss"].values())
    assert all(0.0 <= v <= 1.0 for v in got["validation_dsc"].values())


def test_a_run_folder_at_a_url_is_written_resumed_and_loaded(tmp_path):
    """``train.output_dir`` may be a URL: TensorFlow writes the checkpoints and logs through its
    own file systems, the package the rest through its file layer. ``ram://`` (in memory) stands
    in for ``gs://``, whose TensorFlow file system no emulator can reach. Nothing lands in a
    local folder named after the URL."""
    import tensorflow as tf

    from lsnet_tf.training.runs import load_run

    url = f"ram://runs/{tmp_path.name}"
    cfg = tiny(tmp_path, "train.epochs=1", f"train.output_dir={url}", "export.dir=")
    session.run(cfg, log=lambda *a: None)
    for name in ("config.yaml", "eval.json", "checkpoints/ckpt-1.index"):
        assert tf.io.gfile.exists(f"{url}/{name}"), name
    assert load_config(f"{url}/config.yaml") == cfg
    with tf.io.gfile.GFile(f"{url}/eval.json") as f:
        assert json.load(f)["n_target_slices"] > 0
    lines = []
    again = tiny(tmp_path, "train.epochs=2", f"train.output_dir={url}", "export.dir=")
    session.run(again, log=lines.append)
    assert any(line.startswith(f"resumed from {url}/checkpoints/ckpt-1 at epoch 1")
               for line in lines), lines
    model, loaded, path = load_run(url)
    assert path == f"{url}/checkpoints/ckpt-2" and loaded == again
    assert not os.path.exists("ram:") and not (tmp_path / "ram:").exists()


def test_bad_config_exits_2_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    assert train.main(["--config", str(bad)]) == 2
    assert "unknown key 'train.epoch'" in capsys.readouterr().err


def test_lr_schedule_follows_the_paper_steps():
    cfg = load_config(None, ["train.epochs=60", "train.lr_decay_epochs=25", "train.learning_rate=1e-4"])
    sched = lr_schedule(cfg, steps_per_epoch=10)
    assert float(sched(0)) == pytest.approx(1e-4)
    assert float(sched(249)) == pytest.approx(1e-4)
    assert float(sched(251)) == pytest.approx(1e-5)
    assert float(sched(501)) == pytest.approx(1e-6)
