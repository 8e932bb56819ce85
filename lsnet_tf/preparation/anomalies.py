"""Checking statistics against the schema: anomalies and drift (``python -m lsnet_tf.validate``).

`validate` runs TFDV's check of statistics against a schema (`lsnet_tf.preparation.schema`) and,
given the training split's statistics, its drift comparators: ``num_boxes`` is categorical, so
the evaluation split's distribution of box counts is compared with the training split's by
L-infinity distance (``--linf-threshold``, default 0.25; 0 disables); the numeric features
``hu_mean``, ``hu_std`` and ``foreground_area`` (`JSD_FEATURES`) get an approximate
Jensen-Shannon divergence comparator when ``--jsd-threshold`` is above 0 (off by default: folds
of a few patients differ a lot by chance). `set_drift_thresholds` sets both; `anomaly_rows`,
`drift_rows` and `format_anomalies` read the result.
"""
from __future__ import annotations

from lsnet_tf.preparation.statistics import ValidationError

DEFAULT_LINF_THRESHOLD = 0.25
JSD_FEATURES = ("hu_mean", "hu_std", "foreground_area")


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
