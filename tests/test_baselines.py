"""Baselines (one-stage, coarse-to-fine, L-Net + crop) and the model builder: known answers,
one training step each, no gradient between the stages, the trainer's fit/eval/export path."""
import numpy as np
import pytest
import tensorflow as tf
import keras
from scipy import ndimage

from conftest import tiny_cfg as shared_tiny_cfg
from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.data.records import boxes_from_mask
from lsnet_tf.models.cascades import CoarseToFine, LNetCrop
from lsnet_tf.models.one_stage import OneStageSegmenter
from lsnet_tf.ops.crops import crop_boxes, hard_crop, mask_boxes
from lsnet_tf.models.build import (build_model, checkpoint_objects, compile_model, count_flops,
                                   count_params, count_trainable_params, model_networks,
                                   parameter_counts)
from lsnet_tf.ops.sampling import paste_masks

S = 64  # the shared tiny model's image size (tests/conftest.py)


def tiny_cfg(architecture, *extra):
    """The shared tiny model as `architecture` (a one-stage model's family is its name)."""
    family = architecture if architecture in ("unet", "attention_unet", "fcn") else "unet"
    return shared_tiny_cfg(f"model.architecture={architecture}", f"model.family={family}", *extra)


def batch():
    """Two 64x64 images: one target in image 0; two in image 1 (pipeline batch format)."""
    rng = np.random.default_rng(0)
    image = rng.uniform(size=(2, S, S, 1)).astype("float32")
    mask = np.zeros((2, S, S, 1), "float32")
    mask[0, 10:20, 30:44] = 1
    mask[1, 40:50, 5:12] = 1
    mask[1, 5:9, 50:60] = 1
    boxes = np.zeros((2, 4, 4), "float32")
    boxes[0, 0] = [30, 10, 44, 20]
    boxes[1, 0] = [5, 40, 12, 50]
    boxes[1, 1] = [50, 5, 60, 9]
    return {"image": tf.constant(image), "mask": tf.constant(mask),
            "heatmap": tf.zeros((2, S // 4, S // 4, 1)), "ltrb": tf.zeros((2, S // 4, S // 4, 4)),
            "boxes": tf.constant(boxes), "num_boxes": tf.constant([1, 2], tf.int32)}


def dice_per_image(mask, prob):
    """Per-image DSC, numpy, of (B, H, W, C) targets and probabilities (foreground > 0.5): 2|P∩T|
    / (|P| + |T|), 1 when both are empty."""
    t, p = np.asarray(mask) > 0.5, np.asarray(prob) > 0.5
    inter = np.logical_and(t, p).sum(axis=(1, 2, 3))
    denom = t.sum(axis=(1, 2, 3)) + p.sum(axis=(1, 2, 3))
    return np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)


def _set_bias(net, value):
    """Force a segmentation network's output to a constant logit `value` everywhere."""
    last = net.get_layer("mask_conv")
    last.kernel.assign(tf.zeros_like(last.kernel))
    last.bias.assign(tf.fill(last.bias.shape, float(value)))


# ----------------------------------------------------------------------------- mask_boxes

def _as_set(boxes, valid):
    return sorted(tuple(float(v) for v in b) for b, ok in zip(boxes, valid) if ok)


def test_mask_boxes_components_match_scipy_boxes():
    rng = np.random.default_rng(3)
    prob = np.zeros((2, 32, 32), "float32")
    prob[0, 2:5, 3:9] = 0.9
    prob[0, 20:30, 20:22] = 0.7
    prob[0, 5, 9] = 0.6                       # touches (4, 8) diagonally: same 8-component
    prob[1] = rng.uniform(size=(32, 32)) * (rng.uniform(size=(32, 32)) > 0.93)
    out = mask_boxes(tf.constant(prob), 0.5, max_boxes=64, mode="components")
    for i in range(2):
        expected = boxes_from_mask(prob[i] > 0.5)
        got = _as_set(out["boxes"][i].numpy(), out["valid"][i].numpy())
        assert got == sorted(tuple(float(v) for v in b) for b in expected)
        labels, n = ndimage.label(prob[i] > 0.5, np.ones((3, 3)))
        assert int(out["valid"][i].numpy().sum()) == n
    assert _as_set(out["boxes"][0].numpy(), out["valid"][0].numpy()) == [
        (3.0, 2.0, 10.0, 6.0), (20.0, 20.0, 22.0, 30.0)]


def test_mask_boxes_ranks_by_score_pads_and_unions():
    prob = np.zeros((1, 16, 16), "float32")
    prob[0, 1:3, 1:3] = 0.6
    prob[0, 10:12, 10:14] = 0.95
    prob[0, 5, 5] = 0.8
    out = mask_boxes(tf.constant(prob), 0.5, max_boxes=2, mode="components")
    np.testing.assert_allclose(out["boxes"][0].numpy(), [[10, 10, 14, 12], [5, 5, 6, 6]])
    np.testing.assert_allclose(out["scores"][0].numpy(), [0.95, 0.8])
    # More slots than components: padded with invalid zeros.
    out = mask_boxes(tf.constant(prob), 0.5, max_boxes=5, mode="components")
    assert out["valid"][0].numpy().tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(out["boxes"][0, 3:].numpy(), 0)
    union = mask_boxes(tf.constant(prob), 0.5, max_boxes=3, mode="union")
    np.testing.assert_allclose(union["boxes"][0].numpy(), [[1, 1, 14, 12], [0] * 4, [0] * 4])
    assert union["valid"][0].numpy().tolist() == [True, False, False]
    assert float(union["scores"][0, 0]) == pytest.approx(0.95)
    empty = mask_boxes(tf.zeros((1, 16, 16)), 0.5, 3, "union")
    assert not empty["valid"].numpy().any() and not empty["boxes"].numpy().any()


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(mode="box"), ValueError, "mode must be one of union, components, received 'box'"),
    (dict(max_boxes=0), ValueError, "max_boxes must be a positive int, received 0"),
])
def test_mask_boxes_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        mask_boxes(tf.zeros((1, 8, 8)), **kwargs)


