"""util/stats.py: mean and sample deviation, Student's t quantile (own implementation checked against scipy and
printed tables) and the Welch interval of a difference of means."""

from __future__ import annotations

import math
import statistics

import pytest

from vanillanet.util import stats
from vanillanet.util.stats import Interval, mean_std, t_quantile, t_quantile_own, welch_interval


def test_mean_std_uses_n_minus_one():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    mean, std = mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)


@pytest.mark.parametrize(("p", "df", "table"), [(0.975, 1, 12.706), (0.975, 4, 2.776), (0.975, 30, 2.042),
                                                (0.95, 10, 1.812), (0.995, 5, 4.032)])
def test_own_t_quantile_matches_printed_tables(p, df, table):
    assert t_quantile_own(p, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile_own(1 - p, df) == pytest.approx(-table, abs=5e-4)


@pytest.mark.parametrize("df", [1.5, 3.7, 12.25, 200.0])
def test_own_t_quantile_agrees_with_scipy_for_fractional_df(df):
    scipy_t = pytest.importorskip("scipy.stats").t
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile_own(p, df) == pytest.approx(float(scipy_t.ppf(p, df)), rel=1e-9)


def test_infinite_df_is_the_normal_quantile():
    assert t_quantile_own(0.975, math.inf) == pytest.approx(statistics.NormalDist().inv_cdf(0.975))


@pytest.mark.parametrize(("p", "df", "message"), [(0.0, 3, r"p must lie in \(0, 1\), got 0.0"),
                                                  (1.5, 3, r"p must lie in \(0, 1\), got 1.5"),
                                                  (0.5, 0, "degrees of freedom must be positive, got 0")])
def test_bad_quantile_arguments_are_one_line_value_errors(p, df, message):
    for fn in (t_quantile_own, t_quantile):
        with pytest.raises(ValueError, match=message):
            fn(p, df)


def test_welch_interval_by_hand():
    a, b = [10.0, 12.0, 11.0, 13.0], [8.0, 9.0, 7.0]
    qa, qb = statistics.variance(a) / 4, statistics.variance(b) / 3
    df = (qa + qb) ** 2 / (qa * qa / 3 + qb * qb / 2)
    half = t_quantile_own(0.975, df) * math.sqrt(qa + qb)
    got = welch_interval(a, b)
    assert got.diff == pytest.approx(3.5) and got.df == pytest.approx(df)
    assert (got.low, got.high) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-6)
    assert got.excludes_zero
    assert not welch_interval([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]).excludes_zero


def test_welch_interval_degenerate_samples():
    few = welch_interval([1.0], [2.0, 3.0])
    assert few.diff == -1.5 and math.isnan(few.low) and math.isnan(few.high) and math.isnan(few.df)
    assert welch_interval([2.0, 2.0], [1.0, 1.0]) == Interval(1.0, 1.0, 1.0, math.inf)
    assert math.isnan(welch_interval([], [1.0, 2.0]).diff)


def test_quantile_source_is_named():
    assert stats.T_QUANTILE_SOURCE in ("scipy.stats.t", "own implementation (scipy not installed)")


T975_DF4 = 2.7764451051977987  # Student's t, 97.5 % quantile, 4 degrees of freedom


def test_mean_std_known_numbers():
    assert mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx((5.0, math.sqrt(32 / 7)), rel=1e-15)
    mean, std = mean_std([3.5])
    assert mean == 3.5 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_std([]))


@pytest.mark.parametrize("quantile", [t_quantile, t_quantile_own])
def test_t_quantile_closed_forms(quantile):
    for p in (0.6, 0.9, 0.975, 0.995):
        assert quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert quantile(0.975, 4) == pytest.approx(T975_DF4, rel=1e-9)
    assert quantile(0.025, 4) == pytest.approx(-T975_DF4, rel=1e-9)
    assert quantile(0.975, 1e9) == pytest.approx(1.959963984540054, rel=1e-6)
    assert t_quantile_own(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-12)
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\), got 1.0"):
        quantile(1.0, 3)


def test_own_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.7, 1.5, 2.3, 3.0, 4.96, 7.5, 30.0, 300.0):
        for p in (0.55, 0.8, 0.975, 0.999):
            assert t_quantile_own(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_welch_interval_known_numbers():
    # equal sizes and variances: df = 2 (n - 1) = 4, se = sqrt(1/3 + 1/3)
    iv = welch_interval([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    half = T975_DF4 * math.sqrt(2 / 3)
    assert (iv.diff, iv.df) == (-1.0, pytest.approx(4.0, rel=1e-12))
    assert (iv.low, iv.high) == (pytest.approx(-1 - half, rel=1e-9), pytest.approx(-1 + half, rel=1e-9))
    assert not iv.excludes_zero
    # unequal: a = [1, 2, 3, 4] (var 5/3), b = [10, 12] (var 2): se^2 = 5/12 + 1, df = se^4 / ((5/12)^2/3 + 1)
    iv = welch_interval([1.0, 2.0, 3.0, 4.0], [10.0, 12.0])
    se2 = 5 / 12 + 1
    df = se2**2 / ((5 / 12) ** 2 / 3 + 1)
    assert iv.df == pytest.approx(df, rel=1e-12) and iv.diff == -8.5
    assert iv.high == pytest.approx(-8.5 + t_quantile_own(0.975, df) * math.sqrt(se2), rel=1e-9)
    assert iv.excludes_zero
    # no spread on either side: a zero-width interval; one value: no interval
    iv = welch_interval([1.0, 1.0], [0.5, 0.5])
    assert (iv.low, iv.high, iv.excludes_zero) == (0.5, 0.5, True)
    assert math.isnan(welch_interval([1.0], [0.5, 0.7]).low)
