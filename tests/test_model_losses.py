"""Every model computes its segmentation loss from logits, through one path.

Each network here is a stub whose output logits are a trainable constant, so the loss each model
computes, and its gradient with respect to those logits, can be compared with an independent
float64 reference written from the formulas (Eq. 6: focal + 0.2 Dice, or BCE). Some logits are
saturated (±40): from clipped probabilities the loss there would be capped near −log(1e-6) and its
gradient would be exactly 0, so a model that took that route fails these tests.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.config import LossConfig
from lsnet_tf.models.cascades import CoarseToFine, LNetCrop
from lsnet_tf.models.lsnet import LSNet
from lsnet_tf.models.one_stage import OneStageSegmenter

S = 64  # image size; L-Net's grid is S / 4 = 16 cells
BOX = [24.0, 24.0, 40.0, 40.0]  # the target box; crops of it with a 15-px margin stay inside


class Const(keras.layers.Layer):
    """Ignores its input's values; outputs a trainable constant ``(B,) + value.shape``."""

    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = np.asarray(value, np.float32)

    def build(self, input_shape):
        self.z = self.add_weight(shape=self.value.shape, name="z",
                                 initializer=keras.initializers.Constant(self.value))

    def call(self, x):
        return tf.broadcast_to(self.z[None], tf.concat([tf.shape(x)[:1], tf.shape(self.z)], 0))


def stub_segmenter(logits, name):
    x = keras.Input((S, S, 1))
    return keras.Model(x, Const(logits, name=f"{name}_logits")(x), name=name)


