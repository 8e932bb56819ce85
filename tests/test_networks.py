"""Backbones, decoders, L-Net and S-Net: shapes, known answers, serialization, gradients, errors."""
import math

import numpy as np
import pytest
import tensorflow as tf
import keras

from lsnet_tf.config import STRIDE
from lsnet_tf.models import backbones
from lsnet_tf.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from lsnet_tf.models.decoders import (attention_gate, decoder_channels, fcn_decoder,
                                      unet_decoder)
from lsnet_tf.models.lnet import BBR_KERNEL_SIZE, HEATMAP_PRIOR_BIAS, build_lnet
from lsnet_tf.models.snet import build_snet, prior_bias

SHAPE = (64, 64, 1)
WIDTH = 8


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(size=(2,) + SHAPE).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("depth", [18, 34])
def test_backbone_pyramid_strides_and_channels(depth, images):
    encoder = build_backbone(depth=depth, width=WIDTH, input_shape=SHAPE)
    pyramid = encoder(images)
    assert sorted(pyramid) == ["P1", "P2", "P3", "P4", "P5"]
    channels = {"P1": WIDTH, "P2": WIDTH, "P3": 2 * WIDTH, "P4": 4 * WIDTH, "P5": 8 * WIDTH}
    for level, stride in backbones.PYRAMID_STRIDES.items():
        assert stride == 2 ** int(level[1])
        assert tuple(pyramid[level].shape) == (2, 64 // stride, 64 // stride, channels[level])
    # Five 2x downsamplings: P5 is 1/32 of the input.
    assert tuple(pyramid["P5"].shape[1:3]) == (2, 2)


def test_backbone_dynamic_non_square_input():
    encoder = build_backbone(depth=18, width=4)  # input_shape (None, None, 1)
    pyramid = encoder(np.zeros((1, 96, 64, 1), "float32"))
    assert tuple(pyramid["P5"].shape) == (1, 3, 2, 32)
    assert tuple(pyramid["P1"].shape) == (1, 48, 32, 4)


def test_backbone_repeats_gray_to_rgb_and_applies_imagenet_normalisation():
    encoder = build_backbone(depth=18, width=4, input_shape=(32, 32, 1))
    probe = keras.Model(encoder.input, encoder.get_layer("imagenet_normalize").output)
    x = np.random.default_rng(1).uniform(size=(1, 32, 32, 1)).astype("float32")
    expected = (np.repeat(x, 3, axis=-1) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(_np(probe(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth, trainable, total", [
    # torchvision's resnet18/34 counts (11,689,512 / 21,797,672) minus the 513,000 of the FC head;
    # the total adds the BN moving statistics (keras-hub's resnet_18_imagenet lists 11,186,112).
    (18, 11_176_512, 11_186_112),
    (34, 21_284_672, 21_301_696),
])
def test_backbone_parameter_counts_at_width_64(depth, trainable, total):
    encoder = build_backbone(depth=depth, width=64, input_shape=SHAPE)
    count = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    assert count == trainable
    resnet = encoder.get_layer(f"resnet{depth}")
    assert resnet.count_params() == total


@pytest.mark.parametrize("depth", [18, 34])
def test_generic_resnet_matches_keras_hub_layer_for_layer(depth):
    # The graph used for widths keras-hub refuses is keras-hub's ResNet at width 64.
    hub = backbones._keras_hub_resnet(depth, 64)
    generic = backbones._generic_resnet(depth, 64)

    def signature(model):
        return [(layer.name, type(layer).__name__, [tuple(w.shape) for w in layer.weights])
                for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]

    assert signature(generic) == signature(hub)
    hub_pyramid = backbones._pyramid_model(hub, "resnet")
    assert [t.shape for t in hub_pyramid.outputs] == [t.shape for t in generic.outputs]


def test_backbone_loads_a_local_preset_folder(tmp_path, images):
    import keras_hub

    # A preset saved at a fixed 224x224 input and another name, like the ImageNet presets.
    source = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[2, 2, 2, 2], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block", image_shape=(224, 224, 3), name="some_preset")
    kernel = source.get_layer("stack3_block1_2_conv").kernel
    kernel.assign(kernel + 1.0)  # not what a fresh random init gives
    source.save_to_preset(str(tmp_path))
    encoder = build_backbone(depth=18, preset=str(tmp_path), input_shape=SHAPE)
    loaded = encoder.get_layer("resnet18").get_layer("stack3_block1_2_conv").kernel
    np.testing.assert_array_equal(_np(loaded), _np(kernel))
    assert tuple(encoder(images)["P5"].shape) == (2, 2, 2, 512)  # the preset's size is overridden
    with pytest.raises(ValueError, match=r"not those of ResNet34 \[3, 4, 6, 3\]"):
        build_backbone(depth=34, preset=str(tmp_path))
    with pytest.raises(ValueError, match="width must match the preset .received width=32"):
        build_backbone(depth=18, width=32, preset=str(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=50), "depth must be 18 or 34, received 50"),
    (dict(width=2), "width must be an integer >= 4, received 2"),
    (dict(input_shape=(64, 64, 3)), r"\(H, W, 1\) for a grayscale slice, received \(64, 64, 3\)"),
    (dict(input_shape=(64, 48, 1)), r"multiples of 32 .* received \(64, 48, 1\)"),
    (dict(input_shape=64), "must be a tuple"),
    (dict(preset=None), "preset must be a string"),
])
def test_backbone_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**{"width": 4, **kwargs})


