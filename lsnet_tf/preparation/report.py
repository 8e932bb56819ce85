"""What ``python -m lsnet_tf.validate`` writes and prints: per-feature summaries of statistics,
the HTML report, and the statistics and anomalies files.

The HTML report (`statistics_html`) holds summary tables (readable offline) followed by TFDV's
Facets Overview of the split next to the training split (Facets loads its scripts from the web,
so that part needs a network connection to render). Files go through `lsnet_tf.utils.files`, so a
folder may be a URL (``gs://...``).
"""
from __future__ import annotations

import html
import json
import os

from lsnet_tf.utils.files import read_bytes, read_text, write_bytes, write_text
from lsnet_tf.preparation.anomalies import anomaly_rows, drift_rows


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
    """Write binary statistics (read back with `load_statistics` or ``tfdv.load_stats_binary``)."""
    return write_bytes(path, stats.SerializeToString())


def load_statistics(path: str):
    """The ``DatasetFeatureStatisticsList`` `save_statistics` wrote (as ``tfdv.load_stats_binary``,
    through the package's file layer)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    return statistics_pb2.DatasetFeatureStatisticsList.FromString(read_bytes(path))


def save_schema(path: str, schema) -> str:
    """Write `schema` as a text proto (as ``tfdv.write_schema_text``, through the file layer)."""
    from google.protobuf import text_format

    return write_text(path, text_format.MessageToString(schema))


def load_schema(path: str):
    """The schema `save_schema` (or ``tfdv.write_schema_text``) wrote."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(read_text(path), schema_pb2.Schema())


def save_anomalies(out_dir: str, name: str, anomalies, **meta) -> list[str]:
    """Write ``<name>_anomalies.pbtxt`` and ``<name>_anomalies.json`` (with `meta` in the JSON);
    return their paths."""
    from google.protobuf import text_format

    doc = {**meta, "anomalies": anomaly_rows(anomalies), "drift": drift_rows(anomalies)}
    return [write_text(os.path.join(out_dir, f"{name}_anomalies.pbtxt"),
                   text_format.MessageToString(anomalies)),
            write_text(os.path.join(out_dir, f"{name}_anomalies.json"),
                   json.dumps(doc, indent=2) + "\n")]
