"""``python -m lsnet_tf.evaluate``: evaluate a trained run, or score a folder of NIfTI predictions
against a folder of labels.

::

    python -m lsnet_tf.evaluate --run runs/default [--dataset DIR] [--split val|train|all]
        [--empty-slices exclude|include] [--batch-size N] [--no-flops] --out OUT
        [--markdown FILE.md] [--label NAME]
    python -m lsnet_tf.evaluate --predictions PRED_DIR --labels LABELS_DIR
        [--label-values V [V ...]] [--prediction-values V [V ...]] [--allow-missing]
        [--affine-tol MM] --out OUT [--markdown FILE.md] [--label NAME]

The command: arguments, messages, exit status (0 ok, 2 an error). Both modes write JSON and
Markdown and print the Markdown. The work is `lsnet_tf.evaluation`'s, whose docstrings define
every number: `~lsnet_tf.evaluation.slices` (run mode), `~lsnet_tf.evaluation.folder` (folder
mode), `~lsnet_tf.evaluation.report` (the Markdown, and where ``--out`` puts the files). Guide:
docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import sys

from lsnet_tf.data import records
from lsnet_tf.evaluation import EvaluationError
from lsnet_tf.evaluation.folder import AFFINE_TOL_MM, evaluate_folder
from lsnet_tf.evaluation.report import folder_markdown, markdown, output_paths
from lsnet_tf.evaluation.slices import evaluate_run
from lsnet_tf.utils.files import write_json, write_text
from lsnet_tf.metrics.evaluation import EMPTY_SLICE_MODES

DESCRIPTION = """\
Evaluate a trained run (run mode), or score a folder of NIfTI predictions against a folder of
labels (folder mode). Both write JSON and Markdown (--out) and print the Markdown.

  run mode:    --run DIR [--dataset DIR] [--split val|train|all] [--empty-slices ...] --out OUT
  folder mode: --predictions PRED_DIR --labels LABELS_DIR [--label-values V ...] --out OUT"""

# Options of one mode only: (dest, flag); a mode refuses the other's.
_RUN_OPTIONS = (("dataset", "--dataset"), ("split", "--split"),
                ("empty_slices", "--empty-slices"), ("batch_size", "--batch-size"),
                ("no_flops", "--no-flops"))
_FOLDER_OPTIONS = (("label_values", "--label-values"),
                   ("prediction_values", "--prediction-values"),
                   ("allow_missing", "--allow-missing"), ("affine_tol", "--affine-tol"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsnet_tf.evaluate", description=DESCRIPTION,
                                     epilog="guide: docs/evaluation.md",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (config.yaml + checkpoints/): run mode")
    parser.add_argument("--dataset", help="prepared dataset folder (default: the run's data)")
    parser.add_argument("--split", choices=records.SPLITS, help="default: val")
    parser.add_argument("--empty-slices", choices=EMPTY_SLICE_MODES,
                        help="how slices without a target count in the per-slice averages "
                             "(default: exclude)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--predictions", help="folder of predicted NIfTI masks: folder mode")
    parser.add_argument("--labels", help="folder of label NIfTI files (folder mode)")
    parser.add_argument("--label-values", type=int, nargs="+", metavar="V",
                        help="label values that are the target (default: any non-zero)")
    parser.add_argument("--prediction-values", type=int, nargs="+", metavar="V",
                        help="prediction values that are the target (default: any non-zero)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a labelled case without prediction as an empty mask "
                             "(default: an error)")
    parser.add_argument("--affine-tol", type=float, default=None, metavar="MM",
                        help=f"largest difference of the affines' entries in mm (default "
                             f"{AFFINE_TOL_MM})")
    parser.add_argument("--out", required=True,
                        help="FILE.json, a folder (evaluation.json) or a path prefix")
    parser.add_argument("--markdown", help="Markdown file to write (default: beside the JSON, "
                                           ".md)")
    parser.add_argument("--label", help="method name in the Markdown table")
    args = parser.parse_args(argv)
    folder_mode = args.predictions is not None or args.labels is not None
    if folder_mode == (args.run is not None):
        parser.error("give either --run DIR or --predictions DIR --labels DIR")
    if folder_mode and (args.predictions is None or args.labels is None):
        parser.error("folder mode needs both --predictions and --labels")
    wrong = [flag for dest, flag in (_RUN_OPTIONS if folder_mode else _FOLDER_OPTIONS)
             if getattr(args, dest) not in (None, False)]
    if wrong:
        parser.error(f"{', '.join(wrong)} only {'apply' if len(wrong) > 1 else 'applies'} with "
                     f"{'--run' if folder_mode else '--predictions/--labels'}")
    json_path, md_path = output_paths(args.out, args.markdown)
    try:
        if folder_mode:
            result = evaluate_folder(
                args.predictions, args.labels, args.label_values, args.prediction_values,
                args.allow_missing,
                AFFINE_TOL_MM if args.affine_tol is None else args.affine_tol,
                log=lambda *a: print(*a, file=sys.stderr))
        else:
            result = evaluate_run(args.run, args.dataset, args.split or "val",
                                  args.empty_slices or "exclude", args.batch_size,
                                  flops=not args.no_flops)
    except (EvaluationError, OSError) as e:  # a missing file, a bucket refusing, a cut object
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(json_path, result)
    table = (folder_markdown if folder_mode else markdown)(result, args.label)
    write_text(md_path, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