# ---------------------------------------------------------------- decoders

def _pyramid_inputs(size=64, channels=4):
    return {f"P{k}": keras.Input((size >> k, size >> k, channels), name=f"P{k}") for k in range(1, 6)}


def test_bilinear_upsampling_is_centre_aligned():
    # Values equal to the pixel-centre coordinate (j + 0.5) at stride 2 become (j' + 0.5) at
    # stride 1 in the interior: the decoders' grid is the project's centre-aligned one.
    coarse = (np.arange(8, dtype="float32") + 0.5) * 2
    x = np.broadcast_to(coarse[None, None, :, None], (1, 8, 8, 1))
    up = _np(keras.layers.UpSampling2D(2, interpolation="bilinear")(x))[0, 0, :, 0]
    np.testing.assert_allclose(up[1:-1], np.arange(1, 15) + 0.5, rtol=1e-6)


def test_fcn_decoder_sums_the_three_scores():
    pyramid = _pyramid_inputs(channels=1)
    out = fcn_decoder(pyramid, out_stride=4, channels=1, name="fcn")
    model = keras.Model(pyramid, out)
    for level in ("p3", "p4", "p5"):
        model.get_layer(f"fcn_score_{level}").set_weights([np.ones((1, 1, 1, 1)), np.zeros(1)])
    feed = {f"P{k}": np.full((1, 64 >> k, 64 >> k, 1), float(10 ** k), "float32") for k in range(1, 6)}
    result = _np(model(feed))
    assert result.shape == (1, 16, 16, 1)
    np.testing.assert_allclose(result, 1e3 + 1e4 + 1e5, rtol=1e-6)  # P3 + P4 + P5, not P1/P2


@pytest.mark.parametrize("decoder, used", [
    (lambda p: unet_decoder(p, out_stride=1, decoder_width=8), ["P1", "P2", "P3", "P4", "P5"]),
    (lambda p: unet_decoder(p, out_stride=4, decoder_width=8), ["P2", "P3", "P4", "P5"]),
    (lambda p: unet_decoder(p, out_stride=4, decoder_width=8, attention=True),
     ["P2", "P3", "P4", "P5"]),
    (lambda p: fcn_decoder(p, out_stride=4, channels=8), ["P3", "P4", "P5"]),
], ids=["unet1", "unet4", "attention4", "fcn4"])
def test_decoders_use_exactly_their_pyramid_levels(decoder, used):
    pyramid = _pyramid_inputs()
    model = keras.Model(pyramid, decoder(pyramid))
    rng = np.random.default_rng(2)
    feed = {k: tf.constant(rng.normal(size=(2,) + tuple(v.shape[1:])), tf.float32)
            for k, v in pyramid.items()}
    with tf.GradientTape() as tape:
        tape.watch(list(feed.values()))
        out = model(feed, training=True)
        loss = tf.reduce_sum(out * tf.random.stateless_normal(tf.shape(out), (1, 2)))
    grads = tape.gradient(loss, feed)
    for level in feed:
        has_grad = grads[level] is not None and float(tf.reduce_max(tf.abs(grads[level]))) > 0
        assert has_grad == (level in used), level