def test_mask_boxes_rank_and_dtype_errors():
    with pytest.raises(ValueError, match=r"shape \(batch, H, W\), received \(1, 8, 8, 1\)"):
        mask_boxes(tf.zeros((1, 8, 8, 1)))
    with pytest.raises(TypeError, match="floating tensor, received dtype int32"):
        mask_boxes(tf.zeros((1, 8, 8), tf.int32))


# ----------------------------------------------------------------------------- hard crop

def test_crop_boxes_grows_rounds_outward_clips_and_stops_gradient():
    boxes = tf.Variable([[10.4, 20.6, 30.2, 40.0], [-5.0, 2.0, 70.0, 63.5], [3.0, 3.0, 3.0, 3.0]])
    with tf.GradientTape() as tape:
        out = crop_boxes(boxes, 64, 64, margin=2.0)
        total = tf.reduce_sum(out)
    np.testing.assert_allclose(out.numpy(), [[8, 18, 33, 42], [0, 0, 64, 64], [1, 1, 5, 5]])
    assert tape.gradient(total, boxes) is None
    # A zero-size box at the border with no margin still gives one pixel.
    np.testing.assert_allclose(crop_boxes([[64.0, 0.0, 64.0, 0.0]], 64, 64, 0.0).numpy(),
                               [[63, 0, 64, 1]])
    with pytest.raises(ValueError, match="margin must be >= 0, received -1"):
        crop_boxes([[0.0, 0, 1, 1]], 8, 8, margin=-1)


