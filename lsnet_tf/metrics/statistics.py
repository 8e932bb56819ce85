"""Statistics of cross-validated comparisons (numpy; scipy's t distribution inside functions):
mean ± sample standard deviation, the corrected paired t-interval with its equivalence test and
verdict, Holm's step-down method over several claims, and a paired percentile bootstrap kept as a
secondary figure.

Experiment tables train each row on the same units, a unit being one (fold, seed) of a k-fold
cross-validation by patient; a cell is ``mean_sd`` of the row's per-unit values. A claim "method A
scores above method B" is read from the paired differences ``d_i = A_i - B_i`` (percentage points)
on the units both rows have:

- ``corrected_t(a, b, n_test_over_n_train)`` (or ``corrected_t_interval(d, ...)`` on the
  differences) is the claim's interval: the paired t-interval of the mean difference with the
  variance correction of Nadeau and Bengio (2003, "Inference for the generalization error",
  Machine Learning 52): ``se**2 = s**2 * (1/n + n_test/n_train)``, ``n - 1`` degrees of freedom.
  The naive paired t-interval (``se**2 = s**2 / n``) is too narrow here: the training sets of the
  k folds overlap (any two share (k - 2)/(k - 1) of their patients; units of one fold at two
  seeds share all of it), so the units' differences are positively correlated and their sample
  variance understates the variance of their mean. For k-fold cross-validation
  ``n_test/n_train = 1/(k - 1)``, ``n`` counting every (fold, seed) unit (the usual use of the
  correction for repeated k-fold, Bouckaert and Frank 2004; Nadeau and Bengio derived it for
  random train/test splits). With ``0`` the interval is the ordinary paired t-interval.
- The same result carries an equivalence test, two one-sided tests (TOST) within a margin
  ``±margin`` points (default 1.0): ``p_lower`` for H0: mean <= -margin, ``p_upper`` for
  H0: mean >= +margin, ``p_equivalence = max(p_lower, p_upper)``, with the corrected ``se`` and
  ``n - 1`` degrees of freedom. At ``alpha = 1 - level`` (0.05) the two rows are equivalent iff
  ``p_equivalence < alpha``, which is the same as the ``1 - 2 alpha`` (90 %) corrected interval
  ``[tost_low, tost_high]`` lying strictly inside ``(-margin, +margin)``.
- ``verdict``: "holds" when the ``level`` (95 %) corrected interval is above 0, "does not hold"
  when below 0, "equivalent" when neither and the TOST interval is inside ``±margin``,
  "undecided" otherwise, "undecided (n < 2)" with fewer than 2 pairs. A decided difference wins:
  an interval above 0 that also lies inside ``±margin`` (a tiny but certain difference) is
  "holds", not "equivalent" (likewise "does not hold" below 0). Each verdict comes with the
  p-value that supports it (``p_verdict``): the two-sided ``p`` for holds and does not hold,
  ``p_equivalence`` for equivalent, ``min(p, p_equivalence)`` for undecided, None for too few.
- ``holm(p_values, alpha)``: which of several claims' ``p_verdict`` stay significant under the
  Holm-Bonferroni step-down method (family-wise error rate ``alpha``).

``paired_bootstrap`` (percentile bootstrap of the mean difference) stays only as a secondary,
descriptive figure; it is not the claim's interval and is not called a 95 % interval of it. It
never leaves the range of the observed differences, so with 3-5 pairs its coverage is far below
its nominal level: with 3 pairs its "95 %" interval is about the range of the 3 differences, which
misses the centre of a symmetric distribution 2 * (1/2)**3 = 25 % of the time, and "above 0"
only means that all 3 were positive. It also ignores the overlap of the training sets.
"""
from __future__ import annotations

import math

import numpy as np

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
EQUIVALENT = "equivalent"
UNDECIDED = "undecided"
TOO_FEW = "undecided (n < 2)"


