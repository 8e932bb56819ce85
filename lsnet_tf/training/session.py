"""A training session: the strategy, the compiled model, ``fit`` with checkpoints and resume,
the final evaluation and the export: what ``python -m lsnet_tf.train`` runs
(``lsnet_tf.train``) and the Python API's ``lsnet_tf.train_model``.

Guide: docs/training.md.
"""
from __future__ import annotations

import os
import time

from lsnet_tf.data import records
from lsnet_tf.utils import files
from lsnet_tf.utils.files import write_json
from lsnet_tf.metrics.evaluation import evaluate_model
from lsnet_tf.models.build import (batch_norm_layers, build_model, compile_model,
                                   parameter_counts)


def make_strategy(name: str, train_cfg=None):
    """The ``tf.distribute`` strategy of ``train.strategy`` (see ``lsnet_tf.config``).

    ``auto`` mirrors only over several GPUs: on one device, MirroredStrategy adds a multi-device
    iterator and cross-device plumbing for nothing. A multi-worker strategy detects lost tasks
    as `train_cfg` (the ``train`` section) says (``lsnet_tf.training.multi_worker``).
    """
    import tensorflow as tf

    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multi_worker"
        else:
            name = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "default"
    if name == "multi_worker":
        from lsnet_tf.training import multi_worker

        return multi_worker.make_strategy(train_cfg)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_for(cfg, strategy, steps: int, log=print):
    """The compiled model of `cfg` for `strategy` (call it in the strategy's scope), `steps`
    training steps per epoch. Over several replicas with ``train.sync_batch_norm`` (the
    default) its batch-norm layers are built to normalise with the global batch's statistics."""
    replicas = strategy.num_replicas_in_sync
    synchronized = cfg.train.sync_batch_norm and replicas > 1
    model = build_model(cfg, synchronized=synchronized)
    if synchronized:
        n = len(batch_norm_layers(model))
        log(f"batch norm: {n} layers normalise with the statistics of the global batch over "
            f"{replicas} replicas (train.sync_batch_norm)")
    compile_model(model, cfg, steps)
    return model


def run(cfg, log=print, timeline=None) -> dict:
    """Train, evaluate and export as `cfg` says; returns the evaluation summary.

    `timeline` (a ``lsnet_tf.training.timing.Timeline``) records where the time goes: the
    start-up phases, every step, validation pass and callback (``python -m benchmarks profile``).

    Raises `NonFiniteLossError` (a non-finite loss with ``train.on_nonfinite: stop``, or weights
    that are not finite at the end of an epoch), `CorruptShardError` (a corrupt shard),
    `CheckpointError` (no checkpoint of the run folder can be read back) and, in a multi-worker
    run, `ClusterError` (another task of the cluster was lost; it names that task).
    """
    import keras
    import tensorflow as tf

    from lsnet_tf.training import multi_worker

    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.train.seed)
    strategy = make_strategy(cfg.train.strategy, cfg.train)
    mark = timeline.mark if timeline is not None else (lambda name: None)
    mark("strategy")
    with multi_worker.reporting_lost_tasks(strategy,
                                           os.path.join(cfg.train.output_dir, "checkpoints")):
        return _run(cfg, strategy, log, timeline, mark)


