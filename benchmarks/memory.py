"""Peak memory (RSS) of training, and whether it stays flat when the dataset grows 10x.

Each measurement is a fresh subprocess (``python -m benchmarks.memory --child ...``) that builds
L-SNet (``configs/synthetic/lsnet_unet.yaml``) and runs ``fit`` for a few steps on the real
input pipeline; its peak resident set size is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
The larger dataset repeats every shard of the smaller one 10 times (more patients, the same
slices), so only the dataset's size changes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import datasets, harness

TITLE = "Peak memory (RSS) of training, and its change when the dataset grows 10x."
CONFIG = "configs/synthetic/lsnet_unet.yaml"
FULL = dict(image=512, batch=8, steps=4, slices=8, overrides=())
QUICK = dict(image=64, batch=2, steps=2, slices=4,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))
GROWTH = 10
TOLERANCE = 0.10


def child(args) -> dict:
    """Train `args.steps` steps and return the peak RSS (run in a fresh process)."""
    import resource

    from lsnet_tf.data import pipeline, records
    from lsnet_tf.models.build import build_model, compile_model

    cfg = datasets.config(datasets.repo_path(CONFIG), args.image, args.dataset,
                          f"data.batch_size={args.batch}", *args.set)
    train_folds = records.split_folds(args.dataset, cfg.data.val_fold, "train")
    ds = pipeline.make_dataset(cfg.data, args.dataset, train_folds, training=True)
    model = build_model(cfg)
    compile_model(model, cfg, args.steps)
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    return {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "training_slices": pipeline.count_slices(args.dataset, train_folds)}


def measure(dataset: str, size: dict) -> dict:
    root = datasets.repo_path()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "benchmarks.memory", "--child", "--dataset", dataset,
               "--image", str(size["image"]), "--batch", str(size["batch"]),
               "--steps", str(size["steps"])] + [a for o in size["overrides"] for a in ("--set", o)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    base = datasets.synthetic_dataset(size["image"], patients=2, slices=size["slices"])
    grown = datasets.replicated(base, GROWTH)
    small, large = measure(base, size), measure(grown, size)
    change = round(large["peak_rss_mib"] / small["peak_rss_mib"] - 1.0, 3)
    return {
        "title": TITLE,
        "settings": {"input": f"{size['image']}x{size['image']}", "batch": size["batch"],
                     "fit steps": size["steps"], "model": "L-SNet (U-Net), width %d"
                     % (4 if quick else 16)},
        "rows": [{"training slices": small["training_slices"], "peak RSS MiB": small["peak_rss_mib"]},
                 {"training slices": large["training_slices"], "peak RSS MiB": large["peak_rss_mib"],
                  "change": change}],
        "targets": [harness.target(f"peak RSS change with a {GROWTH}x dataset",
                                   f"within +-{TOLERANCE:.0%}", change, abs(change) <= TOLERANCE)],
        "notes": ["The pipeline streams shards; what grows with the dataset is the shuffle "
                  "buffer (data.shuffle_buffer parsed slices, 256 by default) until the "
                  "dataset exceeds it."],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--image", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--set", action="append", default=[])
    print(json.dumps(child(parser.parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
