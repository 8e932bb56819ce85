"""Validate a prepared dataset with TensorFlow Data Validation: ``python -m lsnet_tf.validate``.

The per-slice scalar features of the records (`records.SCALAR_FEATURES` plus ``height``,
``width``, ``slice_index`` and ``spacing``; see `VALIDATED_FEATURES`) are summarised with TFDV
statistics; a schema inferred from the training split, tightened with the domain constraints
below, is saved with the dataset; the evaluation split is checked against it::

    python -m lsnet_tf.validate stats        --dataset DIR [--folds 1,2,3 | --split train]
    python -m lsnet_tf.validate infer-schema --dataset DIR [--split train] [--val-fold 0]
    python -m lsnet_tf.validate check        --dataset DIR [--split eval]  [--val-fold 0]
    python -m lsnet_tf.validate all          --dataset DIR                 [--val-fold 0]

Splits: ``train`` is every fold except ``--val-fold``; ``eval`` is ``--val-fold`` alone.

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

Domain constraints added to the inferred schema (so that out-of-range values are anomalies, not
only missing features or type changes):

- ``hu_min``, ``hu_max``, ``hu_mean`` within ``hu_range`` (default [-4096, 4096] HU: air is
  -1000, scanner padding is often -3024 or -2048, 12-bit CT ends at 3071; raw stored values
  without the rescale slope/intercept, or int16 wrap-around, fall outside);
- ``hu_std`` in [0, (high - low) / 2], the largest standard deviation of values inside the range;
- ``foreground_area`` in [0, largest height * width of the training split];
- ``box_max_side``, ``box_min_side`` in [0, largest image side of the training split];
- ``num_boxes``, ``slice_index`` >= 0; ``height``, ``width`` >= 1; ``spacing`` >= 0.001 mm;
- no NaN or infinity in any float feature;
- integer features never keep the ``bool_domain`` that inference gives a feature seen only with
  values 0 and 1 (a training split whose slices have at most one box would otherwise reject a
  slice with two);
- ``num_boxes`` is categorical, so the evaluation split's distribution of box counts is compared
  with the training split's by L-infinity distance (``--linf-threshold``, default 0.25; 0
  disables); the numeric features ``hu_mean``, ``hu_std`` and ``foreground_area`` get an
  approximate Jensen-Shannon divergence comparator when ``--jsd-threshold`` is above 0 (off by
  default: folds of a few patients differ a lot by chance).

``fold`` and ``patient_id`` are not validated: the fold is the split key, and a string domain of
patient ids would reject every patient of the evaluation split.

Statistics are computed in process with TFDV's in-memory generators over Arrow record batches
decoded by tfx_bsl (the same decoder ``generate_statistics_from_tfrecord`` uses, so missing
features and type changes are seen as such), reading the records once. On 2 cores this took
0.13 s for 12 slices against 1.5 s for the Beam DirectRunner path, and 2.7 s against 2.9 s for
2000 slices of 256 x 256; the training split is summarised twice (before and after the schema
exists, the second time with ``num_boxes`` categorical) from the decoded scalar columns, without
reading the records again.

With ``--runner NAME`` (and Beam pipeline options in ``--beam-options "..."`` or after ``--``, see
`lsnet_tf.beam`) the statistics are computed by an Apache Beam pipeline instead: the shards are
read with Beam's TFRecord source, decoded by the same tfx_bsl decoder and summarised by
``tfdv.GenerateStatistics`` (``DirectRunner`` here, ``DataflowRunner``, ``FlinkRunner``,
``SparkRunner`` for datasets larger than one machine); schema inference, validation and every
file written are unchanged. Each command runs one pipeline that reads each split once: the
training split's statistics before the schema exists and those with ``num_boxes`` categorical
come from the same read (`statistics_schema`: the only part of the schema that changes what TFDV
computes; `statistics_view` checks that this holds for the inferred schema, and a second pass runs
with the full schema where it does not), and ``all`` computes the evaluation split's in the same
pipeline. ``--dataset`` and ``--out`` may then be on any filesystem both TensorFlow and Beam
read and write (``gs://bucket/dataset``); the pipeline's statistics files go to a temporary
folder under ``--out``, removed afterwards.

Exit status: 0 when no anomaly is found, 1 when there are anomalies, 2 for usage errors (missing
or unprepared dataset, a split without shards, ``check`` before ``infer-schema``, pipeline options
that cannot be used).
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
from typing import Iterable, Sequence

from lsnet_tf import beam, console
from lsnet_tf.data import records
from lsnet_tf.files import write_bytes as _local_write_bytes
from lsnet_tf.files import write_text as _local_write_text

VALIDATED_FEATURES = (*records.SCALAR_FEATURES, "height", "width", "slice_index", "spacing")
DEFAULT_HU_RANGE = (-4096.0, 4096.0)
DEFAULT_LINF_THRESHOLD = 0.25
JSD_FEATURES = ("hu_mean", "hu_std", "foreground_area")
OUT_DIR = "validation"
SCHEMA_FILE = "schema.pbtxt"
SCHEMA_INFO_FILE = "schema_info.json"
# The commands' splits: records.split_folds's "train" and "val" (called "eval" here).
SPLITS = ("train", "eval")
_RECORDS_SPLIT = {"train": "train", "eval": "val"}
_BATCH = 128  # records decoded at once; each holds its image bytes until the scalars are taken
METRICS_NAMESPACE = "lsnet_tf.validate"


class ValidationError(ValueError):
    """A dataset or option problem reported to the user (exit status 2), not a data anomaly."""


# --------------------------------------------------------------------------------------------
# Files: local paths as before, URLs (gs://...) through tf.io.gfile
# --------------------------------------------------------------------------------------------
def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if records.is_remote(path) else os.path.isdir(path)


def _isfile(path: str) -> bool:
    if records.is_remote(path):
        return _gfile().exists(path) and not _gfile().isdir(path)
    return os.path.isfile(path)


def _listdir(path: str) -> list[str]:
    if records.is_remote(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]
    return os.listdir(path)


def _read_text(path: str) -> str:
    if records.is_remote(path):
        with _gfile().GFile(path, "r") as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _makedirs(path: str) -> None:
    if records.is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def write_text(path: str, text: str) -> str:
    """Write `text` to `path` atomically (``lsnet_tf.files.write_text``, or `records.publish`
    for a URL); returns `path`."""
    if records.is_remote(path):
        return records.publish(path, text)
    return _local_write_text(path, text)


def write_bytes(path: str, data: bytes) -> str:
    """Write `data` to `path` atomically (``lsnet_tf.files.write_bytes``, or `records.publish`
    for a URL); returns `path`."""
    if records.is_remote(path):
        return records.publish(path, data)
    return _local_write_bytes(path, data)


# --------------------------------------------------------------------------------------------
# Splits and reading
# --------------------------------------------------------------------------------------------
def available_folds(dataset_dir: str) -> list[int]:
    """Folds of a prepared dataset: ``fold-K`` folders, plus ``range(folds)`` of dataset.json.

    Raises ValidationError for a folder that is missing or not a prepared dataset (no
    dataset.json, or another format).
    """
    if not _isdir(dataset_dir):
        raise ValidationError(f"dataset folder {dataset_dir} does not exist")
    try:
        info = records.read_info(dataset_dir)
    except (FileNotFoundError, ValueError) as err:  # no dataset.json, or another format
        raise ValidationError(str(err)) from None
    folds = set()
    for name in _listdir(dataset_dir):
        m = re.fullmatch(r"fold-(\d+)", name)
        if m and _isdir(os.path.join(dataset_dir, name)):
            folds.add(int(m.group(1)))
    if isinstance(info.get("folds"), int) and not isinstance(info.get("folds"), bool):
        folds.update(range(info["folds"]))
    return sorted(folds)


def folds_of(dataset_dir: str, split: str, val_fold: int = 0) -> list[int]:
    """Folds of `split` among the `available_folds`: ``"train"`` = every fold but `val_fold`,
    ``"eval"`` = ``[val_fold]`` (``records.split_folds``)."""
    if split not in SPLITS:
        raise ValidationError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        return records.split_folds(dataset_dir, val_fold, _RECORDS_SPLIT[split],
                                   folds=available_folds(dataset_dir))
    except records.FoldError as err:
        raise ValidationError(str(err)) from None


def parse_folds(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``."""
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValidationError(f"--folds must be comma-separated integers, got {text!r}") from None
    if not folds or any(k < 0 for k in folds):
        raise ValidationError(f"--folds must list non-negative folds, got {text!r}")
    return sorted(set(folds))


