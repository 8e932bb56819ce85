"""``python -m benchmarks``: run the benchmarks and write ``results.json`` and ``results.md``."""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import time

# Before TensorFlow: imported under python -m benchmarks, lsnet_tf sets the commands'
# environment (lsnet_tf.utils.console.command_environment: quiet console, oneDNN kernels).
import lsnet_tf  # noqa: F401

NAMES = ("sampler", "training", "profile", "pipeline", "memory", "export", "precision",
         "onednn", "volume")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=sys.modules["benchmarks"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, of {', '.join(NAMES)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few rounds: checks that everything runs; the "
                             "figures mean little")
    parser.add_argument("--out", default=None,
                        help="folder for results.json and results.md (default docs/benchmarks; "
                             "with --quick, /tmp/lsnet_tf_bench/quick)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from benchmarks import harness

    names = [n for n in NAMES if n in args.names] if args.names else list(NAMES)
    out = args.out or (harness.scratch_dir("quick") if args.quick
                       else os.path.join(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))), "docs", "benchmarks"))
    command = " ".join(["python -m benchmarks", *(names if args.names else []),
                        *(["--quick"] if args.quick else [])])
    results = {"command": command, "quick": args.quick,
               "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": harness.machine(), "load_at_start": harness.load(), "benchmarks": {}}
    start = time.time()
    failed = False
    for name in names:
        print(f"[benchmarks] {name} ...", flush=True)
        t0 = time.time()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            bench = module.run(quick=args.quick)
        except Exception as e:  # record it and go on with the next benchmark
            failed = True
            bench = {"title": module.TITLE, "error": f"{type(e).__name__}: {e}"}
            print(f"[benchmarks] {name} failed: {bench['error']}", file=sys.stderr, flush=True)
            if isinstance(e, AssertionError):
                raise
        bench["command"], bench["started"] = command, started
        bench["seconds"] = round(time.time() - t0, 1)
        bench["load"] = harness.load()
        results["benchmarks"][name] = bench
        print(f"[benchmarks] {name} done in {bench['seconds']:.0f} s", flush=True)
    results["seconds"] = round(time.time() - start, 1)
    json_path, md_path = harness.write_results(results, out, NAMES)
    print(f"[benchmarks] wrote {json_path} and {md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
