"""Export L-SNet as a SavedModel that TensorFlow Serving loads.

Layout: ``<dir>/<name>/<version>/saved_model.pb`` (tag ``serve``), the folder layout TF Serving
watches; ``assets.extra/config.yaml`` holds the run's resolved config. Two signatures run the
same graph:

- ``serving_default``: input ``hu`` float32 raw HU slices ``(batch, height, width)``;
- ``serving_int16``: input ``hu`` int16 (DICOM-range HU), cast to float32 first.

Any height and width (at least 1 x 1). In the graph each slice is resized bilinearly to the
model's input size (``data.image_size``), then windowed (``data.window_center`` /
``window_width``) to [0, 1] — the order of the training pipeline — and L-SNet's inference path
(``LSNet.predict_masks``: L-Net, connected components, RoI recalibration, S-Net, inverse paste)
runs. Outputs, in the input's pixel grid (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``):

===========  ============================  ================================================
name         shape / dtype                 meaning
===========  ============================  ================================================
probability  (batch, height, width, C) f32 mask probability, resized back bilinearly
mask         (batch, height, width, C) u8  1 where probability > 0.5
keypoints    (batch, K, 2) f32             (x, y) input pixels; K = data.max_boxes
scores       (batch, K) f32                heatmap value of each keypoint (0 where invalid)
boxes        (batch, K, 4) f32             xyxy input pixels (zeros where invalid)
valid        (batch, K) bool               which of the K entries are detections
===========  ============================  ================================================

``C`` is ``model.num_classes`` (1 for L-SNet's binary masks). Entries of the K axis are sorted by
decreasing score. An empty batch ``(0, height, width)`` returns empty outputs. The signatures
take an input of unknown rank so that the rank is checked when the graph runs: a request whose
``hu`` is not 3-D fails with ``InvalidArgument`` ("hu must be a batch of slices (batch, height,
width) of raw HU; send one slice as a batch of one; received shape [...]"), also through TF
Serving, where a rank-3 TensorSpec would not be checked. A channel axis, ``(batch, H, W, 1)``
or ``(batch, H, W, 3)``, is such a rank error: send gray HU slices without it. A slice of 0
rows or columns fails with "hu slices must be at least 1 x 1 pixels".

Dtypes: each signature takes exactly its dtype. A tensor of another dtype (float64, int32, or
int16 sent to ``serving_default``) fails with ``InvalidArgument`` ("... was expected to be a
float tensor but is a double tensor"), in TF Serving's gRPC API as well; a Python or NumPy value
given to a loaded signature, like the JSON numbers of a REST request, is converted to the
signature's dtype first. The graph has no size limit: memory grows with batch x height x width
(``python -m lsnet_tf.predict`` refuses slices above ``lsnet_tf.data.volumes.MAX_SLICE_PIXELS``
and caps each call's pixels).
"""
from __future__ import annotations

import os
import shutil

import tensorflow as tf

from lsnet_tf.data.pipeline import window

__all__ = ["MASK_THRESHOLD", "OUTPUT_NAMES", "ServingModule", "preprocess", "postprocess",
           "serving_module", "track_variables", "export", "serving_path"]

MASK_THRESHOLD = 0.5
OUTPUT_NAMES = ("probability", "mask", "keypoints", "scores", "boxes", "valid")
RANK_MESSAGE = ("hu must be a batch of slices (batch, height, width) of raw HU; send one slice "
                 "as a batch of one")


def preprocess(hu, size, window_center: float, window_width: float) -> tf.Tensor:
    """Raw HU ``(batch, H, W)`` -> the model's input ``(batch, S, S, 1)`` float32 in [0, 1].

    Bilinear resize to `size` ``(S, S)`` (half-pixel centres, no antialiasing: the identity when
    ``(H, W) == size``), then the HU window — the order of ``lsnet_tf.data.pipeline``.
    """
    image = tf.image.resize(tf.cast(hu, tf.float32)[..., tf.newaxis], size, method="bilinear")
    return window(image, window_center, window_width)


def postprocess(pred: dict, height, width, size) -> dict:
    """``LSNet.predict_masks`` outputs on the model grid -> the serving outputs on ``(H, W)``.

    Probabilities are resized bilinearly to ``(height, width)``; keypoints and boxes are scaled
    by ``(width / S_w, height / S_h)``. Returns the dict of ``OUTPUT_NAMES``.
    """
    prob = tf.image.resize(pred["mask"], tf.stack([height, width]), method="bilinear")
    sx = tf.cast(width, tf.float32) / float(size[1])
    sy = tf.cast(height, tf.float32) / float(size[0])
    return {
        "probability": prob,
        "mask": tf.cast(prob > MASK_THRESHOLD, tf.uint8),
        "keypoints": pred["keypoints"] * tf.stack([sx, sy]),
        "scores": pred["scores"],
        "boxes": pred["boxes"] * tf.stack([sx, sy, sx, sy]),
        "valid": pred["valid"],
    }


