"""Inference latency per slice on the CPU: the SavedModel against TFLite float32, fp16 and int8.

L-SNet (``configs/synthetic/lsnet_unet.yaml``, untrained, threshold 0 so that each slice yields
one RoI as a slice with one target does) is exported with ``lsnet_tf.export.saved_model`` and
converted with ``lsnet_tf.export.tflite``; each is called on one raw-HU slice of the synthetic
dataset, side by side in one process. The SavedModel's ``serving_default`` also resizes to and
from the model grid (the identity here: the slice is already at the model's size). The TFLite
files run with LiteRT (``lsnet_tf.export.litert.TFLiteModel``, what ``python -m
lsnet_tf.predict`` uses) and as many threads as there are usable cores; the float32 file also
runs with TensorFlow's own ``tf.lite.Interpreter`` (TF 2.16), which leaves the convolutions to
its built-in kernels: XNNPACK refuses a graph with dynamic-sized tensors there (the RoI batch).

Each TFLite file's masks (probability > 0.5) are compared with the SavedModel's on the
calibration slices (DSC; 1 where both are empty).
"""
from __future__ import annotations

import os

import numpy as np

from benchmarks import datasets, harness
from benchmarks.training import build

TITLE = "Inference latency per slice: SavedModel against TFLite float32, fp16 and int8 (CPU)."
CONFIG = "configs/synthetic/lsnet_unet.yaml"
FULL = dict(image=512, rounds=7, calibration=4, overrides=())
QUICK = dict(image=64, rounds=2, calibration=2,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def run(quick: bool = False) -> dict:
    import ai_edge_litert
    import tensorflow as tf

    from lsnet_tf.export import litert, saved_model, tflite

    size = QUICK if quick else FULL
    image = size["image"]
    dataset = datasets.synthetic_dataset(image, patients=2, slices=4 if quick else 8)
    cfg, model = build(CONFIG, image, 1, dataset, size["overrides"])
    model.threshold = 0.0
    out = harness.scratch_dir("export", f"{image}{'-quick' if quick else ''}")
    slices = tflite.representative_hu(cfg, size["calibration"])
    hu = slices[0]

    path = saved_model.export(model, cfg, os.path.join(out, "saved_model", "1"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    hu_tensor = tf.constant(hu)
    reference = serve(hu=hu_tensor)["probability"].numpy()[0]
    masks = [serve(hu=tf.constant(s))["probability"].numpy()[0] > 0.5 for s in slices]
    tensorflow = f"TensorFlow {tf.__version__}"
    litert_name = f"LiteRT {getattr(ai_edge_litert, '__version__', '')}".strip()
    variants = {"SavedModel": lambda: serve(hu=hu_tensor)["probability"].numpy()}
    runtimes = {"SavedModel": tensorflow}
    sizes = {"SavedModel": sum(os.path.getsize(os.path.join(d, f))
                               for d, _, fs in os.walk(path) for f in fs)}
    differences = {"SavedModel": 0.0}
    agreement = {"SavedModel": 1.0}
    threads = litert.usable_cores()
    runs = [("none", "litert"), ("fp16", "litert"), ("int8", "litert"), ("none", "tensorflow")]
    files = {}
    for quantize, runtime in runs:
        name = "TFLite " + {"none": "float32"}.get(quantize, quantize)
        if runtime == "tensorflow":
            name += " (tf.lite.Interpreter)"
        if quantize not in files:
            content = tflite.convert(model, cfg, quantize, representative=lambda: slices)
            files[quantize] = os.path.join(out, f"lsnet_{quantize}.tflite")
            with open(files[quantize], "wb") as f:
                f.write(content)
        runner = tflite.TFLiteModel(files[quantize], num_threads=threads, runtime=runtime)
        differences[name] = float(np.abs(runner(hu)["probability"][0] - reference).max())
        agreement[name] = min(dsc(runner(s)["probability"][0] > 0.5, m)
                              for s, m in zip(slices, masks))
        variants[name] = (lambda r: lambda: r(hu)["probability"])(runner)
        runtimes[name] = tensorflow if runtime == "tensorflow" else litert_name
        sizes[name] = os.path.getsize(files[quantize])
    times = harness.interleaved(variants, size["rounds"], warmup=1)
    rows = [{"format": name, "runtime": runtimes[name],
             "ms per slice": harness.median_ms(times[name]),
             "/ SavedModel": harness.ratio(times[name], times["SavedModel"]),
             "size MB": round(sizes[name] / 1e6, 2),
             "max abs. probability difference": float(f"{differences[name]:.2g}"),
             "mask DSC (lowest slice)": round(agreement[name], 4)}
            for name in variants]
    return {
        "title": TITLE,
        "settings": {"input": f"{image}x{image}", "batch": 1, "rounds": size["rounds"],
                     "TFLite threads": threads, "int8 calibration slices": size["calibration"],
                     "width": 4 if quick else 16},
        "rows": rows,
        "notes": ["Untrained weights: the probability differences and mask DSCs (against the "
                  "SavedModel's masks, lowest over the calibration slices) show the conversion's "
                  "numerical effect, not accuracy.",
                  "int8 quantizes L-Net and S-Net only; windowing, connected components, the RR "
                  "sampler, the paste and the output heads stay float32 (lsnet_tf.export.tflite).",
                  "TensorFlow's tf.lite.Interpreter (TF 2.16) runs the float32 file without "
                  "XNNPACK (the graph has dynamic-sized tensors: the RoI batch); LiteRT hands the "
                  "networks to XNNPACK."],
    }
