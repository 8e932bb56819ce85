"""TensorFlow's oneDNN CPU kernels on and off: training steps of L-SNet and of the U-Net, and
L-SNet's inference per slice at batch 1 and batch 8.

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow loads, so each setting runs in a process
of its own: rounds of one child process per setting (``python -m benchmarks.onednn --child``),
the order alternating from round to round. A child builds ``configs/synthetic/lsnet_unet.yaml``
and ``unet.yaml`` as ``benchmarks.training`` does, times each compiled training step on one fixed
pipeline batch (median of `steps` after two untimed), then times L-SNet's ``predict_masks``
(``benchmarks.training.inference``: threshold 0, one RoI per slice) on one slice and on a batch of
8 at the inference size (512² in full), per slice, and reports whether oneDNN was on
(``IsMklEnabled``). The commands turn the kernels on unless the variable is set
(``lsnet_tf.utils.console.command_environment``); here the parent sets it to 0 or 1 explicitly.
"""
from __future__ import annotations

import json
import sys

TITLE = ("TensorFlow's oneDNN CPU kernels on against off (TF_ENABLE_ONEDNN_OPTS): training "
         "steps, and inference per slice at batch 1 and 8.")
MODELS = {"L-SNet (U-Net)": "configs/synthetic/lsnet_unet.yaml",
          "U-Net": "configs/synthetic/unet.yaml"}
FULL = dict(image=128, batch=8, steps=7, rounds=3, overrides=(), models=tuple(MODELS),
            infer_image=512, infer_batch=8)
QUICK = dict(image=64, batch=2, steps=2, rounds=1, models=(), infer_image=64, infer_batch=1,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))


def _median_ms(call, n: int) -> float:
    """Median ms of `n` calls after two untimed ones (``harness.interleaved`` of one variant)."""
    from benchmarks import harness

    return round(harness.median_ms(harness.interleaved({"call": call}, n, warmup=2)["call"]), 1)


def child(size: dict) -> dict:
    """In this process (TF_ENABLE_ONEDNN_OPTS already decided): {measure: median ms} (each
    training step of ``size["models"]``, L-SNet's inference per slice at batch 1 and
    ``size["infer_batch"]``) and whether oneDNN is on."""
    import lsnet_tf  # noqa: F401  (before TensorFlow: the command's environment)
    from benchmarks import datasets
    from benchmarks.training import build, inference, train_step
    from tensorflow.python.util import _pywrap_util_port

    image, batch, steps, overrides = (size["image"], size["batch"], size["steps"],
                                      tuple(size["overrides"]))
    dataset = datasets.synthetic_dataset(image, patients=2, slices=8)
    out = {}
    for name in size["models"]:
        cfg, model = build(MODELS[name], image, batch, dataset, overrides)
        step = train_step(model, datasets.first_batch(cfg))
        out[f"{name} training step, {image}x{image}, batch {batch}"] = _median_ms(step, steps)
    n, infer = size["infer_batch"], size["infer_image"]
    dataset = datasets.synthetic_dataset(infer, patients=2, slices=8)
    cfg, model = build(MODELS["L-SNet (U-Net)"], infer, n, dataset, overrides)
    images = datasets.first_batch(cfg)["image"]
    for k in sorted({1, n}):
        call, _ = inference(model, images[:k])
        ms = _median_ms(call, steps)
        out[f"L-SNet (U-Net) inference per slice, {infer}x{infer}, batch {k}"] = round(ms / k, 1)
    return {"ms": out, "onednn": bool(_pywrap_util_port.IsMklEnabled())}


def run(quick: bool = False) -> dict:
    from benchmarks import harness

    size = QUICK if quick else FULL
    rows = []
    for r in range(size["rounds"]):
        order = ("0", "1") if r % 2 == 0 else ("1", "0")
        # Raises if a child's oneDNN is not what it was asked for.
        got = {s: harness.onednn_child("benchmarks.onednn", s, size, 1800) for s in order}
        for measure in got["0"]["ms"]:
            off, on = got["0"]["ms"][measure], got["1"]["ms"][measure]
            rows.append({"round": r + 1, "first": "off" if order[0] == "0" else "on",
                         "measure": measure, "oneDNN off (ms)": off, "oneDNN on (ms)": on,
                         "on / off": round(on / off, 3)})
    return {
        "title": TITLE,
        "settings": {"training input": f"{size['image']}x{size['image']}",
                     "training batch": size["batch"],
                     "inference input": f"{size['infer_image']}x{size['infer_image']}",
                     "timed calls": size["steps"], "rounds": size["rounds"]},
        "rows": rows,
        "notes": [
            "Each setting in its own process (TensorFlow reads TF_ENABLE_ONEDNN_OPTS when it "
            "loads), one process per setting per round, the order alternating; the ratio is "
            "of the two processes of a round.",
            "TensorFlow 2.16 turns oneDNN on by itself only on CPUs with AVX-512 VNNI, BF16 or "
            "AMX; the commands (python -m lsnet_tf.<command>, python -m benchmarks) turn it on "
            "elsewhere unless TF_ENABLE_ONEDNN_OPTS is set.",
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps(child(spec)))
    else:
        sys.exit("usage: python -m benchmarks onednn (this module's --child is internal)")
