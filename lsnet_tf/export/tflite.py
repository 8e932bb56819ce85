"""Convert L-SNet to TensorFlow Lite: the whole inference path in one ``.tflite`` file.

The model holds L-Net, the in-graph connected components, RoI recalibration (affine grid and
bilinear sampler), S-Net and the inverse paste, all as TFLite builtin ops (``WHILE``,
``UNSORTED_SEGMENT_MAX``, ``GATHER``, ``TOPK_V2``, ...): no ``SELECT_TF_OPS`` unless asked
for with ``allow_select_tf_ops`` (``--allow-select-tf-ops``), which then needs the Flex delegate
at run time.

Signature ``serving_default`` (fixed shapes; ``S = data.image_size``, ``K = data.max_boxes``,
``C = model.num_classes``):

===========  ==================  ===========================================================
name         shape / dtype       meaning
===========  ==================  ===========================================================
hu (input)   (1, S, S) f32       one slice of raw HU already resized to S x S; the HU window
                                 (``data.window_center``/``window_width``) is applied inside
probability  (1, S, S, C) f32    mask probability
mask         (1, S, S, C) u8     1 where probability > 0.5
keypoints    (1, K, 2) f32       (x, y) pixels of the S x S grid
scores       (1, K) f32          heatmap value at each keypoint (0 where invalid)
boxes        (1, K, 4) f32       xyxy pixels of the S x S grid (zeros where invalid)
valid        (1, K) bool         which of the K entries are detections
===========  ==================  ===========================================================

One slice per invocation (batch 1); resizing a slice to S x S (bilinear, as
``saved_model.preprocess``) and the outputs back (``saved_model.postprocess``) is the caller's
job — ``python -m lsnet_tf.predict`` does both, so a ``.tflite`` file and the SavedModel give
the same outputs on the input grid. Raw HU rather than windowed input keeps the file
self-contained and, for int8, leaves the windowing in float32 (see below).

Quantization (``quantize``):

- ``"none"``: float32.
- ``"fp16"``: float16 weights, dequantized to float32 at load; float32 arithmetic.
- ``"int8"``: post-training integer quantization of L-Net and S-Net (int8 weights, per
  channel, and int8 activations), calibrated on a representative set of training slices drawn
  through ``lsnet_tf.data.pipeline``. Everything outside the two networks — windowing,
  thresholding, connected components, box decoding, the RR sampler and the paste — stays
  float32: an int8 connected-component label or sampling coordinate would be wrong, not just
  less precise. The networks' output heads (the last conv of each output and its activation,
  `head_layers`) stay float32 too: an int8 heatmap has 256 levels, and ties between quantized
  peak values move keypoints. This selective quantization denylists the output tensors of the
  float ops through ``tf.lite.experimental.QuantizationDebugger``.

The Keras model's variables are frozen into constants before conversion
(``convert_variables_to_constants_v2`` with control flow kept as ``While``): converting Keras 3
variables directly fails in TF 2.16 (``error: missing attribute 'value'``).

The file carries its settings as TFLite metadata named ``lsnet_tf`` (JSON: image size, window,
quantization, max RoIs, classes), read back by `read_metadata`.

Running the file needs no TensorFlow: `TFLiteModel` and `read_metadata` live in
``lsnet_tf.export.litert`` (LiteRT, ``ai-edge-litert``, and numpy) and are re-exported here.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from lsnet_tf.utils.console import native_stderr
from lsnet_tf.data import pipeline, records
from lsnet_tf.data.pipeline import window
# The runtime side (TensorFlow-free) lives in lsnet_tf.export.litert; re-exported here.
from lsnet_tf.export.litert import METADATA_NAME, TFLiteModel, read_metadata
from lsnet_tf.export.saved_model import MASK_THRESHOLD
from lsnet_tf.utils.files import write_bytes
from lsnet_tf.models.build import model_networks

__all__ = ["QUANTIZE_MODES", "METADATA_NAME", "TFLiteConversionError", "convert", "export",
           "representative_hu", "head_layers", "read_metadata", "TFLiteModel"]

QUANTIZE_MODES = ("none", "fp16", "int8")
# Tensors of a network are named after its Keras model ("lnet/...", "lnet_1/...").
_NETWORK_TENSOR = r"^(?:{names})(?:_\d+)?/"


class TFLiteConversionError(RuntimeError):
    """The model could not be converted with the requested settings; the message says why."""


def _inference_function(model, cfg):
    """A variable-free concrete function: ``hu (1, S, S)`` -> the outputs of the docstring."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    size = tuple(int(s) for s in model.image_size)
    center, width = float(cfg.data.window_center), float(cfg.data.window_width)
    spec = tf.TensorSpec([1, *size], tf.float32, name="hu")

    @tf.function(input_signature=[spec])
    def infer(hu):
        pred = model.predict_masks(window(hu[..., tf.newaxis], center, width))
        prob = pred["mask"]
        return {"probability": prob, "mask": tf.cast(prob > MASK_THRESHOLD, tf.uint8),
                "keypoints": pred["keypoints"], "scores": pred["scores"],
                "boxes": pred["boxes"], "valid": pred["valid"]}

    concrete = infer.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)

    @tf.function(input_signature=[spec])
    def serve(hu):
        # The frozen function returns a flat list; restore the output names.
        return tf.nest.pack_sequence_as(concrete.structured_outputs, frozen(hu))

    return serve.get_concrete_function()


