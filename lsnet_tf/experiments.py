"""Reproduce the paper's tables: ``python -m lsnet_tf.experiments run TABLE --dataset D``.

::

    python -m lsnet_tf.experiments list [TABLE]
    python -m lsnet_tf.experiments run TABLE --dataset synthetic|pancreas [--budget-epochs N]
        [--rows a,b] [--runs-dir runs/experiments] [--out docs/results]
        [--empty-slices exclude|include] [--no-flops] [--set key=value ...]

TABLE is ``table1`` (main comparison), ``table2`` (ablation), ``table3`` (detection vs
segmentation as the first stage) or ``table4`` (the decay factor γ). Every row is a config file
``configs/<dataset>/<row>.yaml`` (``configs/pancreas`` holds the paper's settings,
``configs/synthetic`` the same rows sized for a 2-core CPU); rows shared by several tables (e.g.
``lsnet_unet``) are trained once.

For each row: train with ``lsnet_tf.train.run`` into ``<runs-dir>/<dataset>[-e<N>]/<row>/``
(``-e<N>`` with ``--budget-epochs N``), then evaluate the latest checkpoint with
``lsnet_tf.evaluate`` (validation fold; also the training folds for Table 4's training mIoU) into
``evaluation-<split>-<empty-slices>.json`` beside it. Resumable: a row whose run has its
``eval.json`` (written by the trainer when training is complete) is not trained again, an
evaluation file that exists is not recomputed, and an interrupted training resumes from its
latest checkpoint. A run folder whose saved config differs from the row's is an error (choose
another ``--runs-dir``), so numbers of different settings never mix.

``--budget-epochs N`` trains N epochs instead of the config's and scales the learning-rate decay
step with it (``lr_decay_epochs`` becomes ``max(1, round(N * lr_decay_epochs / epochs))``);
``--set`` overrides any config value of every row (e.g. ``--set data.dataset=/data/pancreas``).
SavedModels are not exported (``export.dir`` is emptied).

The table goes to ``<out>/<table>-<dataset>[-e<N>].md`` and ``.json``: our numbers beside the
paper's, in percent, then DSC by target size (small / medium / large: the target's share of the
slice below 1 %, below 5 %, from 5 %), and how the table was made (command, seeds, machine).
When the table has any of the U-Net-family rows of ``SIZE_PLOT_ROWS``, a plot of per-slice DSC
against the target's area goes beside it (``...-dsc-vs-size.png``). ``--rows`` restricts a run
to some rows (the written table then has only those).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys

import numpy as np

from lsnet_tf import evaluate as ev
from lsnet_tf import train
from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.files import atomic_write, write_json, write_text
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES, SIZE_BUCKETS
from lsnet_tf.metrics.segmentation import scores_from_counts


class ExperimentError(RuntimeError):
    """An experiment cannot run as asked (unknown table or row, mismatched run folder)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a table: the config ``<row>.yaml``, its label and the paper's numbers (%)."""

    config: str
    label: str
    paper: dict
    cells: tuple = ()  # fixed cells before the numbers (Table 2's check marks)


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: fixed head columns, then one column per metric key of ``METRICS``."""

    name: str
    title: str
    head: tuple
    columns: tuple
    rows: tuple

    @property
    def splits(self) -> tuple:
        return ("val", "train") if "miou_train" in self.columns else ("val",)


# Metric key -> (column title, how to read it from {split: evaluation result}).
METRICS = {
    "dsc": ("DSC(%)", lambda r: _pct(r["val"]["dsc"]["mean"])),
    "precision": ("Precision(%)", lambda r: _pct(r["val"]["precision"]["mean"])),
    "recall": ("Recall(%)", lambda r: _pct(r["val"]["recall"]["mean"])),
    "miou": ("mIoU(%)", lambda r: _pct(r["val"]["box_miou"])),
    "miou_train": ("mIoU in training(%)", lambda r: _pct(r["train"]["box_miou"])),
    "miou_val": ("mIoU in validation(%)", lambda r: _pct(r["val"]["box_miou"])),
    "first_params": ("Params(M)", lambda r: _first_params(r["val"])),
    "case_dsc": ("DSC per case(%)", lambda r: _pct(r["val"]["per_case"]["mean"])),
}

TICK = "✓"
TABLES = {
    "table1": Table(
        "table1", "Table 1: comparison with one-stage and coarse-to-fine models",
        ("Method",), ("dsc", "precision", "recall", "case_dsc"), (
            Row("unet", "U-Net", {"dsc": 86.56, "precision": 89.60, "recall": 90.29}),
            Row("attention_unet", "Attention U-Net",
                {"dsc": 86.88, "precision": 89.60, "recall": 90.29}),
            Row("c2f_unet", "Coarse-to-fine U-Net",
                {"dsc": 87.41, "precision": 90.05, "recall": 91.36}),
            Row("lsnet_unet", "L-SNet (U-Net)", {"dsc": 88.20, "precision": 92.50, "recall": 90.45}),
            Row("fcn", "FCN", {"dsc": 84.28, "precision": 88.68, "recall": 86.85}),
            Row("c2f_fcn", "Coarse-to-fine FCN", {"dsc": 86.16, "precision": 91.78, "recall": 87.84}),
            Row("lsnet_fcn", "L-SNet (FCN)", {"dsc": 87.20, "precision": 92.60, "recall": 89.07}),
        )),
    "table2": Table(
        "table2", "Table 2: ablation (U-Net family)",
        ("S-Net", "Loss", "L-Net", "RR"), ("dsc", "case_dsc"), (
            Row("snet_bce", "S-Net, BCE", {"dsc": 84.69}, (TICK, "", "", "")),
            Row("unet", "S-Net, our loss", {"dsc": 86.51}, (TICK, TICK, "", "")),
            Row("lnet_crop", "+ L-Net, crop", {"dsc": 87.86}, (TICK, TICK, TICK, "")),
            Row("lsnet_unet", "+ RR (L-SNet)", {"dsc": 88.20}, (TICK, TICK, TICK, TICK)),
        )),
    "table3": Table(
        "table3", "Table 3: detection vs segmentation at the first stage (crop to S-Net)",
        ("First stage",), ("miou", "dsc", "first_params", "case_dsc"), (
            Row("c2f_unet", "U-Net", {"miou": 83.83, "dsc": 87.41, "first_params": 14.33}),
            Row("lnet_crop", "L-Net", {"miou": 86.58, "dsc": 87.86, "first_params": 14.50}),
        )),
    "table4": Table(
        "table4", "Table 4: the decay factor γ of S-Net's gradient into L-Net (U-Net family)",
        ("γ",), ("miou_train", "miou_val", "dsc", "case_dsc"), (
            Row("lsnet_unet_gamma0", "0", {"miou_train": 92.03, "miou_val": 86.58, "dsc": 87.86}),
            Row("lsnet_unet_gamma0p01", "0.01",
                {"miou_train": 88.09, "miou_val": 84.88, "dsc": 88.05}),
            Row("lsnet_unet", "0.1", {"miou_train": 88.24, "miou_val": 84.98, "dsc": 88.20}),
            Row("lsnet_unet_gamma1", "1", {"miou_train": 86.84, "miou_val": 84.68, "dsc": 87.21}),
        )),
}
DATASETS = ("synthetic", "pancreas")
# Rows drawn in the DSC-against-size plot when a table has them.
SIZE_PLOT_ROWS = ("unet", "c2f_unet", "lnet_crop", "lsnet_unet")


def _pct(value):
    return None if value is None else round(100.0 * value, 2)


def _first_params(result):
    """Trainable parameters (M) of the model's first network (the first stage)."""
    params = result["complexity"]["params"]
    first = next(k for k in params if k != "total")
    return round(params[first] / 1e6, 2)


