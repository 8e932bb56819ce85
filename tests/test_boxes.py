"""Box formats, IoU, DIoU loss and the RR transform of a box (lsnet_tf.ops.boxes)."""
import numpy as np
import pytest
import tensorflow as tf

from lsnet_tf.ops.boxes import (box_iou, box_theta, diou_loss, ltrb_to_xyxy, roi_theta,
                                xyxy_to_ltrb)


def test_ltrb_to_xyxy_known_values_and_inverse():
    points = np.array([[10.0, 20.0], [5.0, 5.0]], np.float32)
    ltrb = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 10.0, 0.5]], np.float32)
    boxes = ltrb_to_xyxy(points, ltrb).numpy()
    np.testing.assert_allclose(boxes, [[9, 18, 13, 24], [5, 0, 15, 5.5]])
    np.testing.assert_allclose(xyxy_to_ltrb(points, boxes).numpy(), ltrb)


def test_box_formats_broadcast_over_leading_axes():
    points = np.zeros((2, 3, 2), np.float32)
    ltrb = np.ones((2, 3, 4), np.float32)
    assert ltrb_to_xyxy(points, ltrb).shape == (2, 3, 4)


@pytest.mark.parametrize("a, b, iou", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1.0 / 7.0),
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.25),
    ([0, 0, 2, 2], [4, 0, 6, 2], 0.0),
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),
    ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # no area: IoU 0 by definition
])
def test_box_iou_hand_computed(a, b, iou):
    assert box_iou(np.float32(a), np.float32(b)).numpy() == pytest.approx(iou, abs=1e-6)


@pytest.mark.parametrize("a, b, loss", [
    ([0, 0, 2, 2], [0, 0, 2, 2], 0.0),  # identical
    # Disjoint: IoU 0, centres (1, 1) and (5, 1): rho^2 = 16; enclosing 6 x 2: c^2 = 40.
    ([0, 0, 2, 2], [4, 0, 6, 2], 1.0 + 16.0 / 40.0),
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.75),  # nested, same centre: IoU 1/4
    ([0, 0, 4, 4], [0, 0, 2, 2], 0.75 + 2.0 / 32.0),  # nested in a corner: rho^2 2, c^2 32
])
def test_diou_hand_computed(a, b, loss):
    assert diou_loss(np.float32(a), np.float32(b)).numpy() == pytest.approx(loss, abs=1e-6)
    assert diou_loss(np.float32(b), np.float32(a)).numpy() == pytest.approx(loss, abs=1e-6)


def test_diou_is_elementwise_without_reduction():
    a = np.array([[[0, 0, 2, 2], [0, 0, 4, 4]]], np.float32)
    b = np.array([[[4, 0, 6, 2], [1, 1, 3, 3]]], np.float32)
    np.testing.assert_allclose(diou_loss(a, b).numpy(), [[1.4, 0.75]], atol=1e-6)


