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

import contextlib
import json
import os
import re

import tensorflow as tf

# How a task is named in TensorFlow's errors.
_TASK = re.compile(r"/job:[A-Za-z0-9_]+/replica:\d+/task:\d+")


class ClusterError(RuntimeError):
    """A task of the multi-worker cluster was lost (killed, hung or unreachable): every other
    task stops with this error instead of waiting for it."""


def make_strategy(train_cfg=None):
    """A ``MultiWorkerMirroredStrategy`` over the cluster of ``TF_CONFIG`` whose failure
    detection follows `train_cfg` (a ``TrainConfig``; TensorFlow's defaults without one).

    TensorFlow's coordination service (led by the chief, else worker 0) receives every task's
    heartbeats; a task silent for ``train.heartbeat_timeout`` seconds (killed, stopped, or its
    machine gone) is declared lost, and every other task's collective operations are aborted
    with an error naming it (`lost_task_error` turns that into a `ClusterError`). At exit a task
    waits at most ``train.shutdown_timeout`` seconds for the others at the service's shutdown
    barrier. ``train.collective_timeout`` (0: none) bounds each collective operation as well
    (``tf.distribute.experimental.CommunicationOptions(timeout_seconds=...)``): it also catches
    a task whose process lives but no longer takes part (a deadlock).
    """
    options = tf.distribute.experimental.CommunicationOptions()
    if train_cfg is not None:
        _configure_coordination(train_cfg.heartbeat_timeout, train_cfg.shutdown_timeout)
        if train_cfg.collective_timeout > 0:
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=float(train_cfg.collective_timeout))
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _configure_coordination(heartbeat_s: float, shutdown_s: float) -> None:
    """The coordination service as MultiWorkerMirroredStrategy configures it for ``TF_CONFIG``
    (tensorflow/python/distribute/collective_all_reduce_strategy.py), with our timeouts; it
    must be configured before the strategy starts the cluster's servers."""
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    from tensorflow.tsl.protobuf import coordination_config_pb2

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
            for job in ("chief", "worker") if job in spec.jobs]
    if not jobs or resolver.task_type not in ("chief", "worker"):
        return
    if context.context().coordination_service is not None:
        return  # configured already (by an earlier strategy of this process)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(heartbeat_s * 1000),
        shutdown_barrier_timeout_in_ms=int(shutdown_s * 1000))


def lost_task_error(error: Exception, strategy, checkpoints: str) -> ClusterError | None:
    """The `ClusterError` of a TensorFlow `error` raised because a task of the cluster was lost
    (None for any other error): it names the lost task, why it counts as lost, and the restart.
    `checkpoints` is the chief's checkpoint folder (where the restart resumes from)."""
    if not isinstance(error, tf.errors.OpError) or isinstance(error, tf.errors.DataLossError):
        return None
    text = str(getattr(error, "message", error))
    me = task_name(strategy)
    named = list(dict.fromkeys(_TASK.findall(text)))
    tasks = [t for t in named if t != me]
    addresses = _task_addresses()
    if not tasks:  # an RPC error names the peer's address instead
        tasks = [t for a, t in addresses.items() if t != me and re.search(
            re.escape(a) + r"(?!\d)", text)]
    lower = text.lower()
    if "heartbeat" in lower:
        reason = "heartbeat timeout"
    elif isinstance(error, tf.errors.DeadlineExceededError):
        reason = "collective timeout"
    elif isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError,
                            tf.errors.CancelledError)) or "collective" in lower:
        reason = "unreachable"
    else:
        return None
    if not tasks and "coordination service" in lower:
        tasks = [_leader()]  # this task lost the service: its leader is gone
    if not tasks and me in named and reason == "heartbeat timeout":
        # The service declared this very task lost: its heartbeats came late.
        tasks = [f"{me} itself (its heartbeats came late: a stalled or overloaded machine? "
                 "a larger train.heartbeat_timeout tolerates it)"]
    lost = ", ".join(tasks) if tasks else "a task of the cluster"
    # The first line of TensorFlow's message, without the name of the function it ran in.
    first = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text.strip())
    first = first.splitlines()[0][:300] if first else ""
    latest = tf.train.latest_checkpoint(checkpoints) or "none yet: from the start"
    return ClusterError(
        f"lost {lost} ({reason}); {me} stops. Restart every task of the cluster with the same "
        f"command: they resume from the chief's last checkpoint ({latest}). TensorFlow: "
        f"{type(error).__name__}: {first}")


@contextlib.contextmanager
def reporting_lost_tasks(strategy, checkpoints: str):
    """Turn the errors of a lost task into `ClusterError` (see `lost_task_error`) in a
    multi-worker run; any other error, and every error of a single process, passes unchanged."""
    try:
        yield
    except tf.errors.OpError as e:
        lost = lost_task_error(e, strategy, checkpoints) if is_multi_worker(strategy) else None
        if lost is None:
            raise
        raise lost from e


def task_name(strategy) -> str:
    """This process's task, as TensorFlow names it (``/job:worker/replica:0/task:1``)."""
    resolver = strategy.cluster_resolver
    return f"/job:{resolver.task_type}/replica:0/task:{resolver.task_id}"


def _task_addresses() -> dict:
    """{``host:port``: task name} of the cluster of ``TF_CONFIG``."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return {address: f"/job:{job}/replica:0/task:{i}"
            for job, addresses in cluster.items() for i, address in enumerate(addresses)}


def _leader() -> str:
    """The coordination service's leader: the chief, else worker 0."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return "/job:chief/replica:0/task:0" if cluster.get("chief") else "/job:worker/replica:0/task:0"


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