def default_configs_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def row_config(path: str, run_dir: str, overrides=(), budget_epochs: int | None = None):
    """The config of a row: `path`, then `overrides`, the budget, the run folder, no export."""
    overrides = list(overrides)
    if budget_epochs is not None:
        if budget_epochs < 1:
            raise ExperimentError(f"--budget-epochs must be >= 1, received {budget_epochs}")
        full = load_config(path, overrides).train
        decay = max(1, round(budget_epochs * full.lr_decay_epochs / full.epochs))
        overrides += [f"train.epochs={budget_epochs}", f"train.lr_decay_epochs={decay}"]
    return load_config(path, overrides + [f"train.output_dir={run_dir}", "export.dir="])


# Settings that do not change a run's numbers: a run folder may be resumed with other values.
_NO_EFFECT = ("train.verbose", "train.image_log_epochs")


def _check_same_config(run_dir: str, cfg) -> None:
    """Refuse to resume `run_dir` when its saved config differs from `cfg` in anything but
    logging and export settings."""
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved_path):
        return
    saved = load_config(saved_path).to_dict()
    now = cfg.to_dict()
    diff = sorted(f"{section}.{key}" for section in now for key in now[section]
                  if saved.get(section, {}).get(key) != now[section][key]
                  and section != "export" and f"{section}.{key}" not in _NO_EFFECT)
    if diff:
        raise ExperimentError(f"{run_dir} was trained with another config (differs in "
                              f"{', '.join(diff)}); use another --runs-dir or remove the folder")


