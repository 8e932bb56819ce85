"""Inference latency per slice on the CPU: the SavedModel against TFLite float32, fp16 and int8.

L-SNet (``configs/synthetic/lsnet_unet.yaml``, untrained, threshold 0 so that each slice yields
one RoI as a slice with one target does) is exported with ``lsnet_tf.export.saved_model`` and
converted with ``lsnet_tf.export.tflite``; each is called on one raw-HU slice of the synthetic
dataset, side by side. The SavedModel's ``serving_default`` also resizes to and from the model
grid (the identity here: the slice is already at the model's size); the TFLite interpreter runs
with as many threads as there are usable cores.
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


def run(quick: bool = False) -> dict:
    import tensorflow as tf

    from lsnet_tf.export import saved_model, tflite

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
    variants = {"SavedModel": lambda: serve(hu=hu_tensor)["probability"].numpy()}
    sizes = {"SavedModel": sum(os.path.getsize(os.path.join(d, f))
                               for d, _, fs in os.walk(path) for f in fs)}
    differences = {"SavedModel": 0.0}
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for quantize in ("none", "fp16", "int8"):
        name = "TFLite " + {"none": "float32"}.get(quantize, quantize)
        content = tflite.convert(model, cfg, quantize, representative=lambda: slices)
        file = os.path.join(out, f"lsnet_{quantize}.tflite")
        with open(file, "wb") as f:
            f.write(content)
        runner = tflite.TFLiteModel(file, num_threads=threads)
        differences[name] = float(np.abs(runner(hu)["probability"][0] - reference).max())
        variants[name] = (lambda r: lambda: r(hu)["probability"])(runner)
        sizes[name] = len(content)
    times = harness.interleaved(variants, size["rounds"], warmup=1)
    rows = [{"format": name, "ms per slice": harness.median_ms(times[name]),
             "/ SavedModel": harness.ratio(times[name], times["SavedModel"]),
             "size MB": round(sizes[name] / 1e6, 2),
             "max abs. probability difference": float(f"{differences[name]:.2g}")}
            for name in variants]
    return {
        "title": TITLE,
        "settings": {"input": f"{image}x{image}", "batch": 1, "rounds": size["rounds"],
                     "TFLite threads": threads, "int8 calibration slices": size["calibration"],
                     "width": 4 if quick else 16},
        "rows": rows,
        "notes": ["Untrained weights: the probability differences show the conversion's "
                  "numerical effect, not accuracy.",
                  "int8 quantizes L-Net and S-Net only; windowing, connected components, the RR "
                  "sampler, the paste and the output heads stay float32 (lsnet_tf.export.tflite)."],
    }
