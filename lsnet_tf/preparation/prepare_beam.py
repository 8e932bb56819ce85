"""``python -m lsnet_tf.prepare --runner NAME``: the same preparation as an Apache Beam pipeline.

DirectRunner on this machine, or DataflowRunner, FlinkRunner, SparkRunner for archives larger
than one machine; each patient is one element: it is read, canonicalised, checked and its shard
written atomically on a worker (`lsnet_tf.preparation.prepare.prepare_patient`); failed and
skipped patients go to tagged outputs that end, with the prepared ones, in ``dataset.json``
(`lsnet_tf.preparation.prepare.dataset_info`) and the same per-patient report and exit status.
The fold split is decided before the pipeline from the patient list, so it does not depend on the
runner; shards and ``dataset.json`` are the same as in process. ``--out`` may then be a
``gs://`` URL or any filesystem TensorFlow writes; the inputs must be readable by every worker:
a ``gs://`` archive (each worker copies one patient at a time to a temporary local folder,
`lsnet_tf.utils.staging`) or a shared or mounted folder. Pipeline options: ``--beam-options "..."`` and everything
after ``--`` (see `lsnet_tf.utils.beam`)::

    python -m lsnet_tf.prepare tcia --images ... --labels ... --out DATASET --runner DirectRunner \\
        --beam-options "--direct_num_workers=2 --direct_running_mode=multi_processing"

The functions the pipeline pickles are this module's, so that workers import them by name.
"""
from __future__ import annotations

import os

from lsnet_tf.utils import files
from lsnet_tf.data import records, volumes
from lsnet_tf.preparation.prepare import (Summary, clear_outputs, dataset_info,
                                          prepare_patient, summary_of)

METRICS_NAMESPACE = "lsnet_tf.prepare"


def _prepare_element(element, out_dir: str, label_values=None):
    """Beam: one (PatientSource, fold) -> its outcome, tagged ``failed`` or ``skipped`` unless
    prepared (the main output)."""
    import logging

    from apache_beam import pvalue
    from apache_beam.metrics import Metrics

    patient, fold = element
    outcome = prepare_patient(patient, fold, out_dir, label_values)
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


def _publish_dataset_info(outcomes, out_dir: str, folds: int, seed: int, assignment: dict,
                          label_values=None, info=None, notes=()) -> None:
    """Beam: every patient's outcome -> ``dataset.json``, written last (atomically, through
    tf.io.gfile for a URL: `lsnet_tf.utils.files.write_text`)."""
    summary = summary_of(outcomes, folds, assignment, notes, label_values)
    files.write_text(os.path.join(out_dir, records.INFO_FILE),
                     records.info_text(dataset_info(summary, seed, label_values, info)))


def prepare_with_beam(patients, out_dir: str, options, *, folds: int, seed: int = 0,
                      label_values=None, info: dict | None = None, overwrite: bool = False,
                      notes=(), log=print) -> Summary:
    """`lsnet_tf.preparation.prepare.prepare_patients` as an Apache Beam pipeline run with
    `options` (``PipelineOptions``, see `lsnet_tf.utils.beam`): one element per patient, failures and
    skips as tagged outputs, ``dataset.json`` written by the pipeline's last step; returns the
    Summary read back from it. The same shards, ``dataset.json`` and folds as in process.

    Raises:
      FileExistsError: `out_dir` holds an earlier run's outputs and `overwrite` is false (with
        `overwrite`, those files, and only those, are deleted first).
    """
    import apache_beam as beam_sdk

    clear_outputs(out_dir, overwrite)
    # The fold split is decided here, from the patient list, whatever the runner does.
    assignment = volumes.kfold_split([p.patient_id for p in patients], folds, seed)
    elements = [(p, assignment[p.patient_id]) for p in sorted(patients, key=lambda p: p.patient_id)]
    with beam_sdk.Pipeline(options=options) as pipeline:
        outcomes = (pipeline
                    | "Patients" >> beam_sdk.Create(elements)
                    | "Prepare" >> beam_sdk.FlatMap(_prepare_element, out_dir, label_values)
                    .with_outputs("failed", "skipped", main="prepared"))
        _ = ((outcomes.prepared, outcomes.failed, outcomes.skipped)
             | "AllOutcomes" >> beam_sdk.Flatten()
             | "Collect" >> beam_sdk.combiners.ToList()
             | "WriteDatasetJson" >> beam_sdk.Map(
                 _publish_dataset_info, out_dir, folds, seed, assignment, label_values, info,
                 list(notes)))
    written = records.read_info(out_dir)
    summary = Summary(folds=int(written["folds"]), assignment=written["fold_assignment"],
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
