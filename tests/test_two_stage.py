"""The two-stage models' shared behaviour, pinned through their public interface: where a
keypoint and its distances put the pasted mask (L-SNet, L-Net + crop, coarse-to-fine, and the
one-stage model's component boxes), which cells the training RoI comes from, and L-SNet's
L-Net gradient ∇L_L + γ∇L_S against one plain GradientTape over L_L + γ·L_S.

Stub networks (Keras models with the real networks' input shapes and outputs) give known
heatmaps, distances and masks, so every placement is a known answer in whole pixels.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import compiled, make_batch, tiny_cfg
from lsnet_tf.config import STRIDE
from lsnet_tf.layers.roi_recalibration import RoIRecalibration
from lsnet_tf.losses.localization import localization_loss
from lsnet_tf.losses.segmentation import per_sample_loss_from_logits
from lsnet_tf.models import two_stage
from lsnet_tf.models.cascades import CoarseToFine, LNetCrop
from lsnet_tf.models.lsnet import LSNet
from lsnet_tf.models.one_stage import OneStageSegmenter
from lsnet_tf.ops.sampling import affine_grid, bilinear_sample


# ----------------------------------------------------------------------------- private reach
# The only places this file reaches past the public interface.

def select_rois(model, heatmap, ltrb, training, seed):
    """L-SNet's training RoI choice: (keypoints (B, 2), distances (B, 4)) from L-Net's outputs."""
    return two_stage.select_train_rois(heatmap, ltrb, model.top_k, training, seed)


def lnet_crop_predicted_train_boxes(model, out, seed):
    """L-Net + crop's training box (B, 4) xyxy with ``train_crop="predicted"``, and whether it
    exists (B,)."""
    return model._predicted_train_boxes(out, True, seed)


# ----------------------------------------------------------------------------- stubs

# A non-square image and RoI: swapping height and width anywhere changes the answer.
H, W = 64, 96
ROI = (32, 48)


class PerImage(keras.layers.Layer):
    """``on`` (h, w, C) for images whose pixel (0, 0) is 1, ``off`` for those where it is 0."""

    def __init__(self, on, off, **kwargs):
        super().__init__(**kwargs)
        self.on = np.asarray(on, np.float32)
        self.off = np.asarray(off, np.float32)

    def call(self, images):
        flag = tf.cast(images[:, :1, :1, :1], tf.float32)  # (B, 1, 1, 1)
        return tf.constant(self.off) + flag * tf.constant(self.on - self.off)


def lnet_stub(cell, ltrb_at_cell, shape=(H, W), peak_logit=3.0):
    """L-Net with a single heatmap peak at feature cell (i, j) on flagged images.

    Outputs are those of ``build_lnet``: ``heatmap``, ``heatmap_logits`` (logit -6, heatmap
    0.0025, everywhere but the peak) and ``ltrb`` (`ltrb_at_cell` at the peak cell, (3, 5, 7, 9)
    px at every other cell, so reading another cell's distances moves the box).
    """
    hf, wf = shape[0] // STRIDE, shape[1] // STRIDE
    off = np.full((hf, wf, 1), -6.0, np.float32)
    on = off.copy()
    on[cell[0], cell[1], 0] = peak_logit
    ltrb = np.tile(np.float32([3, 5, 7, 9]), (hf, wf, 1))
    ltrb[cell[0], cell[1]] = ltrb_at_cell
    image = keras.Input((*shape, 1), name="image")
    logits = PerImage(on, off, name="heatmap_logits")(image)
    heatmap = keras.layers.Activation("sigmoid", name="heatmap")(logits)
    distances = PerImage(ltrb, ltrb, name="ltrb")(image)
    return keras.Model(image, {"heatmap": heatmap, "heatmap_logits": logits, "ltrb": distances},
                       name="lnet")


def mask_stub(on_logits, shape=(H, W), off_logit=-20.0, name="snet"):
    """A segmentation network whose logits are `on_logits` (h, w) on flagged images and
    `off_logit` everywhere on the others."""
    on = np.asarray(on_logits, np.float32)[..., None]
    image = keras.Input((*shape, 1), name="image")
    logits = PerImage(on, np.full_like(on, off_logit), name="logits")(image)
    return keras.Model(image, logits, name=name)


def constant_snet(logit=20.0, shape=ROI):
    """S-Net saying "foreground" everywhere on every RoI: probability sigmoid(20) = 1."""
    return mask_stub(np.full(shape, logit), shape=shape, off_logit=logit)


def images():
    """Two images: image 0 unflagged (its stubs see nothing), image 1 flagged. The object is on
    the second image, so a mask pasted onto the wrong image fails."""
    x = np.full((2, H, W, 1), 0.5, np.float32)
    x[0, 0, 0] = 0.0
    x[1, 0, 0] = 1.0
    return tf.constant(x)


def box_mask(*boxes):
    """(2, H, W) bool: image 1 on in the given xyxy whole-pixel boxes, image 0 empty."""
    m = np.zeros((2, H, W), bool)
    for x1, y1, x2, y2 in boxes:
        m[1, y1:y2, x1:x2] = True
    return m


def assert_pixels(mask, expected):
    got = np.asarray(mask)[..., 0] > 0.5
    wrong = np.argwhere(got != expected)
    assert not len(wrong), f"{len(wrong)} pixels differ, e.g. (image, row, col) {wrong[:5].tolist()}"


# ----------------------------------------------------------------------------- 1. placement

# Keypoint cell (row 5, column 14) stands for the input point (14.5·4, 5.5·4) = (58, 22).
# Distances l=18, t=6, r=10, b=14 and margin 4 give the RoI x1 = 58-18-4 = 36,
# y1 = 22-6-4 = 12, x2 = 58+10+4 = 72, y2 = 22+14+4 = 40 (36 wide, 28 high).
# Why a swap fails: row != column, so a keypoint read as (y, x) is (22, 58) and the box lands
# elsewhere; l, t, r, b are all different, so exchanging any two of them moves an edge; the box,
# the image (64 x 96), the feature grid (16 x 24) and the RoI (32 x 48) are not square, so
# exchanging width and height in theta, in the normalisation or in the flat cell index (which
# then reads another cell's distances, (3, 5, 7, 9)) changes the pasted pixels.
CELL = (5, 14)
KEYPOINT = (58.0, 22.0)
LTRB = (18.0, 6.0, 10.0, 14.0)
MARGIN = 4.0


def test_lsnet_pastes_the_roi_of_its_keypoint_and_distances():
    model = LSNet(lnet_stub(CELL, LTRB), constant_snet(), margin=MARGIN, max_rois=4)
    out = {k: v.numpy() for k, v in model.predict_masks(images()).items()}
    assert out["mask"].shape == (2, H, W, 1)
    assert_pixels(out["mask"], box_mask((36, 12, 72, 40)))
    # Well inside the RoI S-Net's probability comes back unchanged.
    np.testing.assert_allclose(out["mask"][1, 14:38, 38:70], 1.0, atol=1e-6)
    assert out["valid"].tolist() == [[False] * 4, [True, False, False, False]]
    np.testing.assert_allclose(out["keypoints"][1, 0], KEYPOINT, atol=1e-5)
    # `boxes` are the regressed boxes, without the margin.
    np.testing.assert_allclose(out["boxes"][1, 0], [40, 16, 68, 36], atol=1e-5)
    np.testing.assert_allclose(out["scores"][1, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-6)
    for key in ("keypoints", "boxes", "scores"):  # zeros where invalid
        assert not out[key][0].any() and not out[key][1, 1:].any(), key
    assert out["heatmap"].shape == (2, H // STRIDE, W // STRIDE, 1)


def test_lnet_crop_pastes_its_crop_rounded_outward():
    # Fractional distances: the box (40.5, 16.75, 68.3, 35.6) grown by 4 is
    # (36.5, 12.75, 72.3, 39.6); rounded outward (floor, floor, ceil, ceil): (36, 12, 73, 40).
    # Rounding to the nearest pixel would give x2 = 72 and y1 = 13.
    ltrb = (17.5, 5.25, 10.3, 13.6)
    model = LNetCrop(lnet_stub(CELL, ltrb), constant_snet(), margin=MARGIN, max_rois=4)
    out = {k: v.numpy() for k, v in model.predict_masks(images()).items()}
    assert_pixels(out["mask"], box_mask((36, 12, 73, 40)))
    assert out["valid"].tolist() == [[False] * 4, [True, False, False, False]]
    np.testing.assert_allclose(out["keypoints"][1, 0], KEYPOINT, atol=1e-5)
    np.testing.assert_allclose(out["boxes"][1, 0], [40.5, 16.75, 68.3, 35.6], atol=1e-4)
    np.testing.assert_allclose(out["scores"][1, 0], 1 / (1 + np.exp(-3.0)), rtol=1e-6)
    for key in ("keypoints", "boxes", "scores"):
        assert not out[key][0].any() and not out[key][1, 1:].any(), key


def rectangles(*rects, shape=(H, W)):
    """Logits (h, w): each (row0, row1, col0, col1, logit) rectangle, -20 elsewhere."""
    z = np.full(shape, -20.0, np.float32)
    for r0, r1, c0, c1, logit in rects:
        z[r0:r1, c0:c1] = logit
    return z


def test_coarse_to_fine_union_box_grown_rounded_and_clipped():
    # Coarse mask on rows 44..59, columns 20..44: its box (20, 44, 45, 60), grown by 6, is
    # (14, 38, 51, 66), clipped to the 64-row image: (14, 38, 51, 64).
    coarse = mask_stub(rectangles((44, 60, 20, 45, 20.0)), name="coarse")
    model = CoarseToFine(coarse, constant_snet(), margin=6.0, crop_mode="union", max_rois=4)
    out = {k: v.numpy() for k, v in model.predict_masks(images()).items()}
    assert_pixels(out["mask"], box_mask((14, 38, 51, 64)))
    assert out["valid"].tolist() == [[False] * 4, [True, False, False, False]]
    np.testing.assert_allclose(out["boxes"][1, 0], [20, 44, 45, 60])
    np.testing.assert_allclose(out["keypoints"][1, 0], [32.5, 52.0])
    np.testing.assert_allclose(out["scores"][1, 0], 1.0, atol=1e-6)
    for key in ("keypoints", "boxes", "scores"):
        assert not out[key][0].any() and not out[key][1, 1:].any(), key
    assert_pixels(out["coarse_mask"], box_mask((20, 44, 45, 60)))


def test_coarse_to_fine_components_each_cropped_and_merged():
    # Two components: A (box (20, 44, 45, 60), probability 1) and B on rows 4..11, columns
    # 70..89 (box (70, 4, 90, 12), probability sigmoid(5)), ranked by their peaks. Grown by 6:
    # A -> (14, 38, 51, 64) after clipping, B -> (64, 0, 96, 18) after clipping.
    coarse = mask_stub(rectangles((44, 60, 20, 45, 20.0), (4, 12, 70, 90, 5.0)), name="coarse")
    model = CoarseToFine(coarse, constant_snet(), margin=6.0, crop_mode="components", max_rois=4)
    out = {k: v.numpy() for k, v in model.predict_masks(images()).items()}
    assert_pixels(out["mask"], box_mask((14, 38, 51, 64), (64, 0, 96, 18)))
    assert out["valid"].tolist() == [[False] * 4, [True, True, False, False]]
    np.testing.assert_allclose(out["boxes"][1, :2], [[20, 44, 45, 60], [70, 4, 90, 12]])
    np.testing.assert_allclose(out["scores"][1, :2], [1.0, 1 / (1 + np.exp(-5.0))], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints"][1, :2], [[32.5, 52.0], [80.0, 8.0]])


def test_one_stage_boxes_are_its_mask_components_ranked_by_peak():
    # Three components with peaks 1, sigmoid(2) and sigmoid(1); a fourth slot stays invalid.
    logits = rectangles((44, 60, 20, 45, 20.0), (4, 12, 70, 90, 1.0), (30, 31, 5, 6, 2.0))
    model = OneStageSegmenter(mask_stub(logits), max_rois=4)
    out = {k: v.numpy() for k, v in model.predict_masks(images()).items()}
    np.testing.assert_allclose(out["mask"][1, ..., 0], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert_pixels(out["mask"], box_mask((20, 44, 45, 60), (70, 4, 90, 12), (5, 30, 6, 31)))
    assert out["valid"].tolist() == [[False] * 4, [True, True, True, False]]
    np.testing.assert_allclose(out["boxes"][1], [[20, 44, 45, 60], [5, 30, 6, 31],
                                                 [70, 4, 90, 12], [0, 0, 0, 0]])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(out["scores"][1], [1.0, sig(2.0), sig(1.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(out["keypoints"][1], [[32.5, 52], [5.5, 30.5], [80, 8], [0, 0]])
    for key in ("boxes", "scores", "keypoints"):
        assert not out[key][0].any(), key


@pytest.mark.parametrize("valid, expected_batch", [
    ([[False, False], [False, False]], 1),  # no RoI: one blank RoI, dropped again
    ([[True, False], [False, False]], 1),
    ([[True, True], [False, True]], 3),
])
def test_s_net_runs_once_on_exactly_the_valid_rois(valid, expected_batch):
    """S-Net sees one row per valid RoI (a blank one only when there is none), and an image's
    mask is its RoIs' pasted masks: here every RoI covers its whole image (identity θ) and S-Net
    answers logit 10 everywhere, so an image with a RoI gets sigmoid(10) inside and one without
    gets 0."""
    seen = []

    def snet(x, training=False):
        seen.append(int(x.shape[0]))
        return tf.fill([tf.shape(x)[0], 4, 4, 1], 10.0)

    def take_rois(images, boxes):
        n = tf.shape(images)[0]
        theta = tf.tile(tf.constant([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), [n, 1, 1])
        return images[:, :4, :4], theta

    images = tf.zeros([2, 8, 8, 1])
    valid = tf.constant(valid)
    boxes = tf.zeros([2, 2, 4])
    mask = two_stage.segment_rois(snet, images, (8, 8), valid, take_rois, boxes).numpy()
    assert seen == [expected_batch]
    assert mask.shape == (2, 8, 8, 1)
    for i, has_roi in enumerate(valid.numpy().any(axis=1)):
        if has_roi:  # the border pixels blend with the zero padding of the bilinear paste
            np.testing.assert_allclose(mask[i, 2:6, 2:6], 1 / (1 + np.exp(-10.0)), rtol=1e-6)
        else:
            assert not mask[i].any()


# ----------------------------------------------------------------------------- 2. training RoIs

# Per image, the three highest heatmap cells (row, column), best first, then a fourth that a
# "top-4" rule would also draw. Rows differ from columns and the grid is 16 x 24, so a cell
# decoded as (column, row) or with the wrong row length is another cell.
TOP = [[(5, 14), (11, 3), (2, 20), (9, 9)],
       [(13, 22), (0, 7), (6, 1), (3, 16)]]
SEEDS = 300


def training_maps():
    """Heatmaps (2, 16, 24, 1) below 0.5 but at the `TOP` cells (0.9, 0.8, 0.7, 0.6) and
    distances (2, 16, 24, 4) different at every cell."""
    rng = np.random.default_rng(0)
    heat = rng.uniform(0.0, 0.5, (2, H // STRIDE, W // STRIDE, 1)).astype(np.float32)
    for b, cells in enumerate(TOP):
        for (i, j), v in zip(cells, (0.9, 0.8, 0.7, 0.6)):
            heat[b, i, j, 0] = v
    ltrb = rng.uniform(1.0, 30.0, (2, H // STRIDE, W // STRIDE, 4)).astype(np.float32)
    return tf.constant(heat), tf.constant(ltrb)


def cell_centre(i, j):
    return ((j + 0.5) * STRIDE, (i + 0.5) * STRIDE)


def chi_square(counts, n):
    expected = n / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def assert_uniform_over_top3(chosen):
    """`chosen[b]`: the cells image b got over the seeds. Each of its top-3 cells about a third of
    the time: with 300 draws the counts have a standard deviation of 8.2 around 100, and the
    fixed seeds give counts well inside the bounds below (chi-square < 13.8, p = 0.001 for 2
    degrees of freedom; every count >= 70). "Always the best" (chi-square 600), "top-2" (150)
    or a cell outside the top 3 ("top-4") fail."""
    for b, cells in enumerate(chosen):
        assert set(cells) <= set(TOP[b][:3]), (b, set(cells) - set(TOP[b][:3]))
        counts = [cells.count(c) for c in TOP[b][:3]]
        assert chi_square(counts, len(cells)) < 13.8 and min(counts) >= 70, (b, counts)


def test_lsnet_training_roi_is_one_of_the_top3_cells_uniformly():
    model = LSNet(lnet_stub(CELL, LTRB), constant_snet(), top_k=3)
    heat, ltrb = training_maps()
    chosen = [[], []]
    for s in range(SEEDS):
        points, dist = select_rois(model, heat, ltrb, True, tf.constant([0, s], tf.int64))
        points, dist = points.numpy(), dist.numpy()
        for b in range(2):
            # The point is a cell centre; the distances are L-Net's at that cell.
            i, j = (int(round(v / STRIDE - 0.5)) for v in points[b][::-1])
            np.testing.assert_array_equal(points[b], cell_centre(i, j))
            np.testing.assert_array_equal(dist[b], ltrb.numpy()[b, i, j])
            chosen[b].append((i, j))
    assert_uniform_over_top3(chosen)
    # In evaluation, always the best cell, whatever the seed.
    for s in range(5):
        points, dist = select_rois(model, heat, ltrb, False, tf.constant([0, s], tf.int64))
        for b in range(2):
            i, j = TOP[b][0]
            np.testing.assert_array_equal(points.numpy()[b], cell_centre(i, j))
            np.testing.assert_array_equal(dist.numpy()[b], ltrb.numpy()[b, i, j])


def test_lnet_crop_predicted_training_box_is_a_top3_cells_box_uniformly():
    model = LNetCrop(lnet_stub(CELL, LTRB), constant_snet(), top_k=3, train_crop="predicted")
    heat, ltrb = training_maps()
    out = {"heatmap": heat, "heatmap_logits": tf.math.log(heat / (1 - heat)), "ltrb": ltrb}
    # The box each candidate cell would give: its centre minus (l, t), plus (r, b).
    candidates = []
    for b in range(2):
        boxes = {}
        for i, j in TOP[b]:
            (x, y), (l, t, r, bo) = cell_centre(i, j), ltrb.numpy()[b, i, j]
            boxes[(i, j)] = np.float32([x - l, y - t, x + r, y + bo])
        candidates.append(boxes)
    chosen = [[], []]
    for s in range(SEEDS):
        boxes, ok = lnet_crop_predicted_train_boxes(model, out, tf.constant([0, s], tf.int64))
        assert ok.numpy().all()
        for b in range(2):
            match = [c for c, box in candidates[b].items()
                     if np.allclose(boxes.numpy()[b], box, atol=1e-4)]
            assert len(match) == 1, (b, boxes.numpy()[b])
            chosen[b].append(match[0])
    assert_uniform_over_top3(chosen)


# ----------------------------------------------------------------------------- 3. L-Net gradient

def reference_gradients(model, cfg, batch, gamma):
    """L-Net's and S-Net's gradients from one plain tape over L_L + γ·L_S, built from the pieces:
    L-Net, Eq. 5, the RoI choice with the model's step seed, RR, the target mask through θ
    without gradient, S-Net and Eq. 6 over the images with a target (one replica: the global
    counts are this batch's)."""
    images, mask = batch["image"], batch["mask"]
    has_target = tf.cast(batch["num_boxes"] > 0, tf.float32)
    roi_size = tuple(int(s) for s in model.snet.input_shape[1:3])
    rr = RoIRecalibration(output_size=roi_size, margin=model.margin)
    seed = tf.stack([tf.cast(cfg.train.seed, tf.int64),
                     tf.cast(model.optimizer.iterations, tf.int64)])
    with tf.GradientTape(persistent=True) as tape:
        out = model.lnet(images, training=True)
        l_loss, _ = localization_loss(out["heatmap_logits"], out["ltrb"], batch["heatmap"],
                                      batch["ltrb"], cfg.loss, images.shape[0], STRIDE)
        points, dist = select_rois(model, out["heatmap"], out["ltrb"], True, seed)
        rois, theta = rr([images, points, dist])
        roi_mask = bilinear_sample(mask, affine_grid(tf.stop_gradient(theta), *roi_size))
        logits = model.snet(rois, training=True)
        per_image = per_sample_loss_from_logits(cfg.loss, roi_mask, logits,
                                                cfg.loss.mask_focal_normalizer)
        s_loss = tf.reduce_sum(per_image * has_target) / tf.maximum(tf.reduce_sum(has_target), 1.0)
        total = l_loss + gamma * s_loss
    l_grads = tape.gradient(total, model.lnet.trainable_variables)
    s_grads = tape.gradient(s_loss, model.snet.trainable_variables)
    return l_grads, s_grads, {"l_loss": l_loss, "s_loss": s_loss}


def assert_grads_close(got, ref, what):
    """Per tensor: |got - ref| <= 2e-4 · max|ref| + 1e-9 (the tensors' entries span decades, so
    the bound is relative to each tensor's largest entry).

    The model sums ∇L_L and γ∇L_S after two backward passes, the reference differentiates
    L_L + γ·L_S once: the same sum in float32 in another order. Over eight weight draws of this
    tiny model the largest L-Net difference was 2e-6 to 2e-5 of its tensor's largest entry
    (3.7e-5 once in a full suite run). Leaving γ·∇L_S out, or using γ = 0.01 instead of 0.1,
    moves it by 0.13 and 0.12 of that entry on this model."""
    assert len(got) == len(ref), what
    for k, (g, r) in enumerate(zip(got, ref)):
        g, r = np.asarray(g), np.asarray(r)
        bound = 2e-4 * np.abs(r).max() + 1e-9
        assert np.abs(g - r).max() <= bound, (what, k, np.abs(g - r).max(), bound)


def gradient_batch():
    """Four images, the third without a target. An even batch: on CPUs with AVX-512, TensorFlow
    2.16's oneDNN kernels abort the process in the backward pass of a 1x1 stride-2 convolution
    with 4 or 8 channels at an odd batch (3 or 5 here); widths of 16 and more, the configs'
    smallest, train at any batch (docs/performance.md, "Known issue")."""
    return make_batch(n=4, with_target=(True, True, False))


@pytest.fixture(scope="module")
def gradient_model():
    keras.utils.set_random_seed(3)  # the same weights whichever tests ran before
    cfg = tiny_cfg("train.gamma=0.1", "train.seed=3")
    model = compiled(cfg)
    model.optimizer.iterations.assign(5)  # the step seed is [seed, iterations] = [3, 5]
    return cfg, model


def with_gamma(model, cfg, gamma):
    """An L-SNet of the same networks and settings with another γ, compiled like `model`."""
    other = LSNet(model.lnet, model.snet, margin=model.margin, gamma=gamma,
                  top_k=cfg.train.top_k, max_rois=cfg.data.max_boxes,
                  loss_config=cfg.loss, seed=cfg.train.seed)
    other.compile(lnet_optimizer=keras.optimizers.Adam(), snet_optimizer=keras.optimizers.Adam())
    other.optimizer.iterations.assign(model.optimizer.iterations)
    return other


@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_lsnet_gradients_equal_one_tape_over_l_l_plus_gamma_l_s(gradient_model, gamma):
    cfg, model = gradient_model
    if gamma != model.gamma:
        model = with_gamma(model, cfg, gamma)
    batch = gradient_batch()
    l_grads, s_grads, losses = model.gradients(batch)
    l_ref, s_ref, ref_losses = reference_gradients(model, cfg, batch, gamma)
    for name in ("l_loss", "s_loss"):
        np.testing.assert_allclose(float(losses[name]), float(ref_losses[name]), rtol=1e-6)
    assert float(ref_losses["s_loss"]) > 0
    assert_grads_close(l_grads, l_ref, "L-Net")
    assert_grads_close(s_grads, s_ref, "S-Net")


def test_gamma_matters_and_gamma_zero_is_the_localization_gradient(gradient_model):
    """γ = 0 gives ∇L_L alone (the reference without L_S); γ = 1 adds ∇L_S through RR, which is
    not small (the bound is 0.1% of ∇L_L's norm)."""
    cfg, model = gradient_model
    batch = gradient_batch()
    g1, _, _ = with_gamma(model, cfg, 1.0).gradients(batch)
    g0, _, _ = with_gamma(model, cfg, 0.0).gradients(batch)
    ref0, _, _ = reference_gradients(model, cfg, batch, 0.0)
    assert_grads_close(g0, ref0, "L-Net at γ = 0")
    norm = lambda gs: float(np.sqrt(sum(np.sum(np.square(g)) for g in gs)))  # noqa: E731
    assert norm([a.numpy() - b.numpy() for a, b in zip(g1, g0)]) > 1e-3 * norm(
        [g.numpy() for g in g0])