def read_feature_batches(dataset_dir: str, folds: Sequence[int],
                         features: Iterable[str] = VALIDATED_FEATURES) -> list:
    """Decode the records of `folds` into Arrow record batches holding only `features`.

    Records are decoded by tfx_bsl without a schema, so each column keeps the type the records
    actually hold (``large_list<float>`` etc.); a feature absent from every record of a batch is
    left out of that batch (TFDV then counts it as missing). Raises ValidationError when the
    folds have no shards or no records.
    """
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    available_folds(dataset_dir)  # a clear error for a missing or unprepared dataset
    paths = records.list_shards(dataset_dir, folds)
    if not paths:
        raise ValidationError(
            f"folds {list(folds)} of {dataset_dir} have no shards "
            f"(expected {os.path.join(dataset_dir, 'fold-K', '*' + records.SHARD_SUFFIX)})")
    features = list(features)
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    batches = []
    for chunk in tf.data.TFRecordDataset(paths).batch(_BATCH).as_numpy_iterator():
        rb = decoder.DecodeBatch(list(chunk))
        names = [f for f in features if rb.schema.get_field_index(f) >= 0]
        if not names:
            raise ValidationError(
                f"records of folds {list(folds)} of {dataset_dir} hold none of the features "
                f"{features}; they are not {records.FORMAT} slice records")
        batches.append(pa.RecordBatch.from_arrays(
            [rb.column(rb.schema.get_field_index(f)) for f in names], names))
    if not batches or sum(b.num_rows for b in batches) == 0:
        raise ValidationError(f"folds {list(folds)} of {dataset_dir} hold no records "
                              f"({len(paths)} empty shard(s))")
    return batches


