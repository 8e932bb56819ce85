"""Affine grids and bilinear sampling: the differentiable core of RoI Recalibration (RR).

Conventions (used by every function here and by ``lsnet_tf.ops.boxes``)
-----------------------------------------------------------------------
- Images are NHWC: ``(batch, height, width, channels)``.
- Pixel (row ``i``, column ``j``) covers the continuous square ``[j, j + 1) x [i, i + 1)``; its
  centre is ``(j + 0.5, i + 0.5)``. Continuous pixel coordinates are written ``(x, y)`` with
  ``x`` along the width (columns) and ``y`` along the height (rows).
- Normalised coordinates follow PyTorch's ``align_corners=False``: ``x_n = 2 * x / W - 1`` and
  ``y_n = 2 * y / H - 1``, so ``-1`` and ``+1`` are the outer edges of the border pixels and the
  centre of pixel ``j`` is ``x_n = (2 * j + 1) / W - 1``.
- A grid's last axis is ``(x_n, y_n)``, in that order.
- Sampling pulls: output pixel ``p`` takes the input value at the normalised input location
  ``grid[p]``. An affine ``theta`` of shape ``(batch, 2, 3)`` maps normalised *output*
  coordinates ``(x_n, y_n, 1)`` to normalised *input* coordinates.

With these conventions ``bilinear_sample(images, affine_grid(theta, h, w))`` equals PyTorch's
``F.grid_sample(x, F.affine_grid(theta, (B, C, h, w), align_corners=False), mode="bilinear",
padding_mode="zeros", align_corners=False)`` in NHWC: bilinear interpolation between the four
pixel centres around the sample point, where each of the four taps that lies outside the image
contributes zero.

For the scale-and-translate transforms of RR (``theta = [[s_x, 0, t_x], [0, s_y, t_y]]``)
``sample_axis_aligned`` computes the same crops separably: two source rows per output row, then
two source columns per output column, with the index and weight arithmetic on ``(batch, h)`` and
``(batch, w)`` only. ``sample_scale_translate`` keeps the general path's per-pixel arithmetic
(its values to the last bit) and moves only the index and weight arithmetic to one axis at a
time.

Everything is built from TensorFlow builtin ops (``gather``, ``floor``, element-wise arithmetic,
``unsorted_segment_max``), so it runs under ``tf.function(jit_compile=True)``, exports to a
SavedModel and converts to TFLite with ``TFLITE_BUILTINS`` only.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["affine_grid", "bilinear_sample", "invert_affine", "paste_masks",
           "sample_axis_aligned", "sample_scale_translate"]


def _dim(tensor: tf.Tensor, axis: int):
    """Static size of `axis` when known, else the dynamic one (a scalar int32 tensor)."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _check_rank(tensor: tf.Tensor, rank: int, name: str, layout: str) -> None:
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"{name} must have rank {rank} {layout}, got shape {tensor.shape}")


def _check_size(value, name: str) -> None:
    """Python numbers must be positive integers; tensors are taken as they are."""
    if isinstance(value, (bool, float, np.floating)) or (
            isinstance(value, (int, np.integer)) and value <= 0):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_theta(theta: tf.Tensor, name: str = "theta") -> None:
    if not theta.dtype.is_floating:
        raise TypeError(f"{name} must be a floating tensor, got dtype {theta.dtype.name}")
    _check_rank(theta, 3, name, "(batch, 2, 3)")
    if theta.shape[1:].is_fully_defined() and tuple(theta.shape[1:]) != (2, 3):
        raise ValueError(f"{name} must have shape (batch, 2, 3), got {theta.shape}")


def affine_grid(theta, height, width) -> tf.Tensor:
    """Sampling grid of an affine map, at the pixel centres of a `height` x `width` output.

    Args:
      theta: ``(batch, 2, 3)`` float, normalised output -> normalised input coordinates.
      height, width: output size (positive Python ints or scalar int tensors).

    Returns:
      ``(batch, height, width, 2)`` grid of normalised input coordinates ``(x_n, y_n)``, in the
      dtype of `theta`: ``grid[b, i, j] = theta[b] @ (x_n(j), y_n(i), 1)`` with
      ``x_n(j) = (2 * j + 1) / width - 1`` and ``y_n(i) = (2 * i + 1) / height - 1``.
    """
    theta = tf.convert_to_tensor(theta)
    _check_theta(theta)
    _check_size(height, "height")
    _check_size(width, "width")
    dtype = theta.dtype
    h = tf.cast(height, dtype)
    w = tf.cast(width, dtype)
    xs = (2.0 * tf.range(width, dtype=dtype) + 1.0) / w - 1.0  # (width,)
    ys = (2.0 * tf.range(height, dtype=dtype) + 1.0) / h - 1.0  # (height,)
    xs = xs[tf.newaxis, tf.newaxis, :]  # (1, 1, width)
    ys = ys[tf.newaxis, :, tf.newaxis]  # (1, height, 1)
    t = theta[:, :, :, tf.newaxis, tf.newaxis]  # (batch, 2, 3, 1, 1)
    grid_x = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    grid_y = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return tf.stack([grid_x, grid_y], axis=-1)