def run_row(row: Row, dataset: str, splits=("val",), runs_dir: str = "runs/experiments",
            configs_dir: str | None = None, overrides=(), budget_epochs: int | None = None,
            empty_slices: str = "exclude", flops: bool = True, log=print) -> dict:
    """Train (unless trained) and evaluate (unless evaluated) one row; {split: result}."""
    path = os.path.join(configs_dir or default_configs_dir(), dataset, row.config + ".yaml")
    if not os.path.isfile(path):
        raise ExperimentError(f"no config for row {row.config!r}: {path}")
    run_dir = os.path.join(runs_dir, row.config)
    cfg = row_config(path, run_dir, overrides, budget_epochs)
    _check_same_config(run_dir, cfg)
    if os.path.isfile(os.path.join(run_dir, "eval.json")):
        log(f"[{row.config}] already trained ({run_dir})")
    else:
        log(f"[{row.config}] training {cfg.model.architecture} from {path} into {run_dir}")
        train.run(cfg, log=log)
    results = {}
    for split in splits:
        out = os.path.join(run_dir, f"evaluation-{split}-{empty_slices}.json")
        if os.path.isfile(out):
            with open(out, encoding="utf-8") as f:
                cached = json.load(f)
            if "slices" in cached:
                log(f"[{row.config}] already evaluated on {split} ({out})")
                results[split] = cached
                continue
            log(f"[{row.config}] {out} has no per-slice counts: evaluating again")
        results[split] = ev.evaluate_run(run_dir, split=split, empty_slices=empty_slices,
                                         flops=flops, log=log)
        write_json(out, results[split])
    return results


def table_markdown(table: Table, dataset: str, rows, results: dict,
                   empty_slices: str = "exclude", note: str = "") -> str:
    """Our numbers beside the paper's: each metric cell reads ``ours / paper``."""
    titles = [METRICS[c][0] for c in table.columns]
    lines = [f"### {table.title} — {dataset}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(table.head + tuple(titles)) + " |",
              "|" + "---|" * (len(table.head) + len(titles))]
    for row in rows:
        cells = list(row.cells) if row.cells else [row.label]
        for c in table.columns:
            ours = results[row.config][c]
            paper = row.paper.get(c)
            text = "–" if ours is None else f"{ours:.2f}"
            if paper is not None:
                text += f" / {paper:.2f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    over = "the slices with a target" if empty_slices == "exclude" else "all slices"
    lines += ["", f"Cells read `ours / paper`, in %. Per-slice scores are averaged over {over}; "
              "the per-case (3-D) DSC is ours only (the paper reports per-slice scores)."]
    return "\n".join(lines) + "\n"


def size_markdown(rows, evaluations: dict) -> str:
    """DSC by target size per row: ``DSC (slices)`` in each bucket of ``metrics.evaluation``."""
    lines = ["| Method | " + " | ".join(f"{b} DSC(%) (slices)" for b in SIZE_BUCKETS) + " |",
             "|---|" + "---|" * len(SIZE_BUCKETS)]
    for row in rows:
        by_size = evaluations[row.config]["val"]["dsc_by_size"]
        cells = [row.label]
        for b in SIZE_BUCKETS:
            v = by_size[b]
            cells.append("–" if v["dsc"] is None else f"{100 * v['dsc']:.2f} ({v['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Buckets: the target's share of the slice below 1 % (small), below 5 % "
              "(medium), from 5 % (large); validation fold, slices with a target."]
    return "\n".join(lines) + "\n"


