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
import time
from typing import Callable

from lsnet_tf.files import write_text
from lsnet_tf.machine import cpu_model

__all__ = ["interleaved", "median_ms", "ratio", "machine", "load", "write_results",
           "markdown", "scratch_dir"]


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
        f"{results['seconds']:.0f} s in all, started {results['started']}.",
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
        lines += [f"Settings: {settings}. Time {bench['seconds']:.0f} s; load: other processes "
                  f"{ld.get('other_processes_cores', '?')} cores, load average "
                  f"{ld.get('load_average_1min', '?')}.", ""]
        lines += _table(bench.get("rows", []))
        if bench.get("targets"):
            lines += ["", *_table([{"target": t["name"], "wanted": t["wanted"],
                                    "measured": t["measured"], "met": t["met"]}
                                   for t in bench["targets"]])]
        for note in bench.get("notes", []):
            lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str) -> tuple[str, str]:
    """Write ``results.json`` and ``results.md`` into `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = (os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md"))
    for path, text in zip(paths, (json.dumps(results, indent=2) + "\n", markdown(results))):
        write_text(path, text)
    return paths


def target(name: str, wanted: str, measured: float, met: bool) -> dict:
    """One target row: what is wanted (e.g. ``"<= 1.5"``), the measured value, whether met."""
    return {"name": name, "wanted": wanted, "measured": measured, "met": bool(met)}