def bilinear_sample(images, grid) -> tf.Tensor:
    """Bilinear sampling of `images` at normalised locations, zero outside the image.

    Args:
      images: ``(batch, H, W, C)`` float.
      grid: ``(batch, h, w, 2)`` float, normalised input coordinates ``(x_n, y_n)`` (see the
        module docstring); any values, points outside the image included.

    Returns:
      ``(batch, h, w, C)`` in the dtype of `images`: output pixel ``p`` is the bilinear
      interpolation of the four input pixel centres around ``grid[p]``, each tap outside the
      image counting as zero (PyTorch ``grid_sample``, ``padding_mode="zeros"``,
      ``align_corners=False``). Differentiable with respect to `images` and `grid`.

    Index and weight arithmetic is done once on ``(batch, h, w)`` scalars (validity folded into
    the weights, indices clipped into the image); the channel-wide work is four ``tf.gather``
    calls on the images flattened to ``(batch * H * W, C)`` and a weighted sum. Four gathers
    measured faster than one gather of the four taps stacked (2-core CPU, batch 8, 512 -> 256:
    5 ms vs 17 ms at C=1 and 42 ms vs 463 ms at C=64 under XLA; 20 vs 30 ms and 198 vs
    227 ms without), the XLA times being on par with ``tf.image.crop_and_resize``.
    """
    images = tf.convert_to_tensor(images)
    grid = tf.convert_to_tensor(grid)
    _check_rank(images, 4, "images", "(batch, H, W, C)")
    _check_rank(grid, 4, "grid", "(batch, h, w, 2)")
    if grid.shape[-1] is not None and grid.shape[-1] != 2:
        raise ValueError(f"grid's last axis must be (x, y) of size 2, got shape {grid.shape}")
    if not images.dtype.is_floating:
        raise TypeError(f"images must be a floating tensor, got dtype {images.dtype.name}")
    if not grid.dtype.is_floating:
        raise TypeError(f"grid must be a floating tensor, got dtype {grid.dtype.name}")
    if (images.shape[0] is not None and grid.shape[0] is not None
            and images.shape[0] != grid.shape[0]):
        raise ValueError(f"images and grid need the same batch size, got images {images.shape} "
                         f"and grid {grid.shape}")

    return _sample_at(images, grid[..., 0], grid[..., 1])


def _sample_at(images, gx, gy) -> tf.Tensor:
    """``bilinear_sample``'s arithmetic at normalised coordinates `gx`, `gy` that broadcast
    together to ``(batch, h, w)`` (the grid's two planes, or a column ``(batch, 1, w)`` and a row
    ``(batch, h, 1)`` of them when each depends on one axis only)."""
    batch = _dim(images, 0)
    height = _dim(images, 1)
    width = _dim(images, 2)
    channels = _dim(images, 3)
    dtype = gx.dtype
    h_f = tf.cast(height, dtype)
    w_f = tf.cast(width, dtype)

    # Continuous pixel coordinates with pixel centres at integers. Clipping to [-1, W] (resp.
    # [-1, H]) changes no value (every tap beyond is outside the image) and keeps the int cast
    # safe for far-away points.
    x = tf.clip_by_value(((gx + 1.0) * w_f - 1.0) * 0.5, -1.0, w_f)
    y = tf.clip_by_value(((gy + 1.0) * h_f - 1.0) * 0.5, -1.0, h_f)
    x0f = tf.floor(x)
    y0f = tf.floor(y)
    wx1 = x - x0f
    wy1 = y - y0f
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    x0 = tf.cast(x0f, tf.int32)
    y0 = tf.cast(y0f, tf.int32)

    # After the clip x0 lies in [-1, W]: the tap at column x0 is inside for 0 <= x0 < W, the
    # tap at x0 + 1 for x0 < W - 1 (rows alike).
    wx0 = tf.where((x0 >= 0) & (x0 < width), wx0, tf.zeros_like(wx0))
    wx1 = tf.where(x0 < width - 1, wx1, tf.zeros_like(wx1))
    wy0 = tf.where((y0 >= 0) & (y0 < height), wy0, tf.zeros_like(wy0))
    wy1 = tf.where(y0 < height - 1, wy1, tf.zeros_like(wy1))
    xa = tf.clip_by_value(x0, 0, width - 1)
    xb = tf.clip_by_value(x0 + 1, 0, width - 1)
    ya = tf.clip_by_value(y0, 0, height - 1)
    yb = tf.clip_by_value(y0 + 1, 0, height - 1)

    offset = tf.reshape(tf.range(batch, dtype=tf.int32) * (height * width), [-1, 1, 1])
    row_a = offset + ya * width
    row_b = offset + yb * width
    flat = tf.reshape(images, [-1, channels])  # (batch * H * W, C)
    taps = ((row_a + xa, wy0 * wx0), (row_a + xb, wy0 * wx1),
            (row_b + xa, wy1 * wx0), (row_b + xb, wy1 * wx1))
    out = None
    for index, weight in taps:
        term = tf.gather(flat, index) * tf.cast(weight, images.dtype)[..., tf.newaxis]
        out = term if out is None else out + term
    return out


