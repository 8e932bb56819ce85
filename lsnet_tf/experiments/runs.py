"""Reproduce the paper's tables: ``python -m lsnet_tf.experiments run TABLE --dataset D``.

::

    python -m lsnet_tf.experiments list [TABLE]
    python -m lsnet_tf.experiments run TABLE --dataset DATASET
        [--budget-epochs N]
        [--seeds 0,1,2] [--seeds-for ROW,ROW=0,1,2,3,4 ...] [--folds 0,1,2,3] [--rows a,b]
        [--runs-dir runs/experiments] [--out docs/results] [--empty-slices exclude|include]
        [--no-flops] [--set key=value ...] [--parallel]
    python -m lsnet_tf.experiments curves TABLE --dataset D [--seeds ...] [--seeds-for ...]
        [--rows a,b] [--budget-epochs N] [--runs-dir runs/experiments] [--out docs/results]
    python -m lsnet_tf.experiments keep [--runs-dir runs/experiments] --to docs/results/runs
    python -m lsnet_tf.experiments oracle --dataset D [--family unet|fcn] [--seeds ...]
        [--folds ...] [--runs-dir runs/experiments] [--out docs/results]

TABLE is ``table1`` (main comparison), ``table2`` (ablation), ``table3`` (detection vs
segmentation as the first stage), ``table4`` (the decay factor γ) or ``margin`` (not the
paper's: L-SNet (U-Net) with the paper's 15 px margin scaled to the slice against 15 input
pixels). Every row is a config file ``configs/<dataset>/<row>.yaml`` (``configs/pancreas`` holds
the paper's settings, ``configs/synthetic`` the same rows sized for a 2-core CPU); the dataset
``synthetic-hard`` is the synthetic set's hard preset, its rows in ``configs/synthetic/hard``
(the U-Net family and the scaled margin: ``--rows unet,attention_unet,c2f_unet,lsnet_unet`` for
Table 1). Rows shared by several tables (e.g. ``lsnet_unet``) are trained once per seed.

DATASET (``DATASET_INFO``): ``synthetic`` and ``synthetic-hard`` are the tuning sets (the
settings of ``configs/synthetic`` were chosen by watching their validation fold; a row runs on
that one fold); ``synthetic-evidence`` and ``synthetic-hard-evidence`` are the evidence sets, the
same generator settings with generator seeds drawn after every setting was frozen
(``EVIDENCE_SEEDS``), cross-validated by patient in 4 folds; ``pancreas`` is Pancreas-CT
prepared with ``--folds 4``. On a cross-validated dataset every (row, fold, seed) is one run
(a ``Unit``: trained on the other folds, scored on the held-out one, in
``<row>/fold<f>/seed<k>/``); ``--folds`` runs some folds (default: all).

Seeds: ``--seeds 0,1,2`` runs every row at each seed (overriding ``train.seed``);
``--seeds-for lsnet_unet,unet,c2f_unet=0,1,2,3,4`` gives the rows named other seeds (repeatable;
names of rows of other tables are ignored, so one plan serves every table). Without either, each
row runs once, at its config's ``train.seed``. The runs go seed by seed, the rows one after the
other.

For each (row, seed): train with ``lsnet_tf.train.run`` into
``<runs-dir>/<dataset>[-e<N>]/<row>/seed<k>/`` (``-e<N>`` with ``--budget-epochs N``), then
evaluate the latest checkpoint with ``lsnet_tf.evaluate`` (validation fold; also the training folds
for Table 4's training mIoU) into ``evaluation-<split>-<empty-slices>.json`` beside it; the process
CPU time of the training, and the commit each session ran at, go to ``train-cpu.json``. Resumable:
a run whose folder has its ``eval.json`` (written by the trainer when training is complete) is not
trained again, an evaluation file that exists is not recomputed, and an interrupted training
resumes from its latest checkpoint. A run folder whose saved config differs from the row's (in
anything but logging, export and the folder's own path) is an error, found before anything trains
(choose another ``--runs-dir``), so numbers of different settings never mix. A run of the layout
before seed folders (``<row>/eval.json``) is not read; moving its files into ``<row>/seed<k>/``
(``k`` its ``train.seed``) makes it that seed's run.

``--budget-epochs N`` trains N epochs instead of the config's and scales the learning-rate decay
step with it (``lr_decay_epochs`` becomes ``max(1, round(N * lr_decay_epochs / epochs))``);
``--set`` overrides any config value of every row (e.g. ``--set data.dataset=/data/pancreas``).
SavedModels are not exported (``export.dir`` is emptied).

The table goes to ``<out>/<table>-<dataset>[-e<N>].md`` and ``.json``:

- every cell is the mean ± sample standard deviation over the row's seeds (its n in a column)
  beside the paper's number, in percent; the JSON keeps each seed's values (``per_seed``);
- DSC by target size (small / medium / large: the target's share of the slice below 1 %,
  below 5 %, from 5 %), mean ± sd over seeds;
- where the misses are (``finding``): the share of slices with a target on which the model put
  some pixel on the target, nothing at all, or pixels only elsewhere, the DSC of the found ones
  and the share of small targets found, mean ± sd over seeds;
- "Claims": each claim of the paper that the table tests (``Table.claims``, e.g. L-SNet (U-Net)
  above U-Net in DSC and in DSC on small targets) as the paired difference over the units both
  rows have (by (fold, seed) on a cross-validated dataset, by seed otherwise), its mean, its
  95 % paired t-interval with the correction of Nadeau and Bengio for overlapping training sets
  (``metrics.statistics.corrected_t``; n_test/n_train = 1/(k - 1), 0 without folds), its
  p-value, the 90 % interval of the equivalence test and a verdict: holds (interval above 0),
  does not hold (below 0), equivalent (two one-sided tests within ±1 point), undecided
  (otherwise, or fewer than 2 pairs); whether each decided verdict survives Holm's method across
  the table's claims; then the count of each in plain words;
- how the table was made: the commit (and whether the tree had uncommitted changes), the
  command, the seeds of each row, the machine, and the training time (the sum of the runs'
  ``train_seconds`` from their ``eval.json``, and the process CPU time where recorded).

When the table has any of the U-Net-family rows of ``SIZE_PLOT_ROWS``, a plot of per-slice DSC
against the target's area goes beside it (``...-dsc-vs-size.png``): per bin, the mean over seeds
of each seed's mean, with bars of ± 1 standard deviation across seeds. ``--rows`` restricts a run
to some rows (the written table then has only those, and only the claims between them).

``--parallel`` lets several processes run the same command at once, e.g. one per GPU
(``CUDA_VISIBLE_DEVICES=0 ... --parallel & CUDA_VISIBLE_DEVICES=1 ... --parallel``) or one per
machine on shared storage: each (row, seed) is trained and evaluated by the process that locks
it first (``<run>.lock`` beside its folder, an ``fcntl`` lock that ends with its process, so a
killed worker leaves nothing to clean up), and the others go on to the next. A process that is
done while others still hold runs says which and ends without writing the table; the one that
finishes last writes it (or run the command again once they are all done).

``curves`` trains nothing: it draws the runs of the same rows and seeds that ``run`` would train,
as far as they have got (``lsnet_tf.curves``: each seed's validation DSC and training loss
against the epoch, and the row's mean), into ``<out>/<table>-<dataset>[-e<N>]-curves.png`` and
``.json``; runs not started yet are named and left out.

``keep`` trains nothing: it copies each finished run's record, the small files its table rows
are made from (``config.yaml``, ``eval.json``, ``train-cpu.json``, every ``evaluation-*.json``,
and its curves as ``curves.json``; no checkpoints, no logs: 25 KB a run on the synthetic set,
110 KB with Table 4's evaluation of the training folds), from
``<runs-dir>/<dataset>/<row>/seed<k>/`` to the same place under ``--to``. A folder of records is a
``--runs-dir`` like any other: ``run`` finds its runs trained and evaluated and writes the table
again (its plot and claims too), and ``curves`` draws them, on a machine without the checkpoints.
Keep the records where they outlive the runs (a repository, shared storage) as each run finishes,
and a table can be made from runs trained in several sessions or on several machines.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np

from lsnet_tf import curves
from lsnet_tf import evaluate as ev
from lsnet_tf import train
from lsnet_tf.config import ConfigError, load_config
from lsnet_tf.files import atomic_write, write_json, write_text
from lsnet_tf.machine import cpu_model
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES, SIZE_BUCKETS
from lsnet_tf.metrics import statistics
from lsnet_tf.metrics.segmentation import scores_from_counts, size_bucket


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
class Claim:
    """A claim of the paper: row `better` scores above row `than` on `metric` (a key of
    ``CLAIM_METRICS``), tested on the paired difference ``better - than`` over seeds."""

    better: str
    than: str
    metric: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A table: fixed head columns, then one column per metric key of ``METRICS``; `claims`
    are the paper's claims that the table tests (``Claim``)."""

    name: str
    title: str
    head: tuple
    columns: tuple
    rows: tuple
    claims: tuple = ()

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


def _bucket_pct(result, bucket):
    return _pct(result["val"]["dsc_by_size"][bucket]["dsc"])


# Metric key of a claim -> (its name, how to read it from {split: evaluation result}), in %.
CLAIM_METRICS = {
    "dsc": ("DSC", METRICS["dsc"][1]),
    "small": ("DSC, small targets", lambda r: _bucket_pct(r, "small")),
    "miou": ("box mIoU", METRICS["miou"][1]),
}


