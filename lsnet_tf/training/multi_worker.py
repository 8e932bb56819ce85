"""Multi-worker training (``tf.distribute.MultiWorkerMirroredStrategy``, one process per worker).

The chief (the ``chief`` task, or ``worker`` 0 when the cluster has none) writes the run folder;
every other worker writes its checkpoints to ``<output_dir>/workers/<task>-<id>/checkpoints``
(saving may need every worker) and nothing else. Every worker resumes from the chief's
``checkpoints/``, so ``train.output_dir`` must be storage that every worker reads.

Keras 3.15's ``fit`` under this strategy needs two adjustments (`adapt_model`), both for
reductions it makes across workers: the per-step logs are reduced with
``strategy.reduce("MEAN", value, axis=0)``, which fails on scalar logs ("Invalid reduction
dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388), and a first input batch
is reduced to build the model symbolically, which fails for dict batches.
"""
from __future__ import annotations

import tensorflow as tf


def is_multi_worker(strategy) -> bool:
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def worker_name(strategy) -> str:
    """``""`` for the chief (or a single process), else ``"<task type>-<task id>"``."""
    if strategy.extended.should_checkpoint:
        return ""
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}-{resolver.task_id}"


def adapt_model(model) -> None:
    """Make ``model.fit`` work under MultiWorkerMirroredStrategy (see the module docstring):
    per-step logs become shape (1,) (the reduction then averages them over workers into
    scalars), and the symbolic build is skipped (the model's networks and optimizers are built
    when it is compiled)."""
    train_step, test_step = model.train_step, model.test_step

    def as_vectors(logs):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}

    model.train_step = lambda data: as_vectors(train_step(data))
    model.test_step = lambda data: as_vectors(test_step(data))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def epochs_agree(strategy, epoch: int) -> bool:
    """Whether every worker passes the same `epoch` (a collective: every worker must call it)."""
    e = tf.constant(float(epoch))
    per_replica = strategy.run(lambda: tf.stack([e, e * e]))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    n = strategy.num_replicas_in_sync
    return abs(n * total[1] - total[0] ** 2) <= 1e-6 * max(1.0, total[0] ** 2)


def barrier(strategy) -> None:
    """Return once every worker has called it (so that no worker leaves while others work)."""
    epochs_agree(strategy, 0)
