"""``python -m lsnet_tf.prepare``: CT volumes and labels -> the slice shard dataset.

Two input layouts::

    python -m lsnet_tf.prepare tcia --images Pancreas-CT --labels TCIA_pancreas_labels-02-05-2017 \\
        --out DATASET [--folds 4] [--seed 0] [--axial-only] [--series-uid UID ...]
    python -m lsnet_tf.prepare msd --root Task07_Pancreas --out DATASET [--label-values 1,2] \\
        [--folds 4] [--seed 0]

The command: arguments, messages, exit status (0 ok, 1 a patient failed, 2 usage error). The
work is `lsnet_tf.preparation`'s: `~lsnet_tf.preparation.cases` finds the patients of each
layout, `~lsnet_tf.preparation.prepare` writes the shards and ``dataset.json`` in this process,
`~lsnet_tf.preparation.prepare_beam` as an Apache Beam pipeline (``--runner NAME``). Guide:
docs/data.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from lsnet_tf.utils import beam, gcs
from lsnet_tf.data import volumes
from lsnet_tf.data.volumes import PrepareError
from lsnet_tf.utils.files import is_remote
from lsnet_tf.preparation.cases import msd_patients, tcia_patients
from lsnet_tf.preparation.prepare import prepare_patients
from lsnet_tf.preparation.prepare_beam import prepare_with_beam

GUIDE = "guide: docs/data.md"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.prepare",
        description="Turn CT volumes and labels into the per-patient slice shard dataset.",
        epilog=GUIDE)
    sub = parser.add_subparsers(dest="layout", required=True)

    def common(p):
        p.add_argument("--out", required=True, help="dataset folder to write")
        p.add_argument("--folds", type=int, default=4, help="K of the patient-level K-fold split (>= 2)")
        p.add_argument("--seed", type=int, default=0, help="seed of the fold split")
        p.add_argument("--label-values", default=None,
                       help="comma-separated label values whose union is the target "
                            "(default: every non-zero value)")
        p.add_argument("--origin-tolerance-mm", type=float, default=volumes.ORIGIN_TOLERANCE_MM,
                       help="allowed distance between the first voxels of image and label")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the shards and dataset.json of an earlier run in --out")

    t = sub.add_parser("tcia", help="TCIA Pancreas-CT: DICOM series + NIfTI labels", epilog=GUIDE)
    t.add_argument("--images", required=True, help="folder with one folder per patient")
    t.add_argument("--labels", required=True, help="folder with labelNNNN.nii.gz files")
    t.add_argument("--axial-only", action="store_true",
                   help="skip series not acquired axially (default: re-cut axis-aligned sagittal "
                        "or coronal series into axial slices by permuting axes)")
    t.add_argument("--series-uid", action="append", default=[],
                   help="SeriesInstanceUID to use where a patient folder holds several series "
                        "(repeatable)")
    common(t)
    m = sub.add_parser("msd", help="Medical Segmentation Decathlon: imagesTr/ + labelsTr/ NIfTI",
                       epilog=GUIDE)
    m.add_argument("--root", required=True, help="task folder, e.g. Task07_Pancreas")
    common(m)
    for p in (t, m):
        beam.add_beam_arguments(p)
    return parser


def main(argv=None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a patient failed, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own_argv, beam_argv = beam.split_argv(argv)
    args = build_parser().parse_args(own_argv)

    def log(msg):
        print(msg, flush=True)

    try:
        if args.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {args.folds}")
        if args.origin_tolerance_mm < 0:
            raise ValueError(f"--origin-tolerance-mm must be >= 0, got {args.origin_tolerance_mm}")
        label_values = volumes.parse_label_values(args.label_values)
        options = beam.pipeline_options(args, beam_argv)
        if options is None and is_remote(args.out) and not gcs.is_gcs(args.out):
            raise ValueError(f"--out {args.out} is not a local folder: writing there needs "
                             "--runner (e.g. --runner DirectRunner on this machine)")
        resolved = {k: (os.path.abspath(v) if k in ("out", "images", "labels", "root")
                        and not is_remote(v) else v)
                    for k, v in vars(args).items()}
        info = {"command": {"argv": ["python", "-m", "lsnet_tf.prepare", *argv], "args": resolved}}
        if args.layout == "tcia":
            sources, notes = tcia_patients(args.images, args.labels, args.series_uid,
                                           args.axial_only, args.origin_tolerance_mm)
            info["source"] = "tcia"
            info["source_layout"] = {
                "layout": "tcia", "images": resolved["images"], "labels": resolved["labels"],
                "format": "one DICOM series per patient folder + labelNNNN.nii.gz"}
        else:
            sources, notes, task_labels = msd_patients(args.root, args.origin_tolerance_mm)
            if task_labels and label_values:
                unknown = [v for v in label_values if v not in task_labels]
                if unknown:
                    raise ValueError(f"--label-values {unknown} are not labels of this task "
                                     f"({task_labels})")
            info["source"] = "msd"
            info["source_layout"] = {"layout": "msd", "root": resolved["root"],
                                     "format": "imagesTr/*.nii.gz + labelsTr/*.nii.gz",
                                     "task_labels": {str(k): v for k, v in task_labels.items()}}
        runner = f" with {beam.describe(options)}" if options is not None else ""
        log(f"preparing {len(sources)} patients into {args.out} ({args.folds} folds, "
            f"seed {args.seed}){runner}")
        if options is None:
            summary = prepare_patients(
                sources, args.out, folds=args.folds, seed=args.seed, label_values=label_values,
                info=info, overwrite=args.overwrite, notes=notes, log=log)
        else:
            summary = prepare_with_beam(
                sources, args.out, options, folds=args.folds, seed=args.seed,
                label_values=label_values, info=info, overwrite=args.overwrite, notes=notes,
                log=log)
    except (PrepareError, ValueError, FileExistsError, gcs.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log(summary.report())
    if summary.failed:
        print(f"{len(summary.failed)} of {len(sources)} patients failed:", file=sys.stderr)
        for pid, why in sorted(summary.failed.items()):
            print(f"  {pid}: {why}", file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