# --------------------------------------------------------------------------------------------
# Statistics, schema, validation
# --------------------------------------------------------------------------------------------
def compute_statistics(batches: Sequence, schema=None, name: str = ""):
    """TFDV statistics (``DatasetFeatureStatisticsList``, one dataset named `name`) of `batches`.

    With a `schema`, features it marks categorical (``num_boxes``) get categorical statistics,
    which drift comparison by L-infinity distance needs.
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    options = tfdv.StatsOptions(schema=schema)
    generators = stats_impl.get_generators(options, in_memory=True)
    accumulators = [g.create_accumulator() for g in generators]
    for rb in batches:
        accumulators = [g.add_input(a, rb) for g, a in zip(generators, accumulators)]
    stats = stats_impl.extract_statistics_output(accumulators, generators)
    if name:
        for ds in stats.datasets:
            ds.name = name
    return stats


# The part of the schema that changes what TFDV computes for these records: num_boxes is a
# categorical integer (top values and uniques instead of numeric statistics).
STATISTICS_SCHEMA_TEXT = ('feature { name: "num_boxes" type: INT '
                          'int_domain { is_categorical: true } }')


def statistics_schema():
    """The schema a Beam pipeline computes the schema-dependent statistics with before the schema
    is inferred (`STATISTICS_SCHEMA_TEXT`); `statistics_view` says whether it stands in for a
    given schema."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(STATISTICS_SCHEMA_TEXT, schema_pb2.Schema())


def statistics_view(schema) -> tuple:
    """What of `schema` TFDV's statistics generators read (``tfdv.StatsOptions(schema=...)``,
    default options): the categorical numeric features and their types, the bytes (image)
    features, the categorical setting of string features, and whether there are sparse,
    weighted or natural-language features. Schemas with the same view give the same
    statistics."""
    from tensorflow_data_validation.statistics import stats_impl
    from tensorflow_data_validation.utils import schema_util

    return (
        sorted((str(k), int(v)) for k, v in
               schema_util.get_categorical_numeric_feature_types(schema).items()),
        sorted(str(k) for k in schema_util.get_bytes_features(schema)),
        sorted((str(k), int(v)) for k, v in
               schema_util.get_bytes_features_categorical_value(schema).items()),
        bool(stats_impl._schema_has_sparse_features(schema)),
        bool(stats_impl._schema_has_natural_language_domains(schema)),
        len(schema.weighted_feature),
    )


def _decode_scalars(serialized, features: Sequence[str], tag: str):
    """Beam: a batch of serialised records -> one Arrow record batch of `features`, decoded as
    `read_feature_batches` does; a batch holding none of them is counted, not emitted."""
    import pyarrow as pa
    from apache_beam.metrics import Metrics
    from tfx_bsl.coders import example_coder

    serialized = list(serialized)
    Metrics.counter(METRICS_NAMESPACE, f"records_{tag}").inc(len(serialized))
    rb = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(serialized)
    names = [f for f in features if rb.schema.get_field_index(f) >= 0]
    if not names:
        Metrics.counter(METRICS_NAMESPACE, f"foreign_records_{tag}").inc(len(serialized))
        return
    yield pa.RecordBatch.from_arrays([rb.column(rb.schema.get_field_index(f)) for f in names],
                                     names)


