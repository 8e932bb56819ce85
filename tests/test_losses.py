"""Known answers, reductions, gradients and errors of lsnet_tf.losses.segmentation."""
import math

import numpy as np
import pytest
import tensorflow as tf
import keras

from lsnet_tf.config import LossConfig
from lsnet_tf.losses.segmentation import (bce_loss, bce_per_sample, focal_dice_loss,
                                          focal_dice_per_sample, focal_loss, per_sample_loss,
                                          segmentation_loss, soft_dice_loss)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _masks(rng, shape=(3, 8, 8, 1)):
    y = (rng.uniform(size=shape) > 0.7).astype("float32")
    p = rng.uniform(0.02, 0.98, size=shape).astype("float32")
    return y, p


# ---------------------------------------------------------------- focal

@pytest.mark.parametrize("p, y, expected", [
    (0.9, 1.0, -0.25 * 0.1 ** 2 * math.log(0.9)),
    (0.9, 0.0, -0.75 * 0.9 ** 2 * math.log(0.1)),
    (0.2, 1.0, -0.25 * 0.8 ** 2 * math.log(0.2)),
    (0.2, 0.0, -0.75 * 0.2 ** 2 * math.log(0.8)),
    (0.5, 1.0, -0.25 * 0.5 ** 2 * math.log(0.5)),
])
def test_focal_known_values(p, y, expected):
    out = _np(focal_loss(np.array([y], "float32"), np.array([p], "float32")))
    np.testing.assert_allclose(out, [expected], rtol=1e-5)


def test_focal_soft_target_mixes_both_terms():
    # y = 0.3, p = 0.6: 0.3 * positive term + 0.7 * negative term.
    expected = (-0.25 * 0.3 * 0.4 ** 2 * math.log(0.6)
                - 0.75 * 0.7 * 0.6 ** 2 * math.log(0.4))
    out = _np(focal_loss(np.array([0.3], "float32"), np.array([0.6], "float32")))
    np.testing.assert_allclose(out, [expected], rtol=1e-5)


def test_focal_gamma0_alpha_half_is_half_bce():
    rng = np.random.default_rng(0)
    y, p = _masks(rng)
    out = _np(focal_loss(y, p, alpha=0.5, gamma=0.0))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(out, 0.5 * bce, rtol=1e-5, atol=1e-7)
    assert out.shape == y.shape  # no reduction


def test_focal_saturated_predictions_are_clipped_and_finite():
    eps = 1e-6
    y = np.array([1.0, 0.0, 1.0, 0.0], "float32")
    p = np.array([0.0, 1.0, 1.0, 0.0], "float32")
    out = _np(focal_loss(y, p, eps=eps))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], -0.25 * (1 - eps) ** 2 * math.log(eps), rtol=1e-4)
    # float32(1 - eps) is 1 - 1.0133e-6, hence the looser tolerance on log(1 - p).
    np.testing.assert_allclose(out[1], -0.75 * (1 - eps) ** 2 * math.log(eps), rtol=2e-3)
    assert out[2] < 1e-10 and out[3] < 1e-10  # right and confident: ~0


def test_focal_down_weights_easy_examples():
    # Relative to BCE, the focal factor (1 - p)^2 weights a hard positive (p = 0.05) over an
    # easy one (p = 0.95) by (0.95 / 0.05)^2 = 361.
    easy = _np(focal_loss(np.array([1.0], "float32"), np.array([0.95], "float32")))[0]
    hard = _np(focal_loss(np.array([1.0], "float32"), np.array([0.05], "float32")))[0]
    bce_ratio = math.log(0.05) / math.log(0.95)
    np.testing.assert_allclose(hard / easy / bce_ratio, 361.0, rtol=1e-4)


def test_focal_float16_inputs_give_float32():
    y = np.array([[1.0, 0.0]], "float16")
    p = np.array([[0.9, 0.1]], "float16")
    out = focal_loss(y, p)
    assert out.dtype == tf.float32
    hi, lo = float(np.float16(0.9)), float(np.float16(0.1))  # the float16 roundings
    expected = [[-0.25 * (1 - hi) ** 2 * math.log(hi), -0.75 * lo ** 2 * math.log(1 - lo)]]
    np.testing.assert_allclose(_np(out), expected, rtol=1e-5)


