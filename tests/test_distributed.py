"""L-SNet's training step under ``tf.distribute.MirroredStrategy`` on the two logical CPUs of
``tests/conftest.py`` against one device, for the same global batch of 4.

What holds and what does not (measured on this tiny model, SGD, one step):

- The networks' BatchNormalization layers are not synchronized: in training mode each replica
  normalises with its own half-batch statistics, so the 2-replica step is a different function
  of the batch than the 1-device step. Its weight updates differ from the 1-device ones by 2 to
  9 times the largest update of a tensor (the strict test, xfail).
- With the BN layers in inference mode (``trainable = False``), everything else agrees to float
  rounding (1e-6 of the largest entry): global-count normalisation of every loss term, the
  gradient sum over replicas, both optimizers. ``evaluate`` (BN in inference mode by itself)
  reduces every loss term over the replicas to the 1-device loss of the same batch.
- With BN in training mode, the 2-replica update equals the sum of per-replica references built by
  hand (each half batch through the networks, each loss term divided by the global count), and
  each replica's BN moving statistics are those of its half batch.
- The random training RoI (top_k = 3) does not depend on how a global batch is split over
  replicas (it did while every replica drew with the same step seed: image b of every replica got
  the same rank). The tests of the update in training mode use top_k = 1, whose RoI is not
  random, so that they do not depend on the draw.
- With every BN layer built ``synchronized=True`` (``train.sync_batch_norm``, on by default: the
  trainer's ``build_for`` asks ``build_model`` for it over several replicas) every replica's moving statistics after
  a step are those of one device's step on the whole global batch. The 2-replica update comes to
  within about 4% of the largest entry of a tensor of the 1-device one. That is the float
  sensitivity of training-mode BN here, not an error: on one device, BN's variance computed as
  E[x²] - E[x]² instead of E[(x - E[x])²] alone changes the gradients by up to 1%, and scaling
  the input by 1 + 1e-7 by up to 0.08%. No test pins that comparison.

The steps run eagerly (``run_eagerly=True``): tracing the two replicas' step takes minutes on two
CPUs; the operations are the same.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_batch, tiny_cfg
from lsnet_tf.config import STRIDE
from lsnet_tf.losses.localization import localization_loss
from lsnet_tf.losses.segmentation import per_sample_loss_from_logits
from lsnet_tf.layers.roi_recalibration import RoIRecalibration
from lsnet_tf.training import session
from lsnet_tf.models import two_stage
from lsnet_tf.models.build import batch_norm_layers, build_model
from lsnet_tf.ops.sampling import affine_grid, bilinear_sample

pytestmark = pytest.mark.slow

LR = 0.5
GLOBAL_BATCH = 4
# Replica 0 gets images 0 and 1 (two targets), replica 1 images 2 and 3 (one): a loss divided by
# a replica's own counts instead of the global ones weighs the halves differently.
WITH_TARGET = (True, True, False, True)


def select_rois(model, heatmap, ltrb, training, seed):
    """L-SNet's training RoI choice (``two_stage.select_train_rois`` with the model's top_k)."""
    return two_stage.select_train_rois(heatmap, ltrb, model.top_k, training, seed)


def global_batch():
    """The fixed batch: the pipeline's format, with noise on the images (no ties among the
    heatmap's cells, so every RoI choice is well defined)."""
    batch = make_batch(n=GLOBAL_BATCH, with_target=WITH_TARGET)
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, batch["image"].shape)
    batch["image"] = batch["image"] + tf.constant(noise, tf.float32)
    return batch


@pytest.fixture(scope="module")
def mirrored():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/conftest.py configures two logical CPUs"
    # Reduction through one device, not collective ops (see test_reliability: a second
    # MirroredStrategy's collectives in one process collide with the first one's keys).
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def initial_weights(cfg):
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    return {"lnet": model.lnet.get_weights(), "snet": model.snet.get_weights()}


