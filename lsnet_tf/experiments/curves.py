"""Training curves of finished or running runs, from their TensorBoard logs: ``run_curves`` and
``plot_curves`` (``python -m lsnet_tf.curves``), ``table_curves`` (``python -m
lsnet_tf.experiments curves``).

Reads the TensorBoard logs that ``python -m lsnet_tf.train`` writes into a run folder
(``RUN/logs/train``: the training loss of every epoch; ``RUN/logs/validation``: the validation
pass's loss and per-slice DSC, every ``train.eval_every`` epochs and after the last) and draws
the validation DSC and the training loss against the epoch. Each RUN is its own curve; a
``--group LABEL=RUN,RUN,...`` (e.g. one row's seeds) draws one thin line per run and its mean
over the runs (at the epochs that all of them have) as a thick one. ``python -m lsnet_tf.experiments
curves`` draws a table's rows this way. A run that is still training is drawn up to its last
logged epoch.

Beside the PNG, ``<out>.json`` (the PNG's name with ``.json``) holds every value drawn: per group,
per run, ``{"validation_dsc": {epoch: value}, "validation_loss": ..., "train_loss": ...}`` (epochs
1-based, DSC as a fraction). An epoch logged twice (a run stopped after TensorBoard wrote the epoch
and before its checkpoint, then resumed) keeps the value written last. A run folder without
logs is an error naming it; an event file cut short by a crash is read up to the cut.

``curves`` trains nothing: it draws the runs of the same rows and seeds that ``run`` would train,
as far as they have got (each seed's validation DSC and training loss against the epoch, and the
row's mean), into ``<out>/<table>-<dataset>[-e<N>]-curves.png`` and ``.json``; runs not started
yet are named and left out. A run kept without its logs (``experiments keep``) is read from its
``curves.json`` (``CURVES_FILE``).
"""
from __future__ import annotations

import glob
import json
import os

from lsnet_tf.experiments.catalogue import ExperimentError
from lsnet_tf.experiments.units import _seeds_of_rows, _table_rows, run_folder, unit_name


# TensorBoard tags of the trainer's logs (Keras's TensorBoard callback, update_freq="epoch").
TAGS = {"train_loss": ("train", "epoch_loss"),
        "validation_loss": ("validation", "epoch_loss"),
        "validation_dsc": ("validation", "epoch_dsc")}
CURVES_FILE = "curves.json"  # a run's curves kept without its logs (see the module's doc)


class CurvesError(ValueError):
    """A run folder or log that cannot be drawn; the message names it."""