def representative_hu(cfg, num_slices: int = 64) -> list[np.ndarray]:
    """Calibration inputs for int8: `num_slices` training slices as ``(1, S, S)`` raw HU.

    Slices come from the training folds of ``cfg.data`` (the prepared dataset, or the synthetic
    one) through ``pipeline.make_dataset`` (resized, no augmentation). The pipeline yields
    windowed images; they are mapped back through the window, which is exact for what the model
    sees: HU clipped by the window come back at the window's edge and window to the same value.
    """
    if isinstance(num_slices, bool) or not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"num_slices must be a positive integer, received {num_slices!r}")
    dataset_dir = pipeline.resolve_dataset(cfg.data)
    train_folds = records.split_folds(dataset_dir, cfg.data.val_fold, "train")
    ds = pipeline.make_dataset(cfg.data, dataset_dir, train_folds, training=False, batch_size=1)
    low = cfg.data.window_center - cfg.data.window_width / 2.0
    out = [(batch["image"][..., 0].numpy() * cfg.data.window_width + low).astype(np.float32)
           for batch in ds.take(num_slices)]
    if not out:
        raise ValueError(f"no training slices found under {dataset_dir} for calibration")
    return out


def head_layers(network) -> list[str]:
    """Names of the layers that produce a Keras network's outputs: each output's layer, and back
    through Activation/Rescaling layers to the first other layer (the head's last conv)."""
    import keras

    names = []
    for output in keras.tree.flatten(network.outputs):
        layer = output._keras_history.operation
        while True:
            if layer.name not in names:
                names.append(layer.name)
            if not isinstance(layer, (keras.layers.Activation, keras.layers.Rescaling)):
                break
            layer = layer.input._keras_history.operation
    return names


def _denylist(calibrated: bytes, networks) -> list[str]:
    """Output tensor names of every op, in every subgraph, to keep in float32: all but the
    networks' ops, and the networks' output heads (see the module docstring)."""
    from tensorflow.lite.tools import flatbuffer_utils

    def prefix(names):
        return "|".join(re.escape(n) for n in names)

    network = re.compile(_NETWORK_TENSOR.format(names=prefix(n.name for n in networks)))
    heads = [re.compile(_NETWORK_TENSOR.format(names=re.escape(n.name))
                        + rf"(?:{prefix(head_layers(n))})(?:_\d+)?/") for n in networks]
    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    names = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            outputs = [subgraph.tensors[i].name.decode() for i in op.outputs if i >= 0]
            quantized = all(network.match(n) and not any(h.match(n) for h in heads)
                            for n in outputs)
            if not quantized:
                names.extend(outputs)
    return names