def _counters(result) -> dict:
    """{name: value} of this module's Beam counters in a finished pipeline's result (committed
    values, or attempted ones where the runner commits none); {} where metrics are unsupported."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    return {c.key.metric.name: c.result or 0 for c in found["counters"]}


def beam_statistics(dataset_dir: str, requests: Sequence, options, out_dir: str) -> list:
    """Statistics of several (folds, schema or None, name) `requests`, computed by one Apache
    Beam pipeline run with `options` (``PipelineOptions``): each distinct set of folds is read
    once with Beam's TFRecord source, decoded like `read_feature_batches` and summarised by
    ``tfdv.GenerateStatistics`` per request. The statistics files go to a temporary folder under
    `out_dir`, removed afterwards. Returns one ``DatasetFeatureStatisticsList`` per request.

    Raises ValidationError for a missing or unprepared dataset, and folds without shards, without
    records or whose records hold none of `VALIDATED_FEATURES` (the messages of
    `read_feature_batches`).
    """
    import uuid

    import apache_beam as beam_sdk
    import tensorflow_data_validation as tfdv

    # Pickled functions must name this module by its import name (not __main__ under -m).
    from lsnet_tf import validate as this

    available_folds(dataset_dir)
    shards = {}
    for folds, _, _ in requests:
        key = tuple(folds)
        if key in shards:
            continue
        shards[key] = records.list_shards(dataset_dir, folds)
        if not shards[key]:
            raise ValidationError(
                f"folds {list(folds)} of {dataset_dir} have no shards "
                f"(expected {os.path.join(dataset_dir, 'fold-K', '*' + records.SHARD_SUFFIX)})")
    tmp = os.path.join(out_dir, f".beam-{uuid.uuid4().hex[:12]}")
    outputs = [os.path.join(tmp, f"statistics-{i}.pb") for i in range(len(requests))]
    tags = {key: "folds-" + "_".join(str(k) for k in key) for key in shards}
    _makedirs(tmp)
    try:
        pipeline = beam_sdk.Pipeline(options=options)
        batches = {}
        for key, paths in shards.items():
            tag = tags[key]
            batches[key] = (pipeline
                            | f"Shards[{tag}]" >> beam_sdk.Create(paths)
                            | f"Read[{tag}]" >> beam_sdk.io.ReadAllFromTFRecord()
                            | f"Batch[{tag}]" >> beam_sdk.BatchElements(max_batch_size=_BATCH)
                            | f"Decode[{tag}]" >> beam_sdk.FlatMap(
                                this._decode_scalars, list(VALIDATED_FEATURES), tag))
        for i, ((folds, schema, name), path) in enumerate(zip(requests, outputs)):
            stats_options = tfdv.StatsOptions(schema=schema, use_sketch_based_topk_uniques=True)
            _ = (batches[tuple(folds)]
                 | f"Statistics[{i}:{name or 'no schema'}]"
                 >> tfdv.GenerateStatistics(stats_options)
                 | f"Write[{i}]" >> tfdv.WriteStatisticsToBinaryFile(path))
        result = pipeline.run()
        result.wait_until_finish()
        counts = _counters(result)
        for key, tag in tags.items():
            if counts.get(f"foreign_records_{tag}"):
                raise ValidationError(
                    f"records of folds {list(key)} of {dataset_dir} hold none of the features "
                    f"{list(VALIDATED_FEATURES)}; they are not {records.FORMAT} slice records")
        stats = [tfdv.load_stats_binary(path) for path in outputs]
    finally:
        if _gfile().exists(tmp):
            _gfile().rmtree(tmp)
    for st, (folds, _, name) in zip(stats, requests):
        if not st.datasets or st.datasets[0].num_examples == 0:
            raise ValidationError(f"folds {list(folds)} of {dataset_dir} hold no records "
                                  f"({len(shards[tuple(folds)])} empty shard(s))")
        if name:
            for ds in st.datasets:
                ds.name = name
    return stats


def _max_stat(stats, feature: str) -> float | None:
    import tensorflow_data_validation as tfdv

    try:
        fs = tfdv.get_feature_stats(stats.datasets[0], tfdv.FeaturePath([feature]))
    except ValueError:
        return None
    return fs.num_stats.max if fs.HasField("num_stats") else None


def infer_dataset_schema(stats, hu_range: Sequence[float] = DEFAULT_HU_RANGE,
                         linf_threshold: float = DEFAULT_LINF_THRESHOLD,
                         jsd_threshold: float = 0.0):
    """Infer a schema from (training) `stats` and add the domain constraints of the module doc.

    `hu_range` is (low, high) in HU; thresholds of 0 add no drift comparator.
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    low, high = (float(v) for v in hu_range)
    if not low < high:
        raise ValidationError(f"hu_range must be (low, high) with low < high, got {tuple(hu_range)}")
    schema = tfdv.infer_schema(stats, infer_feature_shape=True)
    present = {f.name for f in schema.feature}
    max_h, max_w = _max_stat(stats, "height"), _max_stat(stats, "width")
    max_side = max(max_h or 0, max_w or 0) or None

    for f in schema.feature:
        if f.type == schema_pb2.INT:
            f.ClearField("bool_domain")  # explicit int domains below replace it
            f.int_domain.SetInParent()
        elif f.type == schema_pb2.FLOAT:
            f.float_domain.disallow_nan = True
            f.float_domain.disallow_inf = True

    def get(name):
        return tfdv.get_feature(schema, name) if name in present else None

    for name in ("hu_min", "hu_max", "hu_mean"):
        if f := get(name):
            f.float_domain.min, f.float_domain.max = low, high
    if f := get("hu_std"):
        f.float_domain.min, f.float_domain.max = 0.0, (high - low) / 2
    if f := get("foreground_area"):
        f.int_domain.min = 0
        if max_h and max_w:
            f.int_domain.max = int(max_h * max_w)
    for name in ("box_max_side", "box_min_side"):
        if f := get(name):
            f.float_domain.min = 0.0
            if max_side:
                f.float_domain.max = float(max_side)
    for name, lo in (("num_boxes", 0), ("slice_index", 0), ("height", 1), ("width", 1)):
        if f := get(name):
            f.int_domain.min = lo
    if f := get("spacing"):
        f.float_domain.min = 1e-3
    if f := get("num_boxes"):
        f.int_domain.is_categorical = True
    set_drift_thresholds(schema, linf_threshold, jsd_threshold)
    return schema


