"""lsnet_tf.metrics.statistics: mean ± sd over seeds, the paired percentile bootstrap and its
verdict, against hand-computed numbers, numpy and an exhaustive enumeration of resamples."""
import itertools

import numpy as np
import pytest

from lsnet_tf.metrics import statistics as st


def test_mean_sd_matches_numpy_and_leaves_out_missing_values():
    values = [90.97, 89.67, 93.1, 58.74]
    got = st.mean_sd(values)
    assert got["n"] == 4
    np.testing.assert_allclose(got["mean"], np.mean(values), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got["sd"], np.std(values, ddof=1), rtol=0, atol=1e-12)
    assert st.mean_sd([None, 2.0, float("nan"), 4.0]) == {"mean": 3.0, "sd": np.sqrt(2.0), "n": 2}
    assert st.mean_sd([5.0]) == {"mean": 5.0, "sd": None, "n": 1}
    assert st.mean_sd([None]) == {"mean": None, "sd": None, "n": 0}


def test_identical_differences_give_a_point_interval():
    # d = [1, 1, 1]: every resample's mean is 1, so the interval is exactly [1, 1].
    got = st.paired_bootstrap([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], resamples=1000, seed=3)
    assert got == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 3}
    assert st.verdict(got["low"], got["high"], got["n"]) == "holds"


def test_positive_negative_and_straddling_differences():
    a = [80.0, 82.5, 90.0, 85.0, 70.0]
    up = st.paired_bootstrap(a, [x - d for x, d in zip(a, [0.5, 2.0, 1.0, 3.5, 0.2])])
    assert up["n"] == 5 and up["mean"] == pytest.approx((0.5 + 2.0 + 1.0 + 3.5 + 0.2) / 5)
    assert 0.2 <= up["low"] < up["mean"] < up["high"] <= 3.5
    assert st.verdict(up["low"], up["high"], up["n"]) == "holds"
    down = st.paired_bootstrap([x - 10 for x in a], a)
    assert down["mean"] == pytest.approx(-10.0) and down["high"] == pytest.approx(-10.0)
    assert st.verdict(down["low"], down["high"], down["n"]) == "does not hold"
    # Symmetric around 0: mean 0, the interval contains 0.
    mixed = st.paired_bootstrap([1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0])
    assert mixed["mean"] == 0.0 and mixed["low"] < 0 < mixed["high"]
    assert st.verdict(mixed["low"], mixed["high"], mixed["n"]) == "undecided"
    assert st.verdict(0.0, 1.0, 3) == "undecided"  # touching 0 is not above it


def test_same_seed_same_interval_other_seed_other_draws():
    a, b = [1.0, 3.0, -0.5, 2.0, 0.7], [0.0, 0.0, 0.0, 0.0, 0.0]
    first = st.paired_bootstrap(a, b, resamples=500, seed=7)
    assert st.paired_bootstrap(a, b, resamples=500, seed=7) == first
    assert st.paired_bootstrap(a, b, resamples=500, seed=8) != first


def test_too_few_pairs_and_missing_values():
    # Only the pairs where both rows have a value count.
    one = st.paired_bootstrap([1.0, None, 3.0], [0.5, 2.0, float("nan")])
    assert one == {"mean": 0.5, "low": None, "high": None, "n": 1}
    assert st.verdict(one["low"], one["high"], one["n"]) == "undecided (n < 2)"
    assert st.paired_bootstrap([], []) == {"mean": None, "low": None, "high": None, "n": 0}
    assert st.verdict(None, None, 0) == "undecided (n < 2)"
    with pytest.raises(ValueError, match="a and b must pair up, received 2 and 1 values"):
        st.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level must be in"):
        st.paired_bootstrap([1.0, 2.0], [1.0, 1.0], level=1.0)


@pytest.mark.parametrize("d", [[0.3, -1.2, 2.5], [4.0, -0.5, 1.5, 0.25]])
def test_percentile_interval_agrees_with_every_resample_enumerated(d):
    """For n pairs the bootstrap distribution is the n^n equally likely resamples; its exact
    2.5 % and 97.5 % quantiles are what 10,000 random resamples estimate. The estimate must be a
    quantile of the exact distribution up to 0.01 in probability: where the exact CDF is 0.025,
    the empirical CDF of 10,000 draws has a standard deviation of sqrt(0.025 * 0.975 / 10000)
    = 0.0016, so 0.01 is more than 6 standard deviations."""
    n = len(d)
    exact = np.sort([np.mean(c) for c in itertools.product(d, repeat=n)])
    assert exact.size == n ** n
    got = st.paired_bootstrap(d, [0.0] * n, resamples=10_000, seed=0)
    assert got["mean"] == pytest.approx(np.mean(d))
    tol = 1e-9
    for q, value in ((0.025, got["low"]), (0.975, got["high"])):
        below = np.mean(exact < value - tol)   # exact P(mean < value)
        at_most = np.mean(exact <= value + tol)  # exact P(mean <= value)
        assert below <= q + 0.01 and at_most >= q - 0.01, (q, value, below, at_most)