# ---------------------------------------------------------------- dice

def test_dice_identical_masks_is_zero():
    rng = np.random.default_rng(1)
    y, _ = _masks(rng)
    np.testing.assert_allclose(_np(soft_dice_loss(y, y)), np.zeros(3), atol=1e-7)


def test_dice_disjoint_masks():
    y = np.zeros((1, 4, 4, 1), "float32")
    p = np.zeros((1, 4, 4, 1), "float32")
    y[0, :2] = 1  # 8 pixels
    p[0, 2:] = 1  # 8 other pixels
    np.testing.assert_allclose(_np(soft_dice_loss(y, p)), [1 - 1 / 17], rtol=1e-6)
    assert _np(soft_dice_loss(y, p))[0] > 0.94


def test_dice_half_overlap_hand_computed():
    y = np.zeros((2, 4, 4, 1), "float32")
    p = np.zeros((2, 4, 4, 1), "float32")
    y[:, 0, :4] = 1            # 4 pixels
    p[:, 0, 2:] = 1            # 2 of them ...
    p[:, 1, :2] = 1            # ... and 2 outside
    p[1] *= 0.5                # soft prediction: intersection 1, sum 2
    expected = [1 - (2 * 2 + 1) / (4 + 4 + 1), 1 - (2 * 1 + 1) / (4 + 2 + 1)]
    np.testing.assert_allclose(_np(soft_dice_loss(y, p)), expected, rtol=1e-6)


def test_dice_both_empty_is_zero_and_axis_controls_reduction():
    z = np.zeros((2, 4, 4, 3), "float32")
    np.testing.assert_allclose(_np(soft_dice_loss(z, z)), [0, 0], atol=0)
    assert soft_dice_loss(z, z, axis=(1, 2)).shape == (2, 3)


# ---------------------------------------------------------------- focal + dice, bce

def test_focal_dice_is_mean_focal_plus_weighted_dice():
    rng = np.random.default_rng(2)
    y, p = _masks(rng)
    f = -0.25 * y * (1 - p) ** 2 * np.log(p) - 0.75 * (1 - y) * p ** 2 * np.log(1 - p)
    inter = (y * p).sum(axis=(1, 2, 3))
    d = 1 - (2 * inter + 1) / (y.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3)) + 1)
    expected = f.mean() + 0.2 * d.mean()
    np.testing.assert_allclose(_np(focal_dice_loss(y, p)), expected, rtol=1e-5)
    np.testing.assert_allclose(_np(focal_dice_loss(y, p, dice_weight=0.0)), f.mean(), rtol=1e-5)


def test_focal_dice_sample_weight_selects_samples():
    rng = np.random.default_rng(3)
    y, p = _masks(rng)
    w = np.array([1.0, 0.0, 1.0], "float32")
    np.testing.assert_allclose(_np(focal_dice_loss(y, p, sample_weight=w)),
                               _np(focal_dice_loss(y[[0, 2]], p[[0, 2]])), rtol=1e-6)
    # Only the ratio of weights matters.
    np.testing.assert_allclose(_np(focal_dice_loss(y, p, sample_weight=3 * w)),
                               _np(focal_dice_loss(y, p, sample_weight=w)), rtol=1e-6)


def test_focal_dice_all_zero_weights_is_exactly_zero_with_zero_gradient():
    rng = np.random.default_rng(4)
    y, p = _masks(rng)
    p = tf.Variable(p)
    with tf.GradientTape() as tape:
        loss = focal_dice_loss(y, p, sample_weight=tf.zeros(3))
    grad = tape.gradient(loss, p)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(grad.numpy())) and not np.any(grad.numpy())


