"""RoI Recalibration's samplers against TensorFlow's native ``tf.image.crop_and_resize``.

The same RoIs are expressed both ways: as normalised ``(y1, x1, y2, x2)`` boxes for
``crop_and_resize`` and as the affine ``theta`` for the samplers of ``lsnet_tf.ops.sampling``,
so that all produce the same crops. Two samplers are timed: the general ``affine_grid`` +
``bilinear_sample`` (any affine theta) and the separable ``sample_axis_aligned`` (scale and
translate, what RR and the hard crop use), which takes theta's diagonal and translation column.
Each timed call is a forward pass and the backward pass of ``sum(crops * upstream)`` with respect
to the images and the transform (boxes, theta, or scale and offset), as in training. Before
timing, `check_agreement` verifies that the crops and the image gradients agree; a mismatch stops
the benchmark.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from benchmarks import harness
from lsnet_tf.ops.sampling import affine_grid, bilinear_sample, sample_axis_aligned

TITLE = ("RR samplers (general `affine_grid` + `bilinear_sample`, separable `sample_axis_aligned`) "
         "against `tf.image.crop_and_resize`, forward + backward (images and transform) on the "
         "same RoIs.")
SAMPLERS = ("bilinear_sample", "sample_axis_aligned")
FULL = dict(batch=8, image=512, roi=256, channels=(1, 64), rounds=5)
QUICK = dict(batch=2, image=64, roi=32, channels=(1, 4), rounds=2)
TARGET = 1.5


class AgreementError(AssertionError):
    """The sampler and crop_and_resize do not produce the same crops or image gradients."""


def boxes_and_theta(batch: int, image: int, roi: int, rng: np.random.Generator):
    """Random axis-aligned RoIs inside an `image` x `image` input, sampled to `roi` x `roi`.

    Returns ``(boxes, theta)``: ``(batch, 4)`` normalised ``(y1, x1, y2, x2)`` for
    ``crop_and_resize`` (sample ``i`` of a crop at pixel-centre coordinate
    ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (roi - 1)``), and the ``(batch, 2, 3)`` theta of
    ``lsnet_tf.ops.sampling`` that samples the same points.
    """
    n = image - 1
    extent = rng.uniform(0.3, 0.75, size=(batch, 2)) * n  # RoI height and width, pixels
    start = rng.uniform(0.0, 1.0, size=(batch, 2)) * (n - extent)
    boxes = np.concatenate([start, start + extent], -1) / n  # (y1, x1, y2, x2)
    step = extent / (roi - 1)  # pixels between output samples, (y, x)
    scale = step * roi / image  # theta's diagonal
    # Pixel coordinate of output i: (image / 2) * (scale * ((2 i + 1) / roi - 1) + shift + 1) - 1/2.
    shift = (2.0 * start + 1.0) / image - 1.0 - scale * (1.0 / roi - 1.0)
    theta = np.zeros((batch, 2, 3))
    theta[:, 0, 0], theta[:, 0, 2] = scale[:, 1], shift[:, 1]
    theta[:, 1, 1], theta[:, 1, 2] = scale[:, 0], shift[:, 0]
    return boxes.astype(np.float32), theta.astype(np.float32)


def _ours(roi, upstream):
    def run(images, theta):
        with tf.GradientTape() as tape:
            tape.watch([images, theta])
            crops = bilinear_sample(images, affine_grid(theta, roi, roi))
            loss = tf.reduce_sum(crops * upstream)
        return [crops, *tape.gradient(loss, [images, theta])]
    return run


def _separable(roi, upstream):
    """Like `_ours` for `sample_axis_aligned`, fed with theta's diagonal and translation."""
    def run(images, theta):
        with tf.GradientTape() as tape:
            scale = tf.stack([theta[:, 0, 0], theta[:, 1, 1]], axis=-1)
            offset = theta[:, :, 2]
            tape.watch([images, scale, offset])
            crops = sample_axis_aligned(images, scale, offset, roi, roi)
            loss = tf.reduce_sum(crops * upstream)
        return [crops, *tape.gradient(loss, [images, scale, offset])]
    return run


def _native(roi, upstream):
    def run(images, boxes):
        index = tf.range(tf.shape(images)[0])
        with tf.GradientTape() as tape:
            tape.watch([images, boxes])
            crops = tf.image.crop_and_resize(images, boxes, index, [roi, roi])
            loss = tf.reduce_sum(crops * upstream)
        return [crops, *tape.gradient(loss, [images, boxes])]
    return run


