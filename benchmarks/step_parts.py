"""Where L-SNet's compiled training step spends its time: ``python -m benchmarks.step_parts``.

Builds L-SNet (``configs/synthetic/lsnet_unet.yaml``, width 16) at ``--image`` pixels, batch
``--batch``, on one fixed pipeline batch as ``benchmarks.training`` does, and

- times the step (``model.train_function``, what ``fit`` runs) interleaved with its two
  networks' forward + backward (of the sum of their outputs, every weight's gradient, as
  ``benchmarks.training.parts``; and, for comparison, with only the first weight's gradient
  returned, which lets TensorFlow prune the others, as ``parts`` measured before), ``--rounds``
  rounds (``--c2f``: the coarse-to-fine U-Net's step too), and prints the medians and ratios;
- with ``--trace DIR``, records a TensorFlow profiler trace of ``--trace-steps`` steps and sums
  the time of every TensorFlow op executed in them by the part of the step it belongs to (the
  top name scope of the op, forward or backward; see ``PARTS``), and prints that table and the
  most expensive ops of the parts outside the networks.

Op times are summed over the ops the executor ran (on 2 cores two ops can overlap, and the
profiler adds its own cost to every op), so the table gives shares of the op time, not of the
wall time; the wall time of the step is timed apart, without the profiler.

``--read XPLANE`` prints the table of a recorded trace; ``--targets ROUNDS`` only times the RoI
target mask's sampler, the general path against ``sample_scale_translate``.
``--json PATH`` writes everything printed as JSON (used to compare two checkouts).
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import time

import lsnet_tf  # noqa: F401  (before TensorFlow: the commands' environment, oneDNN on)

# The parts of the step, from the first component of an op's name scope (gradient ops carry
# the scope of the forward op they differentiate, under "gradient_tape/").
PARTS = collections.OrderedDict([
    ("lnet", "L-Net"),
    ("snet", "S-Net"),
    ("localization_loss", "heatmap + box loss (L_L)"),
    ("roi_choice", "RoI choice (top-k cell, its distances)"),
    ("gt_roi", "ground-truth RoI (gt_phase) selection"),
    ("rr", "RR (theta + sampler)"),
    ("roi_targets", "RoI target mask (sampler, no gradient)"),
    ("s_loss", "segmentation loss on the RoI (L_S)"),
    ("lnet_update", "L-Net's Adam update"),
    ("snet_update", "S-Net's Adam update"),
])
# Ops that only wrap others (their time is their children's).
WRAPPERS = ("PartitionedCall", "StatefulPartitionedCall", "While", "If", "StatelessIf",
            "StatelessWhile", "__inference")


def _scope(op_name: str) -> tuple[str, str]:
    """``(part key, "forward" or "backward")`` of a TensorFlow op name."""
    parts = op_name.split("/")
    while parts and parts[0].endswith("PartitionedCall"):  # the compiled step's call op
        parts = parts[1:]
    direction = "forward"
    if parts[0] in ("gradient_tape", "gradients"):
        direction, parts = "backward", parts[1:]
    head = parts[0] if parts else ""
    for key in PARTS:
        if head == key or (head.startswith(key + "_") and head[len(key) + 1:].isdigit()):
            return key, "update" if key.endswith("_update") else direction
    return head, direction


def op_times(xplane_path: str) -> dict:
    """``{(op name, op type): total microseconds}`` of the TensorFlow ops in a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                m = meta[event.metadata_id]
                name = m.name or m.display_name
                if ":" not in name or "::" in name or name.startswith(("$", "Iterator")):
                    continue
                op, op_type = name.rsplit(":", 1)
                if not op_type.isidentifier() or op_type.startswith(WRAPPERS) or not op:
                    continue
                totals[(op, op_type)] += event.duration_ps / 1e6
    return dict(totals)