def test_bce_matches_keras():
    rng = np.random.default_rng(5)
    y, p = _masks(rng)
    expected = np.mean(_np(keras.losses.binary_crossentropy(y, p)))
    np.testing.assert_allclose(_np(bce_loss(y, p)), expected, rtol=1e-5)
    # Saturated predictions clip like Keras (epsilon 1e-7).
    p[0, 0, 0, 0], y[0, 0, 0, 0] = 0.0, 1.0
    expected = np.mean(_np(keras.losses.binary_crossentropy(y, p)))
    np.testing.assert_allclose(_np(bce_loss(y, p)), expected, rtol=1e-4)


def test_bce_sample_weight_and_all_zero():
    rng = np.random.default_rng(6)
    y, p = _masks(rng)
    np.testing.assert_allclose(_np(bce_loss(y, p, sample_weight=[0.0, 1.0, 0.0])),
                               _np(bce_loss(y[1:2], p[1:2])), rtol=1e-6)
    assert float(bce_loss(y, p, sample_weight=np.zeros(3, "float32"))) == 0.0


@pytest.mark.parametrize("loss_fn", [
    lambda y, p: tf.reduce_sum(focal_loss(y, p)),
    lambda y, p: tf.reduce_sum(soft_dice_loss(y, p)),
    lambda y, p: focal_dice_loss(y, p, sample_weight=[1.0, 0.0, 2.0]),
    lambda y, p: bce_loss(y, p),
], ids=["focal", "dice", "focal_dice", "bce"])
def test_loss_gradients_finite_and_informative(loss_fn):
    rng = np.random.default_rng(7)
    y, p = _masks(rng)
    p[0, 0, 0, 0], p[0, 0, 1, 0] = 0.0, 1.0  # saturated entries must not give NaN
    logits = tf.Variable(np.log(np.clip(p, 1e-3, 1 - 1e-3) / (1 - np.clip(p, 1e-3, 1 - 1e-3))))
    with tf.GradientTape() as tape:
        loss = loss_fn(y, tf.sigmoid(logits))
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 0
    # Gradient descent on the logits lowers the loss.
    after = loss_fn(y, tf.sigmoid(logits - 0.1 * grad / np.abs(grad).max()))
    assert float(after) < float(loss)


def test_losses_work_inside_tf_function_with_unknown_batch():
    fn = tf.function(lambda y, p: focal_dice_loss(y, p),
                     input_signature=[tf.TensorSpec((None, 8, 8, 1))] * 2)
    rng = np.random.default_rng(8)
    y, p = _masks(rng)
    np.testing.assert_allclose(_np(fn(y, p)), _np(focal_dice_loss(y, p)), rtol=1e-6)


# ---------------------------------------------------------------- dispatcher and errors

def test_segmentation_loss_dispatches_on_config_kind():
    rng = np.random.default_rng(9)
    y, p = _masks(rng)
    w = np.array([1.0, 1.0, 0.0], "float32")
    cfg = LossConfig(focal_alpha=0.4, focal_gamma=1.0, dice_weight=0.5)
    out = segmentation_loss(cfg.kind, y, p, w, cfg.focal_alpha, cfg.focal_gamma, cfg.dice_weight)
    np.testing.assert_allclose(
        _np(out), _np(focal_dice_loss(y, p, 0.4, 1.0, 0.5, sample_weight=w)), rtol=1e-6)
    np.testing.assert_allclose(_np(segmentation_loss("bce", y, p, w)),
                               _np(bce_loss(y, p, sample_weight=w)), rtol=1e-6)


