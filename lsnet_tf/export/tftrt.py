"""TF-TRT: the serving SavedModel with its network segments compiled to TensorRT engines.

``export`` writes the SavedModel of ``lsnet_tf.export.saved_model`` (signature
``serving_default``: float32 raw HU ``(batch, height, width)``, the same outputs) to a
temporary folder, converts it with ``tf.experimental.tensorrt.Converter`` at FP32 or FP16, builds
the engines on representative inputs (training slices through ``lsnet_tf.data.pipeline``, at
the model's input size, in batches of ``build_batch_size``), and saves the result in the TF
Serving layout. Ops TensorRT does not take (the connected components' ``While`` loop, the
segment reductions and gathers of the RR sampler and the paste) stay TensorFlow ops around the
engines. Dynamic shapes are on, so batches of other sizes build further engine profiles at run
time (``allow_build_at_runtime``). The int16 signature of the plain SavedModel is not carried over.

TF-TRT needs a CUDA GPU visible to TensorFlow and the TensorRT libraries (``libnvinfer``) of the
version TensorFlow was built against. `check_available` says which of the two is missing.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf

from lsnet_tf.export import saved_model, tflite

__all__ = ["PRECISIONS", "TensorRTUnavailableError", "missing_requirements", "check_available",
           "export"]

PRECISIONS = ("FP32", "FP16")


class TensorRTUnavailableError(RuntimeError):
    """TF-TRT cannot run on this machine; the message names what is missing."""


def _linked_tensorrt_version() -> str:
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
    except ImportError:
        return ""
    version = tuple(_pywrap_py_utils.get_linked_tensorrt_version())
    return ".".join(str(v) for v in version) if any(version) else ""


def missing_requirements() -> list[str]:
    """What TF-TRT lacks here, as sentences (empty when a GPU and TensorRT are both present)."""
    missing = []
    if not tf.config.list_physical_devices("GPU"):
        built = "with" if tf.test.is_built_with_cuda() else "without"
        missing.append(f"no GPU: TensorFlow sees no GPU device (TensorFlow {tf.__version__}, built "
                       f"{built} CUDA; check the NVIDIA driver and CUDA_VISIBLE_DEVICES)")
    linked = _linked_tensorrt_version()
    if not linked:
        missing.append("TensorRT support: this TensorFlow build is not linked against TensorRT")
    else:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils

        # is_tensorrt_enabled() tries to load libnvinfer; (asking for the loaded version when it
        # is absent aborts the process, so it is not asked).
        if not _pywrap_py_utils.is_tensorrt_enabled():
            missing.append(f"TensorRT libraries not found: libnvinfer {linked} (the version "
                           f"TensorFlow {tf.__version__} was built against) could not be loaded; "
                           "install TensorRT and put its libraries on LD_LIBRARY_PATH")
    return missing


def check_available() -> None:
    """Raise `TensorRTUnavailableError` naming what is missing, if anything."""
    missing = missing_requirements()
    if missing:
        raise TensorRTUnavailableError("TF-TRT cannot run on this machine: " + "; ".join(missing))


def _build_inputs(cfg, num_batches: int, batch_size: int) -> list[np.ndarray]:
    """Representative raw HU batches ``(batch_size, S, S)`` (see ``tflite.representative_hu``)."""
    slices = tflite.representative_hu(cfg, num_batches * batch_size)
    stacked = np.concatenate(slices, 0)
    return [stacked[i:i + batch_size] for i in range(0, len(stacked), batch_size)
            if len(stacked[i:i + batch_size]) == batch_size] or [stacked]


def _write_source(model, cfg, path: str) -> str:
    """The serving graph as a SavedModel with a rank-3 float32 signature (shapes TF-TRT reads)."""
    module = saved_model.serving_module(model, cfg)
    serve = tf.function(module.run, input_signature=[
        tf.TensorSpec([None, None, None], tf.float32, name="hu")]).get_concrete_function()
    saved_model.track_variables(module, [serve])
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def export(model, cfg, path: str, precision: str = "FP32", build_batches: int = 2,
           build_batch_size: int = 8, workspace_bytes: int = 1 << 30) -> str:
    """Convert the serving SavedModel of `model` with TF-TRT and save it to folder `path`.

    Args:
      model, cfg: the `LSNet` and its `Config`.
      path: output folder (the version folder of the TF Serving layout); replaced if present.
      precision: ``"FP32"`` or ``"FP16"``.
      build_batches, build_batch_size: representative batches the engines are built on.
      workspace_bytes: TensorRT's workspace limit per engine.

    Raises:
      ValueError: an unknown `precision`.
      TensorRTUnavailableError: no GPU, or the TensorRT libraries are not found.
    """
    precision = str(precision).upper()
    if precision not in PRECISIONS:
        raise ValueError(f"TF-TRT precision must be one of {', '.join(PRECISIONS)}, "
                         f"received {precision!r}")
    check_available()
    batches = _build_inputs(cfg, build_batches, build_batch_size)
    path = os.path.abspath(path)
    with tempfile.TemporaryDirectory(prefix="lsnet_tftrt_") as tmp:
        source = _write_source(model, cfg, os.path.join(tmp, "saved_model"))
        params = tf.experimental.tensorrt.ConversionParams(
            precision_mode=precision, max_workspace_size_bytes=int(workspace_bytes))
        converter = tf.experimental.tensorrt.Converter(
            input_saved_model_dir=source, input_saved_model_signature_key="serving_default",
            conversion_params=params, use_dynamic_shape=True,
            dynamic_shape_profile_strategy="Optimal")
        converter.convert()

        def input_fn():
            for hu in batches:
                yield (tf.constant(hu),)

        converter.build(input_fn=input_fn)
        return saved_model.write_atomically(path, cfg, converter.save)
