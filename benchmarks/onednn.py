"""TensorFlow's oneDNN CPU kernels on and off: the training step of L-SNet and of the U-Net.

``TF_ENABLE_ONEDNN_OPTS`` is read once, when TensorFlow loads, so each setting runs in a process
of its own: rounds of one child process per setting (``python -m benchmarks.onednn --child``),
the order alternating from round to round. A child builds ``configs/synthetic/lsnet_unet.yaml``
and ``unet.yaml`` as ``benchmarks.training`` does, times each compiled training step on one fixed
pipeline batch (median of `steps` after two untimed) and reports whether oneDNN was on
(``IsMklEnabled``). Importing ``lsnet_tf`` turns the kernels on unless the variable is set
(``lsnet_tf.machine.configure_cpu``); here the parent sets it to 0 or 1 explicitly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

TITLE = ("TensorFlow's oneDNN CPU kernels on against off (TF_ENABLE_ONEDNN_OPTS): "
         "training steps.")
MODELS = {"L-SNet (U-Net)": "configs/synthetic/lsnet_unet.yaml",
          "U-Net": "configs/synthetic/unet.yaml"}
FULL = dict(image=128, batch=8, steps=7, rounds=3, overrides=(), models=tuple(MODELS))
QUICK = dict(image=64, batch=2, steps=2, rounds=1, models=("U-Net",),
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(image: int, batch: int, steps: int, overrides, models=tuple(MODELS)) -> dict:
    """In this process (TF_ENABLE_ONEDNN_OPTS already decided): {model: median ms} of the
    `models` (keys of ``MODELS``), and whether oneDNN is on."""
    import time

    import numpy as np

    import lsnet_tf  # noqa: F401  (before TensorFlow)
    from benchmarks import datasets
    from benchmarks.training import build, train_step
    from tensorflow.python.util import _pywrap_util_port

    dataset = datasets.synthetic_dataset(image, patients=2, slices=4)
    out = {}
    for name in models:
        cfg, model = build(MODELS[name], image, batch, dataset, overrides)
        step = train_step(model, datasets.first_batch(cfg))
        step()
        step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        out[name] = round(1000.0 * float(np.median(times)), 1)
    return {"ms": out, "onednn": bool(_pywrap_util_port.IsMklEnabled())}


def _run_child(setting: str, size: dict) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
    argv = [sys.executable, "-m", "benchmarks.onednn", "--child", json.dumps(size)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} child failed: "
                           f"{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    size = QUICK if quick else FULL
    rows = []
    for r in range(size["rounds"]):
        order = ("0", "1") if r % 2 == 0 else ("1", "0")
        got = {s: _run_child(s, size) for s in order}
        for s in ("0", "1"):
            if got[s]["onednn"] != (s == "1"):
                raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={s} left oneDNN "
                                   f"{'on' if got[s]['onednn'] else 'off'}")
        for name in size["models"]:
            off, on = got["0"]["ms"][name], got["1"]["ms"][name]
            rows.append({"round": r + 1, "first": "off" if order[0] == "0" else "on",
                         "model": name, "step ms, oneDNN off": off, "step ms, oneDNN on": on,
                         "on / off": round(on / off, 3)})
    return {
        "title": TITLE,
        "settings": {"input": f"{size['image']}x{size['image']}", "batch": size["batch"],
                     "timed steps": size["steps"], "rounds": size["rounds"]},
        "rows": rows,
        "notes": [
            "Each setting in its own process (TensorFlow reads TF_ENABLE_ONEDNN_OPTS when it "
            "loads), one process per setting per round, the order alternating; the ratio is "
            "of the two processes of a round.",
            "TensorFlow 2.16 turns oneDNN on by itself only on CPUs with AVX-512 VNNI, BF16 or "
            "AMX; importing lsnet_tf turns it on elsewhere unless TF_ENABLE_ONEDNN_OPTS is set.",
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps(child(spec["image"], spec["batch"], spec["steps"],
                               tuple(spec["overrides"]), tuple(spec["models"]))))
    else:
        sys.exit("usage: python -m benchmarks onednn (this module's --child is internal)")
