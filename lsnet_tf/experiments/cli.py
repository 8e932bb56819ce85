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

TABLE: table1 (main comparison), table2 (ablation), table3 (detection vs segmentation as the
first stage), table4 (the decay factor γ), margin (the paper's margin scaled to the slice);
``list`` names their rows and configs. DATASET: synthetic, synthetic-hard (tuning sets),
synthetic-evidence, synthetic-hard-evidence (evidence sets, 4 folds), pancreas (4 folds).
``run`` is resumable, and writes ``<out>/<table>-<dataset>[-e<N>].md`` and ``.json``.

Guide: docs/experiments.md. Each subcommand's --help lists its flags; the library is the
package lsnet_tf.experiments (catalogue, units, runs, tables, claims, plots, curves, oracle,
provenance).
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys

from lsnet_tf import evaluation as ev
from lsnet_tf.config import ConfigError
from lsnet_tf.experiments.catalogue import (DATASET_CONFIGS, DATASETS, TABLES, ExperimentError,
                                            Table)
from lsnet_tf.experiments.curves import table_curves
from lsnet_tf.experiments.oracle import ORACLE_PAIRS, run_oracle
from lsnet_tf.experiments.runs import keep_records, run_table
from lsnet_tf.experiments.units import parse_folds, parse_seeds, parse_seeds_for
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES


# Named at the end of each subcommand's --help.
GUIDE = "Guide: docs/experiments.md"
DATASET_HELP = ", ".join(DATASETS)


def describe(table: Table, dataset: str = "synthetic") -> str:
    lines = [f"{table.name}: {table.title}"]
    for r in table.rows:
        lines.append(f"  {r.config:22s} {r.label:24s} "
                     f"configs/{DATASET_CONFIGS[dataset]}/{r.config}.yaml")
    return "\n".join(lines)


def _table_arguments(parser, verb: str, out_help: str) -> None:
    """The arguments that choose a table's runs (``run`` and ``curves``)."""
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--dataset", required=True, choices=DATASETS, metavar="DATASET",
                        help=DATASET_HELP)
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


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler ending the job) end the command as ``SystemExit(143)``
    instead of at once, so that each training session's ``finally`` runs: its process CPU time
    goes into the run's ``train-cpu.json`` (a run resumes from its last checkpoint either way).
    ``python -m lsnet_tf.experiments`` calls it; SIGKILL cannot be caught."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print the tables and their rows", epilog=GUIDE)
    ls.add_argument("table", nargs="?", choices=sorted(TABLES))
    run = sub.add_parser("run", help="train and evaluate every row of a table", epilog=GUIDE)
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
                                        "nothing)", epilog=GUIDE)
    _table_arguments(cur, "draw", "folder of the written figure")
    keep = sub.add_parser("keep", help="copy the finished runs' records (no checkpoints, no "
                                       "logs) into another folder", epilog=GUIDE)
    keep.add_argument("--runs-dir", default="runs/experiments")
    keep.add_argument("--to", required=True, help="the folder of records, e.g. docs/results/runs")
    orc = sub.add_parser("oracle", help="L-SNet against the coarse-to-fine model with true and "
                                        "swapped boxes (trains nothing): from both runs' checkpoints, "
                                        "or from the unit's kept record (oracle-<family>.json)",
                         epilog=GUIDE)
    orc.add_argument("--dataset", required=True, choices=DATASETS, metavar="DATASET",
                     help=DATASET_HELP)
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