def sample_scale_translate(images, theta, height, width) -> tf.Tensor:
    """``bilinear_sample(images, affine_grid(theta, height, width))`` to the last bit, for a
    scale-and-translate `theta` ``[[s_x, 0, t_x], [0, s_y, t_y]]`` ``(batch, 2, 3)``.

    For such θ a grid's ``x_n`` depends on the output column only and ``y_n`` on the row only,
    so they are computed as a row ``(batch, 1, width)`` and a column ``(batch, height, 1)`` (by
    ``affine_grid`` itself, on a one-pixel-high and a one-pixel-wide output) and the index and
    weight arithmetic runs on those; only the four taps' gathers, weights and sum are per output
    pixel, as in the general path, so the values are the general path's exactly (in a
    ``tf.function`` too). The training targets use it (``two_stage.roi_targets``), where the
    general path's values must be kept; ``sample_axis_aligned`` is faster but rounds
    differently. A θ with rotation or shear gives wrong values here.
    """
    images = tf.convert_to_tensor(images)
    theta = tf.convert_to_tensor(theta)
    _check_rank(images, 4, "images", "(batch, H, W, C)")
    if not images.dtype.is_floating:
        raise TypeError(f"images must be a floating tensor, got dtype {images.dtype.name}")
    gx = affine_grid(theta, 1, width)[..., 0]  # (batch, 1, width)
    gy = affine_grid(theta, height, 1)[..., 1]  # (batch, height, 1)
    return _sample_at(images, gx, gy)


def _axis_taps(scale, offset, out_size, in_size):
    """Per-axis taps of a scale-and-translate map (the 1-D part of `bilinear_sample`).

    Args:
      scale, offset: ``(batch,)`` float: normalised output coordinate ``u`` maps to the
        normalised input coordinate ``scale * u + offset``.
      out_size, in_size: number of output and input pixels along the axis.

    Returns:
      ``(lo, hi, w_lo, w_hi)``: ``(batch, out_size)`` int32 indices of the two input pixels
      around each output pixel's sample point, clipped into ``[0, in_size)``, and their weights,
      zero for a tap outside the input. The arithmetic is the one of ``affine_grid`` +
      ``bilinear_sample`` along one axis, so the results agree to the last bit.
    """
    dtype = scale.dtype
    n_out = tf.cast(out_size, dtype)
    n_in = tf.cast(in_size, dtype)
    u = (2.0 * tf.range(out_size, dtype=dtype) + 1.0) / n_out - 1.0  # (out_size,)
    coord = scale[:, tf.newaxis] * u[tf.newaxis, :] + offset[:, tf.newaxis]
    # Pixel coordinate with pixel centres at integers; the clip changes no value (see
    # bilinear_sample) and keeps the int cast safe.
    p = tf.clip_by_value(((coord + 1.0) * n_in - 1.0) * 0.5, -1.0, n_in)
    p0f = tf.floor(p)
    w_hi = p - p0f
    w_lo = 1.0 - w_hi
    p0 = tf.cast(p0f, tf.int32)
    zero = tf.zeros_like(w_lo)
    w_lo = tf.where((p0 >= 0) & (p0 < in_size), w_lo, zero)
    w_hi = tf.where(p0 < in_size - 1, w_hi, zero)
    lo = tf.clip_by_value(p0, 0, in_size - 1)
    hi = tf.clip_by_value(p0 + 1, 0, in_size - 1)
    return lo, hi, w_lo, w_hi


