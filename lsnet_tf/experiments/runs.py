"""Running a table: ``run_table`` trains and evaluates each of its runs (``run_row``) and writes
the table; ``keep_records`` keeps the finished runs' records.

For each (row, seed): train with ``lsnet_tf.training.session.run`` into
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

``--rows`` restricts a run to some rows (the written table then has only those, and only the
claims between them).

``--parallel`` lets several processes run the same command at once, e.g. one per GPU
(``CUDA_VISIBLE_DEVICES=0 ... --parallel & CUDA_VISIBLE_DEVICES=1 ... --parallel``) or one per
machine on shared storage: each (row, seed) is trained and evaluated by the process that locks
it first (``<run>.lock`` beside its folder, an ``fcntl`` lock that ends with its process, so a
killed worker leaves nothing to clean up), and the others go on to the next. A process that is
done while others still hold runs says which and ends without writing the table; the one that
finishes last writes it (or run the command again once they are all done).

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

import contextlib
import glob
import json
import os
import time

from lsnet_tf.evaluation import slices as ev
from lsnet_tf.training import session
from lsnet_tf.config import load_config
from lsnet_tf.experiments import curves
from lsnet_tf.experiments.catalogue import (CLAIM_METRICS, DATASET_INFO, SIZE_PLOT_ROWS,
                                            ExperimentError, Row)
from lsnet_tf.experiments.claims import (CLAIMS, claims_markdown, claims_ratio, claims_summary,
                                         evaluate_claims)
from lsnet_tf.experiments.plots import size_plot
from lsnet_tf.experiments.provenance import (CPU_FILE, _add_cpu_seconds, _git_commit,
                                             _provenance_note, _run_times, provenance)
from lsnet_tf.experiments.tables import (_dataset_note, finding_markdown, size_markdown,
                                         stall_markdown, stalls, summarize_row, table_markdown)
from lsnet_tf.experiments.units import (RunLock, _check_same_config, _count, _row_config_path,
                                        _seeds_of_rows, _table_rows, repo_path, row_config,
                                        run_folder, unit_fields, unit_json, unit_name,
                                        unit_overrides)
from lsnet_tf.utils.files import atomic_write, write_json, write_text
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES


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
            session.run(cfg, log=log)
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


RECORD_FILES = ("config.yaml", "eval.json", CPU_FILE)  # and evaluation-*.json, curves.json,
# oracle-*.json (``lsnet_tf.experiments.oracle``)
# Written by ``keep`` at the top of a records folder: ``run`` reads such a folder, never trains
# into it (a run trained there would put its checkpoints and logs among the records).
RECORDS_MARKER = ".lsnet-records"


def keep_records(runs_dir: str, to: str, log=print) -> list:
    """Copy the record of every finished run under `runs_dir` (a folder
    ``<dataset>/<row>/seed<k>/`` with its ``eval.json``) to the same place under `to`: the files
    of ``RECORD_FILES``, every ``evaluation-*.json`` and ``oracle-*.json``, and the run's curves
    (``lsnet_tf.experiments.curves``) as ``curves.json``. Files already there are replaced;
    unfinished runs are left out. Returns the record folders written."""
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
        names += sorted(os.path.basename(p) for pattern in ("evaluation-*.json", "oracle-*.json")
                        for p in glob.glob(os.path.join(run_dir, pattern)))
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
    lowest = stalls(chosen, summary, unit_name)
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
        "stalls": lowest,
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
    text += "\n#### Each row's lowest run\n\n" + stall_markdown(chosen, lowest)
    if table.claims:
        text += "\n#### Claims\n\n" + claims_markdown(table, chosen, claims, ratio)
    write_json(base + ".json", doc)
    write_text(base + ".md", text)
    log(f"wrote {base}.md and {base}.json" + (f" and {plot}" if plot else ""))
    return doc
