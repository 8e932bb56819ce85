"""Training curves of finished or running runs: ``python -m lsnet_tf.curves``.

::

    python -m lsnet_tf.curves RUN [RUN ...] --out curves.png [--title TEXT]
    python -m lsnet_tf.curves --group "U-Net=runs/a/seed0,runs/a/seed1" \\
        --group "L-SNet=runs/b/seed0,runs/b/seed1" --out curves.png

Draws the validation DSC and the training loss of each RUN against the epoch, from the
TensorBoard logs that ``python -m lsnet_tf.train`` writes into a run folder (a run that is still
training up to its last logged epoch). Each RUN is its own curve; a ``--group
LABEL=RUN,RUN,...`` (e.g. one row's seeds) draws one thin line per run and its mean over the runs
(at the epochs that all of them have) as a thick one. Beside the PNG, ``<out>.json`` holds every
value drawn. How the logs are read and the JSON's layout: `lsnet_tf.experiments.curves`
(``python -m lsnet_tf.experiments curves`` draws a table's rows this way).

Guide: docs/training.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from lsnet_tf.experiments.curves import CurvesError, plot_curves, run_curves


def _parse_group(spec: str) -> tuple:
    label, sep, runs = spec.partition("=")
    if not sep or not label.strip() or not runs.strip():
        raise CurvesError(f"--group takes LABEL=RUN,RUN,..., received {spec!r}")
    return label.strip(), [r for r in runs.split(",") if r]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders, one curve each")
    parser.add_argument("--group", action="append", default=[], metavar="LABEL=RUN,RUN",
                        help="runs drawn together with their mean (repeatable)")
    parser.add_argument("--out", required=True, help="the PNG to write (and its .json)")
    parser.add_argument("--title", default="Training curves")
    args = parser.parse_args(argv)
    try:
        if not args.out.endswith(".png"):
            raise CurvesError(f"--out must name a .png file, received {args.out!r}")
        specs = [(os.path.normpath(r), [r]) for r in args.runs]
        specs += [_parse_group(g) for g in args.group]
        if not specs:
            raise CurvesError("give run folders or --group LABEL=RUN,RUN")
        groups = {label: {r: run_curves(r) for r in runs} for label, runs in specs}
        plot_curves(args.out, groups, args.title)
    except CurvesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