def _run(cfg, strategy, log, timeline, mark) -> dict:
    """`run` under `strategy` (created), from the log line on."""
    import keras
    import tensorflow as tf

    if cfg.train.deterministic:
        log("deterministic: op determinism and data.deterministic on")

    # These import TensorFlow or Keras: here, so that --help and config errors answer at once.
    from lsnet_tf.data import pipeline
    from lsnet_tf.export import saved_model
    from lsnet_tf.training import callbacks as cb, multi_worker
    from lsnet_tf.training.nonfinite import NonFiniteCallback, NonFiniteGuard

    out = cfg.train.output_dir
    worker = multi_worker.worker_name(strategy)
    # Every worker of a multi-worker cluster writes checkpoints (saving may need all of them),
    # the chief in the run folder, the others in workers/<task>/; all restore from the chief's.
    ckpt_dir = os.path.join(out, "workers", worker, "checkpoints") if worker else os.path.join(
        out, "checkpoints")
    files.makedirs(ckpt_dir)  # a local folder or a URL (the run folder in a bucket)
    if not worker:
        cfg.save(os.path.join(out, "config.yaml"))
    replicas = strategy.num_replicas_in_sync
    train_ds, val_ds, dataset_dir, n_train, n_val = pipeline.datasets_for(cfg)
    global_batch = cfg.data.batch_size
    steps = cfg.train.steps_per_epoch or max(1, n_train // global_batch)
    log(f"dataset {dataset_dir}: {n_train} training slices, {n_val} validation slices "
        f"(fold {cfg.data.val_fold}); {steps} steps per epoch; {replicas} replica(s)"
        + (f"; worker {worker}" if worker else ""))
    corrupt = []
    if cfg.data.on_corrupt == "skip":  # raises if a validation shard is corrupt
        checks = pipeline.check_training_shards(cfg.data, dataset_dir)
        corrupt = [c for c in checks if not c.ok]
        for c in corrupt:
            log(f"warning: {c.describe()}; training skips its records from there on")
        if corrupt:
            lost = n_train - sum(c.records for c in checks)
            log(f"data.on_corrupt=skip: {len(corrupt)} corrupt training shard(s), {lost} of "
                f"{n_train} training slices skipped")
    if not multi_worker.is_multi_worker(strategy):
        # The validation pass's length, so that Keras knows where it ends instead of running
        # into the end of the data (a warning, and an aborted iterator, every epoch). The
        # validation shards are whole here: read as they are (data.on_corrupt=error) or checked
        # above (skip).
        val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(-(-n_val // global_batch)))
    mark("datasets")

    with strategy.scope():
        model = build_for(cfg, strategy, steps, log)
        counts = parameter_counts(model)
        log("parameters: " + "  ".join(f"{k} {v:,}" for k, v in counts.items()))
        mark("model")
        ckpt = cb.CheckpointCallback(ckpt_dir, model, max_to_keep=1 if worker else 3,
                                     restore_dir=os.path.join(out, "checkpoints"), log=log)
        initial_epoch = ckpt.restore()
        guard = NonFiniteGuard(model, cfg.train.on_nonfinite)
        mark("restore")
    if multi_worker.is_multi_worker(strategy):
        if not multi_worker.epochs_agree(strategy, initial_epoch):
            raise cb.CheckpointError(
                f"the workers would resume from different epochs (this one from {initial_epoch}): "
                f"train.output_dir ({out}) must be one folder that every worker reads (shared "
                "storage), holding the chief's checkpoints/")
        multi_worker.adapt_model(model)
    if initial_epoch:
        log(f"resumed from {ckpt.restored_from} at epoch {initial_epoch} (optimizer step "
            f"{int(model.optimizer.iterations.numpy())}, learning rate "
            f"{float(model.optimizer.learning_rate.numpy()):.6g})")
        if cfg.train.deterministic:
            # The batches an uninterrupted run would train on next (the pipeline's order and
            # augmentation are fixed by the seed): a resumed run ends with its weights.
            train_ds = train_ds.skip(initial_epoch * steps)
    if initial_epoch >= cfg.train.epochs:
        log("training already complete; evaluating and exporting")

    nonfinite = NonFiniteCallback(guard, log=log)
    callbacks = [cb.GroundTruthPhase(cfg.train.gt_box_epochs), nonfinite]
    if not worker:
        callbacks += [
            keras.callbacks.TensorBoard(os.path.join(out, "logs"), update_freq="epoch"),
            cb.ImageLogger(os.path.join(out, "logs", "images"), val_ds, cfg.train.image_log_epochs),
            cb.LearningRateLogger(os.path.join(out, "logs")),
        ]
    callbacks.append(ckpt)  # last: an epoch's logs are written before its checkpoint
    mark("callbacks")
    if timeline is not None:
        callbacks = timeline.instrument(callbacks)
    t0 = time.time()
    try:
        if initial_epoch < cfg.train.epochs:
            # Keras distributes the dataset itself (global batch data.batch_size).
            model.fit(train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks,
                      validation_freq=validation_epochs(cfg.train), verbose=cfg.train.verbose,
                      shuffle=False)  # the pipeline shuffles; fit cannot shuffle a tf.data input
        train_s = time.time() - t0
        if nonfinite.skipped:
            log(f"train.on_nonfinite=skip: {nonfinite.skipped} batch(es) with a non-finite loss "
                "skipped")
        if worker:  # waits for the chief's evaluation and export, then ends with it
            multi_worker.barrier(strategy)
            return {"worker": worker, "checkpoint": ckpt.manager.latest_checkpoint,
                    "skipped_batches": nonfinite.skipped}

        summary = evaluate_model(model, pipeline.eval_dataset(
            cfg.data, dataset_dir, records.split_folds(dataset_dir, cfg.data.val_fold, "val")))
    except tf.errors.DataLossError as e:
        raise pipeline.explain_data_loss(dataset_dir, e) from e
    summary.update({"parameters": counts, "train_seconds": round(train_s, 1),
                    "dataset": dataset_dir, "epochs": cfg.train.epochs, "steps_per_epoch": steps})
    if cfg.train.on_nonfinite == "skip":
        summary["skipped_batches"] = nonfinite.skipped
    if cfg.data.on_corrupt == "skip":
        summary["corrupt_shards"] = [c.describe() for c in corrupt]
    write_json(os.path.join(out, "eval.json"), summary)
    s = summary
    log(f"validation: per-slice DSC {_fmt(s['dsc']['mean'])} over {s['n_target_slices']} slices "
        f"with a target; precision {_fmt(s['precision']['mean'])}, recall "
        f"{_fmt(s['recall']['mean'])}; per-case DSC {_fmt(s['per_case']['mean'])}; empty-slice "
        f"false positives {s['fp_empty_slices']}/{s['n_empty_slices']}; box mIoU {_fmt(s['box_miou'])}")

    if cfg.export.dir:
        path = saved_model.export(model, cfg, os.path.join(cfg.export.dir, cfg.export.name,
                                                           str(cfg.export.version)))
        log(f"SavedModel written to {path}")
        summary["saved_model"] = path
    if multi_worker.is_multi_worker(strategy):
        multi_worker.barrier(strategy)
    return summary


def validation_epochs(train_cfg) -> list[int]:
    """The 1-based epochs of fit's validation pass: every ``eval_every`` and the last."""
    last = train_cfg.epochs
    return [e for e in range(1, last + 1) if e % train_cfg.eval_every == 0 or e == last]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
