"""The paper's claims that a table tests (``Table.claims``), as paired differences between its
rows: ``evaluate_claims`` (the corrected t-interval, the equivalence test and Holm's method of
``lsnet_tf.metrics.statistics``), ``claims_markdown`` and ``claims_summary`` (the table's
"Claims" section).

Each claim (e.g. L-SNet (U-Net) above U-Net in DSC and in DSC on small targets) is tested as the
paired difference over the units both rows have (by (fold, seed) on a cross-validated dataset, by
seed otherwise): its mean, its 95 % paired t-interval with the correction of Nadeau and Bengio
for overlapping training sets (``metrics.statistics.corrected_t``; n_test/n_train = 1/(k - 1), 0
without folds), its p-value, the 90 % interval of the equivalence test and a verdict: holds
(interval above 0), does not hold (below 0), equivalent (two one-sided tests within ±1 point),
undecided (otherwise, or fewer than 2 pairs); whether each decided verdict survives Holm's method
across the table's claims; then the count of each in plain words.
"""
from __future__ import annotations

from lsnet_tf.experiments.catalogue import CLAIM_METRICS, DATASET_INFO, Row, Table
from lsnet_tf.experiments.units import _count, unit_json
from lsnet_tf.metrics import statistics


# Every claim's test: the level of its corrected t-interval, the equivalence margin (points) and
# the family-wise error rate of Holm's method across a table's claims.
CLAIMS = {"level": 0.95, "margin": 1.0, "alpha": 0.05}


def evaluate_claims(claims, values: dict, ratio: float = 0.0, level: float = CLAIMS["level"],
                    margin: float = CLAIMS["margin"], alpha: float = CLAIMS["alpha"]) -> list:
    """Each claim whose two rows are in `values` (``{row: {unit: {claim metric key: value}}}``)
    on the units both rows have: ``statistics.corrected_t`` of ``better - than`` (its interval,
    equivalence test and verdict), and whether the verdict survives Holm's method across the
    claims tested (``holm``: a decided verdict, holds, does not hold or equivalent, whose
    ``p_verdict`` stays below `alpha` after Holm's step-down over every claim with a p-value).

    Args:
      ratio: ``n_test / n_train`` of the correction of Nadeau and Bengio (``1 / (k - 1)`` for
        the units of a k-fold cross-validation; 0, the ordinary paired t-interval, for seeds on
        one split).

    Returns:
      one dict per claim: ``better``, ``than``, ``metric``, ``units`` (the paired ones, as
      ``unit_json``), ``differences`` (per paired unit, points), every key of
      ``corrected_t_interval`` (``mean``, ``low``, ``high``, ``n``, ``p``, ``tost_low``,
      ``tost_high``, ``p_equivalence``, ``verdict``, ``p_verdict``, ...) and ``holm`` (True /
      False; None for an undecided verdict).
    """
    out = []
    for claim in claims:
        if claim.better not in values or claim.than not in values:
            continue
        units = sorted(set(values[claim.better]) & set(values[claim.than]))
        a = [values[claim.better][u][claim.metric] for u in units]
        b = [values[claim.than][u][claim.metric] for u in units]
        test = statistics.corrected_t(a, b, ratio, level, margin)
        out.append({"better": claim.better, "than": claim.than, "metric": claim.metric,
                    "units": [unit_json(u) for u in units],
                    "differences": [None if x is None or y is None else round(x - y, 4)
                                    for x, y in zip(a, b)], **test})
    rejected = statistics.holm([r["p_verdict"] for r in out], alpha)
    for r, kept in zip(out, rejected):
        decided = r["verdict"] in (statistics.HOLDS, statistics.DOES_NOT_HOLD,
                                   statistics.EQUIVALENT)
        r["holm"] = bool(kept) if decided else None
    return out


def claims_ratio(dataset: str) -> float:
    """``n_test / n_train`` of the correction of Nadeau and Bengio for `dataset`'s units:
    ``1 / (k - 1)`` with k folds, 0 (the ordinary paired t-interval) without folds."""
    k = DATASET_INFO[dataset].folds
    return 0.0 if k is None else 1.0 / (k - 1)


def _row_name(table: Table, row: Row) -> str:
    """A row's name in a claim: its label, ``γ = 0.1`` when the label is the head's value."""
    try:
        float(row.label)
    except ValueError:
        return row.label
    return f"{table.head[0]} = {row.label}"


