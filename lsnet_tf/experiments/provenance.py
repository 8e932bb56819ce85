"""How a table was made: the commit (``_git_commit``: and whether the tree had uncommitted
changes), the command, the seeds of each row, the machine, and the training time (the sum of the
runs' ``train_seconds`` from their ``eval.json``, and the process CPU time and commits each run's
training sessions recorded in ``train-cpu.json``, ``CPU_FILE``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

from lsnet_tf.experiments.units import REPO, _count, unit_json, units_text
from lsnet_tf.utils.files import write_json
from lsnet_tf.utils.machine import cpu_model


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


def _git_commit(root: str | None = None) -> dict | None:
    """``{"sha", "dirty"}`` of the repository at `root` (default: the one the package runs
    from; None outside git). Dirty: a tracked file outside ``docs/results`` changed."""
    root = root or REPO
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