def model_with(cfg, weights, frozen_bn=False, strategy=None, synchronized=False):
    """``build_model(cfg, synchronized)`` in `strategy`'s scope with `weights`, SGD(LR) for both
    networks."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(cfg, synchronized=synchronized)
        model.lnet.set_weights(weights["lnet"])
        model.snet.set_weights(weights["snet"])
        if frozen_bn:  # Keras: a BN layer that is not trainable runs in inference mode
            for layer in batch_norm_layers(model):
                layer.trainable = False
        model.compile(lnet_optimizer=keras.optimizers.SGD(LR),
                      snet_optimizer=keras.optimizers.SGD(LR), run_eagerly=True)
    return model


def one_step(model, batch):
    """One ``fit`` step on the global batch; the networks' weights after it: per network, per
    variable, the values of every replica."""
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(GLOBAL_BATCH)
    model.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    return {name: [[np.array(c) for c in getattr(v.value, "values", [v.value])]
                   for v in net.weights]
            for name, net in (("lnet", model.lnet), ("snet", model.snet))}


def max_update_error(after, expected, before):
    """Worst, over tensors and replicas, of |after - expected| / max|expected - before|, less
    two float32 spacings of the tensor's largest weight (rounding of w - lr·g, not of g)."""
    worst = 0.0
    for replicas, e, b in zip(after, expected, before):
        update = np.abs(e - b).max()
        rounding = 2 * np.spacing(np.float32(np.abs(e).max()))
        for a in replicas:
            err = max(np.abs(a - e).max() - rounding, 0.0)
            worst = max(worst, err / max(update, 1e-12) if err else 0.0)
    return worst


def trainable_mask(model):
    return {name: [v.trainable for v in net.weights]
            for name, net in (("lnet", model.lnet), ("snet", model.snet))}


def compare(after, expected, before, which, tolerance):
    for name in ("lnet", "snet"):
        sel = [k for k, t in enumerate(which[name]) if t]
        err = max_update_error([after[name][k] for k in sel], [expected[name][k] for k in sel],
                               [before[name][k] for k in sel])
        assert err <= tolerance, (name, err)


def single_and_mirrored(cfg, mirrored, frozen_bn):
    weights = initial_weights(cfg)
    batch = global_batch()
    single = model_with(cfg, weights, frozen_bn)
    expected = one_step(single, batch)
    expected = {n: [r[0] for r in v] for n, v in expected.items()}
    model = model_with(cfg, weights, frozen_bn, mirrored)
    assert model.distribute_strategy.num_replicas_in_sync == 2
    after = one_step(model, batch)
    before = {n: [np.array(w) for w in ws] for n, ws in weights.items()}
    return after, expected, before, trainable_mask(model)


# ----------------------------------------------------------------------------- tests

@pytest.mark.xfail(strict=True, reason="BatchNormalization is not synchronized across replicas: "
                   "each normalises with its half batch's statistics in training mode")
def test_mirrored_step_equals_one_device_step(mirrored):
    after, expected, before, _ = single_and_mirrored(tiny_cfg("train.top_k=1"), mirrored, False)
    every = {n: [True] * len(v) for n, v in before.items()}
    compare(after, expected, before, every, 1e-4)


def test_mirrored_step_equals_one_device_step_with_batch_norm_in_inference_mode(mirrored):
    after, expected, before, trainable = single_and_mirrored(
        tiny_cfg("train.top_k=1"), mirrored, True)
    # Trainable weights to float rounding; the frozen BN statistics stay as they were.
    compare(after, expected, before, trainable, 1e-4)
    for name in ("lnet", "snet"):
        for k, t in enumerate(trainable[name]):
            if not t:
                for c in after[name][k]:
                    np.testing.assert_array_equal(c, before[name][k])


def test_mirrored_evaluation_equals_one_device_evaluation(mirrored):
    """``evaluate`` under the strategy reduces every loss term over the replicas to the loss of
    one device on the same global batch (BN in inference mode in both: nothing else differs)."""
    cfg = tiny_cfg("train.top_k=1")
    weights = initial_weights(cfg)
    ds = tf.data.Dataset.from_tensor_slices(global_batch()).batch(GLOBAL_BATCH)
    single = model_with(cfg, weights)
    model = model_with(cfg, weights, strategy=mirrored)
    ref = single.evaluate(ds, verbose=0, return_dict=True)
    res = model.evaluate(ds, verbose=0, return_dict=True)
    names = ("loss", "l_loss", "s_loss", "box_loss", "heatmap_loss")
    assert all(ref[name] > 0 for name in names), ref
    for name in names:
        assert res[name] == pytest.approx(ref[name], rel=1e-5, abs=1e-7), name


