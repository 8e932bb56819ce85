"""RoI Recalibration (RR): the differentiable crop between L-Net and S-Net.

The layer holds the settings (output size, margin) and calls the pure ops: ``roi_theta`` builds
the affine transform of Eqs. (2)-(3) of the paper (Sec. 2.2) from a keypoint and its ``ltrb`` distances, and
``sample_axis_aligned`` resamples the RoI (the separable form of ``affine_grid`` +
``bilinear_sample`` for this scale-and-translate transform; conventions in
``lsnet_tf.ops.sampling``). Gradients flow from the RoI to ``theta`` and on to the keypoint and
the distances. The inverse step for inference is ``lsnet_tf.ops.sampling.paste_masks``.
"""
from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf

from lsnet_tf.ops.boxes import roi_theta
from lsnet_tf.ops.sampling import sample_axis_aligned

__all__ = ["RoIRecalibration"]


def _output_size(value) -> tuple[int, int]:
    """``output_size`` as a pair ``(h, w)`` of positive ints."""
    error = ValueError("output_size must be a positive int or a pair (h, w) of them, "
                       f"got {value!r}")
    if isinstance(value, bool):
        raise error
    if isinstance(value, numbers.Integral):
        value = (value, value)
    try:
        size = tuple(value)
    except TypeError:
        raise error from None
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
                             for s in size):
        raise error
    return int(size[0]), int(size[1])


def check_margin(margin) -> float:
    """`margin` as a float: a finite real number >= 0 (input pixels), else ValueError."""
    if (isinstance(margin, bool) or not isinstance(margin, numbers.Real)
            or not math.isfinite(margin) or margin < 0):
        raise ValueError(f"margin must be a finite number >= 0 (input pixels), got {margin!r}")
    return float(margin)


def _describe(inputs) -> str:
    if isinstance(inputs, (list, tuple)):
        return f"a {type(inputs).__name__} of {len(inputs)} inputs"
    return f"a single {type(inputs).__name__}"


@keras.saving.register_keras_serializable(package="lsnet_tf")
class RoIRecalibration(keras.layers.Layer):
    """Samples the RoI of each image around a keypoint and its regressed box.

    Args:
      output_size: RoI size, an int or a pair ``(h, w)`` (S-Net's input size).
      margin: context added on every side of the box, in input pixels (default 15).
      **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Call arguments:
      inputs: a list ``[images, keypoints, ltrb]``:
        ``images`` ``(batch, H, W, C)`` float; ``keypoints`` ``(batch, 2)`` ``(x, y)`` in input
        pixels; ``ltrb`` ``(batch, 4)`` distances in input pixels.

    Returns:
      ``(rois, theta)``: ``rois`` ``(batch, h, w, C)`` in the layer's compute dtype, the box
      grown by ``margin`` and resampled bilinearly (zero outside the image); ``theta``
      ``(batch, 2, 3)`` float32, the transform used (normalised RoI -> normalised image
      coordinates), to be inverted by ``paste_masks``.

    The geometry is computed in float32 whatever the dtype policy: inputs are not auto-cast.
    """

    def __init__(self, output_size, margin: float = 15.0, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_size = _output_size(output_size)
        self.margin = check_margin(margin)

    @staticmethod
    def _check_shapes(input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("RoIRecalibration expects inputs [images, keypoints, ltrb], got "
                             f"{_describe(input_shape)}")
        images, keypoints, ltrb = (
            None if s is None or getattr(s, "rank", 0) is None else tuple(s) for s in input_shape)
        expected = (("images", images, 4, None, "(batch, H, W, C)"),
                    ("keypoints", keypoints, 2, 2, "(batch, 2)"),
                    ("ltrb", ltrb, 2, 4, "(batch, 4)"))
        for name, shape, rank, last, layout in expected:
            if shape is None:
                continue
            if len(shape) != rank or (last is not None and shape[-1] is not None
                                      and shape[-1] != last):
                raise ValueError(f"RoIRecalibration: {name} must have shape {layout}, "
                                 f"got {shape}")
        return images

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError("RoIRecalibration expects inputs [images, keypoints, ltrb], got "
                             f"{_describe(inputs)}")
        images, keypoints, ltrb = (tf.convert_to_tensor(x) for x in inputs)
        self._check_shapes([images.shape, keypoints.shape, ltrb.shape])
        images = tf.cast(images, self.compute_dtype)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        if images.shape[1] is not None and images.shape[2] is not None:
            height, width = images.shape[1], images.shape[2]
        theta = roi_theta(tf.cast(keypoints, tf.float32), tf.cast(ltrb, tf.float32),
                          height, width, self.margin)
        # roi_theta is [[s_x, 0, t_x], [0, s_y, t_y]]: the separable sampler is exact for it.
        scale = tf.stack([theta[:, 0, 0], theta[:, 1, 1]], axis=-1)
        rois = sample_axis_aligned(images, scale, theta[:, :, 2], *self.output_size)
        return rois, theta

    def compute_output_shape(self, input_shape):
        images = self._check_shapes(input_shape) or (None, None, None, None)
        batch, channels = images[0], images[-1]
        return (batch, *self.output_size, channels), (batch, 2, 3)

    def compute_output_spec(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError("RoIRecalibration expects inputs [images, keypoints, ltrb], got "
                             f"{_describe(inputs)}")
        rois_shape, theta_shape = self.compute_output_shape([x.shape for x in inputs])
        return (keras.KerasTensor(rois_shape, dtype=self.compute_dtype),
                keras.KerasTensor(theta_shape, dtype="float32"))

    def get_config(self):
        config = super().get_config()
        config.update({"output_size": list(self.output_size), "margin": self.margin})
        return config