def _claims(better: str, than, metrics) -> tuple:
    """``Claim(better, t, m)`` for each row `t` of `than`, each metric `m` of `metrics`."""
    return tuple(Claim(better, t, m) for t in than for m in metrics)


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
        ),
        # L-SNet above every other model of its family, overall and on small targets.
        _claims("lsnet_unet", ("unet", "attention_unet", "c2f_unet"), ("dsc", "small"))
        + _claims("lsnet_fcn", ("fcn", "c2f_fcn"), ("dsc", "small"))),
    "table2": Table(
        "table2", "Table 2: ablation (U-Net family)",
        ("S-Net", "Loss", "L-Net", "RR"), ("dsc", "case_dsc"), (
            Row("snet_bce", "S-Net, BCE", {"dsc": 84.69}, (TICK, "", "", "")),
            Row("unet", "S-Net, our loss", {"dsc": 86.51}, (TICK, TICK, "", "")),
            Row("lnet_crop", "+ L-Net, crop", {"dsc": 87.86}, (TICK, TICK, TICK, "")),
            Row("lsnet_unet", "+ RR (L-SNet)", {"dsc": 88.20}, (TICK, TICK, TICK, TICK)),
        ),
        # Each step of the ablation improves on the row before it.
        (Claim("unet", "snet_bce", "dsc"), Claim("lnet_crop", "unet", "dsc"),
         Claim("lsnet_unet", "lnet_crop", "dsc"))),
    "table3": Table(
        "table3", "Table 3: detection vs segmentation at the first stage (crop to S-Net)",
        ("First stage",), ("miou", "dsc", "first_params", "case_dsc"), (
            Row("c2f_unet", "U-Net", {"miou": 83.83, "dsc": 87.41, "first_params": 14.33}),
            Row("lnet_crop", "L-Net", {"miou": 86.58, "dsc": 87.86, "first_params": 14.50}),
        ),
        # L-Net is the better first stage: better boxes and a better final mask.
        _claims("lnet_crop", ("c2f_unet",), ("miou", "dsc"))),
    "table4": Table(
        "table4", "Table 4: the decay factor γ of S-Net's gradient into L-Net (U-Net family)",
        ("γ",), ("miou_train", "miou_val", "dsc", "case_dsc"), (
            Row("lsnet_unet_gamma0", "0", {"miou_train": 92.03, "miou_val": 86.58, "dsc": 87.86}),
            Row("lsnet_unet_gamma0p01", "0.01",
                {"miou_train": 88.09, "miou_val": 84.88, "dsc": 88.05}),
            Row("lsnet_unet", "0.1", {"miou_train": 88.24, "miou_val": 84.98, "dsc": 88.20}),
            Row("lsnet_unet_gamma1", "1", {"miou_train": 86.84, "miou_val": 84.68, "dsc": 87.21}),
        ),
        # γ = 0.1 (the paper's choice) above each other γ.
        _claims("lsnet_unet", ("lsnet_unet_gamma0", "lsnet_unet_gamma0p01", "lsnet_unet_gamma1"),
                ("dsc",))),
    # Not a table of the paper: its margin m = 15 px is a size on a 512 x 512 slice, which a
    # 128 x 128 input keeps as 15 input pixels unless model.margin_reference scales it.
    "margin": Table(
        "margin", "The paper's margin scaled to the slice: m = 15 px of a 512 px slice "
        "against 15 input pixels (L-SNet (U-Net))",
        ("Margin m",), ("dsc", "precision", "recall", "case_dsc", "miou"), (
            Row("lsnet_unet", "15 px of the input", {}),
            Row("lsnet_unet_scaled", "15 px at 512 (scaled)", {}),
        ),
        # Our hypothesis, not the paper's claim: the scaled margin, RR's larger zoom on small
        # targets, does better, overall, on small targets and in its boxes.
        _claims("lsnet_unet_scaled", ("lsnet_unet",), ("dsc", "small", "miou"))),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset of the tables.

    Attributes:
      configs: the folder of ``configs/`` that holds its row configs.
      role: ``"tuning"`` (settings may be chosen by watching it), ``"evidence"`` (drawn after
        every setting was frozen; nothing is chosen by watching it) or ``"paper"`` (the paper's
        data).
      overrides: settings every row gets on it (``key=value``), on top of the row's config.
      folds: k of the k-fold cross-validation by patient that its tables run (each (row, fold,
        seed) one run, ``data.val_fold`` the held-out fold); None: the config's validation fold
        alone.
    """

    configs: str
    role: str
    overrides: tuple = ()
    folds: int | None = None


# The evidence sets: the tuning sets' generator settings with generator seeds drawn at random
# (secrets.randbits(31)) after every setting of configs/synthetic was frozen, split into 4 folds
# by patient (10 of the 40 patients each) as the paper cross-validates Pancreas-CT.
EVIDENCE_SEEDS = {"synthetic-evidence": 83267049, "synthetic-hard-evidence": 252499704}
EVIDENCE_FOLDS = 4
DATASET_INFO = {
    "synthetic": Dataset("synthetic", "tuning"),
    "synthetic-hard": Dataset(os.path.join("synthetic", "hard"), "tuning"),
    "synthetic-evidence": Dataset(
        "synthetic", "evidence", (f"data.synthetic.seed={EVIDENCE_SEEDS['synthetic-evidence']}",
                                  f"data.synthetic.folds={EVIDENCE_FOLDS}"), EVIDENCE_FOLDS),
    "synthetic-hard-evidence": Dataset(
        os.path.join("synthetic", "hard"), "evidence",
        (f"data.synthetic.seed={EVIDENCE_SEEDS['synthetic-hard-evidence']}",
         f"data.synthetic.folds={EVIDENCE_FOLDS}"), EVIDENCE_FOLDS),
    "pancreas": Dataset("pancreas", "paper", (), 4),
}
# The folder of configs/ that holds each dataset's row configs.
DATASET_CONFIGS = {name: d.configs for name, d in DATASET_INFO.items()}
DATASETS = tuple(DATASET_INFO)


class Unit(tuple):
    """One run of a row on a cross-validated dataset: the held-out ``fold`` and the ``seed``.
    Units sort by seed, then fold. On a dataset without folds a run is its seed alone (an int)."""

    __slots__ = ()

    def __new__(cls, fold: int, seed: int):
        return super().__new__(cls, (int(seed), int(fold)))

    @property
    def fold(self) -> int:
        return self[1]

    @property
    def seed(self) -> int:
        return self[0]

    def __repr__(self) -> str:
        return f"Unit(fold={self.fold}, seed={self.seed})"

    def __str__(self) -> str:
        return f"fold {self.fold} seed {self.seed}"


def unit_seed(unit) -> int:
    """The training seed of a unit (a ``Unit`` or a plain seed)."""
    return unit.seed if isinstance(unit, Unit) else int(unit)


def unit_fields(unit) -> dict:
    """``{"fold", "seed"}`` of a ``Unit``, ``{"seed"}`` of a plain seed (the JSON's keys)."""
    if isinstance(unit, Unit):
        return {"fold": unit.fold, "seed": unit.seed}
    return {"seed": int(unit)}


def unit_json(unit):
    """A unit as the tables' JSON keeps it: a plain seed as itself, a ``Unit`` as
    ``{"fold", "seed"}``."""
    return unit_fields(unit) if isinstance(unit, Unit) else int(unit)


def units_text(units) -> str:
    """``"seeds 0, 1"``, or ``"folds 0-3 × seeds 0, 1"`` for the ``Unit`` s of every fold and
    seed, or the units one by one."""
    units = list(units)
    if not any(isinstance(u, Unit) for u in units):
        return f"seed{'s' if len(units) != 1 else ''} {', '.join(map(str, units))}"
    folds = sorted({u.fold for u in units})
    seeds = sorted({u.seed for u in units})
    if len(units) == len(folds) * len(seeds):
        f = (f"{folds[0]}-{folds[-1]}" if folds == list(range(folds[0], folds[-1] + 1))
             and len(folds) > 2 else ", ".join(map(str, folds)))
        return (f"fold{'s' if len(folds) != 1 else ''} {f} × "
                f"seed{'s' if len(seeds) != 1 else ''} {', '.join(map(str, seeds))}")
    return "; ".join(map(str, units))


def repo_path(path: str) -> str:
    """`path` relative to the repository when it lies inside it (the tables' JSON), else
    absolute."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    full = os.path.abspath(path)
    rel = os.path.relpath(full, root)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def unit_name(unit) -> str:
    return str(unit) if isinstance(unit, Unit) else f"seed {unit}"
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


# Settings that do not change a run's numbers: a run folder may be resumed with other values
# (``train.output_dir``: a run folder may be moved, e.g. into ``<row>/seed<k>/``).
_NO_EFFECT = ("train.verbose", "train.image_log_epochs", "train.output_dir")


def _check_same_config(run_dir: str, cfg) -> None:
    """Refuse to resume `run_dir` when its saved config differs from `cfg` in anything but
    logging, export settings and the run folder's path."""
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


def parse_seeds(text: str, flag: str = "--seeds") -> tuple:
    """``"0,1,2"`` -> ``(0, 1, 2)``: distinct non-negative integers, in the order given."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isascii() and p.isdigit() for p in parts):  # refuses "", "1,", "-1", "a"
        raise ExperimentError(f"{flag} takes comma-separated non-negative integers such as "
                              f"0,1,2, received {text!r}")
    seeds = tuple(int(p) for p in parts)
    if len(set(seeds)) != len(seeds):
        raise ExperimentError(f"{flag} names a seed twice: {text!r}")
    return seeds


def parse_seeds_for(specs) -> dict:
    """``["unet,c2f_unet=0,1,2,3,4", ...]`` -> ``{"unet": (0, ..., 4), "c2f_unet": (0, ..., 4)}``
    (``--seeds-for``): the named rows' seeds instead of ``--seeds``; a row named twice takes the
    last. Every name must be a row of some table of ``TABLES``."""
    known = {r.config for t in TABLES.values() for r in t.rows}
    out = {}
    for spec in specs or ():
        rows, sep, seeds = str(spec).partition("=")
        names = [n.strip() for n in rows.split(",") if n.strip()]
        if not sep or not names:
            raise ExperimentError(f"--seeds-for takes ROWS=SEEDS such as unet,c2f_unet=0,1,2,3,4, "
                                  f"received {spec!r}")
        unknown = sorted(set(names) - known)
        if unknown:
            raise ExperimentError(f"--seeds-for names rows that no table has: {unknown}")
        for name in names:
            out[name] = parse_seeds(seeds, f"--seeds-for {rows}=")
    return out


def parse_folds(text: str, dataset: str) -> tuple:
    """``"0,2"`` -> ``(0, 2)`` (``--folds``): held-out folds of `dataset`'s cross-validation."""
    folds = parse_seeds(text, "--folds")
    k = DATASET_INFO[dataset].folds
    if k is None:
        raise ExperimentError(f"--folds: {dataset} is not cross-validated (its rows run on their "
                              "config's validation fold)")
    bad = [f for f in folds if f >= k]
    if bad:
        raise ExperimentError(f"--folds: {dataset} has folds 0-{k - 1}, received {bad}")
    return folds


def run_folder(runs: str, row: str, unit) -> str:
    """The run folder of `row` at `unit`: ``<runs>/<row>/seed<k>`` for a plain seed,
    ``<runs>/<row>/fold<f>/seed<k>`` for a ``Unit``."""
    if isinstance(unit, Unit):
        return os.path.join(runs, row, f"fold{unit.fold}", f"seed{unit.seed}")
    return os.path.join(runs, row, f"seed{unit}")


def unit_overrides(dataset: str, unit, overrides=()) -> list:
    """The settings a run of `unit` on `dataset` gets on top of its row's config, in order: the
    dataset's own, `overrides` (``--set``), the seed and (on a cross-validated dataset) the
    held-out fold."""
    out = list(DATASET_INFO[dataset].overrides) + list(overrides)
    out.append(f"train.seed={unit_seed(unit)}")
    if isinstance(unit, Unit):
        out.append(f"data.val_fold={unit.fold}")
    return out


def _row_config_path(row: Row, dataset: str, configs_dir: str | None) -> str:
    path = os.path.join(configs_dir or default_configs_dir(), DATASET_CONFIGS[dataset],
                        row.config + ".yaml")
    if not os.path.isfile(path):
        raise ExperimentError(f"no config for row {row.config!r}: {path}")
    return path


CPU_FILE = "train-cpu.json"  # beside a run's eval.json: process CPU time of its training


def _commit_label(commit: dict | None) -> str | None:
    """``sha`` (``sha+dirty`` with uncommitted changes) of a ``_git_commit`` result."""
    if commit is None:
        return None
    return commit["sha"] + ("+dirty" if commit["dirty"] else "")


def _add_cpu_seconds(run_dir: str, seconds: float, commit: dict | None = None) -> None:
    """Add one training session's process CPU time, and the commit it ran at (`commit`, a
    ``_git_commit`` result), to ``<run_dir>/train-cpu.json``."""
    path = os.path.join(run_dir, CPU_FILE)
    total = {"cpu_seconds": 0.0, "sessions": 0}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            total = json.load(f)
    commits = list(total.get("commits", []))
    label = _commit_label(commit)
    if label is not None and label not in commits:
        commits.append(label)
    total = {"cpu_seconds": round(total["cpu_seconds"] + seconds, 1),
             "sessions": total["sessions"] + 1, "commits": commits}
    if os.path.isdir(run_dir):
        write_json(path, total)


class RunLock:
    """An exclusive lock on one run folder for ``run_table(parallel=True)``: ``<run>.lock``
    beside it, held with ``fcntl.flock`` while the run trains and is evaluated. The operating
    system releases it when its process ends, however it ends, so a killed worker leaves no
    stale claim. ``held``: whether this process got it; ``owner``: the holder's host, pid and
    start time as it wrote them (for messages)."""

    def __init__(self, run_dir: str):
        self.path = os.path.normpath(run_dir) + ".lock"
        self.held, self.owner, self._fd = False, None, None

    def __enter__(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.owner = os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            return self
        self.held = True
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"host {platform.node()}, pid {os.getpid()}, since {started}\n"
                  .encode(), 0)
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None
        return False


def run_row(row: Row, dataset: str, splits=("val",), runs_dir: str = "runs/experiments",
            configs_dir: str | None = None, overrides=(), budget_epochs: int | None = None,
            empty_slices: str = "exclude", flops: bool = True, log=print,
            seed=None) -> dict:
    """Train (unless trained) and evaluate (unless evaluated) one row at `seed` (a seed, a
    ``Unit`` of a cross-validated dataset, or None: the config's ``train.seed``) in
    ``run_folder(runs_dir, row, seed)``; {split: result}."""
    path = _row_config_path(row, dataset, configs_dir)
    overrides = list(overrides)
    if seed is None:
        seed = load_config(path, list(DATASET_INFO[dataset].overrides) + overrides).train.seed
    overrides = unit_overrides(dataset, seed, overrides)
    run_dir = run_folder(runs_dir, row.config, seed)
    name = f"{row.config} {unit_name(seed)}"
    cfg = row_config(path, run_dir, overrides, budget_epochs)
    _check_same_config(run_dir, cfg)
    if os.path.isfile(os.path.join(run_dir, "eval.json")):
        log(f"[{name}] already trained ({run_dir})")
    else:
        log(f"[{name}] training {cfg.model.architecture} from {path} into {run_dir}")
        start, commit = time.process_time(), _git_commit()
        try:
            train.run(cfg, log=log)
        finally:  # an interrupted session's CPU time counts too
            _add_cpu_seconds(run_dir, time.process_time() - start, commit)
    results = {}
    for split in splits:
        out = os.path.join(run_dir, f"evaluation-{split}-{empty_slices}.json")
        if os.path.isfile(out):
            with open(out, encoding="utf-8") as f:
                cached = json.load(f)
            if "slices" in cached:
                log(f"[{name}] already evaluated on {split} ({out})")
                results[split] = cached
                continue
            log(f"[{name}] {out} has no per-slice counts: evaluating again")
        results[split] = ev.evaluate_run(run_dir, split=split, empty_slices=empty_slices,
                                         flops=flops, log=log)
        write_json(out, results[split])
    return results


# Every claim's test: the level of its corrected t-interval, the equivalence margin (points) and
# the family-wise error rate of Holm's method across a table's claims.
CLAIMS = {"level": 0.95, "margin": 1.0, "alpha": 0.05}


def _mean_sd_text(v: dict, n_row: int | None = None) -> str:
    """``mean ± sd`` (``mean`` alone from one value, ``–`` from none), `` (n=k)`` when ``k``
    differs from the row's number of seeds `n_row`."""
    if v["mean"] is None:
        return "–"
    text = f"{v['mean']:.2f}" if v["sd"] is None else f"{v['mean']:.2f} ± {v['sd']:.2f}"
    return text if n_row is None or v["n"] == n_row else f"{text} (n={v['n']})"


def table_markdown(table: Table, dataset: str, rows, summary: dict,
                   empty_slices: str = "exclude", note: str = "") -> str:
    """Our numbers beside the paper's: each metric cell reads ``mean ± sd / paper``.

    Args:
      summary: ``{row config: {"seeds": [...], "ours": {metric key: mean_sd(...)}}}``; a cell
        whose number of values differs from the row's number of seeds (a metric some runs do not
        have) says its ``(n=k)``.
    """
    titles = [METRICS[c][0] for c in table.columns]
    lines = [f"### {table.title} — {dataset}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(table.head + ("n",) + tuple(titles)) + " |",
              "|" + "---|" * (len(table.head) + 1 + len(titles))]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        cells = (list(row.cells) if row.cells else [row.label]) + [str(n)]
        for c in table.columns:
            text = _mean_sd_text(summary[row.config]["ours"][c], n)
            paper = row.paper.get(c)
            if paper is not None:
                text += f" / {paper:.2f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    over = "the slices with a target" if empty_slices == "exclude" else "all slices"
    lines += ["", "Cells read `ours / paper`, in %; ours is the mean ± sample standard deviation "
              "over the row's n seeds (one seed: the value alone). Per-slice scores are averaged "
              f"over {over}; the per-case (3-D) DSC is ours only (the paper reports per-slice "
              "scores)."]
    return "\n".join(lines) + "\n"


def size_markdown(rows, summary: dict) -> str:
    """DSC by target size per row: ``mean ± sd (slices)`` over seeds in each bucket of
    ``metrics.evaluation`` (`summary`: ``{row: {"seeds", "dsc_by_size": {bucket: {"mean", "sd",
    "n", "slices"}}}}``)."""
    lines = ["| Method | n | " + " | ".join(f"{b} DSC(%) (slices)" for b in SIZE_BUCKETS) + " |",
             "|---|---|" + "---|" * len(SIZE_BUCKETS)]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        cells = [row.label, str(n)]
        for b in SIZE_BUCKETS:
            v = summary[row.config]["dsc_by_size"][b]
            text = _mean_sd_text(v, n)
            cells.append(text if v["mean"] is None else f"{text} ({v['slices']})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Buckets: the target's share of the slice below 1 % (small), below 5 % "
              "(medium), from 5 % (large); validation fold, slices with a target; mean ± sample "
              "standard deviation over the row's n seeds."]
    return "\n".join(lines) + "\n"


FINDING = ("found", "missed", "elsewhere", "dsc_found", "small_found")
FINDING_TITLES = {"found": "found(%)", "missed": "missed(%)", "elsewhere": "only elsewhere(%)",
                  "dsc_found": "DSC where found(%)", "small_found": "small targets found(%)"}


def finding(slices) -> dict:
    """Where a model's misses are, over the slices with a target of one evaluation's ``slices``
    (``tp``, ``n_true``, ``n_pred``, ``pixels``), in %: ``found`` (some predicted pixel on the
    target, ``tp > 0``), ``missed`` (nothing predicted), ``elsewhere`` (pixels predicted, none on
    the target: a look-alike or another place taken for it); ``dsc_found``, the mean per-slice
    DSC of the found slices (how well a found target is delineated); ``small_found``, ``found``
    among the small targets (``metrics.segmentation.size_bucket``). None where no slice counts.
    """
    target = [r for r in slices if r["n_true"] > 0]
    found = [r for r in target if r["tp"] > 0]
    small = [r for r in target if size_bucket(r["n_true"], r["pixels"]) == "small"]

    def share(part, whole):
        return _pct(len(part) / len(whole)) if whole else None

    return {"found": share(found, target),
            "missed": share([r for r in target if r["n_pred"] == 0], target),
            "elsewhere": share([r for r in target if r["n_pred"] > 0 and r["tp"] == 0], target),
            "dsc_found": _pct(float(np.mean([scores_from_counts(r["tp"], r["n_true"], r["n_pred"])
                                             ["dsc"] for r in found]))) if found else None,
            "small_found": share([r for r in small if r["tp"] > 0], small)}


def finding_markdown(rows, summary: dict) -> str:
    """Each row's ``finding`` over seeds (`summary`: ``{row: {"seeds", "finding": {key:
    mean_sd}}}``): mean ± sd per column."""
    lines = ["| Method | n | " + " | ".join(FINDING_TITLES[k] for k in FINDING) + " |",
             "|---|---|" + "---|" * len(FINDING)]
    for row in rows:
        n = len(summary[row.config]["seeds"])
        lines.append("| " + " | ".join([row.label, str(n)] + [
            _mean_sd_text(summary[row.config]["finding"][k], n) for k in FINDING]) + " |")
    lines += ["", "Over the validation slices with a target: found, some predicted pixel on the "
              "target; missed, nothing predicted; only elsewhere, pixels predicted but none on the "
              "target (a look-alike or another place taken for it); DSC where found, the mean "
              "per-slice DSC of the found slices; mean ± sample standard deviation over the row's "
              "n seeds."]
    return "\n".join(lines) + "\n"


def summarize_row(table: Table, evaluations: dict) -> dict:
    """One row's cells over seeds, from ``{seed: {split: evaluation result}}``.

    Returns:
      ``{"seeds": [...], "values": {seed: {metric key: value (%)}}, "ours": {metric key:
      mean_sd}, "dsc_by_size": {bucket: {"mean", "sd", "n", "slices"}}, "finding_per_seed":
      {seed: finding(...)}, "finding": {key: mean_sd}}`` (percent; ``slices`` the bucket's slices,
      one number when every seed has the same, else ``"lo–hi"``).
    """
    seeds = list(evaluations)
    values = {s: {c: METRICS[c][1](evaluations[s]) for c in table.columns} for s in seeds}
    by_size = {}
    for b in SIZE_BUCKETS:
        buckets = [evaluations[s]["val"]["dsc_by_size"][b] for s in seeds]
        slices = sorted({v["n"] for v in buckets})
        by_size[b] = dict(statistics.mean_sd([_pct(v["dsc"]) for v in buckets]),
                          slices=(slices[0] if len(slices) == 1
                                  else f"{slices[0]}–{slices[-1]}") if slices else 0)
    found = {s: finding(evaluations[s]["val"]["slices"]) for s in seeds}
    return {"seeds": seeds, "values": values,
            "ours": {c: statistics.mean_sd([values[s][c] for s in seeds]) for c in table.columns},
            "dsc_by_size": by_size, "finding_per_seed": found,
            "finding": {k: statistics.mean_sd([found[s][k] for s in seeds]) for k in FINDING}}


def evaluate_claims(claims, values: dict, ratio: float = 0.0, level: float = CLAIMS["level"],
                    margin: float = CLAIMS["margin"], alpha: float = CLAIMS["alpha"]) -> list:
    """Each claim whose two rows are in `values` (``{row: {unit: {claim metric key: value}}}``)
    on the units both rows have: ``statistics.corrected_t`` of ``better - than`` (its interval,
    equivalence test and verdict), and whether the verdict survives Holm's method across the
    claims tested (``holm``: a decided verdict, holds, does not hold or equivalent, whose
    ``p_verdict`` stays below `alpha` after Holm's step-down over every claim with a p-value).

    Args:
      ratio: ``n_test / n_train`` of the correction of Nadeau and Bengio (``1 / (k - 1)`` for
        the units of a k-fold cross-validation; 0, the ordinary paired t-interval, for seeds on
        one split).

    Returns:
      one dict per claim: ``better``, ``than``, ``metric``, ``units`` (the paired ones, as
      ``unit_json``), ``differences`` (per paired unit, points), every key of
      ``corrected_t_interval`` (``mean``, ``low``, ``high``, ``n``, ``p``, ``tost_low``,
      ``tost_high``, ``p_equivalence``, ``verdict``, ``p_verdict``, ...) and ``holm`` (True /
      False; None for an undecided verdict).
    """
    out = []
    for claim in claims:
        if claim.better not in values or claim.than not in values:
            continue
        units = sorted(set(values[claim.better]) & set(values[claim.than]))
        a = [values[claim.better][u][claim.metric] for u in units]
        b = [values[claim.than][u][claim.metric] for u in units]
        test = statistics.corrected_t(a, b, ratio, level, margin)
        out.append({"better": claim.better, "than": claim.than, "metric": claim.metric,
                    "units": [unit_json(u) for u in units],
                    "differences": [None if x is None or y is None else round(x - y, 4)
                                    for x, y in zip(a, b)], **test})
    rejected = statistics.holm([r["p_verdict"] for r in out], alpha)
    for r, kept in zip(out, rejected):
        decided = r["verdict"] in (statistics.HOLDS, statistics.DOES_NOT_HOLD,
                                   statistics.EQUIVALENT)
        r["holm"] = bool(kept) if decided else None
    return out


def claims_ratio(dataset: str) -> float:
    """``n_test / n_train`` of the correction of Nadeau and Bengio for `dataset`'s units:
    ``1 / (k - 1)`` with k folds, 0 (the ordinary paired t-interval) without folds."""
    k = DATASET_INFO[dataset].folds
    return 0.0 if k is None else 1.0 / (k - 1)


def _row_name(table: Table, row: Row) -> str:
    """A row's name in a claim: its label, ``γ = 0.1`` when the label is the head's value."""
    try:
        float(row.label)
    except ValueError:
        return row.label
    return f"{table.head[0]} = {row.label}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def claims_summary(results: list) -> str:
    """The claims' verdicts in one plain sentence, and how many decided ones survive Holm's
    method."""
    if not results:
        return "No claim of the paper could be tested: its rows were not run."
    verdicts = [r["verdict"] for r in results]
    hold, fail = verdicts.count(statistics.HOLDS), verdicts.count(statistics.DOES_NOT_HOLD)
    same, few = verdicts.count(statistics.EQUIVALENT), verdicts.count(statistics.TOO_FEW)
    open_ = len(verdicts) - hold - fail - same
    text = (f"Of {_count(len(results), 'claim', 'claims')} tested, "
            f"{_count(hold, 'holds', 'hold')}, {_count(fail, 'does not hold', 'do not hold')}, "
            f"{same} {'is' if same == 1 else 'are'} equivalent (within ±1 point) "
            f"and {_count(open_, 'is undecided', 'are undecided')}")
    if few:
        text += f" ({few} of them with fewer than 2 pairs)"
    decided = [r for r in results if r.get("holm") is not None]
    if decided:
        kept = [r for r in decided if r["holm"]]
        text += (f"; {len(kept)} of the {_count(len(decided), 'decided verdict', 'decided verdicts')}"
                 f" {'survives' if len(kept) == 1 else 'survive'} Holm's correction across the "
                 f"{len(results)} claims")
    return text + "."


def _p_text(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def claims_markdown(table: Table, rows, results: list, ratio: float = 0.0,
                    settings: dict = CLAIMS) -> str:
    """The "Claims" section: per claim, the metric, n pairs, the mean difference, its corrected
    t-interval and p-value, the equivalence interval, the verdict and whether it survives Holm's
    method (`results` of ``evaluate_claims``); then what they mean and a plain-words summary."""
    by_config = {r.config: r for r in rows}
    level = round(100 * settings["level"])
    tost = round(100 * (2 * settings["level"] - 1))
    lines = ["| Claim | Metric | n pairs | Mean difference (points) | "
             f"{level} % CI | p | {tost} % CI (equivalence) | Verdict | Holm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        claim = (f"{_row_name(table, by_config[r['better']])} > "
                 f"{_row_name(table, by_config[r['than']])}")
        mean = "–" if r["mean"] is None else f"{r['mean']:+.2f}"
        ci = "–" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        eq = "–" if r["tost_low"] is None else f"[{r['tost_low']:+.2f}, {r['tost_high']:+.2f}]"
        holm = {True: "survives", False: "does not survive", None: "–"}[r.get("holm")]
        lines.append(f"| {claim} | {CLAIM_METRICS[r['metric']][0]} | {r['n']} | {mean} | {ci} "
                     f"| {_p_text(r['p'])} | {eq} | **{r['verdict']}** | {holm} |")
    tested = {(r["better"], r["than"], r["metric"]) for r in results}
    untested = [c for c in table.claims if (c.better, c.than, c.metric) not in tested]
    if ratio:
        pairs = ("paired by (fold, seed) unit; the interval is the paired t-interval with the "
                 "correction of Nadeau and Bengio (2003) for training sets that overlap across "
                 f"folds (variance × (1/n + n_test/n_train), n_test/n_train = {ratio:.3g}), "
                 "n − 1 degrees of freedom")
    else:
        pairs = ("paired by seed on one split; the interval is the paired t-interval over the "
                 "seeds (n − 1 degrees of freedom), which speaks of that split alone: seeds "
                 "resample the initial weights and the batch order, never the patients")
    lines += ["", f"Difference: the claim's first row minus its second, in percentage points, "
              f"{pairs}; p: the two-sided test of a zero difference. Verdict: **holds** (the "
              f"{level} % interval above 0), **does not hold** (below 0), **equivalent** (two "
              f"one-sided tests at {settings['alpha']:g}: the {tost} % interval inside "
              f"±{settings['margin']:g} point, the rows are within a point of each other), "
              "**undecided** otherwise (or fewer than 2 pairs). Holm: whether a decided verdict's "
              f"p-value (p; for equivalent, the larger one-sided p) stays below "
              f"{settings['alpha']:g} under Holm's step-down method across the "
              f"{_count(len(results), 'claim', 'claims')} of this table."]
    if untested:
        lines += ["", "Not tested (a row not run): " + "; ".join(
            f"{c.better} > {c.than} ({CLAIM_METRICS[c.metric][0]})" for c in untested) + "."]
    lines += ["", "**In plain words.** " + claims_summary(results)]
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


def seed_curve(slices_per_seed, edges) -> dict:
    """``size_curve`` over seeds: per bin, the mean over seeds of each seed's bin mean and the
    sample standard deviation of those means across seeds.

    Args:
      slices_per_seed: one evaluation's ``slices`` per seed (the same validation slices).
      edges: as ``size_curve``'s.

    Returns:
      ``{"n": (bins,), "mean": (bins,), "sd": (bins,), "seeds": (bins,)}``: the first seed's
      slices per bin, the mean and standard deviation across seeds (NaN where no seed has a
      slice in the bin; ``sd`` NaN with one seed) and the seeds that have a slice in the bin.
    """
    curves = [size_curve(slices, edges) for slices in slices_per_seed]
    means = np.stack([c["mean"] for c in curves])  # (seeds, bins)
    present = ~np.isnan(means)
    seeds = present.sum(axis=0)
    total = np.where(present, means, 0.0).sum(axis=0)
    mean = np.where(seeds > 0, total / np.maximum(seeds, 1), np.nan)
    sd = np.full(mean.shape, np.nan)
    for i in np.flatnonzero(seeds > 1):
        sd[i] = means[present[:, i], i].std(ddof=1)
    return {"n": curves[0]["n"], "mean": mean, "sd": sd, "seeds": seeds}


def size_plot(path: str, curves: dict, title: str, bins: int = 8) -> None:
    """Plot per-slice DSC against the target's share of the slice, with error bars over seeds.

    Each point is the mean over seeds of the seed's mean per-slice DSC in the bin; its bar is
    ± 1 sample standard deviation of those means across seeds (none for a row run at one seed).

    Args:
      path: the PNG to write.
      curves: ``{label: [slices, ...]}``: an evaluation's ``slices`` per seed, per method.
      title: the figure's title.
      bins: log-spaced bins between the smallest and the largest target of all curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [100.0 * r["n_true"] / r["pixels"] for runs in curves.values() for s in runs
              for r in s if r["n_true"] > 0]
    if not shares:
        raise ExperimentError("no slice with a target to plot")
    edges = np.geomspace(min(shares), max(shares) * (1 + 1e-9), bins + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    step = np.log(edges[1] / edges[0])
    for k, (label, runs) in enumerate(curves.items()):
        c = seed_curve(runs, edges)
        offset = np.exp(step * 0.08 * (k - (len(curves) - 1) / 2))  # keep error bars apart
        ax.errorbar(centres * offset, 100 * c["mean"], yerr=100 * np.nan_to_num(c["sd"]),
                    marker="o", capsize=3,
                    label=f"{label} ({_count(len(runs), 'seed', 'seeds')})")
        if k == 0:
            hist.bar(centres, c["n"], width=np.diff(edges) * 0.9, color="0.6")
    for a in (ax, hist):
        for edge in (1.0, 5.0):  # the small / medium / large buckets
            a.axvline(edge, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylabel("per-slice DSC (%): mean over seeds,\nbars ± 1 s.d. across seeds")
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


def _git_commit(root: str | None = None) -> dict | None:
    """``{"sha", "dirty"}`` of the repository at `root` (default: the one the package runs
    from; None outside git). Dirty: a tracked file outside ``docs/results`` changed."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
        # Untracked files (run folders, caches) are not changes of the code a run ran, nor are
        # the tables and records under docs/results that these commands write themselves.
        status = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                 "--untracked-files=no", "--", ".", ":(exclude)docs/results"],
                                capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def provenance(command: str, seeds: dict, runs: list) -> dict:
    """How a table was made: the commit, the command, each row's seeds, the machine, the
    versions and the time its runs took.

    Args:
      command: the command line.
      seeds: ``{row: [seed, ...]}``.
      runs: every (row, seed) run's ``{"train_seconds", "cpu_seconds", "commits"}`` (None
        where unknown).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu = [r["cpu_seconds"] for r in runs if r["cpu_seconds"] is not None]
    trained_at = {}  # commit label: how many runs had a training session at it
    for r in runs:
        for label in r.get("commits") or ():
            trained_at[label] = trained_at.get(label, 0) + 1
    return {
        "commit": _git_commit(),
        # The commits the runs were trained at (train-cpu.json; runs of older versions of this
        # command did not record it), and how many runs were not recorded.
        "trained_at": trained_at,
        "trained_at_unknown": sum(1 for r in runs if not r.get("commits")),
        "command": command,
        "seeds": {row: [unit_json(u) for u in s] for row, s in seeds.items()},
        "units": {row: units_text(s) for row, s in seeds.items()},
        "machine": f"{platform.machine()}, {cpu_model() or 'CPU'}, {os.cpu_count()} CPU cores, "
                   f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''}, {platform.system()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": len(runs),
        # The trainer's wall-clock seconds of each run's last training session (eval.json).
        "train_seconds": round(sum(r["train_seconds"] or 0.0 for r in runs), 1),
        # Process CPU seconds of the training sessions this command started (train-cpu.json).
        "cpu_seconds": round(sum(cpu), 1) if cpu else None,
        "cpu_seconds_runs": len(cpu),
    }


def _provenance_note(p: dict) -> str:
    texts = p.get("units") or {k: units_text(v) for k, v in p["seeds"].items()}
    if len(set(texts.values())) == 1:
        seed = f"{next(iter(texts.values()))} for every row"
    else:
        seed = "; ".join(f"{k} {v}" for k, v in texts.items())
    commit = p["commit"]
    at = "commit unknown" if commit is None else f"commit {commit['sha'][:12]}"
    if commit is not None and commit["dirty"]:
        at += " (with uncommitted changes)"
    cpu = ("" if p["cpu_seconds"] is None
           else f"; process CPU time {p['cpu_seconds'] / 60:.1f} min, recorded for "
                f"{p['cpu_seconds_runs']} of them")
    return (f"Made by `{p['command']}` at {at}; {seed}; {p['machine']}; Python {p['python']}, "
            f"TensorFlow {p['tensorflow']}; written {p['written']}. Training "
            f"({_count(p['runs'], 'run', 'runs')}): {p['train_seconds'] / 60:.1f} min of "
            f"wall-clock time (each run's last session, its eval.json){cpu}."
            + _trained_at_note(p, commit))


def _trained_at_note(p: dict, commit: dict | None) -> str:
    """Where the runs were trained, when it differs from (or cannot be checked against) the
    commit the table was written at."""
    trained_at, unknown = p.get("trained_at") or {}, p.get("trained_at_unknown", 0)
    if list(trained_at) == [_commit_label(commit)] and not unknown:
        return " Every run was trained at that commit."
    parts = [f"{label[:12]}{' (with uncommitted changes)' if label.endswith('+dirty') else ''}:"
             f" {_count(n, 'run', 'runs')}" for label, n in sorted(trained_at.items())]
    if unknown:
        parts.append(f"not recorded: {_count(unknown, 'run', 'runs')}")
    if not parts:  # no runs
        return ""
    return (" Runs trained at (a resumed run counts at each commit it ran at): "
            + "; ".join(parts) + ".")


def _seeds_of_rows(chosen, dataset, configs_dir, overrides, seeds, seeds_for,
                   folds=None) -> dict:
    """``{row: (unit, ...)}``: the seeds, `seeds_for`'s for the rows it names, else `seeds`,
    else the row config's ``train.seed``; on a cross-validated dataset each seed at each of
    `folds` (None: every fold) as ``Unit`` s, seed by seed."""
    info = DATASET_INFO[dataset]
    if info.folds is not None and folds is None:
        folds = tuple(range(info.folds))
    out = {}
    for row in chosen:
        path = _row_config_path(row, dataset, configs_dir)
        if row.config in (seeds_for or {}):
            row_seeds = tuple(seeds_for[row.config])
        elif seeds:
            row_seeds = tuple(seeds)
        else:
            row_seeds = (load_config(path, list(info.overrides) + list(overrides)).train.seed,)
        out[row.config] = (row_seeds if info.folds is None
                           else tuple(Unit(f, s) for s in row_seeds for f in folds))
    return out


def _run_times(run_dir: str) -> dict:
    """``{"train_seconds", "cpu_seconds", "commits"}`` of a finished run (None where not
    recorded)."""
    times = {"train_seconds": None, "cpu_seconds": None, "commits": None}
    for name, keys in (("eval.json", ("train_seconds",)), (CPU_FILE, ("cpu_seconds", "commits"))):
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            for key in keys:
                times[key] = doc.get(key)
    return times


def _dataset_note(dataset: str) -> str:
    """What the table's data is: a tuning set, an evidence set (with its generator seed and
    folds), or the paper's."""
    info = DATASET_INFO[dataset]
    if info.role == "tuning":
        return ("On a tuning set: the settings of configs/ were chosen by watching its "
                "validation fold. ")
    if info.role == "evidence":
        return (f"On an evidence set (generator seed {EVIDENCE_SEEDS[dataset]}, drawn after "
                f"every setting was frozen; nothing was chosen by watching it), "
                f"{info.folds}-fold cross-validation by patient: each (fold, seed) is one run "
                "trained on the other folds and scored on its held-out fold. ")
    return (f"{info.folds}-fold cross-validation by patient. " if info.folds else "")


