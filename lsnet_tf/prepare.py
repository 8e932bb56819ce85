"""``python -m lsnet_tf.prepare``: CT volumes and labels -> the slice shard dataset.

Two input layouts::

    python -m lsnet_tf.prepare tcia --images Pancreas-CT --labels TCIA_pancreas_labels-02-05-2017 \\
        --out DATASET [--folds 4] [--seed 0] [--axial-only] [--series-uid UID ...]
    python -m lsnet_tf.prepare msd --root Task07_Pancreas --out DATASET [--label-values 1,2] \\
        [--folds 4] [--seed 0]

``tcia``: one folder per patient under ``--images`` (``PANCREAS_0001/<study>/<series>/*.dcm``),
matched to ``--labels/labelNNNN.nii.gz`` by the number in the names (0001 <-> 1). ``msd``:
``imagesTr/x.nii.gz`` with ``labelsTr/x.nii.gz`` (hidden files such as macOS ``._x.nii.gz`` are
ignored). The target is every non-zero label value, or the union of ``--label-values``. Label
values must be integers >= 0 (NaN, fractional or negative values fail the patient); for MSD,
a value that is not a class of the task's own ``dataset.json`` (``labels``) fails it too.
Image voxels must be finite (a NaN or infinite voxel fails the patient, never becomes a HU).

Every volume is cut into axial slices in one canonical orientation (slice 0 = lowest z, row 0 =
anterior, column 0 = patient right; see `lsnet_tf.data.volumes`), written as raw HU (int16) with
a binary mask to ``DATASET/fold-K/<patient>.tfrecord``, one shard per patient, atomically.
Patients are split K-fold at patient level (deterministic given the seed). Bad input of one
patient is reported with the file and the reason and does not stop the others; the summary
counts prepared, skipped and failed patients, and the exit status is 1 when any patient failed
(2 for a usage error). ``DATASET/dataset.json`` records folds, patients per fold, slice counts,
the source layout, the label values and this command's arguments.
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import sys

import numpy as np

from lsnet_tf.data import dicom, nifti, volumes
from lsnet_tf.data.volumes import MissingLabelError, PatientSource, PrepareError

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def patient_number(name: str) -> int | None:
    """The last run of digits in a file or folder name: ``PANCREAS_0012`` and ``label0012.nii.gz``
    both give 12; None when there is none."""
    base = name
    for suffix in NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
    digits = re.findall(r"\d+", base)
    return int(digits[-1]) if digits else None


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _load_tcia(folder, label, label_problem, series_uid, axial_only, origin_tol_mm):
    if label is None:
        raise MissingLabelError(folder, label_problem)
    series = dicom.read_series(folder, series_uid=series_uid, axial_only=axial_only)
    labels = nifti.read_label(label, series.affine, series.hu.shape, reference=folder,
                              origin_tol_mm=origin_tol_mm)
    return volumes.LabelledVolume(hu=series.hu, labels=labels, affine=series.affine,
                                  spacing=series.spacing, skipped_files=series.skipped_files,
                                  notes=series.notes)


def tcia_patients(images: str, labels: str, series_uid=(), axial_only: bool = False,
                  origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM):
    """Patients of the TCIA layout: ``(sources, notes)``.

    Each patient folder of `images` is matched to the label file of `labels` with the same number.
    A folder with no label (or several) becomes a patient whose load raises `MissingLabelError`;
    labels with no folder are listed in `notes`.
    """
    for d, what in ((images, "--images"), (labels, "--labels")):
        if not os.path.isdir(d):
            raise PrepareError(d, f"{what} is not a folder")
    folders = [n for n in _visible(os.listdir(images)) if os.path.isdir(os.path.join(images, n))]
    if not folders:
        raise PrepareError(images, "no patient folders (expected one folder per patient, e.g. "
                                   "PANCREAS_0001/)")
    label_files = collections.defaultdict(list)
    for name in _visible(os.listdir(labels)):
        if _is_nifti(name) and patient_number(name) is not None:
            label_files[patient_number(name)].append(os.path.join(labels, name))
    folder_numbers = collections.Counter(patient_number(f) for f in folders)
    sources = []
    for name in folders:
        folder, number = os.path.join(images, name), patient_number(name)
        matches = label_files.get(number, []) if number is not None else []
        label, problem = None, None
        if number is None:
            problem = "folder name has no number to match a label file by"
        elif folder_numbers[number] > 1:
            problem = f"several patient folders have the number {number}; cannot match labels"
        elif not matches:
            problem = f"no label file with number {number} in {labels}"
        elif len(matches) > 1:
            problem = f"several label files with number {number}: {matches}"
        else:
            label = matches[0]
        load = functools.partial(_load_tcia, folder, label, problem, series_uid, axial_only,
                                 origin_tol_mm)
        sources.append(PatientSource(name, load, {"images": os.path.abspath(folder),
                                                  "label": label and os.path.abspath(label)}))
    orphans = sorted(p for n, ps in label_files.items() if n not in folder_numbers for p in ps)
    notes = [f"{len(orphans)} label files have no patient folder: "
             + ", ".join(os.path.basename(p) for p in orphans)] if orphans else []
    return sources, notes


def _load_msd(image, label, origin_tol_mm, task_labels=None):
    if label is None:
        raise MissingLabelError(image, "no label file of the same name in labelsTr/")
    volume = nifti.read_image_and_label(image, label, origin_tol_mm=origin_tol_mm)
    if task_labels:
        found = {int(v) for v in np.unique(volume.labels)}
        unknown = sorted(found - set(task_labels))
        if unknown:
            raise nifti.NiftiError(label, f"label values {unknown} are not classes of this task "
                                          f"(dataset.json labels {task_labels})")
    return volume


def msd_patients(root: str, origin_tol_mm: float = volumes.ORIGIN_TOLERANCE_MM):
    """Patients of the MSD layout: ``(sources, notes, label_names)``; label_names from the task's
    own dataset.json ({} when absent). With label names, a patient whose label holds a value that
    is not one of them fails (`NiftiError` naming the label file and the values)."""
    images, labels = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    for d in (images, labels):
        if not os.path.isdir(d):
            raise PrepareError(d, "missing: the MSD layout has imagesTr/ and labelsTr/")
    image_files = [n for n in _visible(os.listdir(images)) if _is_nifti(n)]
    if not image_files:
        raise PrepareError(images, "no NIfTI images (*.nii.gz)")
    label_names = {_strip_nifti(n): n for n in _visible(os.listdir(labels)) if _is_nifti(n)}
    notes = []
    task_labels = {}
    meta = os.path.join(root, "dataset.json")
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                task_labels = {int(k): str(v) for k, v in json.load(f).get("labels", {}).items()}
        except (ValueError, AttributeError, OSError) as e:
            notes.append(f"{meta} not read ({e})")
    sources, used = [], set()
    for name in image_files:
        pid = _strip_nifti(name)
        key = pid if pid in label_names else re.sub(r"_0000$", "", pid)  # nnU-Net channel suffix
        label = os.path.join(labels, label_names[key]) if key in label_names else None
        used.add(key)
        sources.append(PatientSource(
            key, functools.partial(_load_msd, os.path.join(images, name), label, origin_tol_mm,
                                   task_labels),
            {"image": os.path.abspath(os.path.join(images, name)),
             "label": label and os.path.abspath(label)}))
    orphans = sorted(set(label_names) - used)
    if orphans:
        notes.append(f"{len(orphans)} labels have no image: {', '.join(orphans)}")
    return sources, notes, task_labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.prepare",
        description="Turn CT volumes and labels into the per-patient slice shard dataset.")
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

    t = sub.add_parser("tcia", help="TCIA Pancreas-CT: DICOM series + NIfTI labels")
    t.add_argument("--images", required=True, help="folder with one folder per patient")
    t.add_argument("--labels", required=True, help="folder with labelNNNN.nii.gz files")
    t.add_argument("--axial-only", action="store_true",
                   help="skip series not acquired axially (default: re-cut axis-aligned sagittal "
                        "or coronal series into axial slices by permuting axes)")
    t.add_argument("--series-uid", action="append", default=[],
                   help="SeriesInstanceUID to use where a patient folder holds several series "
                        "(repeatable)")
    common(t)
    m = sub.add_parser("msd", help="Medical Segmentation Decathlon: imagesTr/ + labelsTr/ NIfTI")
    m.add_argument("--root", required=True, help="task folder, e.g. Task07_Pancreas")
    common(m)
    return parser


def main(argv=None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a patient failed, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    try:
        if args.folds < 2:
            raise ValueError(f"--folds must be >= 2, got {args.folds}")
        if args.origin_tolerance_mm < 0:
            raise ValueError(f"--origin-tolerance-mm must be >= 0, got {args.origin_tolerance_mm}")
        label_values = volumes.parse_label_values(args.label_values)
        resolved = {k: (os.path.abspath(v) if k in ("out", "images", "labels", "root") else v)
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
        log(f"preparing {len(sources)} patients into {args.out} ({args.folds} folds, seed {args.seed})")
        summary = volumes.prepare_patients(
            sources, args.out, folds=args.folds, seed=args.seed, label_values=label_values,
            info=info, overwrite=args.overwrite, notes=notes, log=log)
    except (PrepareError, ValueError, FileExistsError) as e:
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
