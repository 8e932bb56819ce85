"""lsnet_tf.metrics.statistics: mean ± sd over seeds, the paired percentile bootstrap, the
corrected paired t-interval (Nadeau and Bengio) with its equivalence test (TOST) and verdict, and
Holm's step-down method, against hand-computed numbers, numpy, scipy.stats and an exhaustive
enumeration of resamples."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

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


# The corrected paired t-interval ----------------------------------------------------------------

D = [0.5, -0.2, 1.1, 0.3, 0.9, -0.4, 0.7, 0.2]  # n = 8, sum 3.1
# By hand: mean 3.1 / 8 = 0.3875; deviations 0.1125, -0.5875, 0.7125, -0.0875, 0.5125, -0.7875,
# 0.3125, -0.1875; their squares sum to 0.01265625 + 0.34515625 + 0.50765625 + 0.00765625
# + 0.26265625 + 0.62015625 + 0.09765625 + 0.03515625 = 1.88875, so s^2 = 1.88875 / 7.
# Corrected variance of the mean with n_test / n_train = 1/3:
# s^2 * (1/8 + 1/3) = (1.88875 / 7) * (11 / 24) = 20.77625 / 168 = 0.123668154761904...
# (the naive one is s^2 / 8 = 1.88875 / 56 = 0.033727678571428..., 11/3 times smaller).
HAND_MEAN = 0.3875
HAND_VAR = 0.1236681547619048
HAND_NAIVE_VAR = 0.0337276785714286


def test_corrected_interval_against_a_hand_computation_and_scipy_t():
    got = st.corrected_t_interval(D, 1 / 3)
    assert got["n"] == 8 and got["df"] == 7 and got["correction"] == pytest.approx(1 / 3)
    assert got["mean"] == pytest.approx(HAND_MEAN, abs=1e-12)
    assert got["se"] ** 2 == pytest.approx(HAND_VAR, rel=1e-12)
    # Independently: t quantile of scipy on the hand-computed standard error.
    se = math.sqrt(HAND_VAR)
    q = stats.t.ppf(0.975, 7)
    assert q == pytest.approx(2.364624, abs=1e-6)  # table value of t_{0.975, 7}
    assert got["low"] == pytest.approx(HAND_MEAN - q * se, abs=1e-12)
    assert got["high"] == pytest.approx(HAND_MEAN + q * se, abs=1e-12)
    assert got["low"] == pytest.approx(-0.444055, abs=1e-6)
    assert got["high"] == pytest.approx(1.219055, abs=1e-6)
    assert got["p"] == pytest.approx(2 * stats.t.sf(HAND_MEAN / se, 7), rel=1e-12)
    assert got["p"] == pytest.approx(0.306943, abs=1e-6)
    # The interval contains 0 and the 90 % interval reaches above +1: undecided, its p the
    # smaller of p (0.307) and p_equivalence (0.0625).
    assert got["verdict"] == "undecided" == st.UNDECIDED
    assert got["p_verdict"] == pytest.approx(0.0625478, abs=1e-6) == got["p_equivalence"]
    # Same through a, b (pairs with None / NaN left out).
    a = [x + 80.0 for x in D] + [None, 81.0]
    b = [80.0] * 8 + [79.0, float("nan")]
    via_pairs = st.corrected_t(a, b, 1 / 3)
    assert via_pairs["n"] == 8
    for key in ("mean", "low", "high", "se", "p", "p_equivalence"):
        assert via_pairs[key] == pytest.approx(got[key], abs=1e-9), key


def test_the_correction_widens_the_naive_interval_by_sqrt_of_1_plus_n_ratio():
    naive = st.corrected_t_interval(D, 0.0)
    corrected = st.corrected_t_interval(D, 1 / 3)
    assert naive["se"] ** 2 == pytest.approx(HAND_NAIVE_VAR, rel=1e-12)
    # (1/n + r) / (1/n) = 1 + n r = 1 + 8/3 = 11/3.
    assert corrected["se"] / naive["se"] == pytest.approx(math.sqrt(11 / 3), rel=1e-12)
    assert (corrected["high"] - corrected["low"]) / (naive["high"] - naive["low"]) == \
        pytest.approx(math.sqrt(11 / 3), rel=1e-12)
    assert naive["correction"] == 0.0 and corrected["p"] > naive["p"]


def test_ratio_zero_is_scipys_one_sample_t_test():
    ref = stats.ttest_1samp(D, 0.0)
    ci = ref.confidence_interval(0.95)
    got = st.corrected_t_interval(D, 0)
    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert got["low"] == pytest.approx(ci.low, abs=1e-12)
    assert got["high"] == pytest.approx(ci.high, abs=1e-12)
    ci90 = ref.confidence_interval(0.90)
    assert got["tost_low"] == pytest.approx(ci90.low, abs=1e-12)
    assert got["tost_high"] == pytest.approx(ci90.high, abs=1e-12)
    # TOST's one-sided tests are scipy's one-sided tests against -margin and +margin.
    assert got["p_lower"] == pytest.approx(
        stats.ttest_1samp(D, -1.0, alternative="greater").pvalue, rel=1e-10)
    assert got["p_upper"] == pytest.approx(
        stats.ttest_1samp(D, 1.0, alternative="less").pvalue, rel=1e-10)
    # Naive: 90 % interval 0.3875 ± 1.894579 * sqrt(0.0337277) = [0.0396, 0.7354], inside ±1,
    # so "equivalent"; the corrected interval of the same differences is "undecided".
    assert got["tost_low"] == pytest.approx(0.039559, abs=1e-5)
    assert got["tost_high"] == pytest.approx(0.735441, abs=1e-5)
    assert got["verdict"] == "equivalent"
    assert st.corrected_t_interval(D, 1 / 3)["verdict"] == "undecided"
    # Other levels too.
    at_99 = st.corrected_t_interval(D, 0, level=0.99)
    ci99 = ref.confidence_interval(0.99)
    assert (at_99["low"], at_99["high"]) == pytest.approx((ci99.low, ci99.high), abs=1e-12)


def test_tost_against_a_hand_computation():
    got = st.corrected_t_interval(D, 1 / 3, margin=1.0)
    se = math.sqrt(HAND_VAR)  # 0.351664833
    # H0: mean <= -1: t = (0.3875 + 1) / se = 1.3875 / 0.351664833 = 3.94551;
    # H0: mean >= +1: t = (1 - 0.3875) / se = 0.6125 / 0.351664833 = 1.74172.
    assert (HAND_MEAN + 1.0) / se == pytest.approx(3.94551, abs=1e-5)
    assert (1.0 - HAND_MEAN) / se == pytest.approx(1.74172, abs=1e-5)
    assert got["p_lower"] == pytest.approx(stats.t.sf(3.94551, 7), rel=1e-4)
    assert got["p_upper"] == pytest.approx(stats.t.sf(1.74172, 7), rel=1e-4)
    assert got["p_equivalence"] == got["p_upper"] == pytest.approx(0.062548, abs=1e-6)
    # 90 % interval: 0.3875 ± t_{0.95,7} * se = 0.3875 ± 1.894579 * 0.351665 = 0.3875 ± 0.666257.
    assert stats.t.ppf(0.95, 7) == pytest.approx(1.894579, abs=1e-6)
    assert got["tost_level"] == pytest.approx(0.90)
    assert got["tost_low"] == pytest.approx(0.3875 - 0.666257, abs=1e-6)
    assert got["tost_high"] == pytest.approx(0.3875 + 0.666257, abs=1e-6)
    assert got["equivalence_margin"] == 1.0 and got["alpha"] == pytest.approx(0.05)
    # 1.0538 > 1: not equivalent within ±1 (p 0.0625 >= 0.05), equivalent within ±1.1.
    assert got["verdict"] == "undecided"
    wider = st.corrected_t_interval(D, 1 / 3, margin=1.1)
    assert wider["p_equivalence"] < 0.05 and wider["verdict"] == "equivalent"
    assert wider["p_verdict"] == wider["p_equivalence"]


@pytest.mark.parametrize("ratio", [0.0, 1 / 4, 1 / 3, 1.0])
def test_tost_p_below_alpha_iff_the_90_percent_interval_is_inside_the_margin(ratio):
    seen = set()
    for d in (D, [0.1, -0.3, 0.2, 0.4, -0.1], [2.0, -1.0, 0.5]):
        for margin in np.arange(0.105, 6.0, 0.01):  # never exactly on a boundary
            got = st.corrected_t_interval(d, ratio, margin=float(margin))
            inside = -margin < got["tost_low"] and got["tost_high"] < margin
            assert (got["p_equivalence"] < 0.05) == inside, (d, margin, got)
            assert got["p_equivalence"] == max(got["p_lower"], got["p_upper"])
            seen.add(inside)
    assert seen == {True, False}  # both sides of the rule were exercised


def test_each_verdict_on_constructed_differences():
    holds = st.corrected_t_interval([2.0, 2.5, 3.0, 2.2, 2.8], 1 / 4)
    assert holds["verdict"] == "holds" == st.HOLDS and holds["low"] > 0
    assert holds["p_verdict"] == holds["p"] < 0.05
    down = st.corrected_t_interval([-2.0, -2.5, -3.0, -2.2, -2.8], 1 / 4)
    assert down["verdict"] == "does not hold" == st.DOES_NOT_HOLD and down["high"] < 0
    assert down["p_verdict"] == down["p"] == pytest.approx(holds["p"], rel=1e-12)
    same = st.corrected_t_interval([0.1, -0.1, 0.05, -0.05, 0.0, 0.02], 1 / 4)
    assert same["low"] < 0 < same["high"]
    assert -1 < same["tost_low"] and same["tost_high"] < 1
    assert same["verdict"] == "equivalent" == st.EQUIVALENT
    assert same["p_verdict"] == same["p_equivalence"] < 0.05
    wide = st.corrected_t_interval([3.0, -3.0, 2.0, -2.0], 1 / 4)
    assert wide["mean"] == 0.0 and wide["p"] == pytest.approx(1.0)
    assert wide["verdict"] == "undecided"
    assert wide["p_verdict"] == wide["p_equivalence"] == min(wide["p"], wide["p_equivalence"])
    # A tiny but certain difference: above 0 and inside ±1, it is "holds".
    tiny = st.corrected_t_interval([0.20, 0.21, 0.19, 0.20, 0.22], 1 / 4)
    assert 0 < tiny["low"] and tiny["high"] < 1 and tiny["p_equivalence"] < 0.05
    assert tiny["verdict"] == "holds" and tiny["p_verdict"] == tiny["p"]


def test_too_few_pairs():
    one = st.corrected_t([1.0, None, 3.0], [0.5, 2.0, float("nan")], 1 / 4)
    assert one["n"] == 1 and one["mean"] == 0.5
    for key in ("low", "high", "se", "df", "p", "tost_low", "tost_high", "p_lower", "p_upper",
                "p_equivalence", "p_verdict"):
        assert one[key] is None, key
    assert one["verdict"] == "undecided (n < 2)" == st.TOO_FEW
    none = st.corrected_t_interval([], 1 / 4)
    assert none["n"] == 0 and none["mean"] is None and none["verdict"] == st.TOO_FEW
    assert st.corrected_t_interval([None, float("nan"), 2.0], 0)["n"] == 1


def test_equal_differences_need_no_division_by_zero():
    up = st.corrected_t_interval([0.4, 0.4, 0.4], 1 / 4)  # numpy's variance: 5e-17, not 0
    assert up["se"] == 0.0 and up["low"] == up["high"] == up["mean"] == 0.4
    assert up["p"] == 0.0 and up["verdict"] == "holds"
    zero = st.corrected_t([2.0, 3.0, 4.0], [2.0, 3.0, 4.0], 1 / 4)
    assert (zero["low"], zero["high"], zero["p"]) == (0.0, 0.0, 1.0)
    assert zero["p_lower"] == zero["p_upper"] == zero["p_equivalence"] == 0.0
    assert zero["verdict"] == "equivalent" and zero["p_verdict"] == 0.0
    # On the margin exactly: t = 0 / 0 reads as 0, a one-sided p of 0.5.
    edge = st.corrected_t_interval([-1.0, -1.0, -1.0], 1 / 4, margin=1.0)
    assert edge["p_lower"] == 0.5 and edge["p_upper"] == 0.0 and edge["p_equivalence"] == 0.5
    assert edge["verdict"] == "does not hold" and edge["p_verdict"] == 0.0


def test_verdict_with_and_without_an_equivalence_interval():
    assert st.verdict(-0.5, 0.5, 5) == "undecided"  # as before: no TOST interval given
    assert st.verdict(-0.5, 0.5, 5, tost_low=-0.4, tost_high=0.4) == "equivalent"
    assert st.verdict(-0.5, 0.5, 5, tost_low=-0.4, tost_high=0.4, margin=0.3) == "undecided"
    assert st.verdict(-0.5, 0.5, 5, tost_low=-0.4, tost_high=1.0, margin=1.0) == "undecided"
    assert st.verdict(0.1, 0.3, 5, tost_low=0.15, tost_high=0.25) == "holds"
    assert st.verdict(-0.3, -0.1, 5, tost_low=-0.25, tost_high=-0.15) == "does not hold"
    assert st.verdict(-0.5, 0.5, 1, tost_low=-0.4, tost_high=0.4) == "undecided (n < 2)"


def test_documented_errors():
    with pytest.raises(ValueError, match="a and b must pair up, received 3 and 2 values"):
        st.corrected_t([1.0, 2.0, 3.0], [1.0, 2.0], 0.25)
    for level in (1.0, 0.5, 0.3, 0.0, 1.5):
        with pytest.raises(ValueError, match=r"level must be in \(0.5, 1\)"):
            st.corrected_t_interval(D, 0.25, level=level)
    for ratio in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="n_test_over_n_train must be a finite number >= 0"):
            st.corrected_t(D, [0.0] * 8, ratio)
    for margin in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="margin must be a finite number > 0"):
            st.corrected_t_interval(D, 0.25, margin=margin)


# Holm's step-down method -----------------------------------------------------------------------

def test_holm_against_a_hand_worked_answer():
    # m = 4, sorted: 0.005 <= 0.05/4 = 0.0125 reject; 0.01 <= 0.05/3 = 0.0167 reject;
    # 0.03 > 0.05/2 = 0.025 stop: 0.03 and 0.04 are not rejected.
    assert st.holm([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    # The first failure stops it, although 0.04 <= 0.05 alone: 0.02 > 0.05/3.
    assert st.holm([0.02, 0.03, 0.04]) == [False, False, False]
    # All pass: 0.001 <= 0.0167, 0.02 <= 0.025, 0.049 <= 0.05.
    assert st.holm([0.049, 0.001, 0.02]) == [True, True, True]
    # Ties are rejected together: 0.02 <= 0.025 and 0.02 <= 0.05.
    assert st.holm([0.02, 0.02]) == [True, True]
    # At alpha = 0.10: 0.03 <= 0.10/3, 0.04 <= 0.05, 0.09 <= 0.10.
    assert st.holm([0.09, 0.03, 0.04], alpha=0.10) == [True, True, True]
    assert st.holm([0.09, 0.03, 0.04], alpha=0.05) == [False, False, False]


def test_holm_leaves_none_out_of_the_count():
    # None is no test: m = 2, so 0.02 <= 0.05/2 and 0.03 <= 0.05 are rejected (counting the
    # None, m = 3 would stop at 0.02 > 0.0167).
    assert st.holm([0.02, None, 0.03]) == [True, False, True]
    assert st.holm([0.02, float("nan"), 0.03]) == [True, False, True]
    assert st.holm([None, 0.01, 0.04, None, 0.03, 0.005]) == \
        [False, True, False, False, False, True]
    assert st.holm([None, None]) == [False, False]
    assert st.holm([]) == []
    with pytest.raises(ValueError, match="alpha must be in"):
        st.holm([0.01], alpha=0.0)
    with pytest.raises(ValueError, match=r"p-values must be in \[0, 1\]"):
        st.holm([0.01, 1.2])
