"""Patients -> the slice shard dataset, in this process (``python -m lsnet_tf.prepare``).

Every volume is cut into axial slices in one canonical orientation (slice 0 = lowest z, row 0 =
anterior, column 0 = patient right; see `lsnet_tf.data.volumes`), written as raw HU (int16) with
a binary mask to ``DATASET/fold-K/<patient>.tfrecord``, one shard per patient, atomically.
Patients are split K-fold at patient level (deterministic given the seed). Bad input of one
patient is reported with the file and the reason and does not stop the others; the summary
counts prepared, skipped and failed patients, and the exit status is 1 when any patient failed
(2 for a usage error). ``DATASET/dataset.json`` (`dataset_info`) records folds, patients per
fold, slice counts, the source layout, the label values and the command's arguments. Inputs
and ``DATASET`` may be ``gs://`` URLs (`lsnet_tf.utils.files`; each patient read from a
temporary local copy, each shard written locally and uploaded whole).

`prepare_patient` prepares one patient (here, or on a Beam worker: `prepare_beam`),
`summary_of` gathers the patients' outcomes into the run's `Summary`, and `dataset_info` turns it
into ``dataset.json``: one builder for both ways of running.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from typing import Callable, Sequence

import numpy as np

from lsnet_tf.utils import files, gcs
from lsnet_tf.data import records, volumes
from lsnet_tf.data.volumes import PatientSkipped, PatientSource, PrepareError


@dataclasses.dataclass
class Summary:
    """Outcome of a prepare run: per-patient results and counts."""

    folds: int
    assignment: dict                                                 # {patient: fold}, all patients
    prepared: dict = dataclasses.field(default_factory=dict)         # {patient: details}
    skipped: dict = dataclasses.field(default_factory=dict)          # {patient: reason}
    failed: dict = dataclasses.field(default_factory=dict)           # {patient: message}
    notes: list = dataclasses.field(default_factory=list)
    label_values_found: set = dataclasses.field(default_factory=set)

    @property
    def num_slices(self) -> int:
        return sum(d["slices"] for d in self.prepared.values())

    @property
    def exit_code(self) -> int:
        """0 when no patient failed, else 1 (skipped patients do not count as failures)."""
        return 1 if self.failed else 0

    def patients_per_fold(self) -> dict[str, list[str]]:
        out = {str(k): [] for k in range(self.folds)}
        for pid, d in sorted(self.prepared.items()):
            out[str(d["fold"])].append(pid)
        return out

    def slices_per_fold(self) -> dict[str, int]:
        out = {str(k): 0 for k in range(self.folds)}
        for d in self.prepared.values():
            out[str(d["fold"])] += d["slices"]
        return out

    def report(self) -> str:
        lines = [f"prepared {len(self.prepared)} patients ({self.num_slices} slices), "
                 f"skipped {len(self.skipped)}, failed {len(self.failed)}"]
        per_fold = self.patients_per_fold()
        for k, n in self.slices_per_fold().items():
            lines.append(f"  fold {k}: {len(per_fold[k])} patients, {n} slices")
        for pid, why in sorted(self.skipped.items()):
            lines.append(f"  skipped {pid}: {why}")
        for pid, why in sorted(self.failed.items()):
            lines.append(f"  FAILED {pid}: {why}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def existing_outputs(out_dir: str) -> list[str]:
    """Files of an earlier prepare run in `out_dir`: ``dataset.json`` and ``fold-*/`` shards and
    their temporary files (on any filesystem TensorFlow reads when `out_dir` is a URL)."""
    found = []
    info = os.path.join(out_dir, records.INFO_FILE)
    if files.exists(info):
        found.append(info)
    for pattern in ("*" + records.SHARD_SUFFIX, "*" + records.SHARD_SUFFIX + ".tmp"):
        found += files.glob(os.path.join(out_dir, "fold-*", pattern))
    return sorted(found)


@contextlib.contextmanager
def _shard_destination(path: str):
    """Where `records.ShardWriter` writes the shard `path`: `path` itself, or for a ``gs://`` URL
    (which TensorFlow's writer reaches through its own GCS filesystem, not through
    `lsnet_tf.utils.files`) a temporary local file uploaded to `path` when the block ends
    without an error (one upload: the object appears whole or not at all)."""
    if not gcs.is_gcs(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lsnet_tf-shard-") as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        yield local
        files.copy_file(local, path)


def prepare_patient(patient: PatientSource, fold: int, out_dir: str, label_values=None) -> dict:
    """Read, canonicalise and check one patient and write its shard ``out_dir/fold-K/<id>.tfrecord``
    atomically; never raises for the patient's bad input.

    Returns its outcome: ``patient``, ``fold``, ``status`` (``prepared``, ``skipped`` or
    ``failed``), then ``details`` (the entry of ``dataset.json``'s ``patient_details``) and
    ``label_values_found`` when prepared, ``message`` (the file and the reason) otherwise.
    `prepare_patients` runs it for each patient in process, `prepare_beam` on the workers.
    """
    pid = patient.patient_id
    outcome = {"patient": pid, "fold": int(fold)}
    try:
        volume = patient.load()
        fg = 0
        with _shard_destination(records.shard_path(out_dir, fold, pid)) as path:
            with records.ShardWriter(path) as writer:
                for rec in volumes.volume_records(volume, pid, fold, label_values):
                    writer.write(rec)
                    fg += int(rec.mask.any())
    except PatientSkipped as e:
        return {**outcome, "status": "skipped", "message": str(e)}
    except Exception as e:  # one patient's failure never stops the others
        if isinstance(e, PrepareError):
            msg = str(e)
        else:  # not an input check: name the patient's input and the exception type
            where = next((v for v in patient.sources.values() if v), pid)
            msg = f"{where}: {type(e).__name__}: {e}"
        return {**outcome, "status": "failed", "message": msg}
    details = {
        "fold": int(fold), "slices": writer.count, "slices_with_target": fg,
        "shape": list(volume.hu.shape), "spacing": [round(float(s), 6) for s in volume.spacing],
        "shard": records.shard_name(fold, pid), "sources": patient.sources,
        "skipped_files": [list(s) for s in volume.skipped_files], "notes": list(volume.notes),
    }
    return {**outcome, "status": "prepared", "details": details,
            "label_values_found": sorted(int(v) for v in np.unique(volume.labels))}


def clear_outputs(out_dir: str, overwrite: bool) -> None:
    """Refuse (`FileExistsError`) an `out_dir` that holds an earlier run's outputs, unless
    `overwrite`: then delete those files, and only those."""
    old = existing_outputs(out_dir)
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a prepared dataset ({len(old)} files, e.g. {old[0]}); "
            "pass --overwrite to replace it")
    for path in old:
        files.remove(path)


def prepare_patients(patients: Sequence[PatientSource], out_dir: str, *, folds: int, seed: int = 0,
                     label_values=None, info: dict | None = None, overwrite: bool = False,
                     notes: Sequence[str] = (), log: Callable[[str], None] = print) -> Summary:
    """Write one shard per patient under ``out_dir/fold-K/`` and ``dataset.json``; never raises
    for one patient's bad input.

    Folds are assigned over all given patients before any is read (``kfold_split``), so a patient
    that fails does not move the others to other folds. Each patient's shard is written inside one
    ``records.ShardWriter`` block: a failure (or an interrupt) mid-patient leaves no shard under
    its final name. `PrepareError` and any other exception of one patient are recorded as that
    patient's failure, `PatientSkipped` as a skip, and the run goes on. ``dataset.json`` is written
    last with the per-fold patient lists and slice counts (the keys ``folds``, ``patients``,
    ``num_slices`` read by the tf.data pipeline), ``complete`` (false when a patient failed), the
    failures, `notes` (about the input as a whole) and whatever `info` adds (source layout,
    command).

    Raises:
      FileExistsError: `out_dir` holds an earlier run's outputs and `overwrite` is false (with
        `overwrite`, those files, and only those, are deleted first).
    """
    clear_outputs(out_dir, overwrite)
    assignment = volumes.kfold_split([p.patient_id for p in patients], folds, seed)
    summary = Summary(folds=int(folds), assignment=assignment, notes=list(notes))
    n = len(patients)
    if n < folds:
        summary.notes.append(f"{n} patients for {folds} folds: {folds - n} folds are empty")
    for i, patient in enumerate(sorted(patients, key=lambda p: p.patient_id), start=1):
        pid, fold = patient.patient_id, assignment[patient.patient_id]
        head = f"[{i}/{n}] {pid} (fold {fold})"
        outcome = prepare_patient(patient, fold, out_dir, label_values)
        if outcome["status"] == "skipped":
            summary.skipped[pid] = outcome["message"]
            log(f"{head}: skipped: {outcome['message']}")
            continue
        if outcome["status"] == "failed":
            summary.failed[pid] = outcome["message"]
            log(f"{head}: FAILED: {outcome['message']}")
            continue
        details = summary.prepared[pid] = outcome["details"]
        summary.label_values_found.update(outcome["label_values_found"])
        skipped = details["skipped_files"]
        extra = f"; skipped {len(skipped)} files" if skipped else ""
        log(f"{head}: {details['slices']} slices, {details['slices_with_target']} with target -> "
            f"{details['shard']}{extra}")
        for note in details["notes"]:
            log(f"    note: {note}")
    if label_values is not None and summary.prepared:
        absent = sorted(set(label_values) - summary.label_values_found)
        if absent:
            summary.notes.append(f"label values {absent} appear in no prepared patient")
    records.write_info(out_dir, dataset_info(summary, seed, label_values, info))
    return summary


def summary_of(outcomes, folds: int, assignment: dict, notes=(),
               label_values=None) -> Summary:
    """The run's `Summary` from per-patient outcomes (`prepare_patient`), with the notes
    `prepare_patients` adds (empty folds, label values found in no patient)."""
    summary = Summary(folds=int(folds), assignment=dict(assignment), notes=list(notes))
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


def dataset_info(summary: Summary, seed: int, label_values=None, info=None) -> dict:
    """The content of ``dataset.json`` for a run (in process and on Beam)."""
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
