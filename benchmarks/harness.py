"""What every benchmark shares: interleaved timing, the machine and its load, result files.

Speeds are compared as ratios of medians measured side by side in one process: each round calls
every variant once, in an order that rotates from round to round, so that a change in the load
of a shared machine falls on all variants alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

from lsnet_tf.utils.files import write_text
from lsnet_tf.utils.machine import cpu_model

__all__ = ["interleaved", "median_ms", "ratio", "machine", "load", "merge_results",
           "write_results", "markdown", "scratch_dir"]


def scratch_dir(*parts: str) -> str:
    """A folder under ``$LSNET_BENCH_TMP`` (default ``/tmp/lsnet_tf_bench``), created."""
    path = os.path.join(os.environ.get("LSNET_BENCH_TMP", "/tmp/lsnet_tf_bench"), *parts)
    os.makedirs(path, exist_ok=True)
    return path


def interleaved(variants: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant: `warmup` untimed calls each, then `rounds` rounds.

    A call must return only once its work is done (fetch a result to the host).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    names = list(variants)
    times = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds: list[float]) -> float:
    return round(1000.0 * statistics.median(seconds), 2)


def ratio(numerator: list[float], denominator: list[float]) -> float:
    """Ratio of the medians."""
    return round(statistics.median(numerator) / statistics.median(denominator), 3)


def machine() -> dict:
    """CPU, cores, memory and library versions."""
    import keras
    import psutil
    import tensorflow as tf

    return {
        "cpu": cpu_model() or "unknown",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
    }


def load(interval: float = 1.0) -> dict:
    """The machine's load: 1-minute load average, and the CPU that other processes used over
    `interval` seconds (in cores), with the busiest of them."""
    import psutil

    own = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    procs = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        if p.info["pid"] in own:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    time.sleep(interval)
    usage = []
    for p in procs:
        try:
            percent = p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if percent > 0:
            command = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
            usage.append((percent, command[:80]))
    usage.sort(reverse=True)
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "other_processes_cores": round(sum(u for u, _ in usage) / 100.0, 2),
        "busiest_other": [{"cores": round(u / 100.0, 2), "command": c} for u, c in usage[:3]],
    }


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value != 0 and abs(value) < 0.01:
        return f"{value:.2g}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def markdown(results: dict) -> str:
    """The Markdown report of a results dict (see ``benchmarks.__main__``)."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{results['command']}` ({'quick sizes' if results['quick'] else 'full sizes'}); "
        f"{results['seconds']:.0f} s in all, started {results['started']}."
        + (f" Sections kept from earlier runs (each says when and how it was measured): "
           f"{', '.join(results['kept_from_earlier_runs'])}."
           if results.get("kept_from_earlier_runs") else ""),
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gib']} GiB, "
        f"{m['gpus']} GPU; Python {m['python']}, TensorFlow {m['tensorflow']}, "
        f"Keras {m['keras']}. GPU figures are not measured.",
        "",
        "Times are medians over interleaved rounds; ratios are ratios of medians measured in the "
        "same process. `load` is the machine's load while a benchmark ran: other processes' CPU "
        "use in cores and the 1-minute load average.",
    ]
    for name, bench in results["benchmarks"].items():
        lines += ["", f"## {name}", "", bench.get("title", ""), ""]
        if "error" in bench:
            lines += [f"Failed: `{bench['error']}`"]
            continue
        settings = ", ".join(f"{k} {_cell(v)}" for k, v in bench.get("settings", {}).items())
        ld = bench.get("load", {})
        when = (f"Measured by `{bench['command']}`, started {bench['started']}. "
                if bench.get("command") else "")
        lines += [f"{when}Settings: {settings}. Time {bench['seconds']:.0f} s; load: other "
                  f"processes {ld.get('other_processes_cores', '?')} cores, load average "
                  f"{ld.get('load_average_1min', '?')}.", ""]
        lines += _table(bench.get("rows", []))
        if bench.get("targets"):
            lines += ["", *_table([{"target": t["name"], "wanted": t["wanted"],
                                    "measured": t["measured"], "met": t["met"]}
                                   for t in bench["targets"]])]
        for note in bench.get("notes", []):
            lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def merge_results(results: dict, previous: dict | None, order) -> dict:
    """`results` with the sections of `previous` (an earlier results dict) that it did not run,
    in the order of `order` (benchmark names). Sections are kept only between runs of the same
    sizes (both quick or both full); each keeps the command and start time it was measured
    with (``command`` and ``started`` of its section, or of its file for older files)."""
    if not previous or previous.get("quick") != results.get("quick"):
        return results
    old = {name: {"command": previous.get("command"), "started": previous.get("started"), **bench}
           for name, bench in previous.get("benchmarks", {}).items()}
    new = results["benchmarks"]
    names = [n for n in order if n in new or n in old] + [n for n in old if n not in order]
    kept = [n for n in names if n not in new]
    merged = dict(results)
    merged["benchmarks"] = {n: new[n] if n in new else old[n] for n in names}
    merged["kept_from_earlier_runs"] = kept
    return merged


def write_results(results: dict, out_dir: str, order=()) -> tuple[str, str]:
    """Write ``results.json`` and ``results.md`` into `out_dir`; returns their paths. Sections
    of an earlier ``results.json`` there that this run did not measure are kept
    (``merge_results``), so ``python -m benchmarks NAME`` refreshes one section."""
    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md"))
    previous = None
    if os.path.isfile(paths[0]):
        with open(paths[0], encoding="utf-8") as f:
            try:
                previous = json.load(f)
            except ValueError:  # an unreadable file is replaced, not merged
                previous = None
    results = merge_results(results, previous, order)
    for path, text in zip(paths, (json.dumps(results, indent=2) + "\n", markdown(results))):
        write_text(path, text)
    return paths


def target(name: str, wanted: str, measured: float, met: bool) -> dict:
    """One target row: what is wanted (e.g. ``"<= 1.5"``), the measured value, whether met."""
    return {"name": name, "wanted": wanted, "measured": measured, "met": bool(met)}


def onednn_child(module: str, setting: str, payload, timeout: int = 3600) -> dict:
    """``python -m <module> --child <payload as JSON>`` with ``TF_ENABLE_ONEDNN_OPTS=<setting>``
    (read when TensorFlow loads, hence a process per setting): the JSON object of its last line
    of output, whose ``onednn`` (TensorFlow's own report) must be what `setting` asked for."""
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting)
    argv = [sys.executable, "-m", module, "--child", json.dumps(payload)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} child failed: "
                           f"{result.stderr.strip()[-2000:]}")
    got = json.loads(result.stdout.strip().splitlines()[-1])
    if got["onednn"] != (setting == "1"):
        raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting} left oneDNN "
                           f"{'on' if got['onednn'] else 'off'}")
    return got