def read_scalars(log_dir: str) -> dict:
    """``{tag: {step: value}}`` of every scalar summary in the event files of `log_dir`.

    Values written later (by wall-clock time) replace earlier ones at the same step; an event
    file cut short is read up to the cut. A folder without event files gives ``{}``.
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    found = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    kind = value.WhichOneof("value")
                    if kind == "simple_value":
                        number = float(value.simple_value)
                    elif kind == "tensor" and not value.tensor.tensor_shape.dim:
                        number = float(tf.make_ndarray(value.tensor))
                    else:  # images, histograms, text
                        continue
                    found.setdefault(value.tag, []).append((event.wall_time, event.step, number))
        except tf.errors.DataLossError:
            pass  # a truncated last record: keep what was read
    return {tag: {step: v for _, step, v in sorted(points, key=lambda p: p[0])}
            for tag, points in found.items()}


def run_curves(run_dir: str) -> dict:
    """``{name: {epoch: value}}`` for each name of ``TAGS`` (epochs 1-based; a name the run has
    not logged is empty), from its logs or, without them, its ``CURVES_FILE``. Raises
    CurvesError when `run_dir` has neither."""
    logs = os.path.join(run_dir, "logs")
    if not os.path.isdir(run_dir):
        raise CurvesError(f"{run_dir}: no such run folder")
    scalars = {sub: read_scalars(os.path.join(logs, sub)) for sub in ("train", "validation")}
    if not any(scalars.values()):
        kept = os.path.join(run_dir, CURVES_FILE)
        if os.path.isfile(kept):
            with open(kept, encoding="utf-8") as f:
                doc = json.load(f)
            return {name: {int(epoch): float(value) for epoch, value in doc.get(name, {}).items()}
                    for name in TAGS}
        raise CurvesError(f"{run_dir}: no TensorBoard scalars under {logs}/train or "
                          f"{logs}/validation (is it a run folder of python -m lsnet_tf.train?)")
    return {name: {int(step) + 1: value
                   for step, value in sorted(scalars[sub].get(tag, {}).items())}
            for name, (sub, tag) in TAGS.items()}


def group_mean(curves: list) -> dict:
    """``{epoch: mean}`` over `curves` (``{epoch: value}`` each) at the epochs all of them have."""
    if not curves:
        return {}
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    return {e: sum(c[e] for c in curves) / len(curves) for e in epochs}


def plot_curves(path: str, groups: dict, title: str) -> dict:
    """Draw `groups` (``{label: {run_name: run_curves(...)}}``) into the PNG `path` and write
    the values drawn to ``<path without .png>.json``; returns that JSON's document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lsnet_tf.utils.files import atomic_write, write_json

    if not groups or not any(groups.values()):
        raise CurvesError("no runs to draw")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    doc = {"title": title, "groups": {}}
    for k, (label, runs) in enumerate(groups.items()):
        colour = colours[k % len(colours)]
        doc["groups"][label] = {"runs": runs, "mean": {}}
        for name, ax, scale in (("validation_dsc", top, 100.0), ("train_loss", bottom, 1.0)):
            series = [c[name] for c in runs.values() if c[name]]
            many = len(series) > 1
            for s in series:
                ax.plot(list(s), [scale * v for v in s.values()], color=colour,
                        linewidth=0.8 if many else 1.8, alpha=0.45 if many else 1.0,
                        marker="." if name == "validation_dsc" else None,
                        label=None if many else f"{label} ({len(runs)} run)")
            mean = group_mean(series)
            doc["groups"][label]["mean"][name] = mean
            if many and mean:
                ax.plot(list(mean), [scale * v for v in mean.values()], color=colour,
                        linewidth=2.2, label=f"{label}: mean of {len(series)} runs")
    top.set_ylabel("validation per-slice DSC (%)")
    top.set_ylim(-2, 102)
    top.set_title(title)
    top.legend(loc="lower right", fontsize=8)
    bottom.set_ylabel("training loss (each model's own)")
    bottom.set_yscale("log")
    bottom.set_xlabel("epoch")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    write_json(os.path.splitext(path)[0] + ".json", doc)
    return doc


def table_curves(table, dataset: str, budget_epochs: int | None = None,
                 runs_dir: str = "runs/experiments", out_dir: str = "docs/results", rows=None,
                 configs_dir: str | None = None, seeds=None, seeds_for=None, log=print,
                 folds=None) -> dict:
    """Draw the training curves (``plot_curves``) of `table`'s rows at their seeds (as
    ``run_table`` chooses them) into ``<out>/<table>-<dataset>[-e<N>]-curves.png`` and ``.json``:
    per row, each seed's validation DSC and training loss against the epoch, and their mean.
    Trains nothing: a run folder without logs yet is named in the log and left out, and a table
    with none at all is an error. Returns the JSON's document."""
    table, chosen = _table_rows(table, dataset, rows)
    suffix = f"-e{budget_epochs}" if budget_epochs else ""
    runs = os.path.join(runs_dir, dataset + suffix)
    row_seeds = _seeds_of_rows(chosen, dataset, configs_dir, (), seeds, seeds_for, folds)
    groups, missing = {}, []
    for row in chosen:
        found = {}
        for seed in row_seeds[row.config]:
            run_dir = run_folder(runs, row.config, seed)
            try:
                found[unit_name(seed)] = run_curves(run_dir)
            except CurvesError:
                missing.append(run_dir)
        if found:
            groups[f"{row.label} ({row.config})"] = found
    for run_dir in missing:
        log(f"no training logs in {run_dir}: left out")
    if not groups:
        raise ExperimentError(f"no run of {table.name} on {dataset} has training logs under {runs}")
    path = os.path.join(out_dir, f"{table.name}-{dataset}{suffix}-curves.png")
    doc = plot_curves(path, groups, f"{table.name}, {dataset}: training curves")
    log(f"wrote {path} and {os.path.splitext(path)[0]}.json")
    return doc
