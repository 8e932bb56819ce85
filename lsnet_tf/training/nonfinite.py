"""Non-finite losses during training: stop with the epoch, batch and loss term, or skip the batch.

`NonFiniteGuard` wraps a model's ``train_step`` (any model of ``lsnet_tf.models.build``: L-SNet
and the baselines, whose ``train_step`` returns the results of its ``Mean`` loss trackers). After
each step it flags every loss term whose tracker result is NaN or infinite. The trackers are reset
each epoch and only ever hold finite batches (training stops, or the batch is undone), so a
non-finite result means that this batch's term is non-finite. The flags are summed over all
replicas (and workers), so every replica takes the same decision.

- ``policy="stop"``: the guard records the flags; `NonFiniteCallback` raises `NonFiniteLossError`
  at the end of the batch, before any checkpoint of that epoch is written.
- ``policy="skip"``: the guard reads every variable the step may change (the networks' weights
  and batch-norm statistics, the optimizers' moments and step counters, the trackers) before the
  step and writes them back when the batch is non-finite: training goes on as if the batch had
  not been in the data (a skipped batch is not a step of the learning-rate schedule).
  `NonFiniteCallback` warns once per skipped batch and counts them. The cost is one copy of those
  variables per step.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from lsnet_tf.models.build import model_networks, model_optimizers

POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training stopped: a loss term of a batch was NaN or infinite."""


def loss_terms(model) -> list[str]:
    """The loss trackers a training step reports (``dsc`` is an evaluation metric)."""
    return [name for name in model.trackers if name != "dsc"]


class NonFiniteGuard:
    """Wrap ``model.train_step`` (see the module docstring). Create it in the strategy's scope,
    after ``compile`` and before ``fit``.

    Attributes (variables, read by `NonFiniteCallback`): ``count`` the number of non-finite
    batches so far, ``flags`` (one per term of ``terms``) 1 where the last one was non-finite.
    """

    def __init__(self, model, policy: str = "stop"):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, received {policy!r}")
        self.model = model
        self.policy = policy
        self.terms = loss_terms(model)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=agg,
                                 name="nonfinite_count")
        self.flags = tf.Variable(tf.zeros([len(self.terms)], tf.int32), trainable=False,
                                 aggregation=agg, name="nonfinite_flags")
        self.state = [v for net in model_networks(model).values() for v in net.variables]
        self.state += [v for opt in model_optimizers(model).values() for v in opt.variables]
        self.metric_state = [v for t in model.trackers.values() for v in t.variables]
        self._train_step = model.train_step
        model.train_step = self.train_step

    def train_step(self, data):
        skip = self.policy == "skip"
        if skip:  # read before the step (automatic control dependencies keep the order)
            saved = [tf.identity(v.value) for v in self.state]
            saved_metrics = [tf.identity(v.value) for v in self.metric_state]
        logs = self._train_step(data)
        flags = tf.stack([tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(
            tf.cast(logs[n], tf.float32)))), tf.int32) for n in self.terms])
        ctx = tf.distribute.get_replica_context()
        flags = ctx.all_reduce(tf.distribute.ReduceOp.SUM, flags)
        bad = tf.reduce_any(flags > 0)
        self.count.assign_add(tf.cast(bad, tf.int64))
        self.flags.assign(tf.where(bad, tf.minimum(flags, 1), self.flags))
        if not skip:
            return logs
        # Trackers are replica-local (sync on read): restored here. The networks' and optimizers'
        # variables are mirrored: restored in cross-replica context on every replica at once.
        for v, s in zip(self.metric_state, saved_metrics):
            v.assign(tf.where(bad, s, v.value))
        ctx.merge_call(_restore, args=(bad, [v.value for v in self.state], saved))
        return {n: (self.model.trackers[n].result() if n in self.model.trackers else value)
                for n, value in logs.items()}


def _restore(strategy, bad, variables, saved):
    bad = strategy.experimental_local_results(bad)[0]

    def undo():
        ops = [strategy.extended.update(v, lambda var, value: var.assign(value), args=(s,),
                                        group=True) for v, s in zip(variables, saved)]
        with tf.control_dependencies(ops):
            return tf.constant(True)

    return tf.cond(bad, undo, lambda: tf.constant(False))


class NonFiniteCallback(keras.callbacks.Callback):
    """Act on the guard's flags at the end of each batch: raise (stop) or warn (skip).

    ``skipped`` is the number of batches skipped in this run; ``log`` receives the warnings.
    """

    def __init__(self, guard: NonFiniteGuard, log=None):
        super().__init__()
        self.guard = guard
        self.log = log
        self.epoch = 0
        self.skipped = 0
        self._seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_begin(self, logs=None):
        self._seen = int(self.guard.count.numpy())

    def on_train_batch_end(self, batch, logs=None):
        count = int(self.guard.count.numpy())
        if count == self._seen:
            return
        self._seen = count
        flags = self.guard.flags.numpy()
        terms = [t for t, f in zip(self.guard.terms, flags) if f]
        step = int(self.model.optimizer.iterations.numpy())
        where = (f"epoch {self.epoch + 1}, batch {batch + 1} (optimizer step {step}): "
                 f"non-finite {', '.join(terms)}")
        if self.guard.policy == "stop":
            raise NonFiniteLossError(
                f"{where}. Training stopped; the last checkpoint holds the weights of the last "
                "completed epoch. Lower train.learning_rate, check the input slices of this batch "
                "(python -m lsnet_tf.validate), or set train.on_nonfinite=skip to skip such batches.")
        self.skipped += 1
        message = f"{where}; batch skipped (no weight update), {self.skipped} skipped so far"
        if self.log is not None:
            self.log(message)
        else:
            warnings.warn(message, stacklevel=2)


def check_finite(objects: dict) -> None:
    """Raise `NonFiniteLossError` naming the first variable of `objects` (name -> network or
    optimizer) with a NaN or infinite value."""
    for name, obj in objects.items():
        for v in obj.variables:
            if not np.all(np.isfinite(np.asarray(v.numpy(), np.float64))):
                raise NonFiniteLossError(f"{name}: variable {v.path or v.name} holds non-finite "
                                         "values")
