"""The L-SNet model: the two-tape train step, γ, inference and serialization (under a strategy:
tests/test_distributed.py)."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from conftest import compiled, make_batch, tiny_cfg as shared_tiny_cfg
from lsnet_tf.models.build import build_model
from lsnet_tf.models.lsnet import LSNet

# The shared tiny model (tests/conftest.py) with an 8-channel decoder.
DECODER = ["model.decoder_width=8"]


def tiny_cfg(*extra):
    return shared_tiny_cfg(*DECODER, *extra)


@pytest.fixture(scope="module")
def model():
    return compiled(tiny_cfg())


def test_train_step_gives_finite_losses_and_changes_both_networks(model):
    before_l = [v.numpy().copy() for v in model.lnet.trainable_variables]
    before_s = [v.numpy().copy() for v in model.snet.trainable_variables]
    logs = model.train_step(make_batch())
    for name in ("loss", "l_loss", "heatmap_loss", "box_loss", "s_loss"):
        assert np.isfinite(float(logs[name])), name
    assert float(logs["s_loss"]) > 0
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before_l, model.lnet.trainable_variables))
    assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before_s, model.snet.trainable_variables))


def _lnet_grads(model, batch):
    l_grads, _, _ = model.gradients(batch)
    return [g.numpy() for g in l_grads]


def test_gamma_zero_blocks_s_net_gradient_exactly():
    """With γ = 0, L-Net's gradient does not depend on S-Net at all; with γ = 1 it does."""
    batch = make_batch()
    for gamma, should_match in ((0.0, True), (1.0, False)):
        model = compiled(tiny_cfg(f"train.gamma={gamma}"))
        g1 = _lnet_grads(model, batch)
        for v in model.snet.trainable_variables:  # a different S-Net changes L_S and ∂L_S/∂dist
            v.assign(v + tf.random.stateless_normal(v.shape, [1, 2], stddev=0.5))
        g2 = _lnet_grads(model, batch)
        same = all(np.array_equal(a, b) for a, b in zip(g1, g2))
        assert same == should_match, gamma


def test_gamma_scales_the_rr_gradient_linearly():
    """L-Net's gradient is ∇L_L + γ∇L_S: the γ part doubles when γ doubles.

    Per tensor, |(g₁ − g₀) − 2(g½ − g₀)| <= 1e-3 · max|g₁|: the backward pass of ∇L_L + γ∇L_S
    sums in float32, so the three runs round differently. Over ten weight draws of this model the
    difference was 2e-5 to 5e-5 of the tensor's largest entry; γ² in place of γ gives 0.3-0.8."""
    keras.utils.set_random_seed(5)  # the same weights whichever tests ran before
    batch = make_batch()
    model = compiled(tiny_cfg())
    grads = {}
    for gamma in (0.0, 0.5, 1.0):
        model.gamma = gamma  # eager calls read it afresh
        grads[gamma] = _lnet_grads(model, batch)
    for g0, gh, g1 in zip(grads[0.0], grads[0.5], grads[1.0]):
        assert np.abs((g1 - g0) - 2 * (gh - g0)).max() <= 1e-3 * np.abs(g1).max() + 1e-9
    assert any(np.abs(a - b).max() > 0 for a, b in zip(grads[1.0], grads[0.0]))


def test_images_without_target_add_no_s_loss_and_no_nan(model):
    batch = make_batch(with_target=(False,))
    l_grads, s_grads, losses = model.gradients(batch)
    assert float(losses["s_loss"]) == 0.0
    assert all(np.isfinite(g.numpy()).all() for g in l_grads + s_grads)
    assert all(not g.numpy().any() for g in s_grads)


def test_ground_truth_phase_blocks_the_rr_gradient_of_those_images(model):
    """With gt_phase on, the RoI is the ground-truth box grown by the margin, whatever L-Net says."""
    batch = make_batch()
    model.gt_phase.assign(1)
    try:
        losses, l_tape, s_tape, dist = model._forward(batch, training=True)
        # No gradient from S-Net reaches the selected distances of the image with a target.
        d = s_tape.gradient(losses["s_loss"], dist).numpy()
        assert not d[0].any()
    finally:
        model.gt_phase.assign(0)


