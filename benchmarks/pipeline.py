"""tf.data throughput against the training step that consumes it.

The training pipeline (``lsnet_tf.data.pipeline.make_dataset``: parse, resize, augment, encode
the heatmap and box targets, batch) runs on synthetic TFRecords written natively at the input
size. Rounds alternate pulling batches from the pipeline and one L-SNet training step on a fixed
batch (``configs/synthetic/lsnet_unet.yaml`` at the same size), so both are measured under the
same load (see `run` for how the pipeline is timed); the ratio is the time of a step over the time the pipeline takes for one batch.
"""
from __future__ import annotations

import time

from benchmarks import datasets, harness
from benchmarks.training import build, train_step

TITLE = ("tf.data training pipeline (parse, target encoding, augmentation) against the L-SNet "
         "training step.")
CONFIG = "configs/synthetic/lsnet_unet.yaml"
FULL = dict(image=512, batch=8, rounds=3, batches_per_round=16, overrides=())
QUICK = dict(image=64, batch=2, rounds=2, batches_per_round=4,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))
TARGET = 5.0


def run(quick: bool = False) -> dict:
    from lsnet_tf.data import pipeline, records

    size = QUICK if quick else FULL
    image, batch, per_round = size["image"], size["batch"], size["batches_per_round"]
    dataset = datasets.synthetic_dataset(image, patients=2, slices=4 if quick else 8)
    cfg, model = build(CONFIG, image, batch, dataset, size["overrides"])
    train_folds = records.split_folds(dataset, cfg.data.val_fold, "train")
    ds = pipeline.make_dataset(cfg.data, dataset, train_folds, training=True)
    step = train_step(model, next(iter(ds)))
    step()  # traced
    per_batch, steps = [], []
    for r in range(size["rounds"] + 1):  # round 0 warms up
        # A fresh iterator each round: one that sat idle during a step would have filled its
        # prefetch buffer, and pulling from a full buffer measures nothing.
        iterator = iter(ds)
        next(iterator)
        start = time.perf_counter()
        for _ in range(per_round):
            next(iterator)["image"].numpy()
        pipe_s = (time.perf_counter() - start) / per_round
        start = time.perf_counter()
        step()
        if r:
            per_batch.append(pipe_s)
            steps.append(time.perf_counter() - start)
        del iterator
    times = {"step": steps}
    r = harness.ratio(times["step"], per_batch)
    slices_per_s = round(batch / (harness.median_ms(per_batch) / 1000.0), 1)
    return {
        "title": TITLE,
        "settings": {"input": f"{image}x{image}", "batch": batch, "rounds": size["rounds"],
                     "batches per round": per_round, "augment": cfg.data.augment},
        "rows": [{"what": "pipeline, one batch", "ms": harness.median_ms(per_batch),
                  "slices per second": slices_per_s},
                 {"what": "L-SNet training step, one batch", "ms": harness.median_ms(times["step"]),
                  "slices per second": round(batch / (harness.median_ms(times["step"]) / 1000.0), 1)},
                 {"what": "step / pipeline", "ms": None, "slices per second": None, "ratio": r}],
        "targets": [harness.target(f"pipeline speed / training step speed, {image}x{image}",
                                   f">= {TARGET}", r, r >= TARGET)],
        "notes": ["Measured one after the other, not concurrently: in training the pipeline's "
                  "threads share the cores with the step.",
                  "Each round pulls one batch from a fresh iterator, then times the next "
                  f"{per_round} batches; the pipeline's prefetching may run a batch or two "
                  "ahead of the first timed pull, which flatters it by at most that share."],
    }
