"""The dataset's schema: inferred by TFDV from the training split, tightened with domain
constraints (``python -m lsnet_tf.validate infer-schema``).

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
- ``num_boxes`` is categorical, so that its drift is compared by L-infinity distance, and
  ``hu_mean``, ``hu_std``, ``foreground_area`` may get Jensen-Shannon comparators
  (`lsnet_tf.preparation.anomalies`).

``fold`` and ``patient_id`` are not validated: the fold is the split key, and a string domain of
patient ids would reject every patient of the evaluation split.
"""
from __future__ import annotations

from typing import Sequence

from lsnet_tf.preparation.anomalies import DEFAULT_LINF_THRESHOLD, set_drift_thresholds
from lsnet_tf.preparation.statistics import ValidationError

DEFAULT_HU_RANGE = (-4096.0, 4096.0)


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
