"""Export L-SNet as a SavedModel that TensorFlow Serving loads.

Layout: ``<dir>/<name>/<version>/saved_model.pb`` (tag ``serve``). Signature ``serving_default``:

input ``hu``: (batch, height, width) float32 raw HU slices, any height and width. Windowing
(``data.window_center``/``window_width``) and resizing to the model's input size happen in the
graph. Outputs, in the input's pixel grid:

=================  ========================  =============================================
name               shape                     meaning
=================  ========================  =============================================
mask               (batch, height, width)    uint8 binary mask (probability > 0.5)
probability        (batch, height, width)    float32 mask probability
keypoints          (batch, K, 2)             (x, y) pixels; K = data.max_boxes
scores             (batch, K)                heatmap value of each keypoint (0 if none)
boxes              (batch, K, 4)             xyxy pixels (zeros where no RoI)
=================  ========================  =============================================
"""
from __future__ import annotations

import os

import tensorflow as tf


class ServingModule(tf.Module):
    def __init__(self, model, window_center: float, window_width: float):
        super().__init__()
        self.model = model
        self.window_center = float(window_center)
        self.window_width = float(window_width)
        self.size = model.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="hu")])
    def serve(self, hu):
        from lsnet_tf.data.pipeline import window

        h, w = tf.shape(hu)[1], tf.shape(hu)[2]
        img = window(hu, self.window_center, self.window_width)[..., None]
        img = tf.image.resize(img, self.size, method="bilinear")
        pred = self.model.predict_masks(img)
        prob = tf.image.resize(pred["mask"][..., :1], tf.stack([h, w]), method="bilinear")[..., 0]
        sx = tf.cast(w, tf.float32) / self.size[1]
        sy = tf.cast(h, tf.float32) / self.size[0]
        return {
            "mask": tf.cast(prob > 0.5, tf.uint8),
            "probability": prob,
            "keypoints": pred["keypoints"] * tf.stack([sx, sy]),
            "scores": pred["scores"],
            "boxes": pred["boxes"] * tf.stack([sx, sy, sx, sy]),
        }


def export(model, cfg, path: str) -> str:
    """Write the serving SavedModel of `model` to `path`; returns `path`."""
    module = ServingModule(model, cfg.data.window_center, cfg.data.window_width)
    tmp = path.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf.io.gfile.rename(tmp, path)
    return path
