"""``python -m lsnet_tf.validate``: validate a prepared dataset with TensorFlow Data Validation.

::

    python -m lsnet_tf.validate stats        --dataset DIR [--folds 1,2,3 | --split train]
    python -m lsnet_tf.validate infer-schema --dataset DIR [--split train] [--val-fold 0]
    python -m lsnet_tf.validate check        --dataset DIR [--split eval]  [--val-fold 0]
    python -m lsnet_tf.validate all          --dataset DIR                 [--val-fold 0]

The command: arguments, messages, exit status (0 no anomaly, 1 anomalies, 2 usage error, or a
file or bucket that cannot be read or written: the message names it). The work is
`lsnet_tf.preparation`'s: `~lsnet_tf.preparation.statistics` (TFDV statistics, in process or on
Apache Beam), `~lsnet_tf.preparation.schema` (the schema and its domain constraints), `~lsnet_tf.preparation.anomalies` (anomalies and drift),
`~lsnet_tf.preparation.report` (the files and the HTML report) and
`~lsnet_tf.preparation.validation` (the steps of each subcommand, and the files they write).
Guide: docs/data.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lsnet_tf.utils import beam, console
from lsnet_tf.preparation.anomalies import DEFAULT_LINF_THRESHOLD, JSD_FEATURES
from lsnet_tf.preparation.schema import DEFAULT_HU_RANGE
from lsnet_tf.preparation.statistics import SPLITS, ValidationError, parse_folds
from lsnet_tf.preparation.validation import run_all, run_check, run_infer_schema, run_stats

GUIDE = "guide: docs/data.md"


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] (0 disables), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lsnet_tf.validate",
        description="Validate a prepared dataset with TensorFlow Data Validation.", epilog=GUIDE)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, split_default=None):
        sp.add_argument("--dataset", required=True, help="prepared dataset folder")
        sp.add_argument("--val-fold", type=int, default=0,
                        help="evaluation fold; train = all other folds (default 0)")
        sp.add_argument("--out", default=None, help="output folder (default DATASET/validation)")
        if split_default:
            sp.add_argument("--split", choices=SPLITS, default=split_default,
                            help=f"split to use (default {split_default})")

    def inference(sp):
        sp.add_argument("--hu-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        default=list(DEFAULT_HU_RANGE),
                        help="allowed HU range of hu_min/hu_max/hu_mean (default %(default)s)")

    def thresholds(sp, linf_default, jsd_default, note):
        sp.add_argument("--linf-threshold", type=_threshold, default=linf_default,
                        help="L-infinity drift threshold for num_boxes, 0 disables " + note)
        sp.add_argument("--jsd-threshold", type=_threshold, default=jsd_default,
                        help="Jensen-Shannon drift threshold for " + ", ".join(JSD_FEATURES)
                        + ", 0 disables " + note)

    sp = sub.add_parser("stats", help="statistics of some folds or a split")
    common(sp)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--folds", type=parse_folds, default=None, help="comma-separated folds")
    g.add_argument("--split", choices=SPLITS, default=None, help="split (default train)")

    sp = sub.add_parser("infer-schema", help="infer and save the schema from a split")
    common(sp, "train")
    inference(sp)
    thresholds(sp, DEFAULT_LINF_THRESHOLD, 0.0, "(default %(default)s)")

    sp = sub.add_parser("check", help="validate a split against the saved schema")
    common(sp, "eval")
    sp.add_argument("--schema", default=None, help="schema file (default OUT/schema.pbtxt)")
    sp.add_argument("--baseline-stats", default=None,
                    help="statistics to compare for drift (default train_stats.pb beside the schema)")
    sp.add_argument("--no-drift", action="store_true", help="skip the drift comparison")
    thresholds(sp, None, None, "(default: the schema's setting)")

    sp = sub.add_parser("all", help="infer-schema on train, then check on eval")
    common(sp)
    inference(sp)
    thresholds(sp, DEFAULT_LINF_THRESHOLD, 0.0, "(default %(default)s)")
    for command in sub.choices.values():
        beam.add_beam_arguments(command)
        command.epilog = GUIDE
    return p


def main(argv: Sequence[str] | None = None) -> int:
    own_argv, beam_argv = beam.split_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own_argv)
    if not console.verbose():  # TFDV's and Beam's own FutureWarnings; LSNET_VERBOSE=1 shows them
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        options = beam.pipeline_options(args, beam_argv)
        if options is not None:
            print(f"statistics with {beam.describe(options)}")
        if args.command == "stats":
            return run_stats(args.dataset, args.folds, args.split, args.val_fold, args.out,
                             options=options)
        if args.command == "infer-schema":
            return run_infer_schema(args.dataset, args.split, args.val_fold, args.out,
                                    args.hu_range, args.linf_threshold, args.jsd_threshold,
                                    options=options)
        if args.command == "check":
            return run_check(args.dataset, args.split, args.val_fold, args.out, args.schema,
                             args.baseline_stats, args.linf_threshold, args.jsd_threshold,
                             drift=not args.no_drift, options=options)
        return run_all(args.dataset, args.val_fold, args.out, args.hu_range, args.linf_threshold,
                       args.jsd_threshold, options=options)
    except (ValidationError, beam.BeamOptionsError, OSError) as err:
        # OSError: a bucket or file that cannot be read or written (the message names its URL)
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