def split_and_whole_rois(model, strategy, seed):
    """The training RoI points (GLOBAL_BATCH, 2) that `strategy`'s replicas choose for their
    shares of a global batch (random heatmaps), and those one device chooses for the whole."""
    heat = tf.random.stateless_uniform([GLOBAL_BATCH, 16, 16, 1], [5, 5])
    ltrb = tf.random.stateless_uniform([GLOBAL_BATCH, 16, 16, 4], [6, 6])
    rows = GLOBAL_BATCH // strategy.num_replicas_in_sync

    def share(x):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: x[ctx.replica_id_in_sync_group * rows:][:rows])

    points = strategy.run(lambda h, d: select_rois(model, h, d, True, seed)[0],
                          args=(share(heat), share(ltrb)))
    split = np.concatenate([p.numpy() for p in strategy.experimental_local_results(points)])
    return split, select_rois(model, heat, ltrb, True, seed)[0].numpy()


def test_training_rois_of_a_global_batch_do_not_depend_on_its_split(mirrored):
    model = build_model(tiny_cfg("train.top_k=3"))
    for s in range(4):
        split, whole = split_and_whole_rois(model, mirrored, tf.constant([1, s], tf.int64))
        np.testing.assert_array_equal(split, whole, err_msg=f"step {s}")


def test_mirrored_random_rois_equal_one_device_rois(mirrored):
    """With top_k = 3 and BN in inference mode, the random RoI draw is the only difference left
    (seed 1, step 0: one device draws ranks (0, 1, 1, 2) for images 0..3; with the same seed on
    every replica, as before the draw was made for the global batch, each replica drew (0, 1))."""
    cfg = tiny_cfg("train.top_k=3", "train.seed=1", "train.gamma=1.0")
    after, expected, before, trainable = single_and_mirrored(cfg, mirrored, True)
    compare(after, expected, before, trainable, 1e-4)


def replica_reference(cfg, model, half, counts):
    """One replica's gradients, by hand, as one device computes them for its half batch:
    (L-Net's grads of L_L + γ·L_S, S-Net's of L_S), every term divided by the global counts."""
    images, mask = half["image"], half["mask"]
    has_target = tf.cast(half["num_boxes"] > 0, tf.float32)
    roi_size = tuple(int(s) for s in model.snet.input_shape[1:3])
    rr = RoIRecalibration(output_size=roi_size, margin=model.margin)
    seed = tf.constant([cfg.train.seed, 0], tf.int64)
    positives = float(tf.reduce_sum(tf.cast(half["heatmap"] > cfg.loss.tau, tf.float32)))
    with tf.GradientTape(persistent=True) as tape:
        out = model.lnet(images, training=True)
        _, terms = localization_loss(out["heatmap_logits"], out["ltrb"], half["heatmap"],
                                     half["ltrb"], cfg.loss, counts["batch"], STRIDE)
        # localization_loss divides the box term by this half's positives: by the global ones.
        box = terms["box"] * max(positives, 1.0) / counts["positives"]
        l_loss = terms["heatmap"] + cfg.loss.box_weight * box
        points, dist = select_rois(model, out["heatmap"], out["ltrb"], True, seed)
        rois, theta = rr([images, points, dist])
        roi_mask = bilinear_sample(mask, affine_grid(tf.stop_gradient(theta), *roi_size))
        per_image = per_sample_loss_from_logits(cfg.loss, roi_mask, model.snet(rois, training=True))
        s_loss = tf.reduce_sum(per_image * has_target) / counts["targets"]
        total = l_loss + cfg.train.gamma * s_loss
    return (tape.gradient(total, model.lnet.trainable_variables),
            tape.gradient(s_loss, model.snet.trainable_variables))