class ServingModule(tf.Module):
    """The serving graph around an `LSNet` (see the module docstring for inputs and outputs).

    The module does not track the Keras model as a dependency: saving it writes the serving
    functions and the variables they capture (`track_variables`), not the model's layers, whose
    attributes ``tf.saved_model.save`` would otherwise walk and whose default signatures it
    would trace, one per network (three quarters of an export's time before).
    """

    def __init__(self, model, window_center: float, window_width: float):
        super().__init__()
        if float(window_width) <= 0:
            raise ValueError(f"window_width must be > 0, received {window_width}")
        self._hold(model)
        self.window_center = float(window_center)
        self.window_width = float(window_width)
        self.size = tuple(int(s) for s in model.image_size)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _hold(self, model):
        self.model = model

    def run(self, hu) -> dict:
        """The serving computation on a float32 or int16 tensor of any rank (checked here)."""
        # The rank is checked by an Assert, and `hu` is reshaped to rank 3 in a way that is valid
        # for any rank ((N, 1, 1) when the rank is wrong): a static check such as ensure_shape
        # would fail first, at graph optimization, with a message about an internal tensor.
        given = tf.shape(hu)
        rank_ok = tf.equal(tf.size(given), 3)
        dims = tf.where(rank_ok, tf.concat([given, tf.ones([3], tf.int32)], 0)[:3],
                        tf.stack([tf.size(hu), 1, 1]))
        check = tf.debugging.Assert(rank_ok, [RANK_MESSAGE, "; received shape", given],
                                    summarize=16)
        with tf.control_dependencies([check]):
            hu = tf.reshape(tf.cast(hu, tf.float32), dims)
        shape = tf.shape(hu)
        with tf.control_dependencies([tf.debugging.assert_positive(
                shape[1:], message="hu slices must be at least 1 x 1 pixels (height, width)")]):
            hu = tf.identity(hu)
        batch, height, width = shape[0], shape[1], shape[2]
        # The networks cannot run on an empty batch: one blank slice stands in and its outputs
        # are sliced off again (no branch, so TF-TRT sees the networks in the main graph).
        padded = tf.concat([hu, tf.zeros(tf.stack([1, height, width]), hu.dtype)], 0)
        padded = padded[:tf.maximum(batch, 1)]
        pred = self.model.predict_masks(
            preprocess(padded, self.size, self.window_center, self.window_width))
        out = postprocess(pred, height, width, self.size)
        return {name: out[name][:batch] for name in OUTPUT_NAMES}

    def signatures(self) -> dict:
        """The concrete serving functions by signature name: ``serving_default`` (float32
        ``hu`` of any rank, checked when it runs) and ``serving_int16`` (int16 ``hu``, cast to
        float32 and passed to the first, so that both run one traced graph)."""
        serve = tf.function(self.run, input_signature=[
            tf.TensorSpec(None, tf.float32, name="hu")]).get_concrete_function()

        def serve_int16(hu):
            return serve(tf.cast(hu, tf.float32))

        int16 = tf.function(serve_int16, input_signature=[
            tf.TensorSpec(None, tf.int16, name="hu")]).get_concrete_function()
        return {"serving_default": serve, "serving_int16": int16}


def track_variables(module: tf.Module, functions) -> None:
    """Attach the variables the concrete `functions` capture to `module` as a tracked list.

    Keras 3 variables reached only through the Keras model attribute are restored by
    ``tf.saved_model.load`` but not by the session-based loader of TF Serving and
    ``saved_model_cli run`` ("Could not find variable ..."); a list of the captured
    ``tf.Variable``s on the module (what ``keras.export.ExportArchive`` does) fixes both.
    """
    seen, captured = set(), []
    for function in functions:
        for variable in function.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                captured.append(variable)
    module.serving_variables = captured


def serving_module(model, cfg) -> ServingModule:
    """The `ServingModule` of `model` with the HU window of `cfg.data`."""
    return ServingModule(model, cfg.data.window_center, cfg.data.window_width)


def serving_path(base: str, name: str, version: int) -> str:
    """``<base>/<name>/<version>``: where TF Serving looks for version `version` of `name`."""
    if not name or os.sep in name or name in (".", ".."):
        raise ValueError(f"model name must be a plain folder name, received {name!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, received {version!r}")
    return os.path.join(base, name, str(version))


def export(model, cfg, path: str) -> str:
    """Write the serving SavedModel of `model` to the folder `path`; returns `path`.

    `path` is the version folder (``<dir>/<name>/<version>``, see `serving_path`). The model is
    written to ``<path>.tmp`` and renamed into place, so TF Serving watching ``<dir>/<name>``
    never sees a half-written version; an existing `path` is replaced.
    """
    module = serving_module(model, cfg)
    signatures = module.signatures()
    track_variables(module, signatures.values())
    return write_atomically(
        path, cfg, lambda tmp: tf.saved_model.save(module, tmp, signatures=signatures))


def write_atomically(path: str, cfg, write) -> str:
    """Run ``write(staging)`` into ``<path>.tmp``, add the run's config under ``assets.extra/``,
    then rename it to `path` (replacing it), so a reader never sees a half-written version."""
    path = os.path.abspath(path)
    tmp = path.rstrip(os.sep) + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    write(tmp)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    cfg.save(os.path.join(tmp, "assets.extra", "config.yaml"))
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.rename(tmp, path)
    return path
