"""Predict a whole volume: ``python -m lsnet_tf.predict --model PATH --input INPUT --out DIR``.

Writes to OUT mask.nii.gz (in the input's geometry), overlays/, summary.json and, for DICOM
input, mask.seg.dcm; many cases each to OUT/<case>/, with OUT/cases.csv. Exit status: 0 on
success, 1 when the input or the model cannot be used, or when a case failed.
Guides: docs/deployment.md (inputs, models, ensembles, outputs), docs/many-cases.md (folders
and lists of cases, resuming, Apache Beam).
"""
from __future__ import annotations

import argparse
import sys

from lsnet_tf.utils import beam
from lsnet_tf.inference import cases, ensemble, many
from lsnet_tf.inference.outputs import DISAGREEMENT_FILE, SEG_FILE
from lsnet_tf.inference.readers import INPUT_KINDS

__all__ = ["main"]


def main(argv=None) -> int:
    argv, beam_argv = beam.split_argv(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.predict", description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog,
                                                                          max_help_position=30))
    parser.add_argument("--model", required=True, action="append", metavar="PATH",
                        help="SavedModel folder or .tflite file; repeated, or a folder of "
                             "models: an ensemble (probabilities averaged)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help=f"{INPUT_KINDS}; or a folder or .txt/.lst list of cases")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="slices per call (SavedModel; default 8)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("ROW", "COL", "SLICE"),
                        help="voxel spacing in mm for .npy/.png input (default 1 1 1)")
    parser.add_argument("--no-overlays", action="store_true", help="do not write PNG overlays")
    parser.add_argument("--no-dicom-seg", action="store_true",
                        help=f"DICOM input: do not write {SEG_FILE} (a DICOM SEG of the mask)")
    parser.add_argument("--overwrite", action="store_true",
                        help="many cases: redo cases whose outputs are already complete")
    parser.add_argument("--series-uid", metavar="UID",
                        help="predict this series of a DICOM folder holding several")
    parser.add_argument("--tta", choices=ensemble.TTA_MODES, default="none", metavar="MODE",
                        help="mirror each slice at test time: none (default); flip: "
                             "left-right; flip2: left-right, up-down and both")
    parser.add_argument("--disagreement", action="store_true",
                        help=f"write {DISAGREEMENT_FILE}, the views' per-voxel standard "
                             "deviation")
    parser.add_argument("--review-below", type=float, default=ensemble.REVIEW_BELOW,
                        metavar="DICE",
                        help="flag for review: views' mean pairwise Dice below DICE (default "
                             f"{ensemble.REVIEW_BELOW})")
    beam.add_beam_arguments(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.review_below <= 1.0:
        parser.error(f"--review-below must lie in [0, 1], got {args.review_below}")
    models = args.model[0] if len(args.model) == 1 else args.model
    more = dict(tta=args.tta, disagreement=args.disagreement, review_below=args.review_below)
    try:
        if many.is_batch_input(args.input):
            if args.series_uid:
                parser.error("--series-uid picks a series of one DICOM folder, not of many "
                             "cases; point --input at the DICOM folder")
            rows = cases.run_many(models, args.input, args.out, batch_size=args.batch_size,
                                  spacing=args.spacing, overlays=not args.no_overlays,
                                  overwrite=args.overwrite, dicom_seg_file=not args.no_dicom_seg,
                                  options=beam.pipeline_options(args, beam_argv), **more)
            return 1 if any(row["status"] == "failed" for row in rows) else 0
        if args.runner or args.beam_options or beam_argv:
            parser.error("--runner and Beam pipeline options apply to many cases (a folder of "
                         "cases or a .txt/.lst list), not to one")
        cases.run(models, args.input, args.out, batch_size=args.batch_size, spacing=args.spacing,
                  overlays=not args.no_overlays, dicom_seg_file=not args.no_dicom_seg,
                  series_uid=args.series_uid, **more)
    except (ValueError, OSError) as e:  # PredictError and the readers' PrepareErrors included
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