def test_hard_crop_of_a_known_box_is_that_box_content():
    image = np.arange(S * S, dtype="float32").reshape(1, S, S, 1)
    # A 32 x 32 box at output size 32: scale 1, the box's pixels exactly.
    crop, theta = hard_crop(image, [[16.0, 8.0, 48.0, 40.0]], (32, 32), margin=0.0)
    np.testing.assert_allclose(crop.numpy()[0], image[0, 8:40, 16:48], rtol=0, atol=1e-3)
    # The same region reached through the margin, and through a fractional box rounded outward.
    grown, _ = hard_crop(image, [[20.0, 12.0, 44.0, 36.0]], (32, 32), margin=4.0)
    rounded, _ = hard_crop(image, [[16.3, 8.6, 47.2, 39.9]], (32, 32), margin=0.0)
    np.testing.assert_allclose(grown.numpy(), crop.numpy(), atol=1e-3)
    np.testing.assert_allclose(rounded.numpy(), crop.numpy(), atol=1e-3)
    # A 64 x 64 box to 32 x 32: each output pixel is the mean of a 2 x 2 block.
    half, _ = hard_crop(image, [[0.0, 0.0, 64.0, 64.0]], (32, 32), margin=0.0)
    pooled = image[0].reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(half.numpy()[0, ..., 0], pooled, atol=1e-2)
    # theta inverts with paste_masks: a crop of ones comes back as ones on the box, 0 elsewhere.
    pasted = paste_masks(tf.ones((1, 32, 32, 1)), theta, tf.constant([0]), 1, S, S).numpy()[0, ..., 0]
    expected = np.zeros((S, S))
    expected[8:40, 16:48] = 1
    np.testing.assert_allclose(pasted, expected, atol=1e-4)


def test_hard_crop_errors():
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W, C\)"):
        hard_crop(tf.zeros((8, 8, 1)), [[0.0, 0, 4, 4]], (4, 4))
    with pytest.raises(ValueError, match=r"boxes must have shape \(\.\.\., 4\) xyxy"):
        hard_crop(tf.zeros((1, 8, 8, 1)), [[0.0, 0, 4]], (4, 4))


# ----------------------------------------------------------------------------- models

ARCHITECTURES = [("unet", OneStageSegmenter, ["snet"]),
                 ("attention_unet", OneStageSegmenter, ["snet"]),
                 ("fcn", OneStageSegmenter, ["snet"]),
                 ("coarse_to_fine", CoarseToFine, ["coarse", "snet"]),
                 ("lnet_crop", LNetCrop, ["lnet", "snet"])]


