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