def _table_rows(table, dataset: str, rows=None) -> tuple:
    """(the ``Table``, its rows named in `rows` or all of them); checks the names."""
    if isinstance(table, str):
        if table not in TABLES:
            raise ExperimentError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        table = TABLES[table]
    if dataset not in DATASETS:
        raise ExperimentError(f"dataset must be one of {', '.join(DATASETS)}, received {dataset!r}")
    chosen = list(table.rows)
    if rows:
        known = {r.config for r in table.rows}
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ExperimentError(f"{table.name} has no rows {unknown}; rows: {', '.join(sorted(known))}")
        chosen = [r for r in table.rows if r.config in rows]
    return table, chosen


def table_curves(table, dataset: str, budget_epochs: int | None = None,
                 runs_dir: str = "runs/experiments", out_dir: str = "docs/results", rows=None,
                 configs_dir: str | None = None, seeds=None, seeds_for=None, log=print,
                 folds=None) -> dict:
    """Draw the training curves (``lsnet_tf.curves``) of `table`'s rows at their seeds (as
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
                found[unit_name(seed)] = curves.run_curves(run_dir)
            except curves.CurvesError:
                missing.append(run_dir)
        if found:
            groups[f"{row.label} ({row.config})"] = found
    for run_dir in missing:
        log(f"no training logs in {run_dir}: left out")
    if not groups:
        raise ExperimentError(f"no run of {table.name} on {dataset} has training logs under {runs}")
    path = os.path.join(out_dir, f"{table.name}-{dataset}{suffix}-curves.png")
    doc = curves.plot_curves(path, groups, f"{table.name}, {dataset}: training curves")
    log(f"wrote {path} and {os.path.splitext(path)[0]}.json")
    return doc


RECORD_FILES = ("config.yaml", "eval.json", CPU_FILE)  # and evaluation-*.json, curves.json
# Written by ``keep`` at the top of a records folder: ``run`` reads such a folder, never trains
# into it (a run trained there would put its checkpoints and logs among the records).
RECORDS_MARKER = ".lsnet-records"


def keep_records(runs_dir: str, to: str, log=print) -> list:
    """Copy the record of every finished run under `runs_dir` (a folder
    ``<dataset>/<row>/seed<k>/`` with its ``eval.json``) to the same place under `to`: the files
    of ``RECORD_FILES``, every ``evaluation-*.json``, and the run's curves (``lsnet_tf.curves``)
    as ``curves.json``. Files already there are replaced; unfinished runs are left out. Returns
    the record folders written."""
    found = sorted(glob.glob(os.path.join(runs_dir, "*", "*", "seed*", "eval.json"))
                   + glob.glob(os.path.join(runs_dir, "*", "*", "fold*", "seed*", "eval.json")))
    if not found:
        raise ExperimentError(f"no finished run (<dataset>/<row>/[fold<f>/]seed<k>/eval.json) "
                              f"under {runs_dir}")
    if os.path.abspath(to) == os.path.abspath(runs_dir):
        raise ExperimentError(f"--to must be another folder than --runs-dir ({runs_dir})")
    kept = []
    for path in found:
        run_dir = os.path.dirname(path)
        dest = os.path.join(to, os.path.relpath(run_dir, runs_dir))
        names = [n for n in RECORD_FILES if os.path.isfile(os.path.join(run_dir, n))]
        names += sorted(os.path.basename(p)
                        for p in glob.glob(os.path.join(run_dir, "evaluation-*.json")))
        os.makedirs(dest, exist_ok=True)
        for name in names:
            with open(os.path.join(run_dir, name), "rb") as f:
                data = f.read()
            with atomic_write(os.path.join(dest, name), "wb") as f:
                f.write(data)
        try:
            run = curves.run_curves(run_dir)
        except curves.CurvesError:
            log(f"{run_dir}: no training logs, its curves are not kept")
        else:
            write_json(os.path.join(dest, curves.CURVES_FILE),
                       {name: {str(epoch): value for epoch, value in values.items()}
                        for name, values in run.items()})
        kept.append(dest)
    with atomic_write(os.path.join(to, RECORDS_MARKER), "w") as f:
        f.write("Run records kept by `python -m lsnet_tf.experiments keep`: tables are written from "
                "them (--runs-dir), no run trains here.\n")
    log(f"kept the records of {_count(len(kept), 'run', 'runs')} in {to}")
    return kept


def run_table(table, dataset: str, budget_epochs: int | None = None,
              runs_dir: str = "runs/experiments", out_dir: str = "docs/results",
              rows=None, overrides=(), empty_slices: str = "exclude", flops: bool = True,
              configs_dir: str | None = None, log=print, command: str | None = None,
              seeds=None, seeds_for=None, parallel: bool = False,
              folds=None) -> dict | None:
    """Train and evaluate every row of `table` (a ``Table`` or a key of ``TABLES``) at each of
    its seeds and write the table (mean ± sd over seeds), its size breakdown, its claims
    (``evaluate_claims``) and (see ``SIZE_PLOT_ROWS``) its DSC-against-size plot.

    Args:
      seeds: the seeds of every row (None: each row config's ``train.seed``).
      seeds_for: ``{row: seeds}`` instead of `seeds` for the rows named (``parse_seeds_for``;
        rows not in the table are ignored).
      command: the command line recorded in the table.
      folds: on a cross-validated dataset (``DATASET_INFO``), the held-out folds to run (None:
        every fold); each (fold, seed) is one run (a ``Unit``) and the claims pair by it.
      parallel: several processes run this table at once (``--parallel``): each (row, seed) is
        run by the process that locks it first (``RunLock``); a process that finds runs still
        held by others when it is done returns None without writing the table, so the one that
        finishes last writes it.

    Returns:
      the table's JSON: title, dataset, rows (each with its seeds, ours as ``mean_sd`` per
      metric, paper, DSC by size over seeds, and ``per_seed``: each seed's run folder, cells,
      DSC by size and training time), claims, the claims' test settings, provenance, the plot.
    """
    if empty_slices not in EMPTY_SLICE_MODES:
        raise ExperimentError(f"empty_slices must be one of {', '.join(EMPTY_SLICE_MODES)}, "
                              f"received {empty_slices!r}")
    table, chosen = _table_rows(table, dataset, rows)
    suffix = f"-e{budget_epochs}" if budget_epochs else ""
    runs = os.path.join(runs_dir, dataset + suffix)
    row_seeds = _seeds_of_rows(chosen, dataset, configs_dir, overrides, seeds, seeds_for, folds)
    # Every run folder is checked before anything trains.
    for row in chosen:
        path = _row_config_path(row, dataset, configs_dir)
        for seed in row_seeds[row.config]:
            run_dir = run_folder(runs, row.config, seed)
            _check_same_config(run_dir, row_config(
                path, run_dir, unit_overrides(dataset, seed, overrides), budget_epochs))
        if os.path.isfile(os.path.join(runs, row.config, "eval.json")):
            log(f"[{row.config}] {os.path.join(runs, row.config)} is a run of the layout before "
                "seed folders: not used (move its files into seed<k>/ to use it)")
    if os.path.isfile(os.path.join(runs_dir, RECORDS_MARKER)):
        missing = [f"{row.config} {unit_name(seed)}" for row in chosen for seed in row_seeds[row.config]
                   if not os.path.isfile(os.path.join(run_folder(runs, row.config, seed),
                                                      "eval.json"))]
        if missing:
            raise ExperimentError(
                f"{runs_dir} holds run records (`experiments keep`), where nothing trains; no "
                f"record of {', '.join(missing)}: train {'it' if len(missing) == 1 else 'them'} "
                "in a runs folder (the default runs/experiments) and keep the records from there")
    # Seed by seed, the rows one after the other: an early stop leaves whole seeds.
    evaluations = {row.config: {} for row in chosen}
    units = [(row, seed) for seed in sorted({s for v in row_seeds.values() for s in v})
             for row in chosen if seed in row_seeds[row.config]]

    def run_unit(row, seed, say_held=True):
        """True when (row, seed) is evaluated; False when another process holds it."""
        with (RunLock(run_folder(runs, row.config, seed)) if parallel
              else contextlib.nullcontext()) as lock:
            if lock is not None and not lock.held:
                if say_held:
                    log(f"[{row.config} {unit_name(seed)}] being run by another process "
                        f"({lock.owner}): left to it")
                return False
            evaluations[row.config][seed] = run_row(
                row, dataset, table.splits, runs, configs_dir, overrides, budget_epochs,
                empty_slices, flops, log, seed=seed)
            return True

    left = [(row, seed) for row, seed in units if not run_unit(row, seed)]
    # --parallel: the runs other processes held may have finished meanwhile (read, not trained
    # again); any still held leave the table to the process that finishes last.
    left = [(row, seed) for row, seed in left if not run_unit(row, seed, say_held=False)]
    if left:
        log(f"{_count(len(left), 'run is', 'runs are')} still being run by other processes "
            f"({', '.join(f'{r.config} {unit_name(s)}' for r, s in left)}): the table is written by "
            "the process that finishes last (or run this command again)")
        return None
    for row in chosen:  # each row's seeds in the order given
        evaluations[row.config] = {s: evaluations[row.config][s] for s in row_seeds[row.config]}
    summary = {row.config: summarize_row(table, evaluations[row.config]) for row in chosen}
    claim_values = {row.config: {s: {m: get(e) for m, (_, get) in CLAIM_METRICS.items()}
                                 for s, e in evaluations[row.config].items()} for row in chosen}
    ratio = claims_ratio(dataset)
    claims = evaluate_claims(table.claims, claim_values, ratio)
    times = {row.config: {s: _run_times(run_folder(runs, row.config, s))
                          for s in row_seeds[row.config]} for row in chosen}
    if command is None:
        command = "lsnet_tf.experiments.run_table(" + repr(table.name) + ", " + repr(dataset) + ")"
    prov = provenance(command, row_seeds, [t for row in times.values() for t in row.values()])
    note = (f"{'Budget: ' + str(budget_epochs) + ' epochs per row. ' if budget_epochs else ''}"
            f"{_dataset_note(dataset)}Runs under `{repo_path(runs)}/<row>/"
            f"{'fold<f>/' if DATASET_INFO[dataset].folds else ''}seed<k>`. "
            f"{_provenance_note(prov)}")
    base = os.path.join(out_dir, f"{table.name}-{dataset}{suffix}")
    plotted = [r for r in chosen if r.config in SIZE_PLOT_ROWS]
    plot = None
    if plotted:
        plot = base + "-dsc-vs-size.png"
        size_plot(plot, {r.label: [e["val"]["slices"] for e in evaluations[r.config].values()]
                         for r in plotted},
                  f"{table.name}, {dataset}: per-slice DSC against target size (validation)")
    doc = {
        "table": table.name, "title": table.title, "dataset": dataset,
        "role": DATASET_INFO[dataset].role, "folds": DATASET_INFO[dataset].folds,
        "budget_epochs": budget_epochs, "empty_slices": empty_slices, "runs": repo_path(runs),
        "provenance": prov,
        "plot": None if plot is None else os.path.basename(plot),
        "plot_error_bars": "± 1 sample standard deviation across seeds of the per-bin mean",
        "rows": [{"config": r.config, "label": r.label, "cells": list(r.cells),
                  "seeds": [unit_json(u) for u in row_seeds[r.config]],
                  "ours": summary[r.config]["ours"], "paper": r.paper,
                  "dsc_by_size": summary[r.config]["dsc_by_size"],
                  "finding": summary[r.config]["finding"],
                  "run": repo_path(os.path.join(runs, r.config)),
                  "per_seed": [{**unit_fields(s),
                                "run": repo_path(run_folder(runs, r.config, s)),
                                "ours": summary[r.config]["values"][s],
                                "dsc_by_size": evaluations[r.config][s]["val"]["dsc_by_size"],
                                "finding": summary[r.config]["finding_per_seed"][s],
                                **times[r.config][s]}
                               for s in row_seeds[r.config]]} for r in chosen],
        "claims_test": dict(CLAIMS, ratio=ratio),
        "claims": claims,
        "claims_summary": claims_summary(claims) if table.claims else None,
    }
    text = table_markdown(table, dataset, chosen, summary, empty_slices, note)
    text += "\n#### DSC by target size\n\n" + size_markdown(chosen, summary)
    text += "\n#### Found, missed, elsewhere\n\n" + finding_markdown(chosen, summary)
    if plot:
        text += (f"\n![DSC against target size]({os.path.basename(plot)})\n\n"
                 "Plot: per bin, the mean over seeds of each seed's mean per-slice DSC; bars "
                 "± 1 sample standard deviation across seeds (none for a row run at one seed).\n")
    if table.claims:
        text += "\n#### Claims\n\n" + claims_markdown(table, chosen, claims, ratio)
    write_json(base + ".json", doc)
    write_text(base + ".md", text)
    log(f"wrote {base}.md and {base}.json" + (f" and {plot}" if plot else ""))
    return doc


ORACLE_PAIRS = {"unet": ("lsnet_unet", "c2f_unet"), "fcn": ("lsnet_fcn", "c2f_fcn")}
ORACLE_METRICS = ("dsc", "found", "box_miou")


def run_oracle(dataset: str, family: str = "unet", runs_dir: str = "runs/experiments",
               out_dir: str = "docs/results", seeds=None, folds=None, log=print,
               command: str | None = None, budget_epochs: int | None = None) -> dict:
    """Localization or delineation (``lsnet_tf.oracle``): L-SNet and the coarse-to-fine model
    of `family` on every unit where both were trained (their checkpoints under `runs_dir`),
    each second stage fed its own, the true and the other's boxes, on the held-out slices.
    Trains nothing. Writes ``<out>/oracle-<family>-<dataset>.md`` and ``.json``: per model and
    condition, the mean ± sd over units of DSC, targets found and box mIoU, overall and by size;
    and the gap (L-SNet minus coarse-to-fine) per condition, paired by unit, with its corrected
    t-interval (``statistics.corrected_t``) and verdict."""
    from lsnet_tf import oracle
    from lsnet_tf.data import pipeline, records

    if family not in ORACLE_PAIRS:
        raise ExperimentError(f"--family must be one of {', '.join(ORACLE_PAIRS)}, received "
                              f"{family!r}")
    if dataset not in DATASETS:
        raise ExperimentError(f"dataset must be one of {', '.join(DATASETS)}, received {dataset!r}")
    pair = ORACLE_PAIRS[family]
    rows = [r for r in TABLES["table1"].rows if r.config in pair]
    units = _seeds_of_rows(rows[:1], dataset, None, (), seeds, None, folds)[rows[0].config]
    suffix = f"-e{budget_epochs}" if budget_epochs else ""
    runs = os.path.join(runs_dir, dataset + suffix)
    per_unit, done, missing = [], [], []
    for unit in units:
        dirs = {name: run_folder(runs, name, unit) for name in pair}
        absent = [d for d in dirs.values() if not os.path.isfile(os.path.join(d, "eval.json"))
                  or not os.path.isdir(os.path.join(d, "checkpoints"))]
        if absent:
            missing += absent
            continue
        models, cfg = {}, None
        for name, d in dirs.items():
            cfg, models[name], _ = ev.load_run(d)
        dataset_dir = pipeline.resolve_dataset(cfg.data)
        val = records.split_folds(dataset_dir, cfg.data.val_fold, "val")
        log(f"[oracle {unit_name(unit)}] {pair[0]} and {pair[1]} on {dataset_dir} folds {val}")
        found = oracle.compare_pair(models, pipeline.eval_dataset(cfg.data, dataset_dir, val))
        done.append(unit)
        per_unit.append({**unit_fields(unit),
                         "runs": {n: repo_path(d) for n, d in dirs.items()},
                         "results": {n: {c: oracle.summarize_rows(found[n][c])
                                         for c in oracle.CONDITIONS} for n in pair}})
    for d in missing:
        log(f"no finished run with checkpoints in {d}: left out")
    if not per_unit:
        raise ExperimentError(f"no unit of {dataset} has both {pair[0]} and {pair[1]} trained "
                              f"with checkpoints under {runs}")
    ratio = claims_ratio(dataset)
    groups = ("all",) + SIZE_BUCKETS
    summary = {n: {c: {g: {m: statistics.mean_sd([u["results"][n][c][g][m] for u in per_unit])
                           for m in ORACLE_METRICS} for g in groups}
                   for c in oracle.CONDITIONS} for n in pair}
    def gap(condition, group, metric):  # first of the pair minus second, paired by unit
        values = [[u["results"][n][condition][group][metric] for u in per_unit] for n in pair]
        return statistics.corrected_t(*values, ratio, CLAIMS["level"], CLAIMS["margin"])

    gaps = {c: {g: gap(c, g, "dsc") for g in groups} for c in oracle.CONDITIONS}
    box_gap = {g: gap("own", g, "box_miou") for g in groups}
    label = {r.config: r.label for r in rows}
    doc = {"dataset": dataset, "family": family, "pair": list(pair),
           "units": [unit_json(u) for u in done],
           "summary": summary, "gaps": gaps, "box_gap": box_gap, "per_unit": per_unit,
           "provenance": provenance(command or f"run_oracle({dataset!r}, {family!r})",
                                    {n: done for n in pair},
                                    [_run_times(d) for u in per_unit
                                     for d in u["runs"].values()])}
    conds = {"own": "own boxes", "truth": "true boxes", "swapped": "the other's boxes"}
    lines = [f"### Localization or delineation: {label[pair[0]]} against {label[pair[1]]} — "
             f"{dataset}", "",
             f"{_dataset_note(dataset)}Each second stage fed its own first stage's boxes, the "
             "true boxes (its own margin rule applied) and the other model's boxes, on the "
             "held-out slices with a target; nothing retrained (`lsnet_tf.oracle`). "
             f"{_provenance_note(doc['provenance'])}", "",
             "| Model | Boxes | n | DSC(%) | small | medium | large | found(%) | box mIoU(%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in pair:
        for c in oracle.CONDITIONS:
            v = summary[n][c]
            cells = [_mean_sd_text(v[g]["dsc"]) for g in groups]
            lines.append(f"| {label[n]} | {conds[c]} | {len(per_unit)} | " + " | ".join(cells)
                         + f" | {_mean_sd_text(v['all']['found'])} | "
                         f"{_mean_sd_text(v['all']['box_miou'])} |")
    lines += ["", "Mean ± sample standard deviation over the units (fold, seed); box mIoU: the "
              "best IoU of each true box among the boxes the second stage was given (100 with "
              "the true boxes).", "",
              f"#### The gap: {label[pair[0]]} minus {label[pair[1]]}, DSC (points)", "",
              "| Boxes | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]

    def gap_text(t):
        if t["low"] is None:
            return "–" if t["mean"] is None else f"{t['mean']:+.2f}"
        return f"{t['mean']:+.2f} [{t['low']:+.2f}, {t['high']:+.2f}] {t['verdict']}"

    for c in oracle.CONDITIONS:
        lines.append(f"| {conds[c]} | " + " | ".join(gap_text(gaps[c][g]) for g in groups)
                     + " |")
    lines.append("| first stage's box mIoU (own) | " + " | ".join(
        gap_text(box_gap[g]) for g in groups) + " |")
    lines += ["", "Paired by unit; 95 % t-interval with the correction of Nadeau and Bengio "
              f"(n_test/n_train = {ratio:.3g}) and the verdict of the claims (holds: L-SNet "
              "ahead; equivalent: within ±1 point). With the true boxes, a gap that closes was "
              "localization; a gap that stays is delineation."]
    base = os.path.join(out_dir, f"oracle-{family}-{dataset}{suffix}")
    write_json(base + ".json", doc)
    write_text(base + ".md", "\n".join(lines) + "\n")
    log(f"wrote {base}.md and {base}.json")
    return doc


def describe(table: Table, dataset: str = "synthetic") -> str:
    lines = [f"{table.name}: {table.title}"]
    for r in table.rows:
        lines.append(f"  {r.config:22s} {r.label:24s} "
                     f"configs/{DATASET_CONFIGS[dataset]}/{r.config}.yaml")
    return "\n".join(lines)


def _table_arguments(parser, verb: str, out_help: str) -> None:
    """The arguments that choose a table's runs (``run`` and ``curves``)."""
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--budget-epochs", type=int, default=None)
    parser.add_argument("--rows", help=f"comma-separated row names (config names) to {verb}")
    parser.add_argument("--runs-dir", default="runs/experiments")
    parser.add_argument("--out", default="docs/results", help=out_help)
    parser.add_argument("--configs-dir", default=None, help="default: the repository's configs/")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="every row at each of these seeds (train.seed), e.g. 0,1,2; "
                             "default: each row config's train.seed")
    parser.add_argument("--folds", default=None, metavar="F,F,...",
                        help="on a cross-validated dataset (synthetic-evidence, "
                             "synthetic-hard-evidence, pancreas), the held-out folds to run, "
                             "e.g. 0,1 (default: every fold); each (fold, seed) is one run")
    parser.add_argument("--seeds-for", dest="seeds_for", action="append", default=[],
                        metavar="ROW,ROW=S,S,...",
                        help="these seeds instead of --seeds for the rows named, e.g. "
                             "lsnet_unet,unet,c2f_unet=0,1,2,3,4 (repeatable; rows of other "
                             "tables are ignored)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print the tables and their rows")
    ls.add_argument("table", nargs="?", choices=sorted(TABLES))
    run = sub.add_parser("run", help="train and evaluate every row of a table")
    _table_arguments(run, "run", "folder of the written tables")
    run.add_argument("--empty-slices", default="exclude", choices=EMPTY_SLICE_MODES)
    run.add_argument("--no-flops", action="store_true")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value of every row (repeatable)")
    run.add_argument("--parallel", action="store_true",
                     help="several processes run this command at once (e.g. one per GPU): each "
                          "(row, seed) is run by the first that locks it, and the process that "
                          "finishes last writes the table")
    cur = sub.add_parser("curves", help="draw the training curves of a table's runs (trains "
                                        "nothing)")
    _table_arguments(cur, "draw", "folder of the written figure")
    keep = sub.add_parser("keep", help="copy the finished runs' records (no checkpoints, no "
                                       "logs) into another folder")
    keep.add_argument("--runs-dir", default="runs/experiments")
    keep.add_argument("--to", required=True, help="the folder of records, e.g. docs/results/runs")
    orc = sub.add_parser("oracle", help="L-SNet against the coarse-to-fine model with true and "
                                        "swapped boxes (trains nothing; needs the checkpoints)")
    orc.add_argument("--dataset", required=True, choices=DATASETS)
    orc.add_argument("--family", default="unet", choices=sorted(ORACLE_PAIRS))
    orc.add_argument("--runs-dir", default="runs/experiments")
    orc.add_argument("--out", default="docs/results")
    orc.add_argument("--seeds", default=None, metavar="S,S,...")
    orc.add_argument("--folds", default=None, metavar="F,F,...")
    orc.add_argument("--budget-epochs", type=int, default=None,
                     help="the runs of `run --budget-epochs N`")
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in [args.table] if args.table else sorted(TABLES):
            print(describe(TABLES[name]))
        return 0
    try:
        if args.command == "keep":
            keep_records(args.runs_dir, args.to)
            return 0
        if args.command == "oracle":
            run_oracle(args.dataset, args.family, args.runs_dir, args.out,
                       None if args.seeds is None else parse_seeds(args.seeds),
                       None if args.folds is None else parse_folds(args.folds, args.dataset),
                       command="python -m lsnet_tf.experiments " + shlex.join(
                           sys.argv[1:] if argv is None else argv),
                       budget_epochs=args.budget_epochs)
            return 0
        seeds = None if args.seeds is None else parse_seeds(args.seeds)
        seeds_for = parse_seeds_for(args.seeds_for)
        folds = None if args.folds is None else parse_folds(args.folds, args.dataset)
        if args.command == "curves":
            table_curves(args.table, args.dataset, args.budget_epochs, args.runs_dir, args.out,
                         args.rows.split(",") if args.rows else None, args.configs_dir, seeds,
                         seeds_for, folds=folds)
            return 0
        doc = run_table(args.table, args.dataset, args.budget_epochs, args.runs_dir, args.out,
                        args.rows.split(",") if args.rows else None, args.overrides,
                        args.empty_slices, not args.no_flops, args.configs_dir,
                        command="python -m lsnet_tf.experiments " + shlex.join(
                            sys.argv[1:] if argv is None else argv),
                        seeds=seeds, seeds_for=seeds_for, parallel=args.parallel, folds=folds)
    except (ExperimentError, ConfigError, ev.EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if doc is None:  # --parallel: other processes still run some rows
        return 0
    print(json.dumps(doc["rows"], indent=2))
    if doc["claims_summary"]:
        print(doc["claims_summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
