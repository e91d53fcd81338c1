"""The one statistics rule (benchmarks/stats.py) against scipy.stats."""

import numpy as np
import pytest
from scipy import stats as sps

from benchmarks import stats


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 200])
def test_t_quantile_and_cdf_match_scipy(df):
    for p in (0.025, 0.5, 0.9, 0.975, 0.999):
        np.testing.assert_allclose(
            stats.t_quantile(p, df), sps.t.ppf(p, df), rtol=1e-8, atol=1e-9
        )
    for t in (-7.0, -1.3, 0.0, 0.4, 2.5):
        np.testing.assert_allclose(
            stats.t_cdf(t, df), sps.t.cdf(t, df), rtol=1e-9, atol=1e-12
        )


def test_paired_t_interval_matches_scipy():
    rng = np.random.default_rng(3)
    base = rng.normal(1.0, 0.3, size=7)
    method = base - 0.2 + rng.normal(0.0, 0.1, size=7)
    out = stats.paired_difference(method, base)
    ref = sps.ttest_rel(method, base)
    low, high = ref.confidence_interval(0.95)
    np.testing.assert_allclose(out["mean"], np.mean(method - base))
    np.testing.assert_allclose(out["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose([out["low"], out["high"]], [low, high])


def test_bootstrap_interval_close_to_scipy_percentile_bootstrap():
    # Skewed differences: one seed far out.
    d = np.array([0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.9])
    out = stats.paired_difference(d, np.zeros_like(d), interval="bootstrap")
    ref = sps.bootstrap(
        (d,),
        np.mean,
        method="percentile",
        n_resamples=20_000,
        rng=np.random.default_rng(1),
    ).confidence_interval
    np.testing.assert_allclose(
        [out["low"], out["high"]], [ref.low, ref.high], atol=0.02
    )
    # The percentile interval is asymmetric around the mean, as it must be
    # for this skew (the t interval would be symmetric).
    assert out["high"] - out["mean"] > out["mean"] - out["low"]


def test_fewer_than_five_seeds_never_get_a_verdict():
    out = stats.verdict([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], direction=-1)
    assert out["verdict"] == stats.NOT_TESTABLE
    assert out["reason"] == "n seeds < 5 (n=4)"


def test_verdict_words():
    base = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    # Lower is better; clearly lower on every seed.
    better = base - np.array([0.2, 0.21, 0.19, 0.2, 0.22])
    assert stats.verdict(better, base, direction=-1)["verdict"] == (
        stats.REPRODUCED
    )
    # Sign right by mean, but noise swamps it (t about 0.5): only partly.
    noisy = base + np.array([-0.3, 0.25, -0.2, 0.2, -0.05])
    out = stats.verdict(noisy, base, direction=-1)
    ref = sps.ttest_rel(noisy, base)
    assert out["mean"] < 0 and ref.pvalue > 0.05
    assert out["verdict"] == stats.PARTLY
    # Opposite direction, even if not significant.
    out = stats.verdict(base + 0.01, base, direction=-1)
    assert out["verdict"] == stats.NOT_REPRODUCED
    assert out["reason"] == "opposite direction, significant"
    # Significant but far smaller than the paper's: partly.
    out = stats.verdict(better, base, direction=-1, paper_effect=-1.0)
    assert out["verdict"] == stats.PARTLY
    np.testing.assert_allclose(out["size_ratio"], 0.204)
    # Relative size: -20% against the paper's -25%.
    out = stats.verdict(
        better, base, direction=-1, paper_effect=-0.25, relative=True
    )
    assert out["verdict"] == stats.REPRODUCED
    # A diverged seed the caller did not cap.
    worse = better.copy()
    worse[0] = np.inf
    assert stats.verdict(worse, base, direction=-1)["verdict"] == (
        stats.NOT_TESTABLE
    )


def test_floor_makes_a_claim_not_testable():
    # SoftSRV math MAUVE: 0.006 vs 0.0045 where disjoint sets give 0.0041.
    method = [0.0062, 0.0058, 0.0061, 0.006, 0.0059]
    base = [0.0044, 0.0046, 0.0045, 0.0045, 0.0045]
    assert stats.verdict(method, base, direction=1)["verdict"] == (
        stats.REPRODUCED
    )
    out = stats.verdict(
        method, base, direction=1, floor=0.0041, floor_margin=0.01
    )
    assert out["verdict"] == stats.NOT_TESTABLE
    # One arm lifted off the floor is testable.
    out = stats.verdict(
        [0.3, 0.31, 0.29, 0.3, 0.32],
        base,
        direction=1,
        floor=0.0041,
        floor_margin=0.01,
    )
    assert out["verdict"] == stats.REPRODUCED


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="interval"):
        stats.paired_difference([1, 2], [1, 2], interval="z")
    with pytest.raises(ValueError, match="direction"):
        stats.verdict([1] * 5, [2] * 5, direction=0)


def test_combine_leaves_out_untestable_comparisons():
    r, p, n, u = stats.WORDS
    assert stats.combine([r, r, u]) == r
    assert stats.combine([n, n]) == n
    assert stats.combine([r, n]) == p
    assert stats.combine([u, u]) == u
    assert stats.combine([]) == u


def test_combine_significant_opposite_direction_is_not_reproduced():
    # SALT's weak teacher: worse than SALT (the paper's direction,
    # significant) but significantly worse than no teacher at all (the
    # opposite direction of "it still helps"). Mixed words would read
    # "partly"; a significant opposite comparison makes it not reproduced.
    base = np.array([4.64, 4.65, 4.63, 4.645, 4.64])
    wobble = np.array([0.0, 0.01, -0.01, 0.005, -0.005])
    weak = base + 0.075 + wobble
    salt = base - 0.06 - wobble
    helps = stats.verdict(weak, base, direction=-1)
    less = stats.verdict(weak, salt, direction=1)
    assert helps["verdict"] == stats.NOT_REPRODUCED
    assert helps["opposite_significant"]
    assert helps["reason"] == "opposite direction, significant"
    assert less["verdict"] == stats.REPRODUCED
    assert not less["opposite_significant"]
    assert stats.combine([helps, less]) == stats.NOT_REPRODUCED
    # Opposite but not significant: still only mixed, partly.
    noisy = base + np.array([0.3, -0.25, 0.2, -0.2, 0.06])
    out = stats.verdict(noisy, base, direction=-1)
    assert out["verdict"] == stats.NOT_REPRODUCED
    assert not out["opposite_significant"]
    assert stats.combine([out, less]) == stats.PARTLY
