"""Statistics over seeds (numpy): mean ± sample standard deviation, and a paired percentile
bootstrap with a verdict.

``python -m lsnet_tf.experiments`` runs each row of a table at several seeds; a cell is
``mean_sd`` of the row's per-seed values, and a claim "method A scores above method B" is
``paired_bootstrap`` of A's and B's values at the seeds both have, read by ``verdict``.

The percentile bootstrap resamples the ``n`` seed pairs with replacement ``resamples`` times and
takes the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled mean differences
(``numpy.quantile``, linear interpolation). With few pairs its interval is narrow: it never leaves
the range of the observed differences, so with 3 pairs "holds" means that all 3 differences were
positive.
"""
from __future__ import annotations

import math

import numpy as np

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
UNDECIDED = "undecided"
TOO_FEW = "undecided (n < 2)"
VERDICTS = (HOLDS, DOES_NOT_HOLD, UNDECIDED, TOO_FEW)


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
    """Percentile bootstrap interval of the mean paired difference ``a - b``.

    Args:
      a, b: equally long sequences, ``a[i]`` and ``b[i]`` measured at the same seed. Pairs where
        either is None or NaN are left out.
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


def verdict(low, high, n: int) -> str:
    """"holds" when the interval [`low`, `high`] is above 0, "does not hold" when below 0,
    "undecided" when it contains 0, "undecided (n < 2)" with fewer than 2 pairs."""
    if n < 2 or low is None or high is None:
        return TOO_FEW
    if low > 0:
        return HOLDS
    if high < 0:
        return DOES_NOT_HOLD
    return UNDECIDED