def size_curve(slices, edges) -> dict:
    """Per-slice DSC of the slices with a target, binned by the target's share of the slice.

    Args:
      slices: an evaluation's ``slices`` (``tp``, ``n_true``, ``n_pred``, ``pixels``).
      edges: increasing bin edges of the target's share of the slice, in %; a slice falls in
        bin ``i`` when ``edges[i] <= share < edges[i + 1]`` (the last bin includes its top).

    Returns:
      ``{"n": (bins,), "mean": (bins,), "sem": (bins,)}``: slices, mean DSC and its standard
      error per bin (NaN where a bin is empty; ``sem`` 0 with one slice).
    """
    edges = np.asarray(edges, np.float64)
    share, dsc = [], []
    for r in slices:
        if r["n_true"] > 0:
            share.append(100.0 * r["n_true"] / r["pixels"])
            dsc.append(scores_from_counts(r["tp"], r["n_true"], r["n_pred"])["dsc"])
    share, dsc = np.asarray(share), np.asarray(dsc)
    index = np.clip(np.searchsorted(edges, share, side="right") - 1, 0, len(edges) - 2)
    inside = (share >= edges[0]) & (share <= edges[-1])
    bins = len(edges) - 1
    n, mean, sem = np.zeros(bins, int), np.full(bins, np.nan), np.full(bins, np.nan)
    for i in range(bins):
        v = dsc[inside & (index == i)]
        n[i] = v.size
        if v.size:
            mean[i] = v.mean()
            sem[i] = v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0
    return {"n": n, "mean": mean, "sem": sem}


