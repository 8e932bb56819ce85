"""Where the default training run's wall time goes: ``python -m benchmarks profile``.

Runs ``python -m lsnet_tf.train``'s ``run`` on ``configs/default.yaml`` (the run a user gets from
``make train``) for a few epochs from scratch, in this process, with the trainer's timeline
(``lsnet_tf.training.timing``), ``runs`` times back to back, and reports per run:

- start-up before the first training step, by phase (the synthetic dataset is generated before
  the clock starts: its one-off generation is not start-up);
- the first epoch (it traces the training step) and the steady-state training epoch: training
  steps, each callback's epoch-end work (TensorBoard, images, learning rate, checkpoint,
  non-finite check) and the rest; a validation pass (not the first, which traces the evaluation
  step; the runs validate at epochs 2 and 3);
- the mean epoch of the full default run: a training epoch plus its share of the validation
  passes the default config makes (``train.eval_every``: 8 passes in 36 epochs);
- the training step measured alone: the compiled model's ``train_function`` on one fixed batch,
  in the same process right after the run, and the ratio of the mean epoch to
  ``steps per epoch x that step`` (target <= 1.15).

``LSNET_PROFILE_TRACE=DIR`` also writes a TensorFlow profiler trace of epoch 2's steps 6-11 of
each run to ``DIR/run<i>`` (open it in TensorBoard's profile plugin:
``pip install tensorboard-plugin-profile``; ``tensorboard --logdir DIR``).
"""
from __future__ import annotations

import os
import shutil
import statistics

from benchmarks import datasets, harness

TITLE = "Where the default training run's wall time goes (configs/default.yaml, make train)."
FULL = dict(runs=3, epochs=3, overrides=("train.eval_every=2",))
QUICK = dict(runs=1, epochs=2, overrides=(
    "model.width=4", "model.decoder_width=8", "data.image_size=64", "data.max_boxes=2",
    "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=8",
    "data.synthetic.image_size=64", "data.synthetic.folds=2", "data.synthetic.min_target_size=4",
    "data.synthetic.max_target_size=24", "data.batch_size=4", "train.eval_every=1"))
EPOCH_TARGET = 1.15


def _config(settings, out):
    """The default config for a profile run of ``settings["epochs"]`` epochs (0: as configured)."""
    from lsnet_tf.config import load_config

    epochs = [f"train.epochs={settings['epochs']}"] if settings["epochs"] else []
    return load_config(datasets.repo_path("configs/default.yaml"), [
        *epochs, f"train.output_dir={out}", "export.dir=", "train.verbose=0",
        *settings["overrides"]])


def step_alone(cfg, rounds: int = 15) -> list[float]:
    """Seconds per training step of a freshly compiled model on one fixed pipeline batch."""
    from benchmarks.training import train_step
    from lsnet_tf.models.build import build_model, compile_model

    model = build_model(cfg)
    compile_model(model, cfg, steps_per_epoch=100)
    step = train_step(model, datasets.first_batch(cfg))
    return harness.interleaved({"step": step}, rounds, warmup=2)["step"]


def profile_once(settings, out) -> dict:
    from lsnet_tf.training import session
    from lsnet_tf.data import pipeline
    from lsnet_tf.training.session import validation_epochs
    from lsnet_tf.training.timing import Timeline

    shutil.rmtree(out, ignore_errors=True)
    cfg = _config(settings, out)
    pipeline.resolve_dataset(cfg.data)  # generated once, before the clock
    trace = os.environ.get("LSNET_PROFILE_TRACE")
    timeline = Timeline(trace_dir=os.path.join(trace, os.path.basename(out)) if trace else None)
    summary = session.run(cfg, log=lambda *a: None, timeline=timeline)
    timing = timeline.summary()
    default = _config(dict(settings, epochs=0, overrides=()), out).train  # the full default run
    share = len(validation_epochs(default)) / default.epochs
    timing["mean_epoch_s"] = round(timing["train_epoch_s"] + share * timing["validation_pass_s"], 3)
    alone = statistics.median(step_alone(cfg))
    timing["step_alone_s"] = round(alone, 4)
    timing["epoch_over_steps_alone"] = round(
        timing["mean_epoch_s"] / (timing["steps_per_epoch"] * alone), 3)
    timing["dsc"] = summary["dsc"]["mean"]
    return timing


def rows_of(timings: list[dict]) -> list[dict]:
    """One row per measured part, one column per run (seconds)."""
    def row(part, key):
        return {"part": part, **{f"run {i + 1}": key(t) for i, t in enumerate(timings)}}

    rows = [row("start-up before the first step (s)", lambda t: t["first_step_after_s"])]
    for phase in timings[0]["startup"]:
        rows.append(row(f"  start-up: {phase}", lambda t, p=phase: t["startup"].get(p)))
    rows += [row("first epoch (s, traces the training step)", lambda t: t["first_epoch_s"]),
             row("training epoch, steady state (s)", lambda t: t["train_epoch_s"]),
             row("  training steps", lambda t: t["steps_s"])]
    for name in timings[0]["callbacks_s"]:
        rows.append(row(f"  {name}", lambda t, n=name: t["callbacks_s"].get(n)))
    rows += [row("  other", lambda t: t["other_s"]),
             row("validation pass (s)", lambda t: t["validation_pass_s"]),
             row("mean epoch of the default run (s)", lambda t: t["mean_epoch_s"]),
             row("steps per epoch", lambda t: t["steps_per_epoch"]),
             row("step in the epoch (ms)", lambda t: round(1000 * t["step_s"], 1)),
             row("step alone (ms)", lambda t: round(1000 * t["step_alone_s"], 1)),
             row("epoch / (steps x step alone)", lambda t: t["epoch_over_steps_alone"])]
    return rows


def run(quick: bool = False) -> dict:
    settings = QUICK if quick else FULL
    out = harness.scratch_dir("profile")
    timings = []
    for i in range(settings["runs"]):
        print(f"[benchmarks] profile run {i + 1}/{settings['runs']}", flush=True)
        timings.append(profile_once(settings, os.path.join(out, f"run{i}")))
    ratios = [t["epoch_over_steps_alone"] for t in timings]
    worst = max(ratios)
    return {
        "title": TITLE,
        "settings": {"config": "configs/default.yaml", "epochs per run": settings["epochs"],
                     "runs": settings["runs"], "overrides": list(settings["overrides"])},
        "rows": rows_of(timings),
        "targets": [harness.target("mean epoch / (steps x step alone), worst run",
                                   f"<= {EPOCH_TARGET}", worst, worst <= EPOCH_TARGET)],
        "notes": [
            "Start-up: from the trainer's first line (TensorFlow already imported) to the first "
            "training step; dataset generation excluded (cached before). The first epoch also "
            "traces the training and evaluation functions.",
            "Steady state: the mean of epochs 2 on, without their validation pass. Steps are "
            "timed from batch begin to batch end (the step, its wait for input and the fetch of "
            "its losses); each callback's epoch-end work on its own row; 'other' is the rest of "
            "the epoch's wall time. A validation pass is timed from the start to the end of "
            "Keras's evaluation (the second pass: the first traces the evaluation step). The "
            "mean epoch adds the validation passes of the full default run, spread over its "
            "epochs.",
            "Step alone: the same model compiled afresh, its train_function on one fixed batch "
            "(no input pipeline), median of 15, measured right after the run in this process.",
            "Validation DSC of the short runs (not comparable with full runs): "
            + ", ".join(f"{t['dsc']:.3f}" if t["dsc"] is not None else "n/a" for t in timings),
        ],
        "timings": timings,
    }