def stub_lnet():
    """Heatmap peaking at the centre cell (8, 8); every cell regresses 8 px on each side."""
    heat = np.full((S // 4, S // 4, 1), -6.0, np.float32)
    heat[8, 8, 0] = 6.0
    x = keras.Input((S, S, 1))
    z = Const(heat, name="kp_logits")(x)
    ltrb = Const(np.full((S // 4, S // 4, 4), 8.0, np.float32), name="ltrb_const")(x)
    return keras.Model(x, {"heatmap": keras.layers.Activation("sigmoid")(z),
                           "heatmap_logits": z, "ltrb": ltrb}, name="lnet")


def logits_pattern(seed):
    """(S, S, 1) logits from -40 to 40, saturated at both ends."""
    z = np.random.default_rng(seed).uniform(-6, 6, (S, S, 1)).astype(np.float32)
    z[:4] = -40.0
    z[-4:] = 40.0
    return z


def batch(mask):
    """Two images, both with the target `BOX`; `mask` (S, S) is each image's mask."""
    from lsnet_tf.data.targets import encode_targets

    heat, ltrb = encode_targets(tf.constant([BOX]), S, S, 4)
    return {"image": tf.zeros([2, S, S, 1]), "mask": tf.constant(np.stack([mask] * 2)[..., None],
                                                                 tf.float32),
            "heatmap": tf.stack([heat] * 2), "ltrb": tf.stack([ltrb] * 2),
            "boxes": tf.constant([[BOX], [BOX]], tf.float32), "num_boxes": tf.constant([1, 1])}


def reference(kind, y, z, normalizer="elements", alpha=0.75):
    """Float64 per-sample loss of logits `z` against `y` (both (S, S, 1)) and its gradient; the
    focal term (target weight `alpha`, gamma 2) averaged over pixels, or (`normalizer`
    "positives") summed and divided by the number of target pixels."""
    z = tf.constant(z, tf.float64)
    y = tf.constant(y, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(z)
        p = 1.0 / (1.0 + tf.exp(-z))
        log_p = -tf.math.softplus(-z)  # log sigmoid(z), exact at ±40
        log_q = -tf.math.softplus(z)   # log sigmoid(-z)
        if kind == "bce":
            loss = tf.reduce_mean(-y * log_p - (1.0 - y) * log_q)
        else:
            focal = (-alpha * y * (1.0 - p) ** 2 * log_p
                     - (1.0 - alpha) * (1.0 - y) * p ** 2 * log_q)
            dice = 1.0 - (2.0 * tf.reduce_sum(y * p) + 1.0) / (tf.reduce_sum(y) + tf.reduce_sum(p)
                                                                + 1.0)
            if normalizer == "positives":
                focal = tf.reduce_sum(focal) / tf.maximum(tf.reduce_sum(y), 1.0)
            else:
                focal = tf.reduce_mean(focal)
            loss = focal + 0.2 * dice
    return float(loss), tape.gradient(loss, z).numpy()


def model_loss_and_grad(model, data, key, network):
    """The model's loss `key` in a training forward pass and its gradient w.r.t. `network`'s
    constant logits."""
    with tf.GradientTape() as tape:
        losses = model._forward(data, training=True)
        losses = losses[0] if isinstance(losses, tuple) else losses  # LSNet also returns tapes
        loss = losses[key]
    var = [v for v in network.trainable_variables if v.name == "z"][0]
    return float(loss), tape.gradient(loss, var).numpy()


# BCE; focal + 0.2 Dice with the focal term averaged over pixels, or per target pixel
KINDS = [LossConfig(kind="bce"), LossConfig(kind="focal_dice"),
         LossConfig(kind="focal_dice", focal_alpha=0.25),
         LossConfig(kind="focal_dice", mask_focal_normalizer="positives")]
KIND_IDS = ["bce", "focal_dice", "focal_dice-alpha0.25", "focal_dice-positives"]


def check(model, data, key, network, y, z, scale=1.0):
    got, grad = model_loss_and_grad(model, data, key, network)
    cfg = model.loss_config
    want, want_grad = reference(cfg.kind, y, z, cfg.mask_focal_normalizer, cfg.focal_alpha)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    # both images contribute the same per-sample loss; the mean over them has the gradient of
    # one image's loss, times `scale` where the model's normaliser differs
    np.testing.assert_allclose(grad, scale * want_grad, rtol=1e-3, atol=1e-9)
    saturated = grad[:4]  # logit -40 on target pixels: the gradient must not vanish
    assert np.all(np.abs(saturated[y[:4] > 0.5]) > 1e-6)


@pytest.mark.parametrize("loss_cfg", KINDS, ids=KIND_IDS)
def test_one_stage_loss_is_the_logits_path(loss_cfg):
    mask = np.zeros((S, S), np.float32)
    mask[:8, :32] = 1.0  # covers saturated negative logits (rows 0-3)
    mask[24:40, 24:40] = 1.0
    z = logits_pattern(0)
    snet = stub_segmenter(z, "unet")
    model = OneStageSegmenter(snet, loss_config=loss_cfg)
    check(model, batch(mask), "loss", snet, mask[..., None], z)


def test_bce_known_answer_on_a_hand_made_batch():
    """Two pixels matter: a target pixel at logit -40 costs 40, a background one at 0 costs
    log 2; every other pixel is background at -40 (cost log(1 + e^-40) ~ 4e-18)."""
    z = np.full((S, S, 1), -40.0, np.float32)
    z[0, 1, 0] = 0.0
    mask = np.zeros((S, S), np.float32)
    mask[0, 0] = 1.0
    model = OneStageSegmenter(stub_segmenter(z, "unet"), loss_config=LossConfig(kind="bce"))
    got, grad = model_loss_and_grad(model, batch(mask), "loss", model.snet)
    assert got == pytest.approx((40.0 + np.log(2.0)) / (S * S), rel=1e-6)
    assert grad[0, 0, 0] == pytest.approx(-1.0 / (S * S), rel=1e-6)  # sigmoid(-40) - 1
    assert grad[0, 1, 0] == pytest.approx(0.5 / (S * S), rel=1e-6)   # sigmoid(0) - 0


@pytest.mark.parametrize("loss_cfg", KINDS, ids=KIND_IDS)
def test_coarse_to_fine_losses_are_the_logits_path(loss_cfg):
    ones = np.ones((S, S), np.float32)  # every crop inside the image samples a target of ones
    zc, zs = logits_pattern(1), logits_pattern(2)
    coarse, snet = stub_segmenter(zc, "coarse"), stub_segmenter(zs, "snet")
    model = CoarseToFine(coarse, snet, loss_config=loss_cfg)
    model.compile()  # the step seed reads the optimizer's counter
    data = batch(ones)
    check(model, data, "coarse_loss", coarse, ones[..., None], zc)
    check(model, data, "s_loss", snet, ones[..., None], zs)


@pytest.mark.parametrize("loss_cfg", KINDS, ids=KIND_IDS)
def test_lnet_crop_second_stage_loss_is_the_logits_path(loss_cfg):
    ones = np.ones((S, S), np.float32)
    zs = logits_pattern(3)
    snet = stub_segmenter(zs, "snet")
    model = LNetCrop(stub_lnet(), snet, train_crop="predicted", top_k=1,
                     loss_config=loss_cfg)
    model.compile()
    check(model, batch(ones), "s_loss", snet, ones[..., None], zs)


@pytest.mark.parametrize("loss_cfg", KINDS, ids=KIND_IDS)
def test_lsnet_second_stage_loss_is_the_logits_path(loss_cfg):
    ones = np.ones((S, S), np.float32)
    zs = logits_pattern(4)
    snet = stub_segmenter(zs, "snet")
    model = LSNet(stub_lnet(), snet, top_k=1, loss_config=loss_cfg)
    model.compile()
    check(model, batch(ones), "s_loss", snet, ones[..., None], zs)