def set_drift_thresholds(schema, linf_threshold: float | None = None,
                         jsd_threshold: float | None = None) -> None:
    """Set (in place) the L-infinity comparator of ``num_boxes`` and the Jensen-Shannon
    comparators of `JSD_FEATURES`; None leaves the schema's setting, 0 removes the comparator."""
    import tensorflow_data_validation as tfdv

    for value, label in ((linf_threshold, "linf_threshold"), (jsd_threshold, "jsd_threshold")):
        if value is not None and not 0 <= value <= 1:
            raise ValidationError(f"{label} must be in [0, 1] (0 disables), got {value}")
    present = {f.name for f in schema.feature}
    if linf_threshold is not None and "num_boxes" in present:
        comp = tfdv.get_feature(schema, "num_boxes").drift_comparator
        comp.ClearField("infinity_norm")
        if linf_threshold > 0:
            comp.infinity_norm.threshold = linf_threshold
    if jsd_threshold is not None:
        for name in JSD_FEATURES:
            if name in present:
                comp = tfdv.get_feature(schema, name).drift_comparator
                comp.ClearField("jensen_shannon_divergence")
                if jsd_threshold > 0:
                    comp.jensen_shannon_divergence.threshold = jsd_threshold
    for f in schema.feature:
        if f.HasField("drift_comparator") and not f.drift_comparator.ListFields():
            f.ClearField("drift_comparator")


def validate(stats, schema, baseline=None):
    """Anomalies of `stats` against `schema`; drift against `baseline` statistics when given."""
    import tensorflow_data_validation as tfdv

    return tfdv.validate_statistics(stats, schema, previous_statistics=baseline)