def test_unet_decoder_channels_per_stride():
    assert [decoder_channels(64, s) for s in (16, 8, 4, 2, 1)] == [256, 128, 64, 32, 16]
    assert [decoder_channels(4, s) for s in (16, 8, 4, 2, 1)] == [16, 8, 4, 4, 4]
    pyramid = _pyramid_inputs()
    assert tuple(unet_decoder(pyramid, out_stride=2, decoder_width=16).shape) == (None, 32, 32, 8)


def test_attention_gate_scales_the_skip_by_alpha_in_0_1():
    skip, gate = keras.Input((8, 8, 4)), keras.Input((8, 8, 6))
    out = attention_gate(skip, gate, 3, name="att")
    model = keras.Model([skip, gate], out)
    probe = keras.Model([skip, gate], [out, model.get_layer("att_alpha").output])
    rng = np.random.default_rng(3)
    s, g = rng.normal(size=(2, 8, 8, 4)), rng.normal(size=(2, 8, 8, 6))
    gated, alpha = (_np(t) for t in probe([s, g]))
    assert alpha.shape == (2, 8, 8, 1) and np.all((alpha > 0) & (alpha < 1))
    np.testing.assert_allclose(gated, s * alpha, rtol=1e-5, atol=1e-6)
    assert np.std(alpha) > 0  # the gate depends on position


@pytest.mark.parametrize("call, message", [
    (lambda p: unet_decoder(p, out_stride=32), "out_stride must be one of 1, 2, 4, 8, 16, received 32"),
    (lambda p: fcn_decoder(p, out_stride=16), "out_stride must be one of 1, 2, 4, 8, received 16"),
    (lambda p: unet_decoder({"P5": p["P5"]}, out_stride=8), r"missing \['P4', 'P3'\]"),
    (lambda p: fcn_decoder([p["P3"]]), "needs the pyramid dict of build_backbone, received list"),
    (lambda p: unet_decoder(p, decoder_width=2), "decoder_width must be an integer >= 4, received 2"),
    (lambda p: fcn_decoder(p, channels=0), "channels must be an integer >= 1, received 0"),
])
def test_decoder_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(_pyramid_inputs())


# ---------------------------------------------------------------- L-Net

@pytest.mark.parametrize("family, depth", [
    ("unet", 18), ("unet", 34), ("fcn", 18), ("fcn", 34), ("attention_unet", 18)])