def test_inference_shapes_and_empty_heatmap_gives_empty_mask(model):
    out = model.predict_masks(tf.zeros([3, 64, 64, 1]))
    assert out["mask"].shape == (3, 64, 64, 1) and out["heatmap"].shape == (3, 16, 16, 1)
    assert out["boxes"].shape == (3, 4, 4) and out["valid"].shape == (3, 4)
    # Force an empty heatmap: a very negative prior on the keypoint head's last bias.
    head_bias = model.lnet.get_layer("kp_logits").bias
    old = head_bias.numpy()
    head_bias.assign(np.full_like(old, -50.0))
    try:
        out = model.predict_masks(tf.random.uniform([2, 64, 64, 1], seed=1))
        assert not out["valid"].numpy().any()
        assert not out["mask"].numpy().any()
        # And a saturated heatmap gives RoIs and a mask where S-Net says so.
        head_bias.assign(np.full_like(old, 50.0))
        out = model.predict_masks(tf.random.uniform([2, 64, 64, 1], seed=1))
        assert out["valid"].numpy().any(axis=1).all()
        assert np.isfinite(out["mask"].numpy()).all()
    finally:
        head_bias.assign(old)


def test_whole_model_serialization_round_trip(model, tmp_path):
    path = str(tmp_path / "lsnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, LSNet)
    assert loaded.gamma == model.gamma and loaded.margin == model.margin
    assert loaded.loss_config == model.loss_config
    x = tf.random.uniform([2, 64, 64, 1], seed=3)
    a, b = model.lnet(x), loaded.lnet(x)
    np.testing.assert_allclose(a["heatmap"].numpy(), b["heatmap"].numpy(), atol=1e-6)
    np.testing.assert_allclose(model.snet(x).numpy(), loaded.snet(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(model.predict_masks(x)["mask"].numpy(),
                               loaded.predict_masks(x)["mask"].numpy(), atol=1e-5)


def test_invalid_arguments_raise():
    cfg = tiny_cfg()
    m = build_model(cfg)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        LSNet(m.lnet, m.snet, gamma=-1)
    with pytest.raises(ValueError, match="top_k must be a positive int, received 0"):
        LSNet(m.lnet, m.snet, top_k=0)
    with pytest.raises(ValueError, match="max_rois must be a positive int, received 0"):
        LSNet(m.lnet, m.snet, max_rois=0)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\), received 1.5"):
        LSNet(m.lnet, m.snet, threshold=1.5)


def test_gamma_and_margin_set_after_a_step_reach_the_next_step():
    """γ is read when the training step is traced: setting it drops the traced step, so the
    next step uses the new value (before, the first trace kept its γ, silently). One model, one
    step at γ = 0, then three second steps from that same state (weights and both optimizers
    restored, the same seed): γ = 0 twice are bit-identical; γ = 1 (and margin 7.5) changes
    L-Net. (Setting the value already in effect changes nothing and need not drop the step.)"""
    batch = make_batch()
    keras.utils.set_random_seed(11)
    model = compiled(tiny_cfg("train.gamma=0.0"))
    model.train_on_batch(batch)
    assert model.train_function is not None
    variables = [*model.variables, *model.optimizer.variables, *model.snet_optimizer.variables]
    state = [v.numpy() for v in variables]  # weights, statistics and both optimizers' state

    def second_step(gamma, margin=None):
        for v, value in zip(variables, state):
            v.assign(value)
        changed = gamma != model.gamma or (margin is not None and margin != model.margin)
        model.gamma = gamma
        if margin is not None:
            model.margin = margin
        if changed:
            assert model.train_function is None  # traced again on the next step
        keras.utils.set_random_seed(12)
        model.train_on_batch(batch)
        return [w.numpy() for w in model.lnet.weights]

    same_a, same_b = second_step(0.0), second_step(0.0)
    assert all(np.array_equal(a, b) for a, b in zip(same_a, same_b))
    changed = second_step(1.0, margin=7.5)
    assert any(not np.array_equal(a, b) for a, b in zip(same_a, changed))
    assert (model.gamma, model.margin, model.rr.margin) == (1.0, 7.5, 7.5)
    assert model.get_config()["gamma"] == 1.0 and model.get_config()["margin"] == 7.5
    with pytest.raises(ValueError, match="gamma must be >= 0, received -1"):
        model.gamma = -1
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        model.margin = float("nan")
    assert (model.gamma, model.margin) == (1.0, 7.5)
