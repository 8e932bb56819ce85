"""The runs of a table: a row at one seed, or at one (fold, seed) ``Unit`` on a cross-validated
dataset; their folders, the settings each gets, the seeds and folds of the command line, and
``RunLock`` for ``--parallel``.

Seeds: ``--seeds 0,1,2`` runs every row at each seed (overriding ``train.seed``);
``--seeds-for lsnet_unet,unet,c2f_unet=0,1,2,3,4`` gives the rows named other seeds (repeatable;
names of rows of other tables are ignored, so one plan serves every table). Without either, each
row runs once, at its config's ``train.seed``. The runs go seed by seed, the rows one after the
other.

``--budget-epochs N`` trains N epochs instead of the config's and scales the learning-rate decay
step with it (``lr_decay_epochs`` becomes ``max(1, round(N * lr_decay_epochs / epochs))``);
``--set`` overrides any config value of every row (e.g. ``--set data.dataset=/data/pancreas``).
SavedModels are not exported (``export.dir`` is emptied).
"""
from __future__ import annotations

import datetime
import os
import platform

from lsnet_tf.config import load_config
from lsnet_tf.experiments.catalogue import (DATASET_CONFIGS, DATASET_INFO, DATASETS, TABLES,
                                            ExperimentError, Row)

# The repository the package runs from (lsnet_tf/experiments/ is two folders below it).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def repo_path(path: str) -> str:
    """`path` relative to the repository when it lies inside it (the tables' JSON), else
    absolute."""
    root = REPO
    full = os.path.abspath(path)
    rel = os.path.relpath(full, root)
    return full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def unit_name(unit) -> str:
    return str(unit) if isinstance(unit, Unit) else f"seed {unit}"


def default_configs_dir() -> str:
    return os.path.join(REPO, "configs")


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
_NO_EFFECT = ("train.verbose", "train.image_log_epochs", "train.output_dir",
              "train.heartbeat_timeout", "train.shutdown_timeout", "train.collective_timeout")


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
            raise ExperimentError(f"{table.name} has no rows {unknown}; rows: "
                                  f"{', '.join(sorted(known))}")
        chosen = [r for r in table.rows if r.config in rows]
    return table, chosen


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