def attribute(times: dict, steps: int) -> tuple[list[dict], list[dict]]:
    """The table of parts (ms per step, share of the op time) and the top ops outside the
    networks."""
    by_part = collections.Counter()
    ops = collections.Counter()
    for (op, op_type), us in times.items():
        key, direction = _scope(op)
        by_part[(key, direction)] += us
        if key not in ("lnet", "snet"):
            ops[(key, direction, op_type)] += us
    total = sum(by_part.values())
    rows = []
    for (key, direction), us in sorted(by_part.items(), key=lambda kv: -kv[1]):
        rows.append({"part": PARTS.get(key, key or "(no scope)"), "scope": key,
                     "pass": direction, "ms per step": round(us / 1000 / steps, 2),
                     "share": round(us / total, 4)})
    top = [{"scope": k, "pass": d, "op type": t, "ms per step": round(us / 1000 / steps, 2)}
           for (k, d, t), us in ops.most_common(25)]
    return rows, top


def print_table(rows, top, steps, path) -> None:
    print(f"op time per step by part ({steps} steps, {path}):")
    for r in rows:
        if r["share"] >= 0.001:
            print(f"  {r['part']:45s} {r['pass']:8s} {r['ms per step']:9.2f} ms "
                  f"{100 * r['share']:5.1f} %")
    print("top ops outside the networks:")
    for r in top:
        print(f"  {r['scope']:20s} {r['pass']:8s} {r['op type']:28s} {r['ms per step']:8.2f} ms")


def build(image: int, batch: int, config: str):
    from benchmarks import datasets, training

    dataset = datasets.synthetic_dataset(image, patients=2, slices=8)
    cfg, model = training.build(config, image, batch, dataset)
    return cfg, model, datasets.first_batch(cfg)


def trace(model, data, out_dir: str, steps: int) -> str:
    """Profile `steps` training steps into `out_dir`; the path of the trace's ``.xplane.pb``."""
    import tensorflow as tf

    from benchmarks.training import train_step

    step = train_step(model, data)
    step(), step()  # traced and warm
    # Level 3: the executor records every op (level 2 leaves out the ones it deems cheap).
    tf.profiler.experimental.start(
        out_dir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))
    for _ in range(steps):
        step()
    tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(out_dir, "plugins", "profile", "*", "*.xplane.pb")),
                   key=os.path.getmtime)
    return paths[-1]


def timed(model, data, rounds: int, c2f=None) -> dict:
    """Median ms of the step, L-Net's and S-Net's forward + backward (of the sum of their
    outputs, as ``benchmarks.training.parts``) and the step / networks ratio, interleaved; with
    `c2f` (a coarse-to-fine model) its step too, and the ratio of the steps."""
    import tensorflow as tf

    from benchmarks import harness, training

    images = data["image"]

    def net_step(net, every=True):
        @tf.function
        def fn():
            with tf.GradientTape() as tape:
                out = net(images, training=True)
                loss = tf.add_n([tf.reduce_sum(o) for o in tf.nest.flatten(out)])
            grads = tape.gradient(loss, net.trainable_variables)
            return grads if every else grads[:1]
        return lambda: fn()[0].numpy()

    variants = {"L-SNet step": training.train_step(model, data),
                "L-Net": net_step(model.lnet), "S-Net": net_step(model.snet),
                # What benchmarks.training measured until this change: only the first kernel's
                # gradient was returned, so the other weights' gradients were pruned.
                "L-Net, first gradient only": net_step(model.lnet, every=False),
                "S-Net, first gradient only": net_step(model.snet, every=False)}
    if c2f is not None:
        variants["coarse-to-fine step"] = training.train_step(c2f, data)
    times = harness.interleaved(variants, rounds, warmup=1)
    split = {name: harness.median_ms(t) for name, t in times.items()}
    split["spread ms"] = {name: [round(1000 * x, 1) for x in t] for name, t in times.items()}
    split["step / (L-Net + S-Net)"] = round(
        split["L-SNet step"] / (split["L-Net"] + split["S-Net"]), 3)
    split["step / (L-Net + S-Net), first gradient only"] = round(
        split["L-SNet step"] / (split["L-Net, first gradient only"]
                                + split["S-Net, first gradient only"]), 3)
    if c2f is not None:
        split["step / c2f step"] = harness.ratio(times["L-SNet step"],
                                                 times["coarse-to-fine step"])
    return split