def test_lnet_outputs(family, depth, images):
    model = build_lnet(SHAPE, family=family, depth=depth, width=WIDTH)
    assert model.name == "lnet"
    out = model(images)
    assert sorted(out) == ["heatmap", "heatmap_logits", "ltrb"]
    np.testing.assert_allclose(_np(out["heatmap"]), _np(tf.sigmoid(out["heatmap_logits"])), atol=1e-6)
    assert tuple(out["heatmap"].shape) == (2, 64 // STRIDE, 64 // STRIDE, 1)
    assert tuple(out["ltrb"].shape) == (2, 64 // STRIDE, 64 // STRIDE, 4)
    assert out["heatmap"].dtype == tf.float32 and out["ltrb"].dtype == tf.float32
    heatmap, ltrb = _np(out["heatmap"]), _np(out["ltrb"])
    assert np.all((heatmap > 0) & (heatmap < 1))
    assert np.all(ltrb >= 0) and np.all(np.isfinite(ltrb))
    assert np.std(heatmap) > 0 and np.std(ltrb) > 0  # depends on the input position
    assert model.get_layer("bbr_raw").kernel.shape[:2] == (BBR_KERNEL_SIZE, BBR_KERNEL_SIZE)


def test_lnet_dynamic_input_and_decoder_width():
    model = build_lnet(family="unet", width=4, decoder_width=12)  # input (None, None, 1)
    out = model(np.zeros((1, 96, 64, 1), "float32"))
    assert tuple(out["heatmap"].shape) == (1, 24, 16, 1)
    assert model.get_layer("kp_conv").kernel.shape[-2:] == (12, 12)


def test_lnet_heatmap_prior_and_ltrb_units(images):
    model = build_lnet(SHAPE, width=4)
    bias = _np(model.get_layer("kp_logits").bias)
    np.testing.assert_allclose(bias, [HEATMAP_PRIOR_BIAS])
    assert HEATMAP_PRIOR_BIAS == -2.19
    # With zero head kernels the outputs are the documented functions of the biases alone.
    kp = model.get_layer("kp_logits")
    kp.kernel.assign(tf.zeros_like(kp.kernel))
    raw = model.get_layer("bbr_raw")
    raw.kernel.assign(tf.zeros_like(raw.kernel))
    raw_bias = np.array([0.0, 1.0, -1.0, 3.0], "float32")
    raw.bias.assign(raw_bias)
    out = model(images)
    np.testing.assert_allclose(_np(out["heatmap"]), 1 / (1 + math.exp(2.19)), rtol=1e-6)
    assert abs(1 / (1 + math.exp(2.19)) - 0.1) < 0.001
    expected = STRIDE * np.log1p(np.exp(raw_bias))  # 4 * softplus: one unit = 4 input pixels
    np.testing.assert_allclose(_np(out["ltrb"]), np.broadcast_to(expected, (2, 16, 16, 4)), rtol=1e-6)
    np.testing.assert_allclose(expected[0], 4 * math.log(2), rtol=1e-6)


def _perturb(model, seed=0):
    """Move every weight off its initial value so a reloaded model must have read the file."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(_np(w) + 0.01 * rng.normal(size=w.shape).astype("float32"))


def test_lnet_keras_round_trip(tmp_path, images):
    model = build_lnet(SHAPE, family="unet", width=4)
    _perturb(model)
    path = str(tmp_path / "lnet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == "lnet"
    before, after = model(images), loaded(images)
    for key in ("heatmap", "ltrb"):
        np.testing.assert_allclose(_np(after[key]), _np(before[key]), rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("bbr_raw").kernel.shape == model.get_layer("bbr_raw").kernel.shape


def _check_gradients(model, images, outputs_to_loss):
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = outputs_to_loss(model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables + [x])
    *weight_grads, input_grad = grads
    for var, grad in zip(model.trainable_variables, weight_grads):
        assert grad is not None, var.path
        assert np.all(np.isfinite(_np(grad))), var.path
    stem = [g for v, g in zip(model.trainable_variables, weight_grads) if v.path == "conv1_conv/kernel"]
    assert len(stem) == 1 and float(tf.reduce_max(tf.abs(stem[0]))) > 0  # reaches the first conv
    assert float(tf.reduce_max(tf.abs(input_grad))) > 0  # and the image (the RR path needs it)
    assert np.all(np.isfinite(_np(input_grad)))


@pytest.mark.parametrize("family", ["unet", "fcn"])
def test_lnet_gradients(family, images):
    model = build_lnet(SHAPE, family=family, width=4)
    _check_gradients(model, images,
                     lambda out: tf.reduce_mean(out["heatmap"]) + tf.reduce_mean(out["ltrb"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="segnet"), "family must be one of unet, attention_unet, fcn, received 'segnet'"),
    (dict(depth=50), "depth must be 18 or 34"),
    (dict(input_shape=(64, 64)), r"\(H, W, 1\) for a grayscale slice, received \(64, 64\)"),
    (dict(decoder_width=3), "decoder_width must be an integer >= 4, received 3"),
])
def test_lnet_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lnet(**{"width": 4, **kwargs})


# ---------------------------------------------------------------- S-Net

@pytest.mark.parametrize("family, depth, num_classes", [
    ("unet", 34, 1), ("unet", 18, 3), ("fcn", 34, 1), ("fcn", 18, 2), ("attention_unet", 34, 1)])
def test_snet_outputs(family, depth, num_classes, images):
    # Seeded: with whatever initialisation the tests before it left, the last check failed once
    # (an attention U-Net whose 1x1 head drew only positive weights gave logits in [0, 0.13]).
    keras.utils.set_random_seed(0)
    model = build_snet(SHAPE, family=family, depth=depth, width=WIDTH, num_classes=num_classes)
    assert model.name == "snet"
    logits = model(images)
    assert tuple(logits.shape) == (2, 64, 64, num_classes)
    assert logits.dtype == tf.float32
    values = _np(logits)
    assert np.all(np.isfinite(values)) and np.std(values) > 0
    assert values.min() < 0 or values.max() > 1  # logits, not probabilities in [0, 1]


def test_prior_bias_is_the_logit_of_the_prior():
    assert prior_bias(0.0) == 0.0
    assert prior_bias(0.5) == 0.0
    assert prior_bias(0.01) == pytest.approx(-4.59512, abs=1e-5)  # -log(99), RetinaNet's pi
    assert 1 / (1 + math.exp(-prior_bias(0.2))) == pytest.approx(0.2)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"mask_prior must lie in \\[0, 1\\), received {bad}"):
            prior_bias(bad)


@pytest.mark.parametrize("family, head", [
    ("unet", ["mask_conv"]), ("attention_unet", ["mask_conv"]),
    ("fcn", ["decoder_score_p3", "decoder_score_p4", "decoder_score_p5"])])
def test_snet_mask_prior_sets_the_initial_output(family, head, images):
    # The output layers' biases start at the prior's logit (FCN: the sum of its three scores),
    # so with zero head kernels the mask is the prior everywhere; without a prior, 0.5.
    for prior, expected in ((0.01, 0.01), (0.0, 0.5)):
        model = build_snet(SHAPE, family=family, depth=18, width=4, num_classes=2,
                           mask_prior=prior)
        biases = sum(_np(model.get_layer(name).bias) for name in head)
        np.testing.assert_allclose(biases, [prior_bias(prior)] * 2, rtol=1e-6)
        for name in head:
            layer = model.get_layer(name)
            layer.kernel.assign(tf.zeros_like(layer.kernel))
        probs = _np(tf.sigmoid(model(images)))
        np.testing.assert_allclose(probs, np.full((2, 64, 64, 2), expected), rtol=1e-5)


def test_snet_name_and_dynamic_shape():
    model = build_snet(family="fcn", depth=18, width=4, name="fcn")
    assert model.name == "fcn"
    assert tuple(model(np.zeros((1, 64, 96, 1), "float32")).shape) == (1, 64, 96, 1)


@pytest.mark.parametrize("family", ["unet", "attention_unet"])
def test_snet_keras_round_trip(family, tmp_path, images):
    model = build_snet(SHAPE, family=family, depth=18, width=4, num_classes=2)
    _perturb(model, seed=1)
    path = str(tmp_path / "snet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded(images)), _np(model(images)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["unet", "fcn", "attention_unet"])
def test_snet_gradients(family, images):
    model = build_snet(SHAPE, family=family, depth=18, width=4)
    target = (images > 0.5).astype("float32")
    _check_gradients(model, images, lambda logits: tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(target, logits)))


def test_models_under_mixed_precision_output_float32(images):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        lnet = build_lnet(SHAPE, width=4)
        snet = build_snet(SHAPE, family="attention_unet", depth=18, width=4)
        assert lnet.get_layer("decoder_s4_conv1_conv").compute_dtype == "float16"
        out = lnet(images)
        logits = snet(images)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out["heatmap"].dtype == tf.float32 and out["ltrb"].dtype == tf.float32
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(_np(logits)))


@pytest.mark.parametrize("build", [
    lambda sync: build_lnet(SHAPE, family="attention_unet", width=4, synchronized=sync),
    lambda sync: build_snet(SHAPE, family="unet", depth=18, width=4, synchronized=sync),
    lambda sync: build_backbone(depth=18, width=64, input_shape=SHAPE, synchronized=sync),
])
def test_synchronized_batch_norm_at_construction(build, images):
    """``synchronized=True`` (``train.sync_batch_norm`` over several replicas) builds every
    BatchNormalization layer synchronized, keras-hub's ResNet ones included (the width-64
    encoder), with the same weights, weight paths and inference outputs as the plain network."""
    def bn_layers(model):
        found, stack = [], [model]
        while stack:
            layer = stack.pop()
            found += [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
            stack += getattr(layer, "layers", None) or []
        return found

    keras.utils.set_random_seed(0)
    plain = build(False)
    keras.utils.set_random_seed(0)
    synced = build(True)
    assert len(bn_layers(plain)) == len(bn_layers(synced)) >= 20
    assert not any(layer.synchronized for layer in bn_layers(plain))
    assert all(layer.synchronized for layer in bn_layers(synced))
    assert [w.path for w in plain.weights] == [w.path for w in synced.weights]
    for a, b in zip(plain.weights, synced.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    for a, b in zip(tf.nest.flatten(plain(images)), tf.nest.flatten(synced(images))):
        np.testing.assert_array_equal(_np(a), _np(b))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "num_classes must be an integer >= 1, received 0"),
    (dict(family="deeplab"), "received 'deeplab'"),
    (dict(input_shape=(64, 64, 2)), r"received \(64, 64, 2\)"),
    (dict(width=64.0), "width must be an integer >= 4, received 64.0"),
])
def test_snet_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_snet(**{"width": 4, **kwargs})