@pytest.mark.parametrize("architecture, cls, networks", ARCHITECTURES)
def test_baseline_outputs_and_one_train_step(architecture, cls, networks):
    cfg = tiny_cfg(architecture, "model.train_crop=predicted")
    model = build_model(cfg)
    assert type(model) is cls and list(model.networks) == networks
    compile_model(model, cfg, steps_per_epoch=4)
    data = batch()
    pred = model.predict_masks(data["image"])
    assert tuple(pred["mask"].shape) == (2, S, S, 1)
    assert tuple(pred["boxes"].shape) == (2, 4, 4) and tuple(pred["valid"].shape) == (2, 4)
    assert tuple(pred["scores"].shape) == (2, 4) and tuple(pred["keypoints"].shape) == (2, 4, 2)
    m = pred["mask"].numpy()
    assert m.min() >= 0 and m.max() <= 1
    before = [v.numpy().copy() for n in networks for v in model.networks[n].trainable_variables[:1]]
    logs = {k: float(v) for k, v in model.train_step(data).items()}
    assert set(logs) == set(cls.TRACKERS) and all(np.isfinite(v) for v in logs.values())
    assert logs["loss"] > 0
    after = [v.numpy() for n in networks for v in model.networks[n].trainable_variables[:1]]
    assert all(not np.allclose(a, b) for a, b in zip(before, after)), "every network must train"
    logs = model.test_step(data)
    # Both images hold a target: the tracker's DSC is the mean of their DSCs.
    expected = dice_per_image(data["mask"], model.predict_masks(data["image"])["mask"]).mean()
    assert float(logs["dsc"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("architecture, seg_networks", [
    ("lsnet", ["snet"]), ("unet", ["snet"]), ("attention_unet", ["snet"]),
    ("coarse_to_fine", ["coarse", "snet"]), ("lnet_crop", ["snet"])])
def test_model_mask_prior_reaches_every_segmentation_head(architecture, seg_networks):
    prior = 0.01
    model = build_model(tiny_cfg(architecture, f"model.mask_prior={prior}"))
    for name in seg_networks:
        bias = model.networks[name].get_layer("mask_conv").bias.numpy()
        np.testing.assert_allclose(bias, [np.log(prior / (1 - prior))], rtol=1e-6)
    if "lnet" in model.networks:  # L-Net's heatmap keeps its own prior
        assert model.networks["lnet"].get_layer("kp_logits").bias.numpy()[0] == pytest.approx(-2.19)


@pytest.mark.parametrize("architecture, first", [("coarse_to_fine", "coarse"), ("lnet_crop", "lnet")])
@pytest.mark.parametrize("train_crop", ["truth", "predicted"])
def test_no_gradient_from_second_stage_into_first(architecture, first, train_crop):
    model = build_model(tiny_cfg(architecture, f"model.train_crop={train_crop}"))
    model.compile()
    with tf.GradientTape(persistent=True) as tape:
        losses = model._forward(batch(), training=True)
    first_vars = model.networks[first].trainable_variables
    assert all(g is None for g in tape.gradient(losses["s_loss"], first_vars))
    assert all(g is not None for g in tape.gradient(losses["s_loss"], model.snet.trainable_variables))
    first_loss = losses["coarse_loss" if first == "coarse" else "l_loss"]
    assert any(g is not None for g in tape.gradient(first_loss, first_vars))


def test_lnet_crop_heatmap_loss_is_taken_from_logits():
    """Eq. 5 on L-Net's logits, as L-SNet does: a saturated heatmap still gets a gradient."""
    from lsnet_tf.losses import localization

    model = build_model(tiny_cfg("lnet_crop"))
    model.compile()
    data = batch()
    heat = np.zeros((2, S // 4, S // 4, 1), "float32")
    heat[0, 3, 9, 0] = heat[1, 11, 2, 0] = 1.0  # one peak per image
    data["heatmap"] = tf.constant(heat)
    kp = model.lnet.get_layer("kp_logits")
    kp.kernel.assign(tf.zeros_like(kp.kernel))
    kp.bias.assign([-50.0])  # sigmoid = 2e-22: every cell saturated at "no keypoint"
    with tf.GradientTape() as tape:
        losses = model._forward(data, training=True)
    out = model.lnet(data["image"], training=True)
    expected, terms = localization.localization_loss(
        out["heatmap_logits"], out["ltrb"], data["heatmap"], data["ltrb"], model.loss_config, 2, 4)
    np.testing.assert_allclose(float(losses["heatmap_loss"]), float(terms["heatmap"]), rtol=1e-5)
    # Each image's one peak costs alpha * -log(sigmoid(-50)) = 50 alpha (the focal weight
    # (1 - p)^2 is 1 there; the negatives cost ~0), plus at most dice_weight * 1 = 0.2.
    alpha = model.loss_config.focal_alpha
    assert 50 * alpha - 1e-3 < float(losses["heatmap_loss"]) < 50 * alpha + 0.2 + 1e-3
    grad = tape.gradient(losses["l_loss"], kp.bias)
    assert grad is not None and float(grad[0]) < -0.1, "the gradient must not die in saturation"


def test_coarse_to_fine_training_boxes():
    data = batch()
    seed = tf.constant([0, 0], tf.int64)
    union = build_model(tiny_cfg("coarse_to_fine", "model.crop_mode=union"))
    np.testing.assert_allclose(union._train_boxes(data, None, True, seed).numpy(),
                               [[30, 10, 44, 20], [5, 5, 60, 50]])
    comp = build_model(tiny_cfg("coarse_to_fine", "model.crop_mode=components"))
    for s in range(5):  # one of the image's own boxes, never a padding row
        box = comp._train_boxes(data, None, True, tf.constant([s, 1], tf.int64)).numpy()
        assert box[0].tolist() == [30, 10, 44, 20]
        assert box[1].tolist() in ([5, 40, 12, 50], [50, 5, 60, 9])
    pred = build_model(tiny_cfg("coarse_to_fine", "model.train_crop=predicted"))
    full, empty = tf.ones((2, S, S, 1)), tf.zeros((2, S, S, 1))
    # The coarse mask's box when there is one; the ground truth's when it is empty.
    np.testing.assert_allclose(pred._train_boxes(data, full, True, seed).numpy(), [[0, 0, S, S]] * 2)
    np.testing.assert_allclose(pred._train_boxes(data, empty, True, seed).numpy(),
                               [[30, 10, 44, 20], [5, 5, 60, 50]])
    mixed = tf.concat([full[:1], empty[:1]], 0)
    np.testing.assert_allclose(pred._train_boxes(data, mixed, True, seed).numpy(),
                               [[0, 0, S, S], [5, 5, 60, 50]])
    pred.gt_phase.assign(1)  # ground truth in training while the phase lasts, not in evaluation
    np.testing.assert_allclose(pred._train_boxes(data, full, True, seed).numpy(),
                               [[30, 10, 44, 20], [5, 5, 60, 50]])
    np.testing.assert_allclose(pred._train_boxes(data, full, False, seed).numpy(), [[0, 0, S, S]] * 2)


def test_coarse_to_fine_inference_known_answers():
    model = build_model(tiny_cfg("coarse_to_fine"))
    images = batch()["image"]
    # A coarse mask covering the whole image: the crop is the image itself, so the result is the
    # second-stage network applied to the whole image.
    _set_bias(model.coarse, 50.0)
    pred = model.predict_masks(images)
    whole = tf.sigmoid(model.snet(images, training=False)).numpy()
    np.testing.assert_allclose(pred["mask"].numpy(), whole, atol=1e-4)
    assert pred["valid"].numpy().tolist() == [[True, False, False, False]] * 2
    np.testing.assert_allclose(pred["boxes"][:, 0].numpy(), [[0, 0, S, S]] * 2)
    np.testing.assert_allclose(pred["keypoints"][:, 0].numpy(), [[S / 2, S / 2]] * 2)
    # An empty coarse mask: no box, an empty final mask.
    _set_bias(model.coarse, -50.0)
    pred = model.predict_masks(images)
    assert not pred["valid"].numpy().any() and float(pred["mask"].numpy().max()) == 0.0


@pytest.mark.parametrize("slots", [4, 1024])
def test_one_stage_boxes_are_its_mask_components(slots):
    model = build_model(tiny_cfg("unet", f"data.max_boxes={slots}"))
    images = batch()["image"]
    mask = tf.sigmoid(model.snet(images)).numpy()[..., 0]
    # An untrained network's mask may lie wholly below 0.5 or break into hundreds of pieces:
    # the median as threshold makes half of each image foreground, so there are components.
    model.threshold = float(np.median(mask))
    pred = model.predict_masks(images)
    np.testing.assert_allclose(pred["mask"].numpy()[..., 0], mask, atol=1e-6)
    assert pred["boxes"].shape[1] == slots
    for i in range(2):
        labels, n = ndimage.label(mask[i] > model.threshold, structure=np.ones((3, 3)))
        assert n > 0
        comps = sorted(((float(sl[1].start), float(sl[0].start), float(sl[1].stop),
                         float(sl[0].stop)), float(mask[i][labels == index].max()))
                       for index, sl in enumerate(ndimage.find_objects(labels), start=1))
        kept = _as_set(pred["boxes"][i].numpy(), pred["valid"][i].numpy())
        assert len(kept) == min(n, slots)
        if n <= slots:  # every component's box
            assert kept == [box for box, _ in comps]
        else:  # the components with the highest peak probability
            peaks = sorted((p for _, p in comps), reverse=True)
            assert set(kept) <= {box for box, _ in comps}
            kept_peaks = [max(p for b, p in comps if b == box) for box in kept]
            assert min(kept_peaks) >= peaks[slots] - 1e-6


def test_lnet_crop_inference_uses_lnet_keypoints():
    model = build_model(tiny_cfg("lnet_crop"))
    # Heatmap forced to ~0 except via the bias: no keypoint -> empty mask.
    kp = model.lnet.get_layer("kp_logits")
    kp.kernel.assign(tf.zeros_like(kp.kernel))
    kp.bias.assign([-50.0])
    pred = model.predict_masks(batch()["image"])
    assert tuple(pred["heatmap"].shape) == (2, S // 4, S // 4, 1)
    assert not pred["valid"].numpy().any() and float(pred["mask"].numpy().max()) == 0.0
    kp.bias.assign([50.0])  # the whole heatmap is one component: one keypoint at its peak cell
    pred = model.predict_masks(batch()["image"])
    assert pred["valid"].numpy().sum(axis=1).tolist() == [1, 1]
    assert float(pred["mask"].numpy().max()) > 0


@pytest.mark.parametrize("architecture, args", [
    ("coarse_to_fine", dict(margin=7.0, train_crop="predicted", crop_mode="components",
                            max_rois=3, threshold=0.3, seed=5)),
    ("lnet_crop", dict(margin=2.0, train_crop="truth", top_k=2, max_rois=2, threshold=0.4, seed=1)),
    ("fcn", dict(max_rois=6, threshold=0.2, seed=2)),
])
def test_get_config_covers_constructor_arguments(architecture, args):
    model = build_model(tiny_cfg(architecture, "loss.kind=bce", "loss.dice_weight=0.5"))
    for key, value in args.items():
        setattr(model, key, value)
    clone = type(model).from_config(model.get_config())
    for key, value in args.items():
        assert getattr(clone, key) == value, key
    assert clone.loss_config.kind == "bce" and clone.loss_config.dice_weight == 0.5
    assert list(clone.networks) == list(model.networks)
    assert count_params(clone) == count_params(model)


def test_constructor_and_compile_errors():
    snet = build_model(tiny_cfg("unet")).snet
    with pytest.raises(ValueError, match="train_crop must be one of truth, predicted, received 'gt'"):
        CoarseToFine(snet, snet, train_crop="gt")
    with pytest.raises(ValueError, match="crop_mode must be one of union, components, received 'all'"):
        CoarseToFine(snet, snet, crop_mode="all")
    with pytest.raises(ValueError, match="margin must be >= 0, received -2"):
        CoarseToFine(snet, snet, margin=-2)
    with pytest.raises(ValueError, match="max_rois must be a positive int, received 0"):
        OneStageSegmenter(snet, max_rois=0)
    with pytest.raises(ValueError, match=r"threshold must lie in \[0, 1\), received 1.5"):
        OneStageSegmenter(snet, threshold=1.5)
    with pytest.raises(ValueError, match="top_k must be a positive int, received 0"):
        LNetCrop(build_model(tiny_cfg("lnet_crop")).lnet, snet, top_k=0)
    model = OneStageSegmenter(snet)
    with pytest.raises(ValueError, match=r"optimizers for unknown networks \['lnet'\]; this model "
                                         r"has \['snet'\]"):
        model.compile(lnet_optimizer=keras.optimizers.Adam())


# ----------------------------------------------------------------------------- build.py

def test_config_architectures_and_family_rule():
    assert tiny_cfg("attention_unet").model.one_stage
    assert not tiny_cfg("coarse_to_fine").model.one_stage
    with pytest.raises(ConfigError, match="family must equal model.architecture"):
        load_config(None, ["model.architecture=fcn"])
    with pytest.raises(ConfigError, match="model.train_crop must be truth or predicted"):
        load_config(None, ["model.train_crop=gt"])
    with pytest.raises(ConfigError, match="model.crop_mode must be union or components"):
        load_config(None, ["model.crop_mode=all"])
    with pytest.raises(ConfigError, match="model.architecture must be one of lsnet, unet"):
        load_config(None, ["model.architecture=segnet"])


def test_build_uses_the_configured_depths_and_families():
    model = build_model(tiny_cfg("coarse_to_fine", "model.family=fcn", "model.snet_depth=34"))
    # ResNet18 first stage, ResNet34 second (the defaults; the tiny models' S-Net is 18), both
    # FCN (no U-Net decoder layers).
    assert model.coarse.get_layer("resnet18_encoder") and model.snet.get_layer("resnet34_encoder")
    names = [layer.name for layer in model.snet.layers]
    assert "decoder_score_p3" in names and not any(n.startswith("decoder_s16") for n in names)
    one = build_model(tiny_cfg("attention_unet", "model.snet_depth=34"))
    assert any("attention" in layer.name for layer in one.snet.layers)
    assert one.snet.get_layer("resnet34_encoder")
    assert build_model(tiny_cfg("unet")).snet.get_layer("resnet18_encoder")  # the tiny default
    lsnet = build_model(tiny_cfg("lsnet"))
    assert sorted(model_networks(lsnet)) == ["lnet", "snet"]


def test_compile_checkpoint_objects_and_parameter_counts():
    cfg = tiny_cfg("coarse_to_fine", "train.learning_rate=0.003")
    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=5)
    objects = checkpoint_objects(model)
    assert sorted(objects) == ["coarse", "coarse_optimizer", "snet", "snet_optimizer"]
    assert objects["coarse_optimizer"] is model.optimizer
    assert objects["snet_optimizer"] is model.snet_optimizer is not model.optimizer
    lr = objects["snet_optimizer"].learning_rate
    assert float(np.asarray(lr)) == pytest.approx(0.003)
    counts = parameter_counts(model)
    assert counts == {"coarse": count_params(model.coarse), "snet": count_params(model.snet),
                      "total": count_params(model.coarse) + count_params(model.snet)}
    trainable = parameter_counts(model, trainable=True)
    assert trainable["snet"] == count_trainable_params(model.snet) < counts["snet"]
    lsnet_cfg = tiny_cfg("lsnet")
    lsnet = build_model(lsnet_cfg)
    compile_model(lsnet, lsnet_cfg, 5)
    assert sorted(checkpoint_objects(lsnet)) == ["lnet", "lnet_optimizer", "snet", "snet_optimizer"]
    assert sorted(checkpoint_objects(lsnet, optimizers=False)) == ["lnet", "snet"]


def test_count_flops_known_answers():
    x = keras.Input((8, 8, 3))
    conv = keras.Model(x, keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)(x))
    assert count_flops(conv, (8, 8, 3)) == 2 * 9 * 3 * 4 * 4 * 4
    x = keras.Input((8, 8, 1))
    biased = keras.Model(x, keras.layers.Conv2D(2, 3, padding="same")(x))
    assert count_flops(biased, (8, 8, 1)) == 2 * 9 * 2 * 64 + 2 * 64  # + one add per bias
    with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\)"):
        count_flops(conv, (8, 8))


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["fcn", "coarse_to_fine"])
def test_fit_evaluate_and_export_like_the_trainer(architecture, tmp_path):
    """The trainer's path: compile_model, fit with validation, evaluate_model, SavedModel."""
    from lsnet_tf.metrics.evaluation import evaluate_model
    from lsnet_tf.export import saved_model

    cfg = tiny_cfg(architecture)
    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=2)
    data = batch()
    ds = tf.data.Dataset.from_tensors(data).repeat(2)
    history = model.fit(ds, epochs=1, validation_data=ds, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "val_dsc" in history.history
    summary = evaluate_model(model, ds)
    # Per-slice DSC over the 4 slices (the batch twice), all with a target, from the traced
    # inference the evaluation runs (an untrained model's probabilities sit near 0.5, where
    # eager and traced rounding could differ).
    pred = tf.function(model.predict_masks)(data["image"])["mask"]
    assert summary["n_target_slices"] == 4
    assert summary["dsc"]["mean"] == pytest.approx(dice_per_image(data["mask"], pred).mean(),
                                                   abs=1e-6)
    path = saved_model.export(model, cfg, str(tmp_path / "sm" / "1"))
    served = tf.saved_model.load(path).signatures["serving_default"]
    out = served(hu=tf.zeros((1, 48, 80)))
    assert tuple(out["mask"].shape)[:3] == (1, 48, 80) and tuple(out["boxes"].shape) == (1, 4, 4)