def claims_summary(results: list) -> str:
    """The claims' verdicts in one plain sentence, and how many decided ones survive Holm's
    method."""
    if not results:
        return "No claim of the paper could be tested: its rows were not run."
    verdicts = [r["verdict"] for r in results]
    hold, fail = verdicts.count(statistics.HOLDS), verdicts.count(statistics.DOES_NOT_HOLD)
    same, few = verdicts.count(statistics.EQUIVALENT), verdicts.count(statistics.TOO_FEW)
    open_ = len(verdicts) - hold - fail - same
    text = (f"Of {_count(len(results), 'claim', 'claims')} tested, "
            f"{_count(hold, 'holds', 'hold')}, {_count(fail, 'does not hold', 'do not hold')}, "
            f"{same} {'is' if same == 1 else 'are'} equivalent (within ±1 point) "
            f"and {_count(open_, 'is undecided', 'are undecided')}")
    if few:
        text += f" ({few} of them with fewer than 2 pairs)"
    decided = [r for r in results if r.get("holm") is not None]
    if decided:
        kept = [r for r in decided if r["holm"]]
        text += (f"; {len(kept)} of the {_count(len(decided), 'decided verdict', 'decided verdicts')}"
                 f" {'survives' if len(kept) == 1 else 'survive'} Holm's correction across the "
                 f"{len(results)} claims")
    return text + "."


def _p_text(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def claims_markdown(table: Table, rows, results: list, ratio: float = 0.0,
                    settings: dict = CLAIMS) -> str:
    """The "Claims" section: per claim, the metric, n pairs, the mean difference, its corrected
    t-interval and p-value, the equivalence interval, the verdict and whether it survives Holm's
    method (`results` of ``evaluate_claims``); then what they mean and a plain-words summary."""
    by_config = {r.config: r for r in rows}
    level = round(100 * settings["level"])
    tost = round(100 * (2 * settings["level"] - 1))
    lines = ["| Claim | Metric | n pairs | Mean difference (points) | "
             f"{level} % CI | p | {tost} % CI (equivalence) | Verdict | Holm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        claim = (f"{_row_name(table, by_config[r['better']])} > "
                 f"{_row_name(table, by_config[r['than']])}")
        mean = "–" if r["mean"] is None else f"{r['mean']:+.2f}"
        ci = "–" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        eq = "–" if r["tost_low"] is None else f"[{r['tost_low']:+.2f}, {r['tost_high']:+.2f}]"
        holm = {True: "survives", False: "does not survive", None: "–"}[r.get("holm")]
        lines.append(f"| {claim} | {CLAIM_METRICS[r['metric']][0]} | {r['n']} | {mean} | {ci} "
                     f"| {_p_text(r['p'])} | {eq} | **{r['verdict']}** | {holm} |")
    tested = {(r["better"], r["than"], r["metric"]) for r in results}
    untested = [c for c in table.claims if (c.better, c.than, c.metric) not in tested]
    if ratio:
        pairs = ("paired by (fold, seed) unit; the interval is the paired t-interval with the "
                 "correction of Nadeau and Bengio (2003) for training sets that overlap across "
                 f"folds (variance × (1/n + n_test/n_train), n_test/n_train = {ratio:.3g}), "
                 "n − 1 degrees of freedom")
    else:
        pairs = ("paired by seed on one split; the interval is the paired t-interval over the "
                 "seeds (n − 1 degrees of freedom), which speaks of that split alone: seeds "
                 "resample the initial weights and the batch order, never the patients")
    lines += ["", f"Difference: the claim's first row minus its second, in percentage points, "
              f"{pairs}; p: the two-sided test of a zero difference. Verdict: **holds** (the "
              f"{level} % interval above 0), **does not hold** (below 0), **equivalent** (two "
              f"one-sided tests at {settings['alpha']:g}: the {tost} % interval inside "
              f"±{settings['margin']:g} point, the rows are within a point of each other), "
              "**undecided** otherwise (or fewer than 2 pairs). Holm: whether a decided verdict's "
              f"p-value (p; for equivalent, the larger one-sided p) stays below "
              f"{settings['alpha']:g} under Holm's step-down method across the "
              f"{_count(len(results), 'claim', 'claims')} of this table."]
    if untested:
        lines += ["", "Not tested (a row not run): " + "; ".join(
            f"{c.better} > {c.than} ({CLAIM_METRICS[c.metric][0]})" for c in untested) + "."]
    lines += ["", "**In plain words.** " + claims_summary(results)]
    return "\n".join(lines) + "\n"
