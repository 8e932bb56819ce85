"""Affine grid, bilinear sampler, inverse transform and mask pasting (lsnet_tf.ops.sampling)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from lsnet_tf.ops.boxes import box_theta
from lsnet_tf.ops.sampling import (affine_grid, bilinear_sample, invert_affine, paste_masks,
                                   sample_axis_aligned, sample_scale_translate)

F32 = np.float32
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)


def sample(images, theta, height, width):
    return bilinear_sample(images, affine_grid(theta, height, width)).numpy()


def scipy_reference(images, grid):
    """Independent reference: scipy.ndimage.map_coordinates, order 1, zero outside."""
    images = np.asarray(images, np.float64)
    grid = np.asarray(grid, np.float64)
    batch, height, width, channels = images.shape
    out = np.zeros(grid.shape[:3] + (channels,))
    for b in range(batch):
        # Pixel coordinates with pixel centres at integers, as scipy expects.
        px = ((grid[b, ..., 0] + 1.0) * width - 1.0) / 2.0
        py = ((grid[b, ..., 1] + 1.0) * height - 1.0) / 2.0
        for c in range(channels):
            out[b, ..., c] = ndimage.map_coordinates(images[b, ..., c], [py, px], order=1,
                                                     mode="grid-constant", cval=0.0)
    return out


def test_affine_grid_identity_is_pixel_centres():
    grid = affine_grid(IDENTITY[None], 2, 4).numpy()
    assert grid.shape == (1, 2, 4, 2)
    np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75], atol=1e-7)
    np.testing.assert_allclose(grid[0, :, 0, 1], [-0.5, 0.5], atol=1e-7)


def test_affine_grid_applies_theta_to_x_y_one():
    theta = np.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]], np.float32)
    grid = affine_grid(theta, 3, 2).numpy()
    xn, yn = 0.5, 2.0 / 3.0  # output pixel (row 2, col 1)
    np.testing.assert_allclose(grid[0, 2, 1], [xn + 2 * yn + 3, 4 * xn + 5 * yn + 6], rtol=1e-6)


def test_identity_theta_returns_input():
    images = np.random.default_rng(0).normal(size=(2, 9, 7, 3)).astype(np.float32)
    out = sample(images, np.stack([IDENTITY, IDENTITY]), 9, 7)
    np.testing.assert_allclose(out, images, atol=1e-6)


@pytest.mark.parametrize("shift_x, shift_y", [(2, 0), (0, -3), (1, 2), (-4, -1)])
def test_integer_shift_is_zero_padded_roll(shift_x, shift_y):
    height, width = 8, 10
    images = np.random.default_rng(1).normal(size=(1, height, width, 2)).astype(np.float32)
    theta = IDENTITY.copy()
    theta[0, 2] = 2.0 * shift_x / width
    theta[1, 2] = 2.0 * shift_y / height
    out = sample(images, theta[None], height, width)
    # Pull: out[i, j] = in[i + shift_y, j + shift_x], zero where that is outside.
    expected = np.roll(images, (-shift_y, -shift_x), axis=(1, 2))
    rows = np.arange(height)[:, None] + shift_y
    cols = np.arange(width)[None, :] + shift_x
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    expected = np.where(inside[None, :, :, None], expected, 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_two_times_zoom_known_values():
    # I[i, j] = 10 i + j is linear, so bilinear sampling returns 10 y + x at the sample points.
    image = (10.0 * np.arange(4)[:, None] + np.arange(4)[None, :]).astype(np.float32)
    theta = np.array([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]], np.float32)
    out = sample(image[None, :, :, None], theta, 4, 4)[0, :, :, 0]
    coords = np.array([0.75, 1.25, 1.75, 2.25])  # pixel coords of the output centres
    np.testing.assert_allclose(out, 10.0 * coords[:, None] + coords[None, :], atol=1e-5)


def test_zoom_out_taps_outside_count_as_zero():
    # 1 x 2 image [1, 3]; 2x zoom out samples x = -0.5 and x = 1.5 (pixel coordinates).
    image = np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1)
    theta = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], np.float32)
    out = sample(image, theta, 1, 2)
    np.testing.assert_allclose(out.ravel(), [0.5, 1.5], atol=1e-6)
    far = np.array([[[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]], np.float32)  # entirely outside
    assert np.all(sample(image, far, 1, 2) == 0.0)


def test_matches_scipy_on_random_affine():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(4, 13, 17, 2)).astype(np.float32)
    scale = rng.uniform(0.3, 1.3, size=(4, 1, 1))
    angle = rng.uniform(-np.pi, np.pi, size=4)
    rotation = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1),
                         np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    shear = np.eye(2) + rng.uniform(-0.4, 0.4, size=(4, 2, 2)) * (1 - np.eye(2))
    linear = scale * rotation @ shear
    theta = np.concatenate([linear, rng.uniform(-0.6, 0.6, size=(4, 2, 1))], -1).astype(np.float32)
    grid = affine_grid(theta, 11, 9)
    out = bilinear_sample(images, grid).numpy()
    expected = scipy_reference(images, grid.numpy())
    outside = (np.abs(grid.numpy()) > 1).any(-1)
    assert 0.05 < outside.mean() < 0.7  # the test covers points inside and outside
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_matches_scipy_on_arbitrary_grid_points():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 5, 6, 1)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, size=(2, 7, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(bilinear_sample(images, grid).numpy(),
                               scipy_reference(images, grid), atol=1e-5)


def test_float64_and_dtype_follows_images():
    images = np.random.default_rng(4).normal(size=(1, 4, 4, 1))
    out = bilinear_sample(images, affine_grid(IDENTITY[None].astype(np.float64), 4, 4))
    assert out.dtype == tf.float64
    np.testing.assert_allclose(out.numpy(), images, atol=1e-12)


def _loss_weights(shape, seed=5):
    return tf.constant(np.random.default_rng(seed).normal(size=shape))


def test_gradients_finite_nonzero_and_match_finite_differences():
    rng = np.random.default_rng(6)
    images = tf.constant(rng.normal(size=(2, 8, 9, 2)))  # float64 for finite differences
    # Generic values: no sample point sits on a pixel centre, where the sampler has a kink.
    theta = tf.constant([[[0.71, 0.13, 0.052], [-0.21, 0.63, 0.11]],
                         [[0.93, 0.0, -0.23], [0.0, 1.17, 0.31]]], tf.float64)
    weights = _loss_weights((2, 6, 5, 2))

    def loss(images, theta):
        return tf.reduce_sum(bilinear_sample(images, affine_grid(theta, 6, 5)) * weights)

    with tf.GradientTape() as tape:
        tape.watch([images, theta])
        value = loss(images, theta)
    grad_images, grad_theta = tape.gradient(value, [images, theta])
    for grad in (grad_images, grad_theta):
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)

    step = 1e-6
    numeric = np.zeros((2, 2, 3))
    for index in np.ndindex(2, 2, 3):
        delta = np.zeros((2, 2, 3))
        delta[index] = step
        numeric[index] = (loss(images, theta + delta) - loss(images, theta - delta)) / (2 * step)
    np.testing.assert_allclose(grad_theta.numpy(), numeric, rtol=1e-5, atol=1e-7)

    # Linear in the image: a finite difference on a few pixels is exact.
    for index in [(0, 3, 4, 1), (1, 0, 0, 0), (1, 5, 2, 1)]:
        delta = np.zeros(images.shape)
        delta[index] = 1.0
        numeric_pixel = loss(images + delta, theta) - loss(images, theta)
        np.testing.assert_allclose(grad_images.numpy()[index], numeric_pixel, atol=1e-9)


def test_dynamic_batch_in_tf_function():
    fn = tf.function(lambda images, theta: bilinear_sample(images, affine_grid(theta, 5, 6)),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32),
                                      tf.TensorSpec([None, 2, 3], tf.float32)])
    rng = np.random.default_rng(7)
    theta = np.tile(np.array([[[0.8, 0.1, 0.1], [0.0, 0.9, -0.1]]], np.float32), (3, 1, 1))
    for batch in (1, 3):
        images = rng.normal(size=(batch, 10, 12, 3)).astype(np.float32)
        out = fn(images, theta[:batch]).numpy()
        assert out.shape == (batch, 5, 6, 3)
        np.testing.assert_allclose(out, sample(images, theta[:batch], 5, 6), atol=1e-6)


def test_runs_under_xla_jit():
    rng = np.random.default_rng(8)
    images = rng.normal(size=(2, 12, 10, 4)).astype(np.float32)
    theta = np.array([[[0.5, 0.2, 0.1], [0.1, 0.7, 0.0]]] * 2, np.float32)

    @tf.function(jit_compile=True)
    def fn(images, theta):
        return bilinear_sample(images, affine_grid(theta, 7, 9))

    np.testing.assert_allclose(fn(images, theta).numpy(), sample(images, theta, 7, 9), atol=1e-5)

    def gradients(images, theta):
        with tf.GradientTape() as tape:
            tape.watch([images, theta])
            loss = tf.reduce_sum(tf.square(bilinear_sample(images, affine_grid(theta, 7, 9))))
        return tape.gradient(loss, [images, theta])

    images, theta = tf.constant(images), tf.constant(theta)
    for jitted, eager in zip(tf.function(gradients, jit_compile=True)(images, theta),
                             gradients(images, theta)):
        np.testing.assert_allclose(jitted.numpy(), eager.numpy(), rtol=1e-4, atol=1e-5)


def test_converts_to_tflite_with_builtin_ops_only():
    module = tf.Module()
    module.fn = tf.function(
        lambda images, theta: bilinear_sample(images, affine_grid(theta, 6, 6)),
        input_signature=[tf.TensorSpec([1, 8, 8, 2], tf.float32),
                         tf.TensorSpec([1, 2, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
    rng = np.random.default_rng(9)
    images = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    theta = np.array([[[0.9, 0.3, 0.2], [-0.3, 0.8, -0.4]]], np.float32)
    (out,) = runner(images=images, theta=theta).values()
    np.testing.assert_allclose(out, sample(images, theta, 6, 6), atol=1e-5)


def test_invert_affine_known_values_and_composition():
    theta = np.array([[[0.5, 0.0, 0.2], [0.0, 0.25, -0.5]]], np.float32)
    inverse = invert_affine(theta, eps=0.0).numpy()
    np.testing.assert_allclose(inverse, [[[2.0, 0.0, -0.4], [0.0, 4.0, 2.0]]], rtol=1e-6)
    rng = np.random.default_rng(10)
    theta = np.zeros((5, 2, 3), np.float32)
    theta[:, 0, 0], theta[:, 1, 1] = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    theta[:, :, 2] = rng.uniform(-1, 1, (5, 2))
    inverse = invert_affine(theta).numpy()  # default eps = 1e-6

    def homogeneous(t):
        return np.concatenate([t, np.broadcast_to([0.0, 0.0, 1.0], (len(t), 1, 3))], 1)

    composed = homogeneous(inverse) @ homogeneous(theta)
    np.testing.assert_allclose(composed[:, :2], np.broadcast_to(IDENTITY, (5, 2, 3)), atol=2e-5)


def test_invert_affine_of_degenerate_box_is_finite():
    theta = np.array([[[0.0, 0.0, 0.3], [0.0, 0.0, -0.1]]], np.float32)
    assert np.all(np.isfinite(invert_affine(theta).numpy()))


def test_paste_masks_round_trips_the_roi_of_a_mask():
    height, width = 32, 40
    rng = np.random.default_rng(11)
    mask = (rng.random((height, width)) > 0.5).astype(np.float32)
    box = np.array([[6.0, 4.0, 26.0, 20.0]], np.float32)  # xyxy, 20 x 16 pixels
    theta = box_theta(box, height, width, margin=0.0)
    crop = bilinear_sample(mask[None, :, :, None], affine_grid(theta, 16, 20))
    np.testing.assert_allclose(crop.numpy()[0, :, :, 0], mask[4:20, 6:26], atol=1e-5)
    pasted = paste_masks(crop, theta, [0], 1, height, width).numpy()[0, :, :, 0]
    np.testing.assert_allclose(pasted[4:20, 6:26], mask[4:20, 6:26], atol=1e-4)
    # Zero one pixel or more beyond the box (the ring next to it blends with zero padding).
    outside = np.ones((height, width), bool)
    outside[3:21, 5:27] = False
    assert np.all(pasted[outside] == 0.0)


def test_paste_masks_upsampled_roi_round_trips_a_ramp():
    # A 2x zoomed RoI and its inverse reproduce a linear image inside the box exactly.
    height, width = 24, 24
    ramp = (np.arange(width)[None, :] * 0.03 + np.arange(height)[:, None] * 0.01 + 0.1)
    ramp = ramp.astype(np.float32)[None, :, :, None]
    theta = box_theta(np.array([[4.0, 6.0, 16.0, 18.0]], np.float32), height, width, margin=0.0)
    crop = bilinear_sample(ramp, affine_grid(theta, 24, 24))
    pasted = paste_masks(crop, theta, [0], 1, height, width).numpy()
    np.testing.assert_allclose(pasted[0, 7:17, 5:15], ramp[0, 7:17, 5:15], atol=1e-4)


def test_paste_masks_merges_by_max_per_image_and_leaves_empty_images_zero():
    height = width = 16
    masks = np.zeros((3, 4, 4, 1), np.float32)
    masks[0] = 0.4
    masks[1] = 0.9
    masks[2] = 0.7
    boxes = np.array([[2, 2, 10, 10], [6, 6, 14, 14], [0, 0, 8, 8]], np.float32)
    theta = box_theta(boxes, height, width, margin=0.0)
    out = paste_masks(masks, theta, tf.constant([0, 0, 2]), 3, height, width).numpy()
    assert out.shape == (3, height, width, 1)
    assert out[0, 4, 4, 0] == pytest.approx(0.4, abs=1e-5)  # only RoI 0
    assert out[0, 8, 8, 0] == pytest.approx(0.9, abs=1e-5)  # overlap: max
    assert out[0, 12, 12, 0] == pytest.approx(0.9, abs=1e-5)
    assert out[0, 0, 15, 0] == 0.0
    assert np.all(out[1] == 0.0)  # no RoI for image 1
    assert out[2, 3, 3, 0] == pytest.approx(0.7, abs=1e-5)


def test_paste_masks_without_rois_gives_zeros():
    out = paste_masks(tf.zeros([0, 4, 4, 2]), tf.zeros([0, 2, 3]), tf.zeros([0], tf.int32),
                      2, 8, 6)
    assert out.shape == (2, 8, 6, 2)
    assert np.all(out.numpy() == 0.0)


@pytest.mark.parametrize("call, match", [
    (lambda: affine_grid(np.zeros((2, 3), np.float32), 4, 4), "rank 3"),
    (lambda: affine_grid(np.zeros((1, 3, 3), np.float32), 4, 4), r"\(batch, 2, 3\)"),
    (lambda: affine_grid(np.zeros((1, 2, 3), np.int32), 4, 4), "floating"),
    (lambda: affine_grid(np.zeros((1, 2, 3), np.float32), 0, 4), "height must be a positive"),
    (lambda: affine_grid(np.zeros((1, 2, 3), np.float32), 4, 2.5), "width must be a positive"),
    (lambda: bilinear_sample(np.zeros((4, 4, 1), np.float32), np.zeros((1, 2, 2, 2), F32)),
     "images must have rank 4"),
    (lambda: bilinear_sample(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 2, 2, 3), F32)),
     "size 2"),
    (lambda: bilinear_sample(np.zeros((2, 4, 4, 1), np.float32), np.zeros((1, 2, 2, 2), F32)),
     "same batch size"),
    (lambda: bilinear_sample(np.zeros((1, 4, 4, 1), np.int32), np.zeros((1, 2, 2, 2), F32)),
     "images must be a floating"),
    (lambda: paste_masks(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 2, 3), np.float32),
                         np.zeros([1], np.float32), 1, 8, 8), "image_index must be an integer"),
    (lambda: paste_masks(np.zeros((1, 4, 4, 1), np.float32), np.zeros((1, 2, 3), np.float32),
                         np.zeros([1], np.int32), 0, 8, 8), "batch_size must be a positive"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4), F32), np.ones((1, 2), F32),
                                 np.zeros((1, 2), F32), 2, 2), "images must have rank 4"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), np.int32), np.ones((1, 2), F32),
                                 np.zeros((1, 2), F32), 2, 2), "images must be a floating"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), F32), np.ones((1, 2), np.int32),
                                 np.zeros((1, 2), F32), 2, 2), "scale must be a floating"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), F32), np.ones((1, 3), F32),
                                 np.zeros((1, 2), F32), 2, 2), r"scale must have shape \(batch,"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), F32), np.ones((1, 2), F32),
                                 np.zeros((2,), F32), 2, 2), "offset must have rank 2"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), F32), np.ones((2, 2), F32),
                                 np.zeros((2, 2), F32), 2, 2), "images and scale need the same"),
    (lambda: sample_axis_aligned(np.zeros((1, 4, 4, 1), F32), np.ones((1, 2), F32),
                                 np.zeros((1, 2), F32), 0, 2), "height must be a positive"),
])
def test_documented_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


# ----------------------------------------------------------------------- sample_axis_aligned

def _diagonal_theta(scale, offset):
    """``(B, 2)`` scales and offsets -> ``(B, 2, 3)`` ``[[s_x, 0, t_x], [0, s_y, t_y]]``."""
    zero = tf.zeros_like(scale[:, 0])
    return tf.stack([tf.stack([scale[:, 0], zero, offset[:, 0]], -1),
                     tf.stack([zero, scale[:, 1], offset[:, 1]], -1)], 1)


# Input (H, W) -> output (h, w): downsampling, upsampling, mixed (each order of the separable
# passes is taken by one of them), one-pixel outputs.
AXIS_ALIGNED_CASES = [((12, 10), (5, 4), 1), ((7, 9), (16, 13), 3), ((16, 20), (40, 3), 1),
                      ((6, 30), (2, 11), 3), ((5, 5), (1, 1), 3)]


@pytest.mark.parametrize("in_size, out_size, channels", AXIS_ALIGNED_CASES)
def test_axis_aligned_matches_general_sampler_and_its_gradients(in_size, out_size, channels):
    rng = np.random.default_rng(sum(in_size) + sum(out_size) + channels)
    batch = 6
    images = tf.constant(rng.normal(size=(batch, *in_size, channels)).astype(F32))
    # Scales of both signs (flips), zoom in and out; offsets that put RoIs partly or wholly
    # outside the image. Row 0 is the whole image, row 1 a box straddling the top-left corner,
    # row 2 a box wholly right of the image.
    scale = rng.uniform(0.2, 1.6, size=(batch, 2)) * rng.choice([-1.0, 1.0], size=(batch, 2))
    offset = rng.uniform(-1.3, 1.3, size=(batch, 2))
    scale[0], offset[0] = (1.0, 1.0), (0.0, 0.0)
    scale[1], offset[1] = (0.5, 0.4), (-0.9, -1.0)
    scale[2], offset[2] = (0.5, 0.8), (3.0, 0.1)
    scale, offset = tf.constant(scale.astype(F32)), tf.constant(offset.astype(F32))
    upstream = tf.constant(rng.normal(size=(batch, *out_size, channels)).astype(F32))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([images, scale, offset])
        theta = _diagonal_theta(scale, offset)
        general = bilinear_sample(images, affine_grid(theta, *out_size))
        separable = sample_axis_aligned(images, scale, offset, *out_size)
        loss_general = tf.reduce_sum(general * upstream)
        loss_separable = tf.reduce_sum(separable * upstream)
    assert separable.shape == (batch, *out_size, channels)
    np.testing.assert_allclose(separable.numpy(), general.numpy(), atol=1e-5)
    assert np.any(separable.numpy()[:2] != 0) and np.all(separable.numpy()[2] == 0)

    g_images, g_theta = tape.gradient(loss_general, [images, theta])
    s_images, s_scale, s_offset = tape.gradient(loss_separable, [images, scale, offset])
    np.testing.assert_allclose(tf.convert_to_tensor(s_images).numpy(),
                               tf.convert_to_tensor(g_images).numpy(), atol=1e-5)
    g_theta = g_theta.numpy()
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(g_theta).max())))
    np.testing.assert_allclose(s_scale.numpy(), np.stack([g_theta[:, 0, 0], g_theta[:, 1, 1]], -1),
                               **tol)
    np.testing.assert_allclose(s_offset.numpy(), g_theta[:, :, 2], **tol)


def test_axis_aligned_known_values_two_times_zoom_and_flip():
    # 1 x 4 image, one row: output of 8 columns over the whole image samples at pixel
    # coordinates -0.25, 0.25, ..., 3.25; the flip (s_x = -1) reverses the columns.
    images = np.array([1.0, 2.0, 4.0, 8.0], F32).reshape(1, 1, 4, 1)
    out = sample_axis_aligned(images, [[1.0, 1.0]], [[0.0, 0.0]], 1, 8).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 6.0], atol=1e-6)
    flipped = sample_axis_aligned(images, [[-1.0, 1.0]], [[0.0, 0.0]], 1, 4).numpy()
    np.testing.assert_allclose(flipped[0, 0, :, 0], [8.0, 4.0, 2.0, 1.0], atol=1e-6)


def test_axis_aligned_gradients_match_finite_differences():
    rng = np.random.default_rng(11)
    images = tf.constant(rng.normal(size=(2, 8, 9, 2)))  # float64
    # Generic values: no sample point on a pixel centre (the sampler's kinks).
    scale = tf.constant([[0.71, 0.63], [-0.93, 1.17]], tf.float64)
    offset = tf.constant([[0.052, 0.11], [-0.23, 0.31]], tf.float64)

    def fn(images, scale, offset):
        return sample_axis_aligned(images, scale, offset, 6, 5)

    theoretical, numerical = tf.test.compute_gradient(fn, [images, scale, offset], delta=1e-6)
    for t, n in zip(theoretical, numerical):
        assert np.any(t != 0)
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-6)


def test_axis_aligned_dynamic_shapes_xla_and_tflite():
    rng = np.random.default_rng(12)
    images = rng.normal(size=(2, 10, 12, 3)).astype(F32)
    scale = np.array([[0.8, 0.6], [1.3, -0.7]], F32)
    offset = np.array([[0.1, -0.2], [0.5, 0.3]], F32)
    expected = sample(images, _diagonal_theta(tf.constant(scale), tf.constant(offset)), 5, 7)

    dynamic = tf.function(lambda i, s, o: sample_axis_aligned(i, s, o, 5, 7), input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None, 2], tf.float32),
        tf.TensorSpec([None, 2], tf.float32)])
    np.testing.assert_allclose(dynamic(images, scale, offset).numpy(), expected, atol=1e-5)
    jitted = tf.function(lambda i, s, o: sample_axis_aligned(i, s, o, 5, 7), jit_compile=True)
    np.testing.assert_allclose(jitted(images, scale, offset).numpy(), expected, atol=1e-5)

    module = tf.Module()
    module.fn = tf.function(lambda images, scale, offset: sample_axis_aligned(
        images, scale, offset, 5, 7), input_signature=[tf.TensorSpec([2, 10, 12, 3], tf.float32),
                                                      tf.TensorSpec([2, 2], tf.float32),
                                                      tf.TensorSpec([2, 2], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
    (out,) = runner(images=images, scale=scale, offset=offset).values()
    np.testing.assert_allclose(out, expected, atol=1e-5)


# ----------------------------------------------------------------------- sample_scale_translate

@pytest.mark.parametrize("in_size, out_size, channels", AXIS_ALIGNED_CASES[:3])
def test_scale_translate_equals_general_sampler_bit_for_bit(in_size, out_size, channels):
    # The training targets (two_stage.roi_targets) use it in place of the general path: the
    # values must be the general path's exactly, eagerly and in a tf.function (where Grappler
    # rewrites both graphs).
    rng = np.random.default_rng(40 + sum(in_size) + sum(out_size))
    batch = 6
    images = rng.normal(size=(batch, *in_size, channels)).astype(F32)
    images[:2] = images[:2] > 0  # binary masks too, as the targets are
    scale = rng.uniform(0.05, 1.6, size=(batch, 2)) * rng.choice([-1.0, 1.0], size=(batch, 2))
    offset = rng.uniform(-1.3, 1.3, size=(batch, 2))
    scale[0], offset[0] = (1.0, 1.0), (0.0, 0.0)
    scale[2], offset[2] = (0.5, 0.8), (3.0, 0.1)  # wholly outside the image
    theta = _diagonal_theta(tf.constant(scale.astype(F32)), tf.constant(offset.astype(F32)))

    def general(images, theta):
        return bilinear_sample(images, affine_grid(theta, *out_size))

    def exact(images, theta):
        return sample_scale_translate(images, theta, *out_size)

    expected = general(images, theta).numpy()
    assert np.any(expected != 0) and np.all(expected[2] == 0)
    got = exact(images, theta).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert np.array_equal(tf.function(exact)(images, theta).numpy(),
                          tf.function(general)(images, theta).numpy())
    # The separable sampler agrees only to rounding.
    separable = sample_axis_aligned(images, scale.astype(F32), offset.astype(F32), *out_size)
    np.testing.assert_allclose(separable.numpy(), expected, atol=1e-5)


def test_scale_translate_checks_its_arguments():
    with pytest.raises(ValueError, match="images must have rank 4"):
        sample_scale_translate(np.zeros((1, 4, 4), F32), np.zeros((1, 2, 3), F32), 2, 2)
    with pytest.raises(TypeError, match="images must be a floating tensor"):
        sample_scale_translate(np.zeros((1, 4, 4, 1), np.int32), np.zeros((1, 2, 3), F32), 2, 2)
    with pytest.raises(ValueError, match="theta must have shape"):
        sample_scale_translate(np.zeros((1, 4, 4, 1), F32), np.zeros((1, 3, 3), F32), 2, 2)
