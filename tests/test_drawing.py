"""lsnet_tf.utils.drawing: box outlines and mask tints on a gray slice."""
import numpy as np

from lsnet_tf.utils.drawing import draw_boxes, overlay


def test_draw_boxes_outlines_valid_boxes_only():
    image = np.full((8, 8), 0.5)
    rgb = draw_boxes(image, [[1, 2, 4, 6], [0, 0, 8, 8]], [True, False], color=(1.0, 0.0, 0.0))
    red = np.all(rgb == (1.0, 0.0, 0.0), -1)
    expected = np.zeros((8, 8), bool)
    expected[2, 1:4] = expected[5, 1:4] = expected[2:6, 1] = expected[2:6, 3] = True
    np.testing.assert_array_equal(red, expected)
    assert np.all(rgb[~expected] == 0.5) and np.all(image == 0.5)


def test_overlay_tints_the_mask():
    image = np.zeros((2, 2))
    mask = np.array([[1.0, 0.0], [0.0, 0.6]])
    rgb = overlay(image, mask, color=(0.0, 1.0, 0.0), alpha=0.5)
    np.testing.assert_allclose(rgb[0, 0], [0.0, 0.5, 0.0])
    np.testing.assert_allclose(rgb[1, 1], [0.0, 0.5, 0.0])
    np.testing.assert_allclose(rgb[0, 1], [0.0, 0.0, 0.0])
