"""Connected components and per-component heatmap peaks, in-graph (inference keypoints).

At inference L-SNet thresholds L-Net's keypoint heatmap and takes one keypoint per connected
component. These functions do that inside the graph with builtin ops only (``max_pool2d``,
``gather``, ``while_loop``, ``unsorted_segment_*``, ``top_k``), so the whole pipeline exports to a
SavedModel and converts to TFLite with ``TFLITE_BUILTINS``; they also compile with
``tf.function(jit_compile=True)`` when the input shape is static.

Coordinates are feature-grid cells: ``x`` is the column ``j``, ``y`` the row ``i`` (a cell's
input-space point is ``((j + 0.5) * stride, (i + 0.5) * stride)``, the centre-aligned sampling of
Sec. 2.1 of the paper).
Connectivity is 8-neighbour (3 x 3), as in ``scipy.ndimage.label(mask, np.ones((3, 3)))``.
"""
from __future__ import annotations

import tensorflow as tf

__all__ = ["connected_components", "component_peaks"]

# Labels are propagated as float32 through max-pooling: exact for integers below 2**24.
_MAX_PIXELS = 2**24 - 1


def _dim(tensor: tf.Tensor, axis: int):
    """Static size of `axis` when known, else the dynamic one (a scalar int32 tensor)."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _check_rank3(tensor: tf.Tensor, name: str) -> None:
    if tensor.shape.rank is not None and tensor.shape.rank != 3:
        raise ValueError(f"{name} must have rank 3 (batch, H, W), got shape {tensor.shape}")
    if (tensor.shape.rank == 3 and tensor.shape[1] is not None and tensor.shape[2] is not None
            and tensor.shape[1] * tensor.shape[2] > _MAX_PIXELS):
        raise ValueError(f"{name} has {tensor.shape[1]} x {tensor.shape[2]} pixels per image; "
                         f"at most {_MAX_PIXELS} are supported (labels are exact in float32)")


def connected_components(binary) -> tf.Tensor:
    """8-connected components of each image of a batch.

    Args:
      binary: ``(batch, H, W)`` bool foreground mask, ``H * W < 2**24``.

    Returns:
      ``(batch, H, W)`` int32 labels: 0 on the background; on the foreground, the same label for
      every pixel of a component and distinct labels for distinct components of an image. A
      component's label is ``1 +`` the largest row-major index ``i * W + j`` of its pixels, so
      labels lie in ``[1, H * W]`` and are not consecutive.

    Method: every foreground pixel starts with its own index + 1; each iteration takes the 3 x 3
    max over the foreground neighbours, then jumps each pixel to the label held by the pixel its
    label names (pointer jumping, which keeps labels inside the component and shortens long
    chains), until nothing changes (a ``tf.while_loop`` bounded by ``H * W`` iterations).
    """
    binary = tf.convert_to_tensor(binary)
    if binary.dtype != tf.bool:
        raise TypeError(f"binary must be a bool tensor, got dtype {binary.dtype.name}")
    _check_rank3(binary, "binary")
    batch = _dim(binary, 0)
    height = _dim(binary, 1)
    width = _dim(binary, 2)
    pixels = height * width

    foreground = binary[..., tf.newaxis]  # (batch, H, W, 1)
    index = tf.reshape(tf.range(1, pixels + 1, dtype=tf.float32), [1, height, width, 1])
    zeros = tf.zeros_like(foreground, dtype=tf.float32)
    labels = tf.where(foreground, index + zeros, zeros)
    offset = tf.reshape(tf.range(batch, dtype=tf.int32) * pixels, [-1, 1, 1, 1])

    def body(labels, changed):
        del changed
        pooled = tf.nn.max_pool2d(labels, ksize=3, strides=1, padding="SAME")
        pooled = tf.where(foreground, pooled, zeros)
        target = tf.clip_by_value(tf.cast(pooled, tf.int32) - 1, 0, pixels - 1) + offset
        jumped = tf.gather(tf.reshape(pooled, [-1]), tf.reshape(target, [-1]))
        jumped = tf.reshape(jumped, tf.shape(pooled))
        new = tf.where(foreground, tf.maximum(pooled, jumped), zeros)
        return new, tf.reduce_any(tf.not_equal(new, labels))

    labels, _ = tf.while_loop(lambda labels, changed: changed, body,
                              (labels, tf.constant(True)), maximum_iterations=pixels)
    return tf.cast(labels[..., 0], tf.int32)


def component_peaks(heatmap, threshold: float = 0.5, max_components: int = 8) -> dict:
    """One keypoint per connected component of ``heatmap > threshold``.

    Args:
      heatmap: ``(batch, H, W)`` float scores (L-Net's keypoint heatmap at its stride).
      threshold: cells with a score strictly above it are foreground.
      max_components: ``K``, the number of components kept per image (highest scores first).

    Returns:
      A dict of tensors, components sorted by decreasing score and padded to ``K``:

      - ``points``: ``(batch, K, 2)`` float32 ``(x, y)`` grid cell of the component's highest
        heatmap value (the first in row-major order on ties);
      - ``scores``: ``(batch, K)`` that highest value;
      - ``centroids``: ``(batch, K, 2)`` float32 mean ``(x, y)`` of the component's cells;
      - ``valid``: ``(batch, K)`` bool, False for padding.

      Padding entries are zeros. A heatmap with no cell above `threshold` gives no valid entry.
    """
    if (isinstance(max_components, bool) or not isinstance(max_components, int)
            or max_components < 1):
        raise ValueError(f"max_components must be a positive int, got {max_components!r}")
    heatmap = tf.convert_to_tensor(heatmap)
    if not heatmap.dtype.is_floating:
        raise TypeError(f"heatmap must be a floating tensor, got dtype {heatmap.dtype.name}")
    _check_rank3(heatmap, "heatmap")
    batch = _dim(heatmap, 0)
    height = _dim(heatmap, 1)
    width = _dim(heatmap, 2)
    pixels = height * width

    foreground = heatmap > tf.cast(threshold, heatmap.dtype)
    labels = connected_components(foreground)  # (batch, H, W) in [0, pixels]
    # One segment per (image, label); label 0 (background) is dropped below.
    per_image = pixels + 1
    segments = tf.reshape(labels + tf.reshape(tf.range(batch) * per_image, [-1, 1, 1]), [-1])
    num_segments = batch * per_image
    values = tf.reshape(heatmap, [-1])
    cell = tf.tile(tf.range(pixels, dtype=tf.int32), [batch])  # row-major index in its image
    cell_x = tf.cast(cell % width, tf.float32)
    cell_y = tf.cast(cell // width, tf.float32)

    peak = tf.math.unsorted_segment_max(values, segments, num_segments)
    count = tf.math.unsorted_segment_sum(tf.ones_like(cell_x), segments, num_segments)
    sum_x = tf.math.unsorted_segment_sum(cell_x, segments, num_segments)
    sum_y = tf.math.unsorted_segment_sum(cell_y, segments, num_segments)
    at_peak = tf.equal(values, tf.gather(peak, segments))
    peak_cell = tf.math.unsorted_segment_min(tf.where(at_peak, cell, pixels), segments,
                                             num_segments)

    def per_label(x):  # (batch * (pixels + 1),) -> (batch, pixels), background dropped
        return tf.reshape(x, [batch, per_image])[:, 1:]

    peak, count, sum_x, sum_y, peak_cell = map(per_label, (peak, count, sum_x, sum_y, peak_cell))
    exists = count > 0
    lowest = tf.fill(tf.shape(peak), tf.constant(heatmap.dtype.min, heatmap.dtype))
    ranked = tf.where(exists, peak, lowest)

    k = max_components
    if isinstance(pixels, int):
        k = min(k, pixels)
    else:
        k = tf.minimum(k, pixels)
    order = tf.math.top_k(ranked, k=k).indices  # (batch, k)

    def pick(x):
        return tf.gather(x, order, batch_dims=1)

    valid = pick(exists)
    count = tf.where(valid, pick(count), tf.ones_like(pick(count)))
    zero = tf.zeros_like(count)
    scores = tf.where(valid, pick(peak), tf.zeros_like(pick(peak)))
    peak_cell = pick(peak_cell)
    points = tf.stack([tf.where(valid, tf.cast(peak_cell % width, tf.float32), zero),
                       tf.where(valid, tf.cast(peak_cell // width, tf.float32), zero)], -1)
    centroids = tf.stack([tf.where(valid, pick(sum_x) / count, zero),
                          tf.where(valid, pick(sum_y) / count, zero)], -1)

    pad = max_components - k  # rows of padding when an image has fewer cells than K
    size = max_components
    return {
        "points": tf.reshape(tf.pad(points, [[0, 0], [0, pad], [0, 0]]), [batch, size, 2]),
        "scores": tf.reshape(tf.pad(scores, [[0, 0], [0, pad]]), [batch, size]),
        "centroids": tf.reshape(tf.pad(centroids, [[0, 0], [0, pad], [0, 0]]), [batch, size, 2]),
        "valid": tf.reshape(tf.pad(valid, [[0, 0], [0, pad]]), [batch, size]),
    }
