"""RoI Recalibration layer (lsnet_tf.layers.roi_recalibration)."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.layers.roi_recalibration import RoIRecalibration
from lsnet_tf.ops.boxes import roi_theta
from lsnet_tf.ops.sampling import affine_grid, bilinear_sample, paste_masks


def pattern_image(height=64, width=64, box=(10, 20, 26, 36), channels=2, seed=0):
    """Image whose xyxy `box` holds a random pattern; returns (image, pattern)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(height, width, channels)).astype(np.float32)
    x1, y1, x2, y2 = box
    return image, image[y1:y2, x1:x2].copy()


def test_known_box_returns_its_content():
    box = (10, 20, 26, 32)  # 16 wide, 12 high
    image, pattern = pattern_image(box=box)
    keypoint = np.float32([[15.5, 24.0]])
    ltrb = np.float32([[15.5 - 10, 24 - 20, 26 - 15.5, 32 - 24]])
    layer = RoIRecalibration(output_size=(12, 16), margin=0.0)
    rois, theta = layer([image[None], keypoint, ltrb])
    assert rois.shape == (1, 12, 16, 2) and theta.shape == (1, 2, 3)
    np.testing.assert_allclose(rois.numpy()[0], pattern, atol=1e-5)
    np.testing.assert_allclose(theta.numpy(), roi_theta(keypoint, ltrb, 64, 64, 0.0).numpy())


def test_margin_adds_context_and_zero_padding_outside_the_image():
    image, _ = pattern_image(channels=1)
    # Box (2, 3)-(12, 9) grown by 4 reaches (-2, -1)-(16, 13): 18 x 14 pixels.
    layer = RoIRecalibration(output_size=(14, 18), margin=4)
    rois, _ = layer([image[None], np.float32([[5, 5]]), np.float32([[3, 2, 7, 4]])])
    expected = np.zeros((14, 18, 1), np.float32)
    expected[1:, 2:] = image[0:13, 0:16]
    np.testing.assert_allclose(rois.numpy()[0], expected, atol=1e-5)


def test_batch_of_different_boxes():
    image, _ = pattern_image(channels=1)
    images = np.stack([image, image[::-1]])
    keypoints = np.float32([[20, 30], [40, 10]])
    ltrb = np.float32([[4, 4, 4, 4], [8, 2, 0, 6]])
    rois, _ = RoIRecalibration(8, margin=0)([images, keypoints, ltrb])
    np.testing.assert_allclose(rois.numpy()[0], images[0, 26:34, 16:24], atol=1e-5)
    # Second RoI: 8 x 8 box (32, 8)-(40, 16) sampled at 8 x 8: exact pixels.
    np.testing.assert_allclose(rois.numpy()[1], images[1, 8:16, 32:40], atol=1e-5)


def test_crop_and_paste_round_trips_a_mask_inside_the_box():
    rng = np.random.default_rng(1)
    mask = (rng.random((48, 48, 1)) > 0.6).astype(np.float32)
    keypoints = np.float32([[20, 18]])
    ltrb = np.float32([[6, 5, 9, 11]])  # box (14, 13)-(29, 29): 15 x 16
    rois, theta = RoIRecalibration((16, 15), margin=0)([mask[None], keypoints, ltrb])
    pasted = paste_masks(rois, theta, [0], 1, 48, 48).numpy()[0]
    np.testing.assert_allclose(pasted[13:29, 14:29], mask[13:29, 14:29], atol=1e-4)
    assert np.all(pasted[:12] == 0) and np.all(pasted[:, 30:] == 0)


