"""One replica's share of a global batch under ``tf.distribute``: sums over the replicas and random
draws that do not depend on how a global batch is split.

Outside a replica context, or with one replica, each function is its one-device self.
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["global_sum", "replica_uniform"]


def global_sum(x):
    """Sum of `x` over replicas (identity outside a replica context of several replicas)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def replica_uniform(shape, seed, minval=0, maxval=None, dtype=tf.float32):
    """``tf.random.stateless_uniform`` of this replica's share of a global batch.

    `shape` is the replica's ``(B, ...)``. The numbers are drawn for the whole global batch
    (``B x replicas``, the same draw on every replica) and each replica takes its own rows, in
    the order the strategy splits a global batch (replica r gets rows ``r·B .. (r + 1)·B - 1``):
    a global batch gets the same random choices whether it runs on one device or is split over
    several. On one device this is ``stateless_uniform(shape, seed, ...)`` itself.
    """
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas == 1:
        return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype=dtype)
    shape = tf.convert_to_tensor(shape, tf.int32)
    rows = shape[0]
    draw = tf.random.stateless_uniform(tf.concat([[rows * replicas], shape[1:]], 0), seed,
                                       minval, maxval, dtype=dtype)
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * rows
    return draw[start:start + rows]
