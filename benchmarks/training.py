"""Training step and inference latency: L-SNet against the coarse-to-fine and one-stage U-Nets.

The three models of ``configs/synthetic/`` (``lsnet_unet.yaml``, ``c2f_unet.yaml``,
``unet.yaml``: same U-Net family, ResNet18 first stage, ResNet34 second stage, width 16) are
built with ``build_model`` / ``compile_model`` at the same input size and timed side by side:

- training step: ``model.train_function`` (what ``fit`` runs) on one fixed pipeline batch;
- inference: ``predict_masks`` in a ``tf.function`` on one slice. The models are untrained, so
  their threshold is set to 0 for the timing: every slice then yields exactly one RoI (L-SNet:
  one heatmap component; coarse-to-fine: one box around the coarse mask), the work of a slice
  with one target. The RoIs per slice are reported.

Parameters are trainable scalars (``parameter_counts(trainable=True)``); FLOPs are
``count_flops`` of each network for one slice, summed (the second stage on one RoI).
"""
from __future__ import annotations

import tensorflow as tf

from benchmarks import datasets, harness

TITLE = ("Training step and inference latency of L-SNet against the coarse-to-fine U-Net and "
         "the one-stage U-Net (same family, backbones and input size).")
MODELS = {"L-SNet (U-Net)": "configs/synthetic/lsnet_unet.yaml",
          "coarse-to-fine U-Net": "configs/synthetic/c2f_unet.yaml",
          "U-Net": "configs/synthetic/unet.yaml"}
REFERENCE = "coarse-to-fine U-Net"
FULL = [dict(image=128, batch=8, rounds=9, warmup=2, overrides=()),
        dict(image=512, batch=8, rounds=3, warmup=1, overrides=())]
QUICK = [dict(image=64, batch=2, rounds=2, warmup=1,
              overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))]
TRAIN_TARGET, INFER_TARGET = 1.05, 1.10
# L-SNet's step / its two networks' forward + backward, at every size: the regression guard of
# what L-SNet adds to its networks (RR, its losses, the RoI choice, two optimizers), and the
# project's target for it. ``benchmarks.step_parts`` says where that time goes.
STEP_TARGET = 1.2


def train_step(model, batch):
    """A call that runs one training step of a compiled model on `batch` and waits for it."""
    model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())

    def step():
        return float(model.train_function(iterator)["loss"])
    return step


def inference(model, image):
    """A call of ``predict_masks`` on `image` ``(1, S, S, 1)`` (threshold 0, see the module
    docstring) and the number of RoIs it segments."""
    model.threshold = 0.0
    fn = tf.function(model.predict_masks)
    rois = int(tf.reduce_sum(tf.cast(fn(image)["valid"], tf.int32)))

    def call():
        return fn(image)["mask"].numpy()
    return call, rois


def build(path: str, image: int, batch: int, dataset: str, overrides=(), extra=()):
    from lsnet_tf.models.build import build_model, compile_model

    cfg = datasets.config(datasets.repo_path(path), image, dataset, f"data.batch_size={batch}",
                          *overrides, *extra)
    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=100)
    return cfg, model


def parts(models: dict, data, rounds: int, step=None) -> dict:
    """Median ms of the parts where L-SNet's and coarse-to-fine's training steps differ: each
    first-stage network's forward + backward (of the sum of its outputs), S-Net's, and RR's
    sampler forward + backward (gradient to theta, as in training) on the batch; with `step`
    (a call of L-SNet's training step), that step too, in the same interleaved rounds."""
    from lsnet_tf.ops.sampling import affine_grid, bilinear_sample

    images = data["image"]
    lsnet, c2f = models["L-SNet (U-Net)"], models[REFERENCE]
    roi = lsnet.roi_size
    theta = tf.tile(tf.constant([[[0.5, 0.0, 0.1], [0.0, 0.5, -0.1]]]), [images.shape[0], 1, 1])

    def net_step(net):
        # Every weight's gradient is an output: a function that returned one of them would
        # leave the others' kernels (a convolution's filter gradients) out of the graph.
        @tf.function
        def fn():
            with tf.GradientTape() as tape:
                out = net(images, training=True)
                loss = tf.add_n([tf.reduce_sum(o) for o in tf.nest.flatten(out)])
            return tape.gradient(loss, net.trainable_variables)
        return lambda: fn()[0].numpy()

    @tf.function
    def sampler():
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = tf.reduce_sum(bilinear_sample(images, affine_grid(theta, *roi)))
        return tape.gradient(loss, theta)

    variants = {"L-Net": net_step(lsnet.lnet), "coarse U-Net": net_step(c2f.coarse),
                "S-Net": net_step(lsnet.snet), "RR sampler": lambda: sampler().numpy()}
    if step is not None:
        variants["L-SNet step"] = step
    times = harness.interleaved(variants, rounds, warmup=1)
    return {name: harness.median_ms(t) for name, t in times.items()}


