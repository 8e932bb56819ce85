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

With ``--runner NAME`` the same work runs as an Apache Beam pipeline (DirectRunner on this
machine, or DataflowRunner, FlinkRunner, SparkRunner for archives larger than one machine), each
patient one element: it is read, canonicalised, checked and its shard written atomically on a
worker; failed and skipped patients go to tagged outputs that end, with the prepared ones, in
``dataset.json`` and the same per-patient report and exit status. The fold split is decided
before the pipeline from the patient list, so it does not depend on the runner; shards and
``dataset.json`` are the same as in process. ``--out`` may then be any filesystem TensorFlow
writes (``gs://bucket/dataset``); the inputs must be readable by every worker (a shared or
mounted folder). Pipeline options: ``--beam-options "..."`` and everything after ``--``
(see `lsnet_tf.beam`)::

    python -m lsnet_tf.prepare tcia --images ... --labels ... --out DATASET --runner DirectRunner \
        --beam-options "--direct_num_workers=2 --direct_running_mode=multi_processing"
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

from lsnet_tf import beam
from lsnet_tf.data import dicom, nifti, records, volumes
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
    for p in (t, m):
        beam.add_beam_arguments(p)
    return parser


# ------------------------------------------------------------------ one patient (Beam workers)
METRICS_NAMESPACE = "lsnet_tf.prepare"


def _prepare_element(element, out_dir: str, label_values=None):
    """Beam: one (PatientSource, fold) -> its outcome, tagged ``failed`` or ``skipped`` unless
    prepared (the main output)."""
    import logging

    from apache_beam import pvalue
    from apache_beam.metrics import Metrics

    patient, fold = element
    outcome = volumes.prepare_patient(patient, fold, out_dir, label_values)
    status = outcome["status"]
    Metrics.counter(METRICS_NAMESPACE, f"patients_{status}").inc()
    if status == "prepared":
        Metrics.counter(METRICS_NAMESPACE, "slices").inc(outcome["details"]["slices"])
        logging.info("%s (fold %d): %d slices -> %s", patient.patient_id, fold,
                     outcome["details"]["slices"], outcome["details"]["shard"])
        yield outcome
    else:
        logging.info("%s (fold %d): %s: %s", patient.patient_id, fold, status,
                     outcome["message"])
        yield pvalue.TaggedOutput(status, outcome)


def summary_of(outcomes, folds: int, assignment: dict, notes=(),
               label_values=None) -> volumes.Summary:
    """The run's `volumes.Summary` from per-patient outcomes (`volumes.prepare_patient`), with the notes
    ``prepare_patients`` adds (empty folds, label values found in no patient)."""
    summary = volumes.Summary(folds=int(folds), assignment=dict(assignment), notes=list(notes))
    n = len(assignment)
    if n < folds:
        summary.notes.append(f"{n} patients for {folds} folds: {folds - n} folds are empty")
    for o in sorted(outcomes, key=lambda o: o["patient"]):
        if o["status"] == "prepared":
            summary.prepared[o["patient"]] = o["details"]
            summary.label_values_found.update(o["label_values_found"])
        elif o["status"] == "skipped":
            summary.skipped[o["patient"]] = o["message"]
        else:
            summary.failed[o["patient"]] = o["message"]
    if label_values is not None and summary.prepared:
        absent = sorted(set(label_values) - summary.label_values_found)
        if absent:
            summary.notes.append(f"label values {absent} appear in no prepared patient")
    return summary


def dataset_info(summary: volumes.Summary, seed: int, label_values=None, info=None) -> dict:
    """The content of ``dataset.json`` for a run (as ``volumes.prepare_patients`` writes it)."""
    full_info = dict(info or {})
    full_info.update({
        "folds": int(summary.folds),
        "seed": int(seed),
        "patients": summary.patients_per_fold(),
        "num_slices": summary.slices_per_fold(),
        "num_patients": len(summary.prepared),
        "total_slices": summary.num_slices,
        "patient_details": summary.prepared,
        "fold_assignment": dict(sorted(summary.assignment.items())),
        "skipped": summary.skipped,
        "failed": summary.failed,
        "complete": not summary.failed,
        "label_values": list(label_values) if label_values is not None else "nonzero",
        "label_values_found": sorted(summary.label_values_found),
        "orientation": volumes.CANONICAL_ORIENTATION,
        "notes": summary.notes,
    })
    return full_info


def _publish_dataset_info(outcomes, out_dir: str, folds: int, seed: int, assignment: dict,
                          label_values=None, info=None, notes=()) -> None:
    """Beam: every patient's outcome -> ``dataset.json``, written last (through tf.io.gfile)."""
    summary = summary_of(outcomes, folds, assignment, notes, label_values)
    records.publish(os.path.join(out_dir, records.INFO_FILE),
                    records.info_text(dataset_info(summary, seed, label_values, info)))