def _add_metadata(content: bytes, metadata: dict) -> bytes:
    """`content` with a TFLite metadata entry `METADATA_NAME` holding `metadata` as JSON."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(content)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def convert(model, cfg, quantize: str = "none",
            representative: Callable[[], Iterable[np.ndarray]] | None = None,
            allow_select_tf_ops: bool = False) -> bytes:
    """The ``.tflite`` bytes of `model` (an `LSNet`) with the window of `cfg.data`.

    Args:
      model: the Keras `LSNet` (or a baseline of ``build_model``: same ``predict_masks``).
      cfg: its `Config` (window, image size).
      quantize: ``"none"``, ``"fp16"`` or ``"int8"`` (see the module docstring).
      representative: for int8, a function returning an iterable of ``(1, S, S)`` float32 raw
        HU slices (e.g. ``lambda: representative_hu(cfg)``); not used otherwise.
      allow_select_tf_ops: also allow TensorFlow ops through the Flex delegate.

    Raises:
      ValueError: an unknown `quantize`, or int8 without `representative`.
      TFLiteConversionError: the converter failed (e.g. an op outside the builtins).
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, "
                         f"received {quantize!r}")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantization needs a representative dataset (calibration slices)")
    function = _inference_function(model, cfg)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if allow_select_tf_ops else [])
    if quantize == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    try:
        with native_stderr():  # the converter's absl start-up lines
            if quantize == "int8":
                content = _convert_int8(converter, representative,
                                        list(model_networks(model).values()))
            else:
                content = converter.convert()
    except Exception as e:  # ConverterError, or an error raised while calibrating
        text = str(e)
        hint = ""
        if "flex op" in text or "ERROR_NEEDS_FLEX_OPS" in text:
            hint = (" Some ops are not TFLite builtins; --allow-select-tf-ops (SELECT_TF_OPS) "
                    "converts them as TensorFlow ops, which then need the Flex delegate.")
        raise TFLiteConversionError(f"TFLite conversion ({quantize}) failed: "
                                    f"{type(e).__name__}: {text.strip()[-2000:]}{hint}") from e
    return _add_metadata(content, {
        "format": "lsnet_tf",
        "input": "hu",
        "image_size": [int(s) for s in model.image_size],
        "window_center": float(cfg.data.window_center),
        "window_width": float(cfg.data.window_width),
        "max_rois": int(model.max_rois),
        "num_classes": int(cfg.model.num_classes),
        "quantize": quantize,
        "select_tf_ops": bool(allow_select_tf_ops),
    })


def _convert_int8(converter, representative, networks) -> bytes:
    """Calibrate, then quantize the networks only (see the module docstring)."""
    def dataset():
        for hu in representative():
            yield [np.asarray(hu, np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions())
    denylist = _denylist(debugger.calibrated_model, networks)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    return debugger.get_nondebug_quantized_model()


def export(model, cfg, path: str, quantize: str = "none", calibration_slices: int = 64,
           allow_select_tf_ops: bool = False) -> str:
    """Convert (see `convert`) and write the ``.tflite`` file `path`; returns `path`.

    For int8 the calibration set is `representative_hu(cfg, calibration_slices)`.
    """
    if not str(path).endswith(".tflite"):
        raise ValueError(f"a TFLite file name ends in .tflite, received {path!r}")
    representative = None
    if quantize == "int8":
        slices = representative_hu(cfg, calibration_slices)
        representative = lambda: slices  # noqa: E731
    content = convert(model, cfg, quantize, representative, allow_select_tf_ops)
    return write_bytes(path, content)