def test_per_sample_loss_follows_the_config_and_reduces_to_the_scalar_losses():
    rng = np.random.default_rng(11)
    y, p = _masks(rng)
    f = -0.4 * y * (1 - p) * np.log(p) - 0.6 * (1 - y) * p * np.log(1 - p)
    d = 1 - (2 * (y * p).sum(axis=(1, 2, 3)) + 1) / (y.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3)) + 1)
    cfg = LossConfig(focal_alpha=0.4, focal_gamma=1.0, dice_weight=0.5)
    per = _np(per_sample_loss(cfg, y, p))
    np.testing.assert_allclose(per, f.mean(axis=(1, 2, 3)) + 0.5 * d, rtol=1e-5)
    np.testing.assert_allclose(per, _np(focal_dice_per_sample(y, p, 0.4, 1.0, 0.5)), rtol=1e-6)
    w = np.array([2.0, 0.0, 1.0], "float32")
    np.testing.assert_allclose((w * per).sum() / w.sum(),
                               _np(focal_dice_loss(y, p, 0.4, 1.0, 0.5, sample_weight=w)), rtol=1e-5)
    bce = _np(per_sample_loss(LossConfig(kind="bce"), y, p))
    np.testing.assert_allclose(bce, _np(bce_per_sample(y, p)), rtol=1e-6)
    np.testing.assert_allclose(bce, -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=(1, 2, 3)),
                               rtol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda y, p: segmentation_loss("dice", y, p), "received 'dice'"),
    (lambda y, p: per_sample_loss(LossConfig(kind="dice"), y, p), "received 'dice'"),
    (lambda y, p: focal_loss(y, p, alpha=1.5), "alpha must lie in"),
    (lambda y, p: focal_loss(y, p, gamma=-1.0), "gamma must be >= 0"),
    (lambda y, p: focal_loss(y, p, eps=0.0), "eps must lie in"),
    (lambda y, p: soft_dice_loss(y, p, smooth=0.0), "smooth must be > 0"),
    (lambda y, p: focal_dice_loss(y, p, dice_weight=-0.2), "dice_weight must be >= 0"),
    (lambda y, p: focal_dice_loss(y, p[:, :4]), r"same shape, received \(3, 8, 8, 1\) and \(3, 4, 8, 1\)"),
    (lambda y, p: focal_dice_loss(y, p, sample_weight=np.ones((3, 1))), r"received shape \(3, 1\)"),
    (lambda y, p: bce_loss(y, p, sample_weight=np.ones(2)), r"= \(3,\), received shape \(2,\)"),
    (lambda y, p: bce_loss(y[0, 0, 0], p[0, 0, 0]), "batched inputs"),
])
def test_documented_errors(call, message):
    y, p = _masks(np.random.default_rng(10))
    with pytest.raises(ValueError, match=message):
        call(y, p)


def test_focal_from_logits_matches_probabilities_and_keeps_gradient():
    from lsnet_tf.losses.segmentation import focal_loss_with_logits, per_sample_loss_from_logits
    from lsnet_tf.config import LossConfig
    z = tf.constant([[-3.0, 0.5], [2.0, -1.0]])
    y = tf.constant([[1.0, 0.0], [0.3, 1.0]])
    np.testing.assert_allclose(focal_loss_with_logits(y, z).numpy(),
                               focal_loss(y, tf.sigmoid(z)).numpy(), rtol=1e-5)
    # A saturated negative logit at a positive still gets a gradient of about -alpha.
    zs = tf.Variable([[-40.0]])
    with tf.GradientTape() as tape:
        loss = focal_loss_with_logits(tf.constant([[1.0]]), zs, alpha=0.25)
    assert tape.gradient(loss, zs).numpy()[0, 0] == pytest.approx(-0.25, rel=1e-3)
    # per-sample forms: focal+Dice and BCE against the probability versions.
    y4, z4 = tf.reshape(y, [2, 1, 2, 1]), tf.reshape(z, [2, 1, 2, 1])
    cfg = LossConfig()
    np.testing.assert_allclose(per_sample_loss_from_logits(cfg, y4, z4).numpy(),
                               per_sample_loss(cfg, y4, tf.sigmoid(z4)).numpy(), rtol=1e-5)
    # "positives": the focal sum divided by the count of y > 0.5 (1 in each sample here).
    pos = LossConfig(dice_weight=0.0)
    fl = focal_loss(y4, tf.sigmoid(z4), alpha=pos.focal_alpha).numpy().reshape(2, -1)
    np.testing.assert_allclose(per_sample_loss_from_logits(pos, y4, z4, "positives").numpy(),
                               fl.sum(1) / 1.0, rtol=1e-5)
    bce = LossConfig(kind="bce")
    np.testing.assert_allclose(per_sample_loss_from_logits(bce, y4, z4).numpy(),
                               per_sample_loss(bce, y4, tf.sigmoid(z4)).numpy(), rtol=1e-4)
