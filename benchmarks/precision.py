"""Mixed precision and XLA as training options (``train.mixed_precision``, ``train.jit_compile``).

L-SNet (``configs/synthetic/lsnet_unet.yaml``) is built three times, float32 and with each option,
and their training steps are timed side by side on one fixed pipeline batch. Only the
CPU is measured here: float16 compute pays off on GPUs with float16 units, and CPUs without them
emulate it, so these CPU figures say nothing about a GPU.
"""
from __future__ import annotations

import math

from benchmarks import datasets, harness
from benchmarks.training import build, train_step

TITLE = "Mixed precision and XLA as training options: L-SNet training step on the CPU."
CONFIG = "configs/synthetic/lsnet_unet.yaml"
VARIANTS = {
    "float32": (),
    "jit_compile": ("train.jit_compile=true",),
    "mixed_float16": ("train.mixed_precision=true",),
}
FULL = dict(image=128, batch=8, rounds=3, overrides=())
QUICK = dict(image=64, batch=2, rounds=2,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))


def run(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    dataset = datasets.synthetic_dataset(size["image"], patients=2, slices=4 if quick else 8)
    models, data = {}, None
    for name, extra in VARIANTS.items():
        cfg, models[name] = build(CONFIG, size["image"], size["batch"], dataset,
                                  size["overrides"], extra)
        data = data if data is not None else datasets.first_batch(cfg)
    steps = {name: train_step(m, data) for name, m in models.items()}
    losses = {name: step() for name, step in steps.items()}
    times = harness.interleaved(steps, size["rounds"], warmup=0)
    rows = [{"variant": name, "policy": models[name].lnet.dtype_policy.name,
             "jit_compile": bool(models[name].jit_compile),
             "train step ms": harness.median_ms(times[name]),
             "/ float32": harness.ratio(times[name], times["float32"]),
             "first loss finite": math.isfinite(losses[name])} for name in VARIANTS]
    return {
        "title": TITLE,
        "settings": {"input": f"{size['image']}x{size['image']}", "batch": size["batch"],
                     "rounds": size["rounds"], "width": 4 if quick else 16},
        "rows": rows,
        "notes": ["CPU only; GPU figures are not measured. float16 arithmetic is emulated on "
                  "this CPU, so mixed_float16 is expected to be slower here.",
                  "mixed_float16 with jit_compile is refused by the config: XLA in TensorFlow "
                  "2.16 fails to compile the float16 ReLU gradients ('Seen floating point types "
                  "of different precisions ... ReluGrad').",
                  "mixed_float16 runs without loss scaling (the models' train steps apply "
                  "their own gradients); the output heads and the losses are float32."],
    }