def _present(values) -> list[float]:
    """`values` without None and NaN (a metric a run does not have), as floats."""
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if not math.isnan(v):
            out.append(v)
    return out


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (``ddof=1``) of `values`, leaving out None and NaN.

    Returns:
      ``{"mean", "sd", "n"}``: ``n`` the values used; ``mean`` None when ``n == 0``, ``sd`` None
      when ``n < 2``.
    """
    v = np.asarray(_present(values), np.float64)
    n = int(v.size)
    return {"mean": float(v.mean()) if n else None,
            "sd": float(v.std(ddof=1)) if n > 1 else None,
            "n": n}


def paired_bootstrap(a, b, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the mean paired difference ``a - b``: a secondary,
    descriptive figure (see the module's docstring), not the claim's interval.

    Args:
      a, b: equally long sequences, ``a[i]`` and ``b[i]`` measured on the same unit (seed, or
        (fold, seed)). Pairs where either is None or NaN are left out.
      resamples: bootstrap resamples of the pairs (each draws ``n`` pairs with replacement).
      seed: seed of the resampling (``numpy.random.default_rng``): the same arguments give the
        same interval.
      level: the interval's coverage, in (0, 1).

    Returns:
      ``{"mean", "low", "high", "n"}``: ``n`` pairs, their mean difference (None without a
      pair) and the interval (None with fewer than 2 pairs).
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up, received {len(a)} and {len(b)} values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), received {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, received {resamples}")
    pairs = [(x, y) for x, y in zip(a, b) if len(_present([x, y])) == 2]
    d = np.asarray([float(x) - float(y) for x, y in pairs], np.float64)
    n = int(d.size)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if n == 1:
        return {"mean": float(d[0]), "low": None, "high": None, "n": 1}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "n": n}


def verdict(low, high, n: int, *, tost_low=None, tost_high=None, margin: float = 1.0) -> str:
    """The verdict of a claim from its interval [`low`, `high`] of the mean difference.

    "holds" when the interval is above 0 (``low > 0``), "does not hold" when below 0
    (``high < 0``), "equivalent" when neither and the equivalence (TOST) interval
    [`tost_low`, `tost_high`] is given and lies strictly inside ``(-margin, +margin)``,
    "undecided" otherwise, "undecided (n < 2)" with fewer than 2 pairs or no interval.

    A decided difference comes first: an interval above 0 that also lies inside ``±margin``
    is "holds". Without `tost_low` / `tost_high` (e.g. for ``paired_bootstrap``'s interval) the
    verdict is never "equivalent".
    """
    if n < 2 or low is None or high is None:
        return TOO_FEW
    if low > 0:
        return HOLDS
    if high < 0:
        return DOES_NOT_HOLD
    if tost_low is not None and tost_high is not None and -margin < tost_low \
            and tost_high < margin:
        return EQUIVALENT
    return UNDECIDED


def _t_stat(x: float, se: float) -> float:
    """``x / se`` with ``se == 0`` read as the limit: ``±inf`` for ``x != 0``, 0 for ``x == 0``."""
    if se > 0:
        return x / se
    return math.copysign(math.inf, x) if x != 0 else 0.0


def _pairs(a, b) -> list[float]:
    """The differences ``a[i] - b[i]`` of the pairs where neither is None or NaN."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up, received {len(a)} and {len(b)} values")
    return [float(x) - float(y) for x, y in zip(a, b) if len(_present([x, y])) == 2]


