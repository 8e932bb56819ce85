"""Shared test settings: quiet TensorFlow, and two logical CPU devices for distribution tests.

The logical devices must be configured before TensorFlow initialises its runtime, so it happens
here, before any test module runs an op.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


# ----------------------------------------------------------------------------- tiny models
# Shared by the model tests (importable as ``from conftest import ...``: pytest puts tests/ on
# sys.path, there being no tests/__init__.py). Files that need other settings add them to these.

TINY = ["data.image_size=64", "model.width=4", "data.max_boxes=4"]


def tiny_cfg(*overrides):
    """The config of a tiny 64 x 64 model (width 4, 4 RoI slots) with `overrides` after it."""
    from lsnet_tf.config import load_config

    return load_config(None, [*TINY, *overrides])


def compiled(cfg, learning_rate=1e-3):
    """``build_model(cfg)`` compiled with one Adam(`learning_rate`) per network."""
    import keras

    from lsnet_tf.models.build import build_model

    model = build_model(cfg)
    networks = getattr(model, "networks", None) or {"lnet": None, "snet": None}
    model.compile(**{f"{name}_optimizer": keras.optimizers.Adam(learning_rate)
                     for name in networks})
    return model


def make_batch(n=2, size=64, with_target=(True, False), max_boxes=4):
    """A batch as the pipeline makes it: a bright rectangle target (its box, heatmap and ltrb
    from ``encode_targets``) on the images where `with_target` (cycled) is true."""
    import numpy as np

    from lsnet_tf.data import targets

    images = np.full((n, size, size, 1), 0.3, np.float32)
    masks = np.zeros((n, size, size, 1), np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    num = np.zeros((n,), np.int32)
    heat = np.zeros((n, size // 4, size // 4, 1), np.float32)
    ltrb = np.zeros((n, size // 4, size // 4, 4), np.float32)
    for i in range(n):
        if not with_target[i % len(with_target)]:
            continue
        x1, y1, x2, y2 = 20 + 4 * i, 16, 40 + 4 * i, 34
        images[i, y1:y2, x1:x2] = 0.8
        masks[i, y1:y2, x1:x2] = 1
        boxes[i, 0] = (x1, y1, x2, y2)
        num[i] = 1
        h, l = targets.encode_targets(tf.constant([[x1, y1, x2, y2]], tf.float32), size, size)
        heat[i], ltrb[i] = h.numpy(), l.numpy()
    return {"image": tf.constant(images), "mask": tf.constant(masks), "heatmap": tf.constant(heat),
            "ltrb": tf.constant(ltrb), "boxes": tf.constant(boxes), "num_boxes": tf.constant(num)}