def flops(model, image: int) -> int:
    from lsnet_tf.models.build import count_flops, model_networks

    return sum(count_flops(net, (image, image, 1)) for net in model_networks(model).values())


def run(quick: bool = False) -> dict:
    from lsnet_tf.models.build import parameter_counts

    rows, targets, settings, profile = [], [], {}, ""
    for size in (QUICK if quick else FULL):
        image, batch = size["image"], size["batch"]
        dataset = datasets.synthetic_dataset(image, patients=2, slices=4 if quick else 8)
        models, data = {}, None
        for name, path in MODELS.items():
            cfg, models[name] = build(path, image, batch, dataset, size["overrides"])
            data = data if data is not None else datasets.first_batch(cfg)
        steps = {name: train_step(m, data) for name, m in models.items()}
        train_times = harness.interleaved(steps, size["rounds"], warmup=size["warmup"])
        calls, rois = {}, {}
        for name, m in models.items():
            calls[name], rois[name] = inference(m, data["image"][:1])
        infer_times = harness.interleaved(calls, 3 * size["rounds"], warmup=size["warmup"])
        for name, m in models.items():
            rows.append({
                "input": f"{image}x{image}", "model": name,
                "train step ms (batch %d)" % batch: harness.median_ms(train_times[name]),
                "train / c2f": harness.ratio(train_times[name], train_times[REFERENCE]),
                "inference ms (1 slice)": harness.median_ms(infer_times[name]),
                "inference / c2f": harness.ratio(infer_times[name], infer_times[REFERENCE]),
                "RoIs per slice": rois[name],
                "parameters": parameter_counts(m, trainable=True)["total"],
                "GFLOPs per slice": float(f"{flops(m, image) / 1e9:.3g}"),
            })
        lsnet = "L-SNet (U-Net)"
        r_train = harness.ratio(train_times[lsnet], train_times[REFERENCE])
        r_infer = harness.ratio(infer_times[lsnet], infer_times[REFERENCE])
        targets.append(harness.target(f"L-SNet / coarse-to-fine training step, {image}x{image}",
                                      f"<= {TRAIN_TARGET}", r_train, r_train <= TRAIN_TARGET))
        targets.append(harness.target(f"L-SNet / coarse-to-fine inference, {image}x{image}",
                                      f"<= {INFER_TARGET}", r_infer, r_infer <= INFER_TARGET))
        split = parts(models, data, size["rounds"], steps[lsnet])
        profile += (f"Where the training steps differ, {image}x{image}, batch {batch} "
                    "(forward + backward, median ms): " + ", ".join(
                        f"{k} {v:.1f}" for k, v in split.items()) + ". ")
        r_nets = round(split.pop("L-SNet step") / (split["L-Net"] + split["S-Net"]), 3)
        targets.append(harness.target(
            f"L-SNet training step / (L-Net + S-Net forward + backward), {image}x{image}",
            f"<= {STEP_TARGET}", r_nets, r_nets <= STEP_TARGET))
        settings[f"{image}x{image}"] = (f"batch {batch}, {size['rounds']} training rounds, "
                                        f"{3 * size['rounds']} inference rounds")
        del models, steps, calls
    return {
        "title": TITLE, "settings": {**settings, "width": 4 if quick else 16}, "rows": rows,
        "targets": targets,
        "notes": [
            "Models from configs/synthetic/ (width 16, random initialisation), built and compiled "
            "by lsnet_tf.models.build; the training step is the one `fit` runs, on one fixed "
            "batch of the input pipeline (so the pipeline's cost is not in it).",
            "Inference: untrained models with threshold 0, one RoI per slice (see the RoIs "
            "column); a trained model segments one RoI per detected target.",
            "The coarse-to-fine model trains its second stage on the ground-truth box crop and "
            "its first stage on the whole slice, with no gradient between them; L-SNet adds "
            "the heatmap and box losses, the RoI selection and the gradient through RR.",
            profile,
        ],
    }