def targets_timing(image: int, batch: int, rounds: int) -> dict:
    """The RoI target mask (``two_stage.roi_targets``) at `image` pixels: the general path
    (``affine_grid`` + ``bilinear_sample``, what it ran before) against
    ``sample_scale_translate`` (what it runs now), one process, interleaved; checks first that
    both give the same values bit for bit."""
    import numpy as np
    import tensorflow as tf

    from benchmarks import harness
    from lsnet_tf.ops.sampling import affine_grid, bilinear_sample, sample_scale_translate

    rng = np.random.default_rng(0)
    mask = tf.constant((rng.uniform(size=(batch, image, image, 1)) > 0.7).astype(np.float32))
    s = rng.uniform(0.2, 0.9, (batch, 2)).astype(np.float32)
    o = rng.uniform(-0.5, 0.5, (batch, 2)).astype(np.float32)
    z = np.zeros(batch, np.float32)
    theta = tf.constant(np.stack([np.stack([s[:, 0], z, o[:, 0]], -1),
                                  np.stack([z, s[:, 1], o[:, 1]], -1)], 1))
    general = tf.function(lambda m, t: bilinear_sample(m, affine_grid(t, image, image)))
    exact = tf.function(lambda m, t: sample_scale_translate(m, t, image, image))
    if not np.array_equal(general(mask, theta).numpy(), exact(mask, theta).numpy()):
        raise AssertionError("sample_scale_translate differs from the general sampler")
    times = harness.interleaved({"general": lambda: general(mask, theta).numpy(),
                                 "exact": lambda: exact(mask, theta).numpy()}, rounds, warmup=2)
    return {"general ms": harness.median_ms(times["general"]),
            "sample_scale_translate ms": harness.median_ms(times["exact"]),
            "ratio": harness.ratio(times["exact"], times["general"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_parts",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--config", default="configs/synthetic/lsnet_unet.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (0: none)")
    parser.add_argument("--c2f", action="store_true",
                        help="also time the coarse-to-fine U-Net's step against L-SNet's")
    parser.add_argument("--trace", default="", help="folder for a profiler trace (none: no trace)")
    parser.add_argument("--trace-steps", type=int, default=3)
    parser.add_argument("--targets", type=int, default=0, metavar="ROUNDS",
                        help="only time the RoI target mask's two samplers, ROUNDS rounds")
    parser.add_argument("--read", default="", metavar="XPLANE",
                        help="only print the table of a recorded trace (its .xplane.pb)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    if args.targets:
        print(json.dumps(targets_timing(args.image, args.batch, args.targets)))
        return 0
    if args.read:
        rows, top = attribute(op_times(args.read), args.trace_steps)
        print_table(rows, top, args.trace_steps, args.read)
        return 0

    from benchmarks import datasets, harness

    result = {"image": args.image, "batch": args.batch, "load_before": harness.load()}
    start = time.time()
    _, model, data = build(args.image, args.batch, datasets.repo_path(args.config))
    if args.trace:
        path = trace(model, data, args.trace, args.trace_steps)
        result["trace"] = path
        try:
            rows, top = attribute(op_times(path), args.trace_steps)
        except Exception as e:  # the timings below still run; the trace stays for a look
            print(f"could not read the trace {path}: {type(e).__name__}: {e}", file=sys.stderr)
        else:
            result.update(parts=rows, top_ops=top)
            print_table(rows, top, args.trace_steps, path)
    if args.rounds:
        c2f = None
        if args.c2f:
            from benchmarks import training

            _, c2f = training.build(datasets.repo_path(training.MODELS[training.REFERENCE]),
                                    args.image, args.batch,
                                    datasets.synthetic_dataset(args.image, 2, 8))
        result["times_ms"] = timed(model, data, args.rounds, c2f)
        print("median ms:", json.dumps(result["times_ms"]))
    result["load_after"] = harness.load()
    result["seconds"] = round(time.time() - start, 1)
    print(f"load before / after: {result['load_before']['load_average_1min']} / "
          f"{result['load_after']['load_average_1min']} (1-min average), other processes "
          f"{result['load_before']['other_processes_cores']} / "
          f"{result['load_after']['other_processes_cores']} cores")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