def size_plot(path: str, curves: dict, title: str, bins: int = 8) -> None:
    """Plot mean per-slice DSC (± standard error) against the target's share of the slice.

    Args:
      path: the PNG to write.
      curves: ``{label: slices}`` (an evaluation's ``slices`` per method).
      title: the figure's title.
      bins: log-spaced bins between the smallest and the largest target of all curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [100.0 * r["n_true"] / r["pixels"] for s in curves.values() for r in s
              if r["n_true"] > 0]
    if not shares:
        raise ExperimentError("no slice with a target to plot")
    edges = np.geomspace(min(shares), max(shares) * (1 + 1e-9), bins + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    step = np.log(edges[1] / edges[0])
    for k, (label, slices) in enumerate(curves.items()):
        c = size_curve(slices, edges)
        offset = np.exp(step * 0.08 * (k - (len(curves) - 1) / 2))  # keep error bars apart
        ax.errorbar(centres * offset, 100 * c["mean"], yerr=100 * c["sem"], marker="o",
                    capsize=3, label=label)
        if k == 0:
            hist.bar(centres, c["n"], width=np.diff(edges) * 0.9, color="0.6")
    for a in (ax, hist):
        for edge in (1.0, 5.0):  # the small / medium / large buckets
            a.axvline(edge, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("per-slice DSC (%), mean ± s.e.")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    hist.set_ylabel("slices")
    hist.set_xlabel("target area (% of the slice); dashed: small | medium | large")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def provenance(command: str, runs: str, chosen) -> dict:
    """How a table was made: the command, each row's seed, the machine and the versions."""
    seeds = {}
    for row in chosen:
        saved = os.path.join(runs, row.config, "config.yaml")
        seeds[row.config] = load_config(saved).train.seed if os.path.isfile(saved) else None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "command": command,
        "seeds": seeds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}, {platform.system()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _provenance_note(p: dict) -> str:
    seeds = sorted({s for s in p["seeds"].values() if s is not None})
    seed = (f"seed {seeds[0]} for every row" if len(seeds) == 1
            else "seeds " + ", ".join(f"{k} {v}" for k, v in p["seeds"].items()))
    return (f"Made by `{p['command']}`; {seed}; {p['machine']}; Python {p['python']}, "
            f"TensorFlow {p['tensorflow']}; written {p['written']}.")


def run_table(table, dataset: str, budget_epochs: int | None = None,
              runs_dir: str = "runs/experiments", out_dir: str = "docs/results",
              rows=None, overrides=(), empty_slices: str = "exclude", flops: bool = True,
              configs_dir: str | None = None, log=print, command: str | None = None) -> dict:
    """Train and evaluate every row of `table` (a ``Table`` or a key of ``TABLES``) and write
    the table, its size breakdown and (see ``SIZE_PLOT_ROWS``) its DSC-against-size plot;
    returns its JSON (title, dataset, rows with ours, paper, DSC by size and the run folders,
    provenance, the plot's path). `command` is the command line recorded in the table."""
    if isinstance(table, str):
        if table not in TABLES:
            raise ExperimentError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        table = TABLES[table]
    if dataset not in DATASETS:
        raise ExperimentError(f"dataset must be one of {', '.join(DATASETS)}, received {dataset!r}")
    if empty_slices not in EMPTY_SLICE_MODES:
        raise ExperimentError(f"empty_slices must be one of {', '.join(EMPTY_SLICE_MODES)}, "
                              f"received {empty_slices!r}")
    chosen = list(table.rows)
    if rows:
        known = {r.config for r in table.rows}
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ExperimentError(f"{table.name} has no rows {unknown}; rows: {', '.join(sorted(known))}")
        chosen = [r for r in table.rows if r.config in rows]
    suffix = f"-e{budget_epochs}" if budget_epochs else ""
    runs = os.path.join(runs_dir, dataset + suffix)
    results, evaluations = {}, {}
    for row in chosen:
        evaluations[row.config] = run_row(
            row, dataset, table.splits, runs, configs_dir, overrides, budget_epochs,
            empty_slices, flops, log)
        results[row.config] = {c: METRICS[c][1](evaluations[row.config]) for c in table.columns}
    if command is None:
        command = "lsnet_tf.experiments.run_table(" + repr(table.name) + ", " + repr(dataset) + ")"
    prov = provenance(command, runs, chosen)
    note = (f"{'Budget: ' + str(budget_epochs) + ' epochs per row. ' if budget_epochs else ''}"
            f"Runs under `{runs}`. {_provenance_note(prov)}")
    base = os.path.join(out_dir, f"{table.name}-{dataset}{suffix}")
    plotted = [r for r in chosen if r.config in SIZE_PLOT_ROWS]
    plot = None
    if plotted:
        plot = base + "-dsc-vs-size.png"
        size_plot(plot, {r.label: evaluations[r.config]["val"]["slices"] for r in plotted},
                  f"{table.name}, {dataset}: per-slice DSC against target size (validation)")
    doc = {
        "table": table.name, "title": table.title, "dataset": dataset,
        "budget_epochs": budget_epochs, "empty_slices": empty_slices, "runs": os.path.abspath(runs),
        "provenance": prov,
        "plot": None if plot is None else os.path.basename(plot),
        "rows": [{"config": r.config, "label": r.label, "cells": list(r.cells),
                  "ours": results[r.config], "paper": r.paper,
                  "dsc_by_size": evaluations[r.config]["val"]["dsc_by_size"],
                  "run": os.path.abspath(os.path.join(runs, r.config))} for r in chosen],
    }
    text = table_markdown(table, dataset, chosen, results, empty_slices, note)
    text += "\n#### DSC by target size\n\n" + size_markdown(chosen, evaluations)
    if plot:
        text += f"\n![DSC against target size]({os.path.basename(plot)})\n"
    write_json(base + ".json", doc)
    write_text(base + ".md", text)
    log(f"wrote {base}.md and {base}.json" + (f" and {plot}" if plot else ""))
    return doc


def describe(table: Table, dataset: str = "synthetic") -> str:
    lines = [f"{table.name}: {table.title}"]
    for r in table.rows:
        lines.append(f"  {r.config:22s} {r.label:24s} configs/{dataset}/{r.config}.yaml")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print the tables and their rows")
    ls.add_argument("table", nargs="?", choices=sorted(TABLES))
    run = sub.add_parser("run", help="train and evaluate every row of a table")
    run.add_argument("table", choices=sorted(TABLES))
    run.add_argument("--dataset", required=True, choices=DATASETS)
    run.add_argument("--budget-epochs", type=int, default=None)
    run.add_argument("--rows", help="comma-separated row names (config names) to run")
    run.add_argument("--runs-dir", default="runs/experiments")
    run.add_argument("--out", default="docs/results", help="folder of the written tables")
    run.add_argument("--configs-dir", default=None, help="default: the repository's configs/")
    run.add_argument("--empty-slices", default="exclude", choices=EMPTY_SLICE_MODES)
    run.add_argument("--no-flops", action="store_true")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value of every row (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in [args.table] if args.table else sorted(TABLES):
            print(describe(TABLES[name]))
        return 0
    try:
        doc = run_table(args.table, args.dataset, args.budget_epochs, args.runs_dir, args.out,
                        args.rows.split(",") if args.rows else None, args.overrides,
                        args.empty_slices, not args.no_flops, args.configs_dir,
                        command="python -m lsnet_tf.experiments " + shlex.join(
                            sys.argv[1:] if argv is None else argv))
    except (ExperimentError, ConfigError, ev.EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc["rows"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