def _blend_rows(images, taps) -> tf.Tensor:
    """``(B, H, W, C)`` -> ``(B, h, W, C)``: the two input rows of every output row, blended.

    The images are viewed as ``(B * H, W * C)`` so that each tap is one ``tf.gather`` of whole
    rows (and its gradient one segment sum of whole rows).
    """
    lo, hi, w_lo, w_hi = taps
    batch, height, width, channels = (_dim(images, a) for a in range(4))
    rows = tf.reshape(images, [-1, width * channels])
    offset = (tf.range(batch, dtype=tf.int32) * height)[:, tf.newaxis]
    w_lo = tf.cast(w_lo, images.dtype)[..., tf.newaxis]
    w_hi = tf.cast(w_hi, images.dtype)[..., tf.newaxis]
    out = tf.gather(rows, offset + lo) * w_lo + tf.gather(rows, offset + hi) * w_hi
    return tf.reshape(out, [batch, _dim(lo, 1), width, channels])


def _blend_columns(images, taps) -> tf.Tensor:
    """``(B, H, W, C)`` -> ``(B, H, w, C)``: the two input columns of every output column."""
    lo, hi, w_lo, w_hi = taps
    batch, height, width, channels = (_dim(images, a) for a in range(4))
    pixels = tf.reshape(images, [-1, channels])  # (B * H * W, C)
    row = tf.reshape(tf.range(batch * height, dtype=tf.int32) * width, [batch, height, 1])
    w_lo = tf.cast(w_lo, images.dtype)[:, tf.newaxis, :, tf.newaxis]
    w_hi = tf.cast(w_hi, images.dtype)[:, tf.newaxis, :, tf.newaxis]
    return (tf.gather(pixels, row + lo[:, tf.newaxis, :]) * w_lo
            + tf.gather(pixels, row + hi[:, tf.newaxis, :]) * w_hi)


def sample_axis_aligned(images, scale, offset, height, width) -> tf.Tensor:
    """Separable bilinear sampling of a scale-and-translate transform, zero outside the image.

    Args:
      images: ``(batch, H, W, C)`` float.
      scale: ``(batch, 2)`` float ``(s_x, s_y)``.
      offset: ``(batch, 2)`` float ``(t_x, t_y)``.
      height, width: output size (positive Python ints or scalar int tensors).

    Returns:
      ``(batch, height, width, C)`` in the dtype of `images`, equal (to float rounding) to
      ``bilinear_sample(images, affine_grid(theta, height, width))`` with
      ``theta = [[s_x, 0, t_x], [0, s_y, t_y]]`` (the RR transform, see
      ``lsnet_tf.ops.boxes.box_theta``): negative scales (flips) and RoIs partly or wholly
      outside the image included. Differentiable with respect to `images`, `scale` and `offset`;
      the gradients equal those of the general path with respect to the image and the diagonal
      and translation entries of ``theta``. A transform with rotation or shear cannot be
      expressed here; use ``bilinear_sample`` for those.

    Bilinear interpolation with zero padding is separable for such transforms: each output row
    reads the same two input rows and each output column the same two input columns. So the
    weights are computed on ``(batch, height)`` and ``(batch, width)``; the two input rows of
    every output row are gathered (one ``tf.gather`` of whole rows of the images viewed as
    ``(batch * H, W * C)`` per tap) and blended, then the two input columns of every output
    column (gathers of pixels of the ``(batch * height * W, C)`` view). The axis that gives the
    smaller intermediate goes first when the sizes are static. Plain gathers measured faster
    than ``tf.gather(..., axis=1 or 2, batch_dims=1)`` (2-core CPU, batch 8, 512 -> 256, C=64,
    forward + backward in a ``tf.function``: 392 ms vs 493 ms). Against ``bilinear_sample`` it
    saves the element-wise work on ``(batch, h, w)`` (about 2x faster at C=1), but the
    intermediate ``(batch, height, W, C)`` makes it no faster at many channels (C=64).
    """
    images = tf.convert_to_tensor(images)
    _check_rank(images, 4, "images", "(batch, H, W, C)")
    if not images.dtype.is_floating:
        raise TypeError(f"images must be a floating tensor, got dtype {images.dtype.name}")
    scale = tf.convert_to_tensor(scale)
    offset = tf.convert_to_tensor(offset)
    for name, value in (("scale", scale), ("offset", offset)):
        if not value.dtype.is_floating:
            raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype.name}")
        _check_rank(value, 2, name, "(batch, 2), (x, y) order")
        if value.shape[-1] is not None and value.shape[-1] != 2:
            raise ValueError(f"{name} must have shape (batch, 2), (x, y) order, got {value.shape}")
        if (images.shape[0] is not None and value.shape[0] is not None
                and images.shape[0] != value.shape[0]):
            raise ValueError(f"images and {name} need the same batch size, got images "
                             f"{images.shape} and {name} {value.shape}")
    _check_size(height, "height")
    _check_size(width, "width")
    in_h, in_w = _dim(images, 1), _dim(images, 2)
    rows = _axis_taps(scale[:, 1], offset[:, 1], height, in_h)
    cols = _axis_taps(scale[:, 0], offset[:, 0], width, in_w)
    sizes = (height, width, in_h, in_w)
    columns_first = (all(isinstance(s, (int, np.integer)) for s in sizes)
                     and in_h * width < height * in_w)
    if columns_first:
        return _blend_rows(_blend_columns(images, cols), rows)
    return _blend_columns(_blend_rows(images, rows), cols)