def test_gradients_reach_image_keypoints_and_distances():
    rng = np.random.default_rng(2)
    image = tf.constant(rng.normal(size=(2, 32, 32, 1)), tf.float32)
    keypoints = tf.constant([[15.3, 16.1], [9.7, 20.2]])
    ltrb = tf.constant([[5.1, 4.3, 6.2, 7.4], [3.3, 2.2, 8.1, 4.9]])
    layer = RoIRecalibration(12, margin=2.0)
    weights = tf.constant(rng.normal(size=(2, 12, 12, 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([image, keypoints, ltrb])
        rois, _ = layer([image, keypoints, ltrb])
        loss = tf.reduce_sum(rois * weights)
    grads = tape.gradient(loss, [image, keypoints, ltrb])
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))
    # Every keypoint coordinate and distance moves the RoI.
    assert np.all(grads[1].numpy() != 0) and np.all(grads[2].numpy() != 0)
    # The image gradient lives on the grown box only: image 0's is (8.2, 9.8)-(23.5, 25.5).
    grad_image = np.abs(grads[0].numpy()[0, :, :, 0])
    assert grad_image[11:24, 9:23].min() > 0
    assert grad_image[:9].max() == 0 and grad_image[:, 25:].max() == 0
    # Finite difference on one distance (float32: a coarse step and tolerance).
    step = 1e-2
    delta = np.zeros((2, 4), np.float32)
    delta[1, 2] = step
    up = tf.reduce_sum(layer([image, keypoints, ltrb + delta])[0] * weights)
    down = tf.reduce_sum(layer([image, keypoints, ltrb - delta])[0] * weights)
    assert grads[2].numpy()[1, 2] == pytest.approx(float(up - down) / (2 * step), rel=0.05)


def test_rois_and_gradients_equal_the_general_sampler_on_theta():
    # The layer samples separably; the general affine sampler on the returned theta is the
    # definition. Boxes partly outside the image, zoom in and out.
    rng = np.random.default_rng(3)
    images = tf.constant(rng.normal(size=(3, 40, 48, 2)).astype(np.float32))
    keypoints = tf.constant([[5.3, 7.1], [30.2, 20.7], [44.9, 38.4]], tf.float32)
    ltrb = tf.constant([[9.1, 12.3, 6.2, 4.4], [3.3, 2.1, 4.7, 5.9], [20.2, 18.6, 11.3, 9.8]],
                       tf.float32)
    upstream = tf.constant(rng.normal(size=(3, 16, 20, 2)).astype(np.float32))
    layer = RoIRecalibration(output_size=(16, 20), margin=3.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([images, keypoints, ltrb])
        rois, theta = layer([images, keypoints, ltrb])
        general = bilinear_sample(images, affine_grid(theta, 16, 20))
        loss_rois = tf.reduce_sum(rois * upstream)
        loss_general = tf.reduce_sum(general * upstream)
    np.testing.assert_allclose(rois.numpy(), general.numpy(), atol=1e-5)
    for ours, reference in zip(tape.gradient(loss_rois, [images, keypoints, ltrb]),
                               tape.gradient(loss_general, [images, keypoints, ltrb])):
        ours = tf.convert_to_tensor(ours).numpy()
        reference = tf.convert_to_tensor(reference).numpy()
        assert np.any(reference != 0)
        np.testing.assert_allclose(ours, reference, rtol=1e-4,
                                   atol=1e-4 * max(1.0, float(np.abs(reference).max())))


def test_get_config_round_trip_gives_the_same_layer_and_output():
    layer = RoIRecalibration(output_size=(10, 14), margin=3.5, name="rr")
    config = layer.get_config()
    assert config["output_size"] == [10, 14] and config["margin"] == 3.5
    clone = RoIRecalibration.from_config(config)
    assert clone.output_size == (10, 14) and clone.margin == 3.5 and clone.name == "rr"
    image, _ = pattern_image()
    inputs = [image[None], np.float32([[30, 30]]), np.float32([[7, 3, 5, 9]])]
    for a, b in zip(layer(inputs), clone(inputs)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Registered: a serialized layer deserializes by name.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RoIRecalibration) and restored.output_size == (10, 14)


def test_functional_model_saves_and_loads(tmp_path):
    images = keras.Input((32, 32, 1))
    keypoints = keras.Input((2,))
    ltrb = keras.Input((4,))
    rois, theta = RoIRecalibration(8, margin=1.0)([images, keypoints, ltrb])
    assert tuple(rois.shape) == (None, 8, 8, 1) and tuple(theta.shape) == (None, 2, 3)
    assert theta.dtype == "float32"
    model = keras.Model([images, keypoints, ltrb], [rois, theta])
    path = os.path.join(tmp_path, "rr.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    rng = np.random.default_rng(3)
    data = [rng.normal(size=(3, 32, 32, 1)).astype(np.float32),
            rng.uniform(10, 20, (3, 2)).astype(np.float32),
            rng.uniform(1, 6, (3, 4)).astype(np.float32)]
    for a, b in zip(model(data), loaded(data)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_compute_output_shape():
    layer = RoIRecalibration((6, 7))
    assert layer.compute_output_shape([(None, 32, 32, 3), (None, 2), (None, 4)]) == (
        (None, 6, 7, 3), (None, 2, 3))


def test_mixed_precision_keeps_geometry_in_float32():
    layer = RoIRecalibration(8, margin=0, dtype="mixed_float16")
    image, _ = pattern_image(channels=1)
    # A keypoint whose float16 rounding would move the box by a quarter pixel.
    rois, theta = layer([image[None], np.float32([[40.1, 40.1]]), np.float32([[4, 4, 4, 4]])])
    assert rois.dtype == tf.float16 and theta.dtype == tf.float32
    expected = roi_theta(np.float32([[40.1, 40.1]]), np.float32([[4, 4, 4, 4]]), 64, 64, 0.0)
    np.testing.assert_allclose(theta.numpy(), expected.numpy())


@pytest.mark.parametrize("kwargs, match", [
    ({"output_size": 0}, "output_size must be a positive int"),
    ({"output_size": (8, 0)}, "output_size must be a positive int"),
    ({"output_size": (8, 8, 8)}, "output_size must be a positive int"),
    ({"output_size": 2.5}, "output_size must be a positive int"),
    ({"output_size": True}, "output_size must be a positive int"),
    ({"output_size": 8, "margin": -1.0}, "margin must be a finite number >= 0"),
    ({"output_size": 8, "margin": float("nan")}, "margin must be a finite number >= 0"),
    ({"output_size": 8, "margin": "15"}, "margin must be a finite number >= 0"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoIRecalibration(**kwargs)


@pytest.mark.parametrize("inputs, match", [
    ([np.zeros((1, 8, 8), np.float32), np.zeros((1, 2), np.float32), np.zeros((1, 4), np.float32)],
     r"images must have shape \(batch, H, W, C\)"),
    ([np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 3), np.float32),
      np.zeros((1, 4), np.float32)], r"keypoints must have shape \(batch, 2\)"),
    ([np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 2), np.float32),
      np.zeros((1, 2, 2), np.float32)], r"ltrb must have shape \(batch, 4\)"),
    ([np.zeros((1, 8, 8, 1), np.float32), np.zeros((1, 2), np.float32)],
     r"expects inputs \[images, keypoints, ltrb\]"),
])
def test_call_errors(inputs, match):
    with pytest.raises(ValueError, match=match):
        RoIRecalibration(4)(inputs)