def corrected_t_interval(d, n_test_over_n_train: float, level: float = 0.95,
                         margin: float = 1.0) -> dict:
    """Corrected paired t-interval (Nadeau and Bengio 2003) of the mean of the differences `d`,
    its two-sided test of mean = 0, the equivalence test (TOST) within ``±margin`` and the
    verdict.

    With ``m`` the mean of ``d``, ``s**2`` its sample variance (``ddof=1``) and ``n`` its length:
    ``se = sqrt(s**2 * (1/n + n_test_over_n_train))``, ``df = n - 1``, the interval
    ``m ± t.ppf((1 + level)/2, df) * se`` and ``p = 2 * t.sf(|m / se|, df)``. With
    ``alpha = 1 - level``: ``p_lower = t.sf((m + margin)/se, df)`` (H0: mean <= -margin),
    ``p_upper = t.sf((margin - m)/se, df)`` (H0: mean >= +margin),
    ``p_equivalence = max(p_lower, p_upper)``, and the ``1 - 2 alpha`` interval
    ``m ± t.ppf(level, df) * se`` = [``tost_low``, ``tost_high``]; ``p_equivalence < alpha`` iff
    that interval lies strictly inside ``(-margin, +margin)``.

    When all differences are equal (``s = 0``, so ``se = 0``, decided by comparing the values
    rather than from a rounded variance) the intervals collapse to ``m``
    and a t statistic ``x / 0`` is read as its limit: ``±inf`` for ``x != 0`` (p = 0 on that
    side), 0 for ``x == 0`` (two-sided p = 1, one-sided p = 0.5).

    Args:
      d: the paired differences (e.g. A - B in points per (fold, seed) unit); None and NaN are
        left out.
      n_test_over_n_train: the correction factor ``n_test / n_train`` (>= 0): ``1 / (k - 1)`` for
        k-fold cross-validation, 0 for the ordinary paired t-interval.
      level: the claim interval's coverage, in (0.5, 1); the tests' alpha is ``1 - level`` and
        the equivalence interval's coverage ``1 - 2 alpha = 2 level - 1`` (90 % at 0.95).
      margin: the equivalence margin in the units of ``d`` (> 0).

    Returns:
      ``{"mean", "low", "high", "se", "df", "n", "p", "correction", "level", "alpha",
      "equivalence_margin", "tost_level", "tost_low", "tost_high", "p_lower", "p_upper",
      "p_equivalence", "verdict", "p_verdict"}``: ``mean`` None without a value; with fewer
      than 2 values ``se``, ``df``, the intervals and every p are None and the verdict is
      "undecided (n < 2)". ``correction`` is ``n_test_over_n_train``. ``verdict`` is that of
      ``verdict`` (``HOLDS``, ``DOES_NOT_HOLD``, ``EQUIVALENT``, ``UNDECIDED`` or ``TOO_FEW``);
      ``p_verdict`` the p-value supporting it: ``p`` for "holds" / "does not hold",
      ``p_equivalence`` for "equivalent", ``min(p, p_equivalence)`` for "undecided", None for
      "undecided (n < 2)".

    Raises:
      ValueError: `level` not in (0.5, 1), `n_test_over_n_train` negative or not finite,
        `margin` not positive and finite.
    """
    if not 0.5 < level < 1.0:
        raise ValueError(f"level must be in (0.5, 1), received {level}")
    ratio = float(n_test_over_n_train)
    if not (math.isfinite(ratio) and ratio >= 0.0):
        raise ValueError(f"n_test_over_n_train must be a finite number >= 0, received "
                         f"{n_test_over_n_train}")
    margin = float(margin)
    if not (math.isfinite(margin) and margin > 0.0):
        raise ValueError(f"margin must be a finite number > 0, received {margin}")
    v = np.asarray(_present(d), np.float64)
    n = int(v.size)
    alpha = 1.0 - level
    out = {"mean": float(v.mean()) if n else None, "low": None, "high": None, "se": None,
           "df": None, "n": n, "p": None, "correction": ratio, "level": level, "alpha": alpha,
           "equivalence_margin": margin, "tost_level": 1.0 - 2.0 * alpha, "tost_low": None,
           "tost_high": None, "p_lower": None, "p_upper": None, "p_equivalence": None,
           "verdict": TOO_FEW, "p_verdict": None}
    if n < 2:
        return out
    from scipy import stats

    equal = bool(np.all(v == v[0]))  # exactly, not through the rounding of v.mean()
    m = float(v[0]) if equal else float(v.mean())
    df = n - 1
    se = 0.0 if equal else math.sqrt(float(v.var(ddof=1)) * (1.0 / n + ratio))
    half = float(stats.t.ppf((1.0 + level) / 2.0, df)) * se
    half_tost = float(stats.t.ppf(level, df)) * se  # t quantile at 1 - alpha
    p = min(1.0, 2.0 * float(stats.t.sf(abs(_t_stat(m, se)), df)))
    p_lower = float(stats.t.sf(_t_stat(m + margin, se), df))
    p_upper = float(stats.t.sf(_t_stat(margin - m, se), df))
    out.update(mean=m, low=m - half, high=m + half, se=se, df=df, p=p, tost_low=m - half_tost,
               tost_high=m + half_tost, p_lower=p_lower, p_upper=p_upper,
               p_equivalence=max(p_lower, p_upper))
    out["verdict"] = verdict(out["low"], out["high"], n, tost_low=out["tost_low"],
                             tost_high=out["tost_high"], margin=margin)
    out["p_verdict"] = {HOLDS: p, DOES_NOT_HOLD: p,
                        EQUIVALENT: out["p_equivalence"]}.get(out["verdict"],
                                                              min(p, out["p_equivalence"]))
    return out


def corrected_t(a, b, n_test_over_n_train: float, level: float = 0.95,
                margin: float = 1.0) -> dict:
    """``corrected_t_interval`` of the paired differences ``a - b``.

    Args:
      a, b: equally long sequences, ``a[i]`` and ``b[i]`` measured on the same (fold, seed)
        unit. Pairs where either is None or NaN are left out (as in ``paired_bootstrap``).
      n_test_over_n_train, level, margin: as in ``corrected_t_interval``.

    Returns:
      the dict of ``corrected_t_interval``.

    Raises:
      ValueError: `a` and `b` of different lengths, or an argument ``corrected_t_interval``
        refuses.
    """
    return corrected_t_interval(_pairs(a, b), n_test_over_n_train, level, margin)


def holm(p_values, alpha: float = 0.05) -> list[bool]:
    """Holm-Bonferroni step-down method: which hypotheses are rejected at family-wise error
    rate `alpha`.

    The ``m`` p-values that are present (None and NaN are no test: they are not rejected and do
    not count in ``m``) are sorted ascending; ``p_(i)`` (``i`` from 0) is rejected while
    ``p_(i) <= alpha / (m - i)``, and the first failure stops it (it and every larger p are not
    rejected). Equal p-values are all rejected or all not.

    Returns:
      in the input order, True where the hypothesis is rejected.

    Raises:
      ValueError: `alpha` not in (0, 1), a p-value outside [0, 1].
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), received {alpha}")
    present = []
    for i, p in enumerate(p_values):
        if p is None or math.isnan(float(p)):
            continue
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p-values must be in [0, 1], received {p}")
        present.append((float(p), i))
    present.sort()
    m = len(present)
    rejected = [False] * len(p_values)
    for rank, (p, i) in enumerate(present):
        if p > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected
