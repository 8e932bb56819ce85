"""The steps of ``python -m lsnet_tf.validate``: statistics, schema inference, checking a split.

Each of `run_stats`, `run_infer_schema`, `run_check` and `run_all` prints what it found and
returns the command's exit status: 0 when no anomaly is found, 1 when there are anomalies; a
usage error (missing or unprepared dataset, a split without shards, ``check`` before
``infer-schema``, pipeline options that cannot be used) raises `ValidationError` (exit status 2).

Everything is written under ``DIR/validation/`` (``--out`` changes it):

==========================  ====================================================================
file                        content
==========================  ====================================================================
schema.pbtxt                the schema (text proto, ``tfdv.load_schema_text``)
schema_info.json            which folds the schema was inferred from, and the options used
<split>_stats.pb            statistics, binary ``DatasetFeatureStatisticsList``
                            (``tfdv.load_stats_binary``)
<split>_anomalies.pbtxt     the ``Anomalies`` proto (``tfdv.load_anomalies_text``)
<split>_anomalies.json      the same, one entry per anomaly, plus drift measurements
<split>_report.html         summary tables (readable offline) followed by TFDV's Facets Overview
                            of the split next to the training split (Facets loads its scripts
                            from the web, so that part needs a network connection to render)
==========================  ====================================================================

With Beam pipeline options (``--runner``), the statistics come from
`lsnet_tf.preparation.statistics.beam_statistics`; everything else is the same.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from lsnet_tf.utils.files import isfile, makedirs, read_text, write_text
from lsnet_tf.preparation.anomalies import (DEFAULT_LINF_THRESHOLD, anomaly_rows,
                                            format_anomalies, set_drift_thresholds, validate)
from lsnet_tf.preparation.report import (format_summary, load_schema, load_statistics,
                                         save_anomalies, save_schema, save_statistics,
                                         statistics_html)
from lsnet_tf.preparation.schema import DEFAULT_HU_RANGE, infer_dataset_schema
from lsnet_tf.preparation.statistics import (ValidationError, available_folds, beam_statistics,
                                             compute_statistics, folds_of, read_feature_batches,
                                             statistics_schema, statistics_view)

OUT_DIR = "validation"
SCHEMA_FILE = "schema.pbtxt"
SCHEMA_INFO_FILE = "schema_info.json"


def _out_dir(dataset_dir: str, out: str | None) -> str:
    return out or os.path.join(dataset_dir, OUT_DIR)


def run_stats(dataset_dir: str, folds: Sequence[int] | None = None, split: str | None = None,
              val_fold: int = 0, out: str | None = None, options=None) -> int:
    """Statistics of `folds` (or of `split`); writes ``<tag>_stats.pb`` and ``<tag>_report.html``.
    With Beam `options`, a pipeline computes them (`beam_statistics`)."""
    if folds is None:
        split = split or "train"
        folds = folds_of(dataset_dir, split, val_fold)
        tag = split
    else:
        available_folds(dataset_dir)
        tag = "folds-" + "_".join(str(k) for k in folds)
    out_dir = _out_dir(dataset_dir, out)
    if options is None:
        stats = compute_statistics(read_feature_batches(dataset_dir, folds), name=tag)
    else:
        (stats,) = beam_statistics(dataset_dir, [(folds, None, tag)], options, out_dir)
    print(format_summary(stats))
    print("statistics:", save_statistics(os.path.join(out_dir, f"{tag}_stats.pb"), stats))
    print("report:    ", write_text(os.path.join(out_dir, f"{tag}_report.html"),
                                statistics_html(stats, title=f"Statistics of {tag} (folds {list(folds)})")))
    return 0


def run_infer_schema(dataset_dir: str, split: str = "train", val_fold: int = 0,
                     out: str | None = None, hu_range: Sequence[float] = DEFAULT_HU_RANGE,
                     linf_threshold: float = DEFAULT_LINF_THRESHOLD,
                     jsd_threshold: float = 0.0, options=None, computed=None) -> int:
    """Infer the schema from `split`, save it with the split's statistics and report, and
    validate the split itself against it (its own out-of-domain values are anomalies).

    With Beam `options`, one pipeline computes the split's statistics without a schema and with
    `statistics_schema` (or `computed`, that pair, comes from a pipeline already run); a second
    pass with the inferred schema runs only where `statistics_view` tells them apart.
    """
    folds = folds_of(dataset_dir, split, val_fold)
    import tensorflow_data_validation as tfdv  # after the dataset checks: errors come quickly

    out_dir = _out_dir(dataset_dir, out)
    if options is None:
        batches = read_feature_batches(dataset_dir, folds)
        schema = infer_dataset_schema(compute_statistics(batches), hu_range, linf_threshold,
                                      jsd_threshold)
        stats = compute_statistics(batches, schema, name=split)
    else:
        raw, stats = computed or beam_statistics(
            dataset_dir, [(folds, None, ""), (folds, statistics_schema(), split)], options,
            out_dir)
        schema = infer_dataset_schema(raw, hu_range, linf_threshold, jsd_threshold)
        if statistics_view(schema) != statistics_view(statistics_schema()):
            (stats,) = beam_statistics(dataset_dir, [(folds, schema, split)], options, out_dir)
    anomalies = validate(stats, schema)
    makedirs(out_dir)
    schema_path = os.path.join(out_dir, SCHEMA_FILE)
    save_schema(schema_path, schema)
    write_text(os.path.join(out_dir, SCHEMA_INFO_FILE), json.dumps({
        "split": split, "folds": list(folds), "val_fold": val_fold,
        "num_examples": int(stats.datasets[0].num_examples), "hu_range": list(hu_range),
        "linf_threshold": linf_threshold, "jsd_threshold": jsd_threshold,
        "tfdv_version": tfdv.__version__}, indent=2) + "\n")
    print(format_summary(stats))
    print("schema:    ", schema_path)
    print("statistics:", save_statistics(os.path.join(out_dir, f"{split}_stats.pb"), stats))
    paths = save_anomalies(out_dir, split, anomalies, split=split, folds=list(folds))
    print("report:    ", write_text(os.path.join(out_dir, f"{split}_report.html"), statistics_html(
        stats, anomalies=anomalies, title=f"{split} split (folds {list(folds)}) against its schema")))
    print("anomalies: ", " ".join(paths))
    print(f"{split} split against its own schema: " + format_anomalies(anomalies))
    return 1 if anomaly_rows(anomalies) else 0


def run_check(dataset_dir: str, split: str = "eval", val_fold: int = 0, out: str | None = None,
              schema_path: str | None = None, baseline_path: str | None = None,
              linf_threshold: float | None = None, jsd_threshold: float | None = None,
              drift: bool = True, options=None, computed=None) -> int:
    """Validate `split` against the saved schema (and, with `drift`, against the training
    statistics saved beside it); print the anomalies; 1 if there are any, else 0.

    With Beam `options`, a pipeline computes the split's statistics with the schema, unless
    `computed` holds them from a pipeline already run with `statistics_schema` and the schema
    has the same `statistics_view`.
    """
    folds = folds_of(dataset_dir, split, val_fold)
    out_dir = _out_dir(dataset_dir, out)
    schema_path = schema_path or os.path.join(out_dir, SCHEMA_FILE)
    if not isfile(schema_path):
        raise ValidationError(
            f"no schema at {schema_path}; infer one first with "
            f"`python -m lsnet_tf.validate infer-schema --dataset {dataset_dir}`")
    schema = load_schema(schema_path)
    set_drift_thresholds(schema, linf_threshold, jsd_threshold)
    info_path = os.path.join(os.path.dirname(schema_path), SCHEMA_INFO_FILE)
    if isfile(info_path):
        schema_folds = set(json.loads(read_text(info_path)).get("folds", []))
        if schema_folds & set(folds):
            print(f"warning: folds {sorted(schema_folds & set(folds))} of the {split} split were "
                  "used to infer the schema", file=sys.stderr)
    if baseline_path and not isfile(baseline_path):
        raise ValidationError(f"baseline statistics {baseline_path} do not exist")
    baseline = None
    baseline_path = baseline_path or os.path.join(os.path.dirname(schema_path), "train_stats.pb")
    if drift and isfile(baseline_path):
        baseline = load_statistics(baseline_path)
    if options is None:
        stats = compute_statistics(read_feature_batches(dataset_dir, folds), schema, name=split)
    elif computed is not None and statistics_view(schema) == statistics_view(statistics_schema()):
        stats = computed
    else:
        (stats,) = beam_statistics(dataset_dir, [(folds, schema, split)], options, out_dir)
    anomalies = validate(stats, schema, baseline)
    print(format_summary(stats))
    print("schema:    ", schema_path)
    print("baseline:  ", baseline_path if baseline is not None else "none (no drift check)")
    print("statistics:", save_statistics(os.path.join(out_dir, f"{split}_stats.pb"), stats))
    paths = save_anomalies(out_dir, split, anomalies, split=split, folds=list(folds),
                           schema=schema_path)
    print("report:    ", write_text(os.path.join(out_dir, f"{split}_report.html"), statistics_html(
        stats, baseline, anomalies,
        title=f"{split} split (folds {list(folds)}) against {os.path.basename(schema_path)}")))
    print("anomalies: ", " ".join(paths))
    print(f"{split} split: " + format_anomalies(anomalies))
    return 1 if anomaly_rows(anomalies) else 0


def run_all(dataset_dir: str, val_fold: int = 0, out: str | None = None,
            hu_range: Sequence[float] = DEFAULT_HU_RANGE,
            linf_threshold: float = DEFAULT_LINF_THRESHOLD, jsd_threshold: float = 0.0,
            options=None) -> int:
    """``infer-schema`` on the training split, then ``check`` of the evaluation split; with Beam
    `options`, one pipeline computes the statistics of both."""
    computed_train = computed_eval = None
    if options is not None:
        train = folds_of(dataset_dir, "train", val_fold)
        held_out = folds_of(dataset_dir, "eval", val_fold)
        raw, train_stats, computed_eval = beam_statistics(
            dataset_dir, [(train, None, ""), (train, statistics_schema(), "train"),
                          (held_out, statistics_schema(), "eval")],
            options, _out_dir(dataset_dir, out))
        computed_train = (raw, train_stats)
    status = run_infer_schema(dataset_dir, "train", val_fold, out, hu_range, linf_threshold,
                              jsd_threshold, options=options, computed=computed_train)
    return max(status, run_check(dataset_dir, "eval", val_fold, out, options=options,
                                 computed=computed_eval))
