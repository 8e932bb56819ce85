"""Run a ``.tflite`` file of ``lsnet_tf.export.tflite`` without TensorFlow: LiteRT and numpy.

A device that runs the ``.tflite`` file needs LiteRT (the ``ai-edge-litert`` package), numpy and
the readers' nibabel/pydicom, not TensorFlow: this module imports none of TensorFlow or Keras,
and ``python -m lsnet_tf.predict --model model.tflite`` runs through it. (Exporting the file
still needs TensorFlow: ``python -m lsnet_tf.export --format tflite``.)

- `TFLiteModel`: the file's ``serving_default`` signature, one ``(1, S, S)`` raw-HU slice per
  call, through ``ai_edge_litert.interpreter.Interpreter`` on every usable core (TensorFlow's
  ``tf.lite.Interpreter`` only where ai-edge-litert is not installed: it runs the networks
  without XNNPACK here, about twice as slow).
- `read_metadata`: the file's ``lsnet_tf`` metadata (image size, HU window, quantization, ...).
- `TFLitePredictor`: ``predict(hu)`` on ``(n, H, W)`` raw HU at any size, as
  ``python -m lsnet_tf.predict`` uses it: each slice is resized to the model's input size and the
  outputs back to ``(H, W)`` exactly as the SavedModel graph does
  (``lsnet_tf.export.saved_model.preprocess``/``postprocess``), with numpy in place of
  ``tf.image.resize``: `resize_bilinear` equals ``tf.image.resize(method="bilinear")`` (half-pixel
  centres, no antialiasing) bit for bit, and `postprocess` equals ``saved_model.postprocess``.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from lsnet_tf.utils.console import native_stderr

__all__ = ["MASK_THRESHOLD", "OUTPUT_NAMES", "METADATA_NAME", "RUNTIMES", "LiteRTMissingError",
           "usable_cores", "read_metadata", "resize_bilinear", "postprocess", "TFLiteModel",
           "TFLitePredictor"]

# The same values as lsnet_tf.export.saved_model's (which imports TensorFlow); tests check it.
MASK_THRESHOLD = 0.5
OUTPUT_NAMES = ("probability", "mask", "keypoints", "scores", "boxes", "valid")
METADATA_NAME = "lsnet_tf"
INSTALL_HINT = "pip install ai-edge-litert"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


class LiteRTMissingError(ImportError):
    """The interpreter asked for is not installed: LiteRT (ai-edge-litert), or for
    ``runtime="auto"`` neither LiteRT nor TensorFlow."""


RUNTIMES = ("auto", "litert", "tensorflow")


def _interpreter_class(runtime: str = "auto"):
    """``(Interpreter class, runtime name)``: LiteRT's, else (or for ``"tensorflow"``)
    TensorFlow's ``tf.lite.Interpreter``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, received {runtime!r}")
    litert_error = None
    if runtime in ("auto", "litert"):
        try:
            from ai_edge_litert.interpreter import Interpreter
            return Interpreter, "litert"
        except ImportError as e:
            if runtime == "litert":
                raise LiteRTMissingError(f"LiteRT is not installed ({INSTALL_HINT}): {e}") from e
            litert_error = e
    try:
        import tensorflow as tf
    except ImportError as e:
        if runtime == "tensorflow":
            raise LiteRTMissingError(f"runtime 'tensorflow' needs TensorFlow, which is not "
                                     f"installed ({e})") from e
        raise LiteRTMissingError(f"running a .tflite file needs LiteRT ({INSTALL_HINT}) or "
                                 f"TensorFlow; neither is installed ({litert_error})") from e
    return tf.lite.Interpreter, "tensorflow"


