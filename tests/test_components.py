"""In-graph connected components and component peaks (lsnet_tf.ops.components)."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from lsnet_tf.ops.components import component_peaks, connected_components

EIGHT = np.ones((3, 3), int)


def assert_same_partition(labels, mask):
    """`labels` splits `mask` into exactly scipy's 8-connected components."""
    reference, count = ndimage.label(mask, EIGHT)
    assert np.all(labels[~mask] == 0) and np.all(labels[mask] > 0)
    pairs = set(zip(reference[mask].tolist(), labels[mask].tolist()))
    # A bijection between the two labellings: as many pairs as components on each side.
    assert len(pairs) == count == len(set(labels[mask].tolist()))


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_matches_scipy_label_on_random_masks(density):
    rng = np.random.default_rng(int(density * 100))
    masks = rng.random((3, 23, 31)) < density
    labels = connected_components(masks).numpy()
    assert labels.dtype == np.int32 and labels.shape == masks.shape
    for mask, label in zip(masks, labels):
        assert_same_partition(label, mask)


def test_diagonal_neighbours_connect_and_labels_are_max_index_plus_one():
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True  # one diagonal component
    mask[0, 4, 0] = True  # an isolated pixel
    labels = connected_components(mask).numpy()[0]
    assert labels[0, 0] == labels[1, 1] == labels[2, 2] == 2 * 5 + 2 + 1
    assert labels[4, 0] == 4 * 5 + 0 + 1
    assert labels.sum() == 3 * 13 + 21


def test_long_snake_is_one_component():
    mask = np.zeros((1, 31, 32), bool)
    mask[0, ::2, :] = True
    mask[0, 1::4, -1] = True
    mask[0, 3::4, 0] = True
    labels = connected_components(mask).numpy()[0]
    assert np.unique(labels[mask[0]]).size == 1


def test_empty_and_full_masks():
    labels = connected_components(np.stack([np.zeros((6, 7), bool), np.ones((6, 7), bool)]))
    assert np.all(labels.numpy()[0] == 0)
    assert np.all(labels.numpy()[1] == 42)


def two_blob_heatmap():
    heatmap = np.zeros((2, 16, 16), np.float32)
    heatmap[0, 2:5, 3:6] = 0.7  # blob A, peak 0.9 at row 3, col 4
    heatmap[0, 3, 4] = 0.9
    heatmap[0, 10:12, 10:14] = 0.95  # blob B, peak 0.99 at row 11, col 13
    heatmap[0, 11, 13] = 0.99
    heatmap[0, 14, 0] = 0.5  # not above the threshold
    heatmap[1, 7, 7] = 0.4  # image 1: nothing above the threshold
    return heatmap


def test_component_peaks_on_two_blobs():
    out = {k: v.numpy() for k, v in component_peaks(two_blob_heatmap(), 0.5, 4).items()}
    assert out["points"].shape == (2, 4, 2) and out["centroids"].shape == (2, 4, 2)
    assert out["scores"].shape == (2, 4) and out["valid"].shape == (2, 4)
    np.testing.assert_array_equal(out["valid"][0], [True, True, False, False])
    np.testing.assert_allclose(out["scores"][0], [0.99, 0.9, 0, 0], atol=1e-7)
    np.testing.assert_array_equal(out["points"][0, :2], [[13, 11], [4, 3]])  # (x, y)
    np.testing.assert_allclose(out["centroids"][0, :2], [[11.5, 10.5], [4.0, 3.0]])
    assert not out["valid"][1].any()
    assert np.all(out["points"][1] == 0) and np.all(out["scores"][1] == 0)


def test_component_peaks_keeps_the_highest_components_and_pads_small_grids():
    heatmap = np.zeros((1, 9, 9), np.float32)
    for n, score in enumerate([0.6, 0.8, 0.7, 0.9]):
        heatmap[0, 2 * n, 2 * n] = score  # four isolated cells
    out = component_peaks(heatmap, max_components=2)
    np.testing.assert_allclose(out["scores"].numpy(), [[0.9, 0.8]], atol=1e-7)
    np.testing.assert_array_equal(out["points"].numpy(), [[[6, 6], [2, 2]]])
    # A 2 x 2 grid has fewer cells than K = 8: padded with invalid entries.
    out = component_peaks(np.full((1, 2, 2), 0.75, np.float32), max_components=8)
    assert out["valid"].shape == (1, 8)
    np.testing.assert_array_equal(out["valid"].numpy()[0], [True] + [False] * 7)
    np.testing.assert_array_equal(out["points"].numpy()[0, 0], [0, 0])  # first of the ties
    np.testing.assert_allclose(out["centroids"].numpy()[0, 0], [0.5, 0.5])


def test_dynamic_shapes_in_tf_function():
    fn = tf.function(lambda h: component_peaks(h, 0.5, 3),
                     input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    heatmap = two_blob_heatmap()
    out = fn(heatmap)
    assert out["valid"].shape == (2, 3)
    np.testing.assert_allclose(out["scores"].numpy()[0], [0.99, 0.9, 0.0], atol=1e-7)


def test_runs_under_xla_jit():
    heatmap = two_blob_heatmap()
    masks = np.random.default_rng(0).random((2, 12, 14)) < 0.5
    labels = tf.function(connected_components, jit_compile=True)(masks).numpy()
    for mask, label in zip(masks, labels):
        assert_same_partition(label, mask)
    out = tf.function(lambda h: component_peaks(h, 0.5, 4), jit_compile=True)(heatmap)
    np.testing.assert_array_equal(out["points"].numpy()[0, :2], [[13, 11], [4, 3]])


def test_converts_to_tflite_with_builtin_ops_only():
    module = tf.Module()
    module.fn = tf.function(lambda heatmap: component_peaks(heatmap, 0.5, 4),
                            input_signature=[tf.TensorSpec([2, 16, 16], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.fn.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = tf.lite.Interpreter(model_content=converter.convert()).get_signature_runner()
    heatmap = two_blob_heatmap()
    out = runner(heatmap=heatmap)
    expected = component_peaks(heatmap, 0.5, 4)
    for key in ("points", "scores", "centroids", "valid"):
        np.testing.assert_allclose(out[key], expected[key].numpy(), atol=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda: connected_components(np.zeros((1, 4, 4), np.float32)), TypeError, "bool"),
    (lambda: connected_components(np.zeros((4, 4), bool)), ValueError, "rank 3"),
    (lambda: component_peaks(np.zeros((1, 4, 4), np.float32), max_components=0), ValueError,
     "max_components must be a positive int"),
    (lambda: component_peaks(np.zeros((1, 4, 4), np.int32)), TypeError, "floating"),
    (lambda: component_peaks(np.zeros((1, 4, 4, 1), np.float32)), ValueError, "rank 3"),
])
def test_documented_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