@pytest.mark.parametrize("a, b", [
    ([3, 3, 3, 3], [3, 3, 3, 3]),  # two identical points
    ([3, 3, 3, 3], [1, 1, 5, 5]),  # a point inside a box
    ([0, 0, 0, 4], [2, 0, 2, 4]),  # zero-width boxes
    ([2, 2, 1, 1], [0, 0, 3, 3]),  # inverted box
])
def test_diou_degenerate_boxes_finite_values_and_gradients(a, b):
    a = tf.constant(a, tf.float32)
    b = tf.constant(b, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss = diou_loss(a, b)
    grads = tape.gradient(loss, [a, b])
    assert np.isfinite(loss.numpy())
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_diou_gradient_matches_finite_differences():
    a = tf.constant([[1.0, 2.0, 7.0, 9.0], [0.0, 0.0, 3.0, 2.0]], tf.float64)
    b = tf.constant([[2.5, 1.5, 6.0, 10.5], [5.0, 1.0, 9.5, 6.0]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(b)
        loss = tf.reduce_sum(diou_loss(a, b))
    grad = tape.gradient(loss, b).numpy()
    assert np.all(grad != 0)
    step = 1e-6
    numeric = np.zeros((2, 4))
    for index in np.ndindex(2, 4):
        delta = np.zeros((2, 4))
        delta[index] = step
        numeric[index] = (tf.reduce_sum(diou_loss(a, b + delta))
                          - tf.reduce_sum(diou_loss(a, b - delta))) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_roi_theta_hand_computed():
    # H = W = 100, k = (50, 40), ltrb = (10, 5, 20, 15), m = 15:
    # x1 = 25, x2 = 85, y1 = 20, y2 = 70.
    theta = roi_theta(np.float32([[50, 40]]), np.float32([[10, 5, 20, 15]]), 100, 100,
                      margin=15.0).numpy()
    np.testing.assert_allclose(theta, [[[0.6, 0.0, 0.1], [0.0, 0.5, -0.1]]], atol=1e-6)


def test_box_theta_maps_output_edges_to_the_grown_box_edges():
    height, width, margin = 60, 80, 3.0
    box = np.float32([[10, 12, 30, 40]])
    theta = box_theta(box, height, width, margin).numpy()[0]
    corners = np.array([[-1, -1, 1], [1, 1, 1]], np.float64)  # normalised output edges
    mapped = corners @ theta.T  # normalised input
    pixels = (mapped + 1.0) / 2.0 * [width, height]
    np.testing.assert_allclose(pixels, [[7, 9], [33, 43]], atol=1e-4)


def test_roi_theta_broadcasts_and_equals_box_theta():
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(10, 50, (2, 3, 2)).astype(np.float32)
    ltrb = rng.uniform(1, 9, (2, 3, 4)).astype(np.float32)
    theta = roi_theta(keypoints, ltrb, 64, 64, margin=5.0)
    assert theta.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(theta.numpy(),
                               box_theta(ltrb_to_xyxy(keypoints, ltrb), 64, 64, 5.0).numpy())


def test_roi_theta_gradient_reaches_keypoints_and_distances():
    keypoints = tf.constant([[30.0, 20.0]])
    ltrb = tf.constant([[4.0, 5.0, 6.0, 7.0]])
    with tf.GradientTape() as tape:
        tape.watch([keypoints, ltrb])
        theta = roi_theta(keypoints, ltrb, 64, 64)
        loss = tf.reduce_sum(theta * tf.constant([[[1.0, 0.0, 2.0], [0.0, 3.0, 4.0]]]))
    grad_k, grad_d = tape.gradient(loss, [keypoints, ltrb])
    # d/dk_x: t_x = (2 k_x + r - l) / W -> 2 * 2 / 64; d/dk_y: 4 * 2 / 64.
    np.testing.assert_allclose(grad_k.numpy(), [[4 / 64, 8 / 64]], rtol=1e-6)
    # d/dl: s_x: 1/W, t_x: -1/W -> 1 - 2 = -1 (/64); d/dr: 1 + 2; d/dt: 3 - 4; d/db: 3 + 4.
    np.testing.assert_allclose(grad_d.numpy(), [[-1 / 64, -1 / 64, 3 / 64, 7 / 64]], rtol=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: ltrb_to_xyxy(np.zeros((2, 3)), np.zeros((2, 4))),
     r"points must have shape \(\.\.\., 2\)"),
    (lambda: ltrb_to_xyxy(np.zeros((2, 2)), np.zeros((2, 3))),
     r"ltrb must have shape \(\.\.\., 4\)"),
    (lambda: diou_loss(np.zeros((2, 5)), np.zeros((2, 4))), "boxes_true must have shape"),
    (lambda: box_iou(np.zeros(4), np.zeros(3)), "boxes_b must have shape"),
    (lambda: box_theta(np.zeros((1, 2)), 8, 8), "boxes_xyxy must have shape"),
])
def test_documented_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