def check_agreement(ours, native, atol: float = 2e-3) -> float:
    """Raise `AgreementError` unless the crops and the image gradients of both agree within
    `atol` (relative to the largest magnitude); returns the largest relative difference."""
    worst = 0.0
    for what, a, b in (("crops", ours[0], native[0]), ("image gradients", ours[1], native[1])):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.abs(b).max()), 1e-12)
        diff = float(np.abs(a - b).max()) / scale
        if not np.isfinite(diff) or diff > atol:
            raise AgreementError(f"sampler and crop_and_resize disagree on the {what}: largest "
                                 f"difference {diff:.3g} of the largest value (allowed {atol})")
        worst = max(worst, diff)
    return worst


def run(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    b, image, roi = size["batch"], size["image"], size["roi"]
    rng = np.random.default_rng(0)
    rows, targets = [], []
    for channels in size["channels"]:
        boxes, theta = boxes_and_theta(b, image, roi, rng)
        images = tf.constant(rng.normal(size=(b, image, image, channels)).astype(np.float32))
        upstream = tf.constant(rng.normal(size=(b, roi, roi, channels)).astype(np.float32))
        boxes, theta = tf.constant(boxes), tf.constant(theta)
        native = _native(roi, upstream)
        builders = {"bilinear_sample": _ours, "sample_axis_aligned": _separable}
        fns = {("eager", "crop_and_resize"): lambda: native(images, boxes),
               ("tf.function", "crop_and_resize"): (lambda f: lambda: f(images, boxes))(
                   tf.function(native))}
        for who in SAMPLERS:
            fn = builders[who](roi, upstream)
            fns[("eager", who)] = (lambda f: lambda: f(images, theta))(fn)
            fns[("tf.function", who)] = (lambda f: lambda: f(images, theta))(tf.function(fn))
            fns[("tf.function jit_compile", who)] = (lambda f: lambda: f(images, theta))(
                tf.function(fn, jit_compile=True))
        reference = native(images, boxes)
        agreement = {who: max(check_agreement(fn(), reference)
                              for (mode, w), fn in fns.items() if w == who)
                     for who in SAMPLERS}
        variants = {key: (lambda fn: lambda: [t.numpy() for t in fn()])(fn)
                    for key, fn in fns.items()}
        times = harness.interleaved(variants, size["rounds"])
        for who in SAMPLERS:
            for mode in ("eager", "tf.function", "tf.function jit_compile"):
                native_key = (mode if mode != "tf.function jit_compile" else "tf.function",
                              "crop_and_resize")
                r = harness.ratio(times[(mode, who)], times[native_key])
                rows.append({"channels": channels, "sampler": who, "mode": mode,
                             "sampler ms": harness.median_ms(times[(mode, who)]),
                             "crop_and_resize ms": harness.median_ms(times[native_key]),
                             "ratio": r, "max rel. difference": float(f"{agreement[who]:.2g}")})
                targets.append(harness.target(f"{who} / crop_and_resize, C={channels}, {mode}",
                                              f"<= {TARGET}", r, r <= TARGET))
    return {
        "title": TITLE,
        "settings": {"batch": b, "input": f"{image}x{image}", "RoI": f"{roi}x{roi}",
                     "rounds": size["rounds"]},
        "rows": rows, "targets": targets,
        "notes": [
            "crop_and_resize has no XLA kernel, so the jit_compile rows compare the XLA-compiled "
            "samplers with crop_and_resize in a tf.function.",
            "crop_and_resize is one fused C++ kernel per direction; the samplers are built from "
            "TensorFlow builtin ops so that they are differentiable with respect to the "
            "transform, run under XLA and convert to TFLite builtins. bilinear_sample (any "
            "affine theta) computes about 30 element-wise ops on (B, h, w) and their gradients "
            "(the whole cost at C=1) and four gathers on the images flattened to (B*H*W, C), "
            "their weighted sum and the scatter-add of the image gradient (the cost at C=64).",
            "sample_axis_aligned (scale and translate only, what RR and the hard crop use) does "
            "the index and weight arithmetic on (B, h) and (B, w) only, then gathers and blends "
            "the two input rows of every output row, (B, H, W, C) -> (B, h, W, C), and the two "
            "input columns of every output column, -> (B, h, w, C). At C=64 its cost is these "
            "passes and the segment sums of their gradients; the intermediate (B, h, W, C) is "
            "W / w times the output, so with RoIs about half the image the row pass moves twice "
            "the data of the output, which crop_and_resize never materialises.",
        ],
    }