def invert_affine(theta, eps: float = 1e-6) -> tf.Tensor:
    """Inverse of a scale-and-translate ``theta`` (Eq. (4) of the paper, Sec. 2.4).

    Args:
      theta: ``(batch, 2, 3)`` float of the form ``[[s_x, 0, t_x], [0, s_y, t_y]]`` (the RR
        transform). Only ``s_x = theta[:, 0, 0]``, ``s_y = theta[:, 1, 1]`` and the translation
        column are read; off-diagonal terms are ignored, so this is not a general inverse.
      eps: smoothing term added to the scales (keeps a degenerate RoI finite).

    Returns:
      ``(batch, 2, 3)``: ``[[1 / (s_x + eps), 0, -t_x / (s_x + eps)],
      [0, 1 / (s_y + eps), -t_y / (s_y + eps)]]``; it maps normalised input coordinates back
      to normalised RoI coordinates.
    """
    theta = tf.convert_to_tensor(theta)
    _check_theta(theta)
    sx = theta[:, 0, 0] + eps
    sy = theta[:, 1, 1] + eps
    tx = theta[:, 0, 2]
    ty = theta[:, 1, 2]
    zero = tf.zeros_like(sx)
    row_x = tf.stack([1.0 / sx, zero, -tx / sx], axis=-1)
    row_y = tf.stack([zero, 1.0 / sy, -ty / sy], axis=-1)
    return tf.stack([row_x, row_y], axis=1)


def paste_masks(masks, theta, image_index, batch_size, height, width,
                eps: float = 1e-6) -> tf.Tensor:
    """Post-processing: put RoI masks back on their full images through the inverse RR transform.

    Args:
      masks: ``(N, h, w, C)`` float probabilities of ``N`` RoIs (S-Net outputs on RR crops).
      theta: ``(N, 2, 3)`` the RR transforms that produced the crops (scale and translate).
      image_index: ``(N,)`` int, which image of the batch each RoI belongs to, in
        ``[0, batch_size)``.
      batch_size: number of images (Python int or scalar int tensor).
      height, width: full image size in pixels.
      eps: smoothing term of ``invert_affine``.

    Returns:
      ``(batch_size, height, width, C)`` in the dtype of `masks`: each mask is resampled with
      ``bilinear_sample(masks, affine_grid(invert_affine(theta), height, width))`` (zero outside
      its RoI; computed by the equivalent ``sample_axis_aligned``), and masks of the same image
      are merged by element-wise max. Images without any RoI, and every image when ``N == 0``,
      are all zeros.
    """
    masks = tf.convert_to_tensor(masks)
    theta = tf.convert_to_tensor(theta)
    image_index = tf.convert_to_tensor(image_index)
    _check_rank(masks, 4, "masks", "(N, h, w, C)")
    _check_rank(image_index, 1, "image_index", "(N,)")
    if not image_index.dtype.is_integer:
        raise TypeError("image_index must be an integer tensor, got dtype "
                        f"{image_index.dtype.name}")
    _check_size(batch_size, "batch_size")
    inverse = invert_affine(theta, eps)  # scale and translate: the separable sampler is exact
    scale = tf.stack([inverse[:, 0, 0], inverse[:, 1, 1]], axis=-1)
    pasted = sample_axis_aligned(masks, scale, inverse[:, :, 2], height, width)  # (N, H, W, C)
    merged = tf.math.unsorted_segment_max(pasted, tf.cast(image_index, tf.int32), batch_size)
    # Empty segments come back as the dtype's lowest value; probabilities are >= 0.
    return tf.maximum(merged, tf.zeros([], merged.dtype))