def anomaly_rows(anomalies) -> list[dict]:
    """One dict per anomaly: ``feature`` ("(dataset)" for dataset-level ones), ``severity``,
    ``short``, ``description``, ``reasons`` (TFDV reason type names)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    rows = []
    items = [(k, v) for k, v in sorted(anomalies.anomaly_info.items())]
    items += [("(dataset)", anomalies.dataset_anomaly_info)] \
        if anomalies.HasField("dataset_anomaly_info") else []
    for key, info in items:
        rows.append({
            "feature": key,
            "severity": anomalies_pb2.AnomalyInfo.Severity.Name(info.severity),
            "short": info.short_description,
            "description": info.description,
            "reasons": [anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason],
        })
    return rows


def drift_rows(anomalies) -> list[dict]:
    """Drift measurements: ``feature``, ``type`` (L_INFTY / JENSEN_SHANNON_DIVERGENCE),
    ``value``, ``threshold``."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    return [{"feature": ".".join(d.path.step),
             "type": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type),
             "value": m.value, "threshold": m.threshold}
            for d in anomalies.drift_skew_info for m in d.drift_measurements]


def format_anomalies(anomalies) -> str:
    """A readable multi-line summary of anomalies and drift measurements."""
    rows = anomaly_rows(anomalies)
    lines = [f"{len(rows)} anomal{'y' if len(rows) == 1 else 'ies'}" + (":" if rows else "")]
    lines += [f"  {r['feature']}: {r['short']} [{r['severity']}] - {r['description']}" for r in rows]
    for d in drift_rows(anomalies):
        lines.append(f"  drift {d['feature']}: {d['type']} = {d['value']:.4g} "
                     f"(threshold {d['threshold']:.4g})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reports and files
# --------------------------------------------------------------------------------------------
def summary_rows(stats) -> list[dict]:
    """Per-feature summary of the first dataset of `stats`: ``feature``, ``type``, ``count``,
    ``missing``, and ``mean``/``std``/``min``/``max`` (numeric) or ``unique``/``top``."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    rows = []
    for fs in stats.datasets[0].features:
        row = {"feature": ".".join(fs.path.step) or fs.name,
               "type": statistics_pb2.FeatureNameStatistics.Type.Name(fs.type)}
        if fs.HasField("num_stats"):
            n = fs.num_stats
            row.update(count=int(n.common_stats.num_non_missing),
                       missing=int(n.common_stats.num_missing),
                       mean=n.mean, std=n.std_dev, min=n.min, max=n.max)
        elif fs.HasField("string_stats"):
            s = fs.string_stats
            row.update(count=int(s.common_stats.num_non_missing),
                       missing=int(s.common_stats.num_missing), unique=int(s.unique),
                       top={v.value: int(v.frequency) for v in s.top_values[:5]})
        rows.append(row)
    return rows


def format_summary(stats) -> str:
    lines = [f"{stats.datasets[0].name or 'statistics'}: {stats.datasets[0].num_examples} slices",
             f"  {'feature':<16} {'count':>6} {'miss':>5} {'min':>10} {'mean':>10} {'max':>10}"]
    for r in summary_rows(stats):
        if "mean" in r:
            lines.append(f"  {r['feature']:<16} {r['count']:>6} {r['missing']:>5} "
                         f"{r['min']:>10.4g} {r['mean']:>10.4g} {r['max']:>10.4g}")
        else:
            lines.append(f"  {r['feature']:<16} {r.get('count', 0):>6} {r.get('missing', 0):>5} "
                         f"  values {r.get('top', {})}")
    return "\n".join(lines)


def statistics_html(stats, baseline=None, anomalies=None, title: str = "Dataset validation") -> str:
    """A complete HTML page: the anomalies, a per-feature table of `stats` (and `baseline`), then
    TFDV's Facets Overview of both (which loads its scripts from the web)."""
    import tensorflow_data_validation as tfdv

    e = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
             "td:first-child{text-align:left}.bad{color:#b00}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    if anomalies is not None:
        rows = anomaly_rows(anomalies)
        parts.append(f"<h2 class='{'bad' if rows else ''}'>Anomalies: {len(rows)}</h2>")
        if rows:
            parts.append("<table><tr><th>feature</th><th>anomaly</th><th>severity</th>"
                         "<th>description</th></tr>")
            parts += [f"<tr><td>{e(r['feature'])}</td><td>{e(r['short'])}</td>"
                      f"<td>{e(r['severity'])}</td><td>{e(r['description'])}</td></tr>" for r in rows]
            parts.append("</table>")
        drifts = drift_rows(anomalies)
        if drifts:
            parts.append("<h3>Drift against the training split</h3><table><tr><th>feature</th>"
                         "<th>measure</th><th>value</th><th>threshold</th></tr>")
            parts += [f"<tr><td>{e(d['feature'])}</td><td>{e(d['type'])}</td>"
                      f"<td>{d['value']:.4g}</td><td>{d['threshold']:.4g}</td></tr>" for d in drifts]
            parts.append("</table>")
    for st in (stats, baseline):
        if st is None:
            continue
        ds = st.datasets[0]
        parts.append(f"<h2>{e(ds.name or 'statistics')}: {ds.num_examples} slices</h2><table>"
                     "<tr><th>feature</th><th>type</th><th>count</th><th>missing</th><th>min</th>"
                     "<th>mean</th><th>std</th><th>max</th><th>values</th></tr>")
        for r in summary_rows(st):
            num = [f"{r[k]:.5g}" if k in r else "" for k in ("min", "mean", "std", "max")]
            parts.append(f"<tr><td>{e(r['feature'])}</td><td>{e(r['type'])}</td>"
                         f"<td>{r.get('count', '')}</td><td>{r.get('missing', '')}</td>"
                         + "".join(f"<td>{v}</td>" for v in num)
                         + f"<td>{e(json.dumps(r.get('top', '')) if 'top' in r else '')}</td></tr>")
        parts.append("</table>")
    names = [st.datasets[0].name or n for st, n in ((stats, "current"), (baseline, "baseline"))
             if st is not None]
    parts.append("<h2>Facets Overview (TFDV)</h2>")
    parts.append(tfdv.utils.display_util.get_statistics_html(
        stats, baseline, lhs_name=names[0], rhs_name=names[-1]))
    parts.append("</body></html>")
    return "\n".join(parts)


def save_statistics(path: str, stats) -> str:
    """Write binary statistics (read back with ``tfdv.load_stats_binary``)."""
    return write_bytes(path, stats.SerializeToString())


def save_anomalies(out_dir: str, name: str, anomalies, **meta) -> list[str]:
    """Write ``<name>_anomalies.pbtxt`` and ``<name>_anomalies.json`` (with `meta` in the JSON);
    return their paths."""
    from google.protobuf import text_format

    doc = {**meta, "anomalies": anomaly_rows(anomalies), "drift": drift_rows(anomalies)}
    return [write_text(os.path.join(out_dir, f"{name}_anomalies.pbtxt"),
                   text_format.MessageToString(anomalies)),
            write_text(os.path.join(out_dir, f"{name}_anomalies.json"),
                   json.dumps(doc, indent=2) + "\n")]


# --------------------------------------------------------------------------------------------
# Commands (each returns the exit status)
# --------------------------------------------------------------------------------------------
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
    _makedirs(out_dir)
    schema_path = os.path.join(out_dir, SCHEMA_FILE)
    tfdv.write_schema_text(schema, schema_path)
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
    if not _isfile(schema_path):
        raise ValidationError(
            f"no schema at {schema_path}; infer one first with "
            f"`python -m lsnet_tf.validate infer-schema --dataset {dataset_dir}`")
    import tensorflow_data_validation as tfdv  # after the checks above: errors come quickly

    schema = tfdv.load_schema_text(schema_path)
    set_drift_thresholds(schema, linf_threshold, jsd_threshold)
    info_path = os.path.join(os.path.dirname(schema_path), SCHEMA_INFO_FILE)
    if _isfile(info_path):
        schema_folds = set(json.loads(_read_text(info_path)).get("folds", []))
        if schema_folds & set(folds):
            print(f"warning: folds {sorted(schema_folds & set(folds))} of the {split} split were "
                  "used to infer the schema", file=sys.stderr)
    if baseline_path and not _isfile(baseline_path):
        raise ValidationError(f"baseline statistics {baseline_path} do not exist")
    baseline = None
    baseline_path = baseline_path or os.path.join(os.path.dirname(schema_path), "train_stats.pb")
    if drift and _isfile(baseline_path):
        baseline = tfdv.load_stats_binary(baseline_path)
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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
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
        description="Validate a prepared dataset with TensorFlow Data Validation.")
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
    return p


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
    except (ValidationError, beam.BeamOptionsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the module under its import name, so that the functions a Beam pipeline pickles are
    # lsnet_tf.validate's (a worker cannot import this __main__).
    from lsnet_tf import validate as _validate

    sys.exit(_validate.main())