def test_mirrored_step_is_the_sum_of_per_replica_references(mirrored):
    """BN in training mode: the 2-replica update is -LR times the sum of the two replicas'
    hand-made gradients (global counts), and replica r's BN statistics are those of half r."""
    cfg = tiny_cfg("train.top_k=1", "train.gamma=1.0")
    weights = initial_weights(cfg)
    batch = global_batch()
    counts = {"batch": GLOBAL_BATCH, "targets": float(sum(WITH_TARGET)),
              "positives": float(tf.reduce_sum(tf.cast(batch["heatmap"] > cfg.loss.tau,
                                                       tf.float32)))}
    reference = model_with(cfg, weights)
    grads = {"lnet": None, "snet": None}
    statistics = []
    for r in range(2):
        half = {k: v[2 * r:2 * r + 2] for k, v in batch.items()}
        reference.lnet.set_weights(weights["lnet"])
        reference.snet.set_weights(weights["snet"])
        got = replica_reference(cfg, reference, half, counts)
        for name, g in zip(("lnet", "snet"), got):
            g = [x.numpy() for x in g]
            grads[name] = g if grads[name] is None else [a + b for a, b in zip(grads[name], g)]
        statistics.append({name: [np.array(v.value) for v in net.weights]
                           for name, net in (("lnet", reference.lnet),
                                             ("snet", reference.snet))})
    model = model_with(cfg, weights, strategy=mirrored)
    after = one_step(model, batch)
    before = {n: [np.array(w) for w in ws] for n, ws in weights.items()}
    for name, net in (("lnet", model.lnet), ("snet", model.snet)):
        trainable = [v.trainable for v in net.weights]
        g = iter(grads[name])
        expected = [before[name][k] - np.float32(LR) * next(g) if t else None
                    for k, t in enumerate(trainable)]
        sel = [k for k, t in enumerate(trainable) if t]
        err = max_update_error([after[name][k] for k in sel], [expected[k] for k in sel],
                               [before[name][k] for k in sel])
        assert err <= 1e-4, (name, err)
        # Replica r's moving statistics: those of one device's forward pass on half r.
        for k, t in enumerate(trainable):
            if not t:
                for r in range(2):
                    np.testing.assert_allclose(after[name][k][r], statistics[r][name][k],
                                               rtol=1e-5, atol=1e-6, err_msg=(name, k, r))
        moved = [k for k, t in enumerate(trainable)
                 if not t and not np.allclose(after[name][k][0], after[name][k][1])]
        assert moved, "the two replicas' statistics differ (half batches differ)"


def test_synchronized_batch_norm_keeps_the_statistics_of_the_global_batch(mirrored):
    """BN synchronized: after one step, both replicas' moving statistics are those of one
    device's step on the whole global batch (not of their halves, as in the test above).

    The error is measured against each statistic's update in that step (momentum 0.9 or 0.99,
    so the update is 1-10 % of the statistic): 2.9e-5 measured synchronized (float rounding;
    Keras's variance is E[x²] - E[x]²), 1.39 without synchronizing."""
    cfg = tiny_cfg("train.top_k=1", "train.gamma=1.0")
    weights = initial_weights(cfg)
    batch = global_batch()
    expected = one_step(model_with(cfg, weights), batch)
    model = model_with(cfg, weights, strategy=mirrored, synchronized=True)
    after = one_step(model, batch)
    worst = 0.0
    for name, net in (("lnet", model.lnet), ("snet", model.snet)):
        stats = [k for k, v in enumerate(net.weights) if not v.trainable]
        assert len(stats) > 10, (name, len(stats))
        for k in stats:
            want = expected[name][k][0]
            assert len(after[name][k]) == 2
            for got in after[name][k]:
                scale = max(np.abs(want - weights[name][k]).max(), 1e-12)
                worst = max(worst, np.abs(got - want).max() / scale)
    assert worst <= 1e-3, worst


def test_build_for_synchronizes_batch_norm_over_several_replicas(mirrored):
    """``session.build_for``: every BN layer synchronized over 2 replicas, with one log line; none
    with ``train.sync_batch_norm=false`` or on one device."""
    def built(strategy, *overrides):
        lines = []
        with strategy.scope():
            model = session.build_for(tiny_cfg(*overrides), strategy, 4, lines.append)
        layers = batch_norm_layers(model)
        assert len(layers) > 20
        return [layer.synchronized for layer in layers], lines

    synced, lines = built(mirrored)
    assert all(synced)
    assert lines == [f"batch norm: {len(synced)} layers normalise with the statistics of the "
                     "global batch over 2 replicas (train.sync_batch_norm)"]
    for strategy, overrides in ((mirrored, ["train.sync_batch_norm=false"]),
                                (tf.distribute.get_strategy(), [])):
        synced, lines = built(strategy, *overrides)
        assert not any(synced) and lines == []