def existing_outputs(out_dir: str) -> list[str]:
    """Files of an earlier run in `out_dir` (``dataset.json``, ``fold-*/`` shards and their
    temporary files), found through tf.io.gfile (so on any filesystem TensorFlow reads)."""
    import tensorflow as tf

    found = []
    info = os.path.join(out_dir, records.INFO_FILE)
    if tf.io.gfile.exists(info):
        found.append(info)
    for pattern in ("*" + records.SHARD_SUFFIX, "*" + records.SHARD_SUFFIX + ".tmp"):
        found += tf.io.gfile.glob(os.path.join(out_dir, "fold-*", pattern))
    return sorted(found)


def prepare_with_beam(patients, out_dir: str, options, *, folds: int, seed: int = 0,
                      label_values=None, info: dict | None = None, overwrite: bool = False,
                      notes=(), log=print) -> volumes.Summary:
    """`volumes.prepare_patients` as an Apache Beam pipeline run with `options`
    (``PipelineOptions``, see `lsnet_tf.beam`): one element per patient, failures and skips as
    tagged outputs, ``dataset.json`` written by the pipeline's last step; returns the Summary
    read back from it. The same shards, ``dataset.json`` and folds as in process.

    Raises:
      FileExistsError: `out_dir` holds an earlier run's outputs and `overwrite` is false (with
        `overwrite`, those files, and only those, are deleted first).
    """
    import apache_beam as beam_sdk
    import tensorflow as tf

    # What the pipeline pickles must name this module by its import name, also when it runs as
    # ``python -m lsnet_tf.prepare`` (where these functions would be __main__'s, unknown to the
    # workers).
    from lsnet_tf import prepare as this

    old = this.existing_outputs(out_dir)
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a prepared dataset ({len(old)} files, e.g. {old[0]}); "
            "pass --overwrite to replace it")
    for path in old:
        tf.io.gfile.remove(path)
    # The fold split is decided here, from the patient list, whatever the runner does.
    assignment = volumes.kfold_split([p.patient_id for p in patients], folds, seed)
    elements = [(p, assignment[p.patient_id]) for p in sorted(patients, key=lambda p: p.patient_id)]
    with beam_sdk.Pipeline(options=options) as pipeline:
        outcomes = (pipeline
                    | "Patients" >> beam_sdk.Create(elements)
                    | "Prepare" >> beam_sdk.FlatMap(this._prepare_element, out_dir, label_values)
                    .with_outputs("failed", "skipped", main="prepared"))
        _ = ((outcomes.prepared, outcomes.failed, outcomes.skipped)
             | "AllOutcomes" >> beam_sdk.Flatten()
             | "Collect" >> beam_sdk.combiners.ToList()
             | "WriteDatasetJson" >> beam_sdk.Map(
                 this._publish_dataset_info, out_dir, folds, seed, assignment, label_values, info,
                 list(notes)))
    written = records.read_info(out_dir)
    summary = volumes.Summary(folds=int(written["folds"]), assignment=written["fold_assignment"],
                              prepared=written["patient_details"], skipped=written["skipped"],
                              failed=written["failed"], notes=written["notes"],
                              label_values_found=set(written["label_values_found"]))
    n = len(assignment)
    for i, pid in enumerate(sorted(assignment), start=1):
        head = f"[{i}/{n}] {pid} (fold {assignment[pid]})"
        if pid in summary.skipped:
            log(f"{head}: skipped: {summary.skipped[pid]}")
        elif pid in summary.failed:
            log(f"{head}: FAILED: {summary.failed[pid]}")
        else:
            d = summary.prepared[pid]
            extra = f"; skipped {len(d['skipped_files'])} files" if d["skipped_files"] else ""
            log(f"{head}: {d['slices']} slices, {d['slices_with_target']} with target -> "
                f"{d['shard']}{extra}")
            for note in d["notes"]:
                log(f"    note: {note}")
    return summary


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
        if options is None and records.is_remote(args.out):
            raise ValueError(f"--out {args.out} is not a local folder: writing there needs "
                             "--runner (e.g. --runner DirectRunner on this machine)")
        resolved = {k: (os.path.abspath(v) if k in ("out", "images", "labels", "root")
                        and not records.is_remote(v) else v)
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
            summary = volumes.prepare_patients(
                sources, args.out, folds=args.folds, seed=args.seed, label_values=label_values,
                info=info, overwrite=args.overwrite, notes=notes, log=log)
        else:
            summary = prepare_with_beam(
                sources, args.out, options, folds=args.folds, seed=args.seed,
                label_values=label_values, info=info, overwrite=args.overwrite, notes=notes,
                log=log)
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
    # Run the module under its import name, so that the functions a Beam pipeline pickles are
    # lsnet_tf.prepare's (a worker cannot import this __main__).
    from lsnet_tf import prepare as _prepare

    sys.exit(_prepare.main())