def _schema():
    """The TFLite flatbuffer schema module: LiteRT's copy, else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def read_metadata(model) -> dict:
    """The ``lsnet_tf`` metadata of a ``.tflite`` file (path) or its bytes; ``{}`` if absent."""
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
    else:
        with open(model, "rb") as f:
            content = f.read()
    schema = _schema()
    root = schema.Model.GetRootAsModel(content, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            data = root.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return {}


# ----------------------------------------------------------------------------------- resizing
def _weights(out_size: int, in_size: int):
    """Source rows (or columns) and weights of a half-pixel bilinear resize, in float32 with
    TensorFlow's order of operations (``ResizeBilinear``, ``half_pixel_centers=True``)."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = ((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale
                - np.float32(0.5))
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(images: np.ndarray, size) -> np.ndarray:
    """``(n, H, W, C)`` -> ``(n, height, width, C)`` float32, `size` ``(height, width)``.

    Equals ``tf.image.resize(images, size, method="bilinear")``: half-pixel centres, no
    antialiasing when shrinking, the edge pixels repeated outside the image; the identity when
    the size does not change.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear takes (n, H, W, C) images, received shape "
                         f"{images.shape}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1 or min(images.shape[1:3]) < 1:
        raise ValueError(f"cannot resize images of shape {images.shape} to {(height, width)}: "
                         "sizes must be at least 1 x 1")
    y0, y1, fy = _weights(height, images.shape[1])
    x0, x1, fx = _weights(width, images.shape[2])
    fx = fx[None, None, :, None]
    fy = fy[None, :, None, None]
    top, bottom = images[:, y0], images[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * fx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * fx
    return top + (bottom - top) * fy


def postprocess(pred: dict, height: int, width: int, size) -> dict:
    """Model-grid outputs -> the outputs on ``(height, width)``, as ``saved_model.postprocess``.

    `pred` holds ``mask`` (the probability, ``(n, S, S, C)``), ``keypoints``, ``scores``,
    ``boxes`` and ``valid`` on the ``size`` ``(S, S)`` grid. The probability is resized
    bilinearly (`resize_bilinear`) and thresholded (``> MASK_THRESHOLD``); keypoints and boxes are
    scaled by ``(width / S_w, height / S_h)`` in float32. Returns the dict of ``OUTPUT_NAMES``.
    """
    prob = resize_bilinear(pred["mask"], (height, width))
    sx = np.float32(width) / np.float32(size[1])
    sy = np.float32(height) / np.float32(size[0])
    return {
        "probability": prob,
        "mask": (prob > MASK_THRESHOLD).astype(np.uint8),
        "keypoints": (np.asarray(pred["keypoints"], np.float32)
                      * np.array([sx, sy], np.float32)),
        "scores": np.asarray(pred["scores"], np.float32),
        "boxes": np.asarray(pred["boxes"], np.float32) * np.array([sx, sy, sx, sy], np.float32),
        "valid": np.asarray(pred["valid"], bool),
    }


# ----------------------------------------------------------------------------------- models
class TFLiteModel:
    """A ``.tflite`` file of ``lsnet_tf.export.tflite``, run with LiteRT.

    ``model(hu)`` takes ``(1, S, S)`` raw HU (float32) and returns the dict of output arrays
    (``OUTPUT_NAMES``) on the S x S grid. ``image_size`` is ``(S, S)``; ``metadata`` the file's
    ``lsnet_tf`` metadata; ``interpreter`` the interpreter and ``runtime`` which one runs:
    ``"litert"``, or ``"tensorflow"`` (``tf.lite.Interpreter``) where ai-edge-litert is not
    installed or when `runtime` asks for it. ``num_threads`` threads run the kernels: every
    usable core when `num_threads` is None (the interpreter's own default is one thread);
    `interpreter_options` go to the interpreter (e.g. ``experimental_op_resolver_type``).

    Use LiteRT: TensorFlow 2.16's interpreter does not hand the convolutions to XNNPACK
    (the graph has dynamic-sized tensors: the RoIs of a slice), and runs float32 files about
    twice as slow (``python -m benchmarks export``).

    An int8 file runs on LiteRT with ``experimental_disable_delegate_clustering=True`` unless
    `interpreter_options` say otherwise. With LiteRT 2.3.0's defaults, where XNNPACK takes part
    of an int8 graph of dynamic-sized tensors, an int8 interpreter's masks came out wrong (DSC
    0.056 and 0 against the right ones) once a second interpreter in the process had been
    created after it or had run before it. Without delegate clustering (which runs the delegated
    parts in an order of its own; 52 delegated partitions at 512 x 512 instead of 15), as with
    every tensor kept in its own buffer (``experimental_preserve_all_tensors=True``: 290
    partitions, some 200 MB more) or without XNNPACK, the masks are right in every order tested
    (``tests/test_export.py`` checks the orders in a fresh process, and fails under the
    defaults). That points at a buffer planned for the graph's own order being reused before its
    last reader runs in the clustered order. Float32 and fp16 files were not affected and keep
    the defaults.
    """

    def __init__(self, path: str, num_threads: int | None = None, runtime: str = "auto",
                 **interpreter_options):
        self.path = str(path)
        interpreter, self.runtime = _interpreter_class(runtime)
        self.num_threads = usable_cores() if num_threads is None else int(num_threads)
        try:
            self.metadata = read_metadata(self.path)
        except Exception:  # not a TFLite file: the interpreter below says so
            self.metadata = {}
        if self.runtime == "litert" and self.metadata.get("quantize") == "int8":
            interpreter_options.setdefault("experimental_disable_delegate_clustering", True)
        try:
            with warnings.catch_warnings():  # LiteRT calls preserving all tensors a debug option
                warnings.filterwarnings("ignore", "Warning: Enabling `experimental_preserve_all")
                self.interpreter = interpreter(model_path=self.path, num_threads=self.num_threads,
                                               **interpreter_options)
        except ValueError as e:
            raise ValueError(f"{self.path}: not a readable TFLite model ({e})") from e
        with native_stderr():  # LiteRT announces its XNNPACK delegate here
            self.interpreter.allocate_tensors()
        signatures = self.interpreter.get_signature_list()
        if "serving_default" not in signatures or signatures["serving_default"]["inputs"] != ["hu"]:
            raise ValueError(f"{self.path}: not an lsnet_tf TFLite model (signatures "
                             f"{signatures}; expected serving_default with input 'hu')")
        self.runner = self.interpreter.get_signature_runner("serving_default")
        shape = tuple(int(s) for s in self.runner.get_input_details()["hu"]["shape"])
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"{self.path}: input 'hu' has shape {shape}, expected (1, S, S)")
        self.image_size = shape[1:]

    def __call__(self, hu) -> dict:
        hu = np.asarray(hu, np.float32)
        if hu.shape != (1, *self.image_size):
            raise ValueError(f"{self.path} takes hu of shape {(1, *self.image_size)}, "
                             f"received {hu.shape}")
        out = self.runner(hu=hu)
        return {name: out[name] for name in OUTPUT_NAMES}


class TFLitePredictor:
    """``predict(hu)``: ``(n, H, W)`` raw HU -> dict of numpy outputs on the input grid.

    The interface of ``lsnet_tf.inference.predictors`` for a ``.tflite`` file: one slice per
    invocation, resized to the model's input size and the outputs back (`resize_bilinear`,
    `postprocess`), so the outputs are those of the SavedModel graph. ``window`` is the file's HU
    window ``(center, width)`` (None without metadata); `batch_size` is how many slices
    ``predict_volume`` hands over per call; `num_threads` as for `TFLiteModel` (every usable
    core by default).
    """

    format = "tflite"

    def __init__(self, path: str, batch_size: int = 8, num_threads: int | None = None):
        self.path = path
        self.batch_size = int(batch_size)
        self.model = TFLiteModel(path, num_threads=num_threads)
        meta = self.model.metadata
        self.window = ((float(meta["window_center"]), float(meta["window_width"]))
                       if "window_center" in meta else None)

    def predict(self, hu: np.ndarray) -> dict:
        hu = np.asarray(hu, np.float32)
        if hu.ndim != 3:
            raise ValueError(f"{self.path}: predict takes (slices, H, W) raw HU, received shape "
                             f"{hu.shape}")
        size = self.model.image_size
        height, width = hu.shape[1], hu.shape[2]
        if hu.shape[0] == 0:  # as the SavedModel: an empty batch gives empty outputs
            details = self.model.runner.get_output_details()
            shapes = {n: (0, *details[n]["shape"][1:]) for n in OUTPUT_NAMES}
            for n in ("probability", "mask"):
                shapes[n] = (0, height, width, int(details[n]["shape"][-1]))
            return {n: np.zeros(shapes[n], details[n]["dtype"]) for n in OUTPUT_NAMES}
        outs = []
        for k in range(hu.shape[0]):
            resized = resize_bilinear(hu[k][None, :, :, None], size)[..., 0]
            raw = self.model(resized)
            pred = {"mask": raw["probability"], "keypoints": raw["keypoints"],
                    "scores": raw["scores"], "boxes": raw["boxes"], "valid": raw["valid"]}
            outs.append(postprocess(pred, height, width, size))
        return {n: np.concatenate([o[n] for o in outs], 0) for n in OUTPUT_NAMES}
