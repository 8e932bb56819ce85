"""Train L-SNet: ``python -m lsnet_tf.train [--config configs/NAME.yaml] [--set key=value ...]``.

With no arguments it trains the default configuration on the synthetic dataset (generated once
into ``cache/synthetic``). Outputs go to ``train.output_dir``:

- ``config.yaml``: the resolved config;
- ``checkpoints/``: a checkpoint per epoch (models, both optimizers, epoch); running the same
  command again resumes from the latest one, step counter and learning-rate schedule included;
- ``logs/``: TensorBoard scalars for every loss term and metric, and images (input with boxes,
  heatmap, RoI, mask overlay) — ``tensorboard --logdir runs``;
- ``eval.json``: the final evaluation on the validation fold;
- and the SavedModel in ``export.dir/export.name/export.version``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def make_strategy(name: str):
    import tensorflow as tf

    if name == "auto":
        name = "multi_worker" if os.environ.get("TF_CONFIG") else "mirrored"
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def lr_schedule(cfg, steps_per_epoch: int):
    """x `lr_decay_factor` every `lr_decay_epochs` epochs (staircase), from `learning_rate`.

    Always a schedule object, whatever the number of epochs, so that a checkpoint's optimizer
    variables match when a run is resumed with more epochs.
    """
    import keras

    t = cfg.train
    return keras.optimizers.schedules.ExponentialDecay(
        t.learning_rate, decay_steps=t.lr_decay_epochs * max(1, steps_per_epoch),
        decay_rate=t.lr_decay_factor, staircase=True)


def run(cfg, log=print) -> dict:
    """Train, evaluate and export as `cfg` says; returns the evaluation summary."""
    import keras
    import tensorflow as tf

    from lsnet_tf.data import pipeline
    from lsnet_tf.models.build import build_model, compile_model, parameter_counts
    from lsnet_tf import evaluation
    from lsnet_tf.training import callbacks as cb

    out = cfg.train.output_dir
    os.makedirs(out, exist_ok=True)
    cfg.save(os.path.join(out, "config.yaml"))
    keras.utils.set_random_seed(cfg.train.seed)

    strategy = make_strategy(cfg.train.strategy)
    replicas = strategy.num_replicas_in_sync
    train_ds, val_ds, dataset_dir, n_train, n_val = pipeline.datasets_for(cfg)
    global_batch = cfg.data.batch_size
    steps = cfg.train.steps_per_epoch or max(1, n_train // global_batch)
    log(f"dataset {dataset_dir}: {n_train} training slices, {n_val} validation slices "
        f"(fold {cfg.data.val_fold}); {steps} steps per epoch; {replicas} replica(s)")

    with strategy.scope():
        model = build_model(cfg)
        compile_model(model, cfg, steps)
        counts = parameter_counts(model)
        log("parameters: " + "  ".join(f"{k} {v:,}" for k, v in counts.items()))
        ckpt = cb.CheckpointCallback(os.path.join(out, "checkpoints"), model)
        initial_epoch = ckpt.restore()
    if initial_epoch:
        log(f"resumed from {ckpt.manager.latest_checkpoint} at epoch {initial_epoch}")
    if initial_epoch >= cfg.train.epochs:
        log("training already complete; evaluating and exporting")

    dist_train = strategy.experimental_distribute_dataset(train_ds) if replicas > 1 else train_ds
    callbacks = [
        cb.GroundTruthPhase(cfg.train.gt_box_epochs),
        ckpt,
        keras.callbacks.TensorBoard(os.path.join(out, "logs"), update_freq="epoch"),
        cb.ImageLogger(os.path.join(out, "logs", "images"), val_ds, cfg.train.image_log_epochs),
        cb.LearningRateLogger(os.path.join(out, "logs")),
    ]
    t0 = time.time()
    if initial_epoch < cfg.train.epochs:
        model.fit(dist_train, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks,
                  verbose=cfg.train.verbose)
    train_s = time.time() - t0

    from lsnet_tf.evaluate import eval_dataset

    summary = evaluation.evaluate_model(
        model, eval_dataset(cfg.data, dataset_dir, pipeline.split_folds(dataset_dir, cfg.data.val_fold)[1]))
    summary.update({"parameters": counts, "train_seconds": round(train_s, 1),
                    "dataset": dataset_dir, "epochs": cfg.train.epochs, "steps_per_epoch": steps})
    with open(os.path.join(out, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    s = summary
    log(f"validation: per-slice DSC {_fmt(s['dsc']['mean'])} over {s['n_target_slices']} slices "
        f"with a target; precision {_fmt(s['precision']['mean'])}, recall "
        f"{_fmt(s['recall']['mean'])}; per-case DSC {_fmt(s['per_case']['mean'])}; empty-slice "
        f"false positives {s['fp_empty_slices']}/{s['n_empty_slices']}; box mIoU {_fmt(s['box_miou'])}")

    if cfg.export.dir:
        from lsnet_tf.export import saved_model

        path = saved_model.export(model, cfg, os.path.join(cfg.export.dir, cfg.export.name,
                                                           str(cfg.export.version)))
        log(f"SavedModel written to {path}")
        summary["saved_model"] = path
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv=None) -> int:
    from lsnet_tf.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config or _default_config(), args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


def _default_config():
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.yaml")
    return here if os.path.isfile(here) else None


if __name__ == "__main__":
    sys.exit(main())
