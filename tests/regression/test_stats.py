"""pipeline.regression.stats: noise does not trip a comparison, a real change does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.regression.stats import (
    Verdict,
    compare_quality,
    compare_samples,
    compare_values,
    min_samples_for_statistic,
    sample_statistic,
)

pytestmark = pytest.mark.unit


def latency_ms(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """Shaped like real request latency: a lognormal body and a 2% slow tail."""
    body = rng.lognormal(np.log(2.0), 0.35, n)
    tail = rng.random(n) < 0.02
    body[tail] *= rng.lognormal(np.log(4.0), 0.5, int(tail.sum()))
    return body * scale


@pytest.mark.parametrize("statistic", ["mean", "p50", "p95", "p99"])
def test_same_distribution_raises_no_more_false_alarms_than_alpha_allows(statistic) -> None:
    """A/A over many seeds, with no allowance at all (only significance stands between
    noise and an alarm): at alpha 0.05 a one-sided alarm should fire at most ~2.5% of the
    time; 200 comparisons allow 14 (the binomial 99.9th percentile is 13)."""
    alarms = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        result = compare_samples(
            latency_ms(rng, 2000),
            latency_ms(rng, 2000),
            statistic=statistic,
            max_relative_change=0.0,
            alpha=0.05,
            seed=seed,
        )
        alarms += result.verdict == Verdict.REGRESSION
    assert alarms <= 14


def test_same_distribution_with_the_default_allowance_never_regresses() -> None:
    for seed in range(50):
        rng = np.random.default_rng(1000 + seed)
        base, cand = latency_ms(rng, 3000), latency_ms(rng, 3000)
        for statistic, allowance in (("p50", 0.15), ("p95", 0.20), ("p99", 0.25)):
            result = compare_samples(
                base, cand, statistic=statistic, max_relative_change=allowance, seed=seed
            )
            assert result.verdict == Verdict.UNCHANGED, result.reason


@pytest.mark.parametrize("statistic", ["mean", "p50", "p95", "p99"])
def test_twice_as_slow_is_a_regression_with_the_interval_beyond_the_allowance(statistic) -> None:
    """On 10,000 requests a side (the tail's p99 is noisy: at 3,000 its interval is still
    wider than x1.0-x2.7)."""
    rng = np.random.default_rng(7)
    result = compare_samples(
        latency_ms(rng, 10_000),
        latency_ms(rng, 10_000, scale=2.0),
        statistic=statistic,
        max_relative_change=0.25,
    )
    assert result.verdict == Verdict.REGRESSION, result.reason
    assert result.regressed
    assert 1.25 < result.ci_low <= result.ratio <= result.ci_high
    assert 1.6 < result.ratio < 2.7
    assert "wholly beyond the allowed +25%" in result.reason
    assert result.confidence == pytest.approx(0.99)


def test_a_significant_change_within_the_allowance_is_not_a_regression() -> None:
    """1.05x slower on many samples: significant, but inside the allowed +10%."""
    rng = np.random.default_rng(3)
    result = compare_samples(
        latency_ms(rng, 40_000),
        latency_ms(rng, 40_000, scale=1.05),
        statistic="p50",
        max_relative_change=0.10,
    )
    assert result.ci_low > 1.0  # the change is real...
    assert result.p_value is not None and result.p_value < 0.01
    assert result.verdict == Verdict.UNCHANGED  # ...and allowed
    assert "within the allowed +10%" in result.reason


def test_a_change_beyond_the_allowance_but_not_shown_to_be_is_unchanged() -> None:
    rng = np.random.default_rng(0)
    result = compare_samples(
        latency_ms(rng, 5000),
        latency_ms(rng, 5000, scale=1.3),
        statistic="p95",
        max_relative_change=0.25,
    )
    assert result.ratio > 1.25
    assert result.ci_low <= 1.25
    assert result.verdict == Verdict.UNCHANGED
    assert "not a significant regression" in result.reason


@pytest.mark.parametrize(("statistic", "need"), [("p50", 20), ("p95", 200), ("p99", 1000)])
def test_too_few_samples_for_the_statistic_is_insufficient(statistic, need) -> None:
    rng = np.random.default_rng(0)
    result = compare_samples(
        latency_ms(rng, need - 1),
        latency_ms(rng, 5000, scale=3.0),
        statistic=statistic,
        max_relative_change=0.1,
    )
    assert min_samples_for_statistic(statistic) == need
    assert result.verdict == Verdict.INSUFFICIENT
    assert not result.applicable
    assert f"at least {need} samples" in result.reason and f"has {need - 1}" in result.reason
    assert result.baseline_n == need - 1 and result.candidate_n == 5000
    assert np.isnan(result.ci_low)


def test_higher_is_better_regresses_downwards_and_improves_upwards() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(1000, 50, 500)
    worse = compare_samples(
        base, rng.normal(600, 50, 500), statistic="mean", direction="min", max_relative_change=0.15
    )
    better = compare_samples(
        base, rng.normal(1500, 50, 500), statistic="mean", direction="min", max_relative_change=0.15
    )
    assert worse.verdict == Verdict.REGRESSION and worse.ci_high < 0.85
    assert better.verdict == Verdict.IMPROVEMENT and better.ci_low > 1.15


def test_a_faster_candidate_is_an_improvement_for_latency() -> None:
    rng = np.random.default_rng(2)
    result = compare_samples(
        latency_ms(rng, 3000),
        latency_ms(rng, 3000, scale=0.5),
        statistic="p95",
        max_relative_change=0.2,
    )
    assert result.verdict == Verdict.IMPROVEMENT


def test_the_comparison_is_seeded_and_json_ready() -> None:
    rng = np.random.default_rng(4)
    base, cand = latency_ms(rng, 2000), latency_ms(rng, 2000, scale=1.1)
    first = compare_samples(base, cand, statistic="p99", max_relative_change=0.25, seed=9)
    again = compare_samples(base, cand, statistic="p99", max_relative_change=0.25, seed=9)
    assert first == again
    data = json.loads(json.dumps(first.to_dict()))
    assert data["verdict"] == "unchanged" and data["statistic"] == "p99"
    short = compare_samples(base[:10], cand, statistic="p99", max_relative_change=0.25)
    assert json.loads(json.dumps(short.to_dict()))["ci_low"] is None


def test_percentiles_are_the_inverted_cdf_kind() -> None:
    values = np.arange(1, 101, dtype=float)  # 1..100
    assert sample_statistic(values, "p50") == 50.0
    assert sample_statistic(values, "p95") == 95.0
    assert sample_statistic(values, "p99") == 99.0
    assert sample_statistic(values, "mean") == 50.5


def test_unusable_input_is_refused_with_what_was_wrong() -> None:
    good = np.ones(100)
    with pytest.raises(ValueError, match="statistic must be one of"):
        compare_samples(good, good, statistic="p90", max_relative_change=0.1)
    with pytest.raises(ValueError, match="finite"):
        compare_samples([1.0, float("nan")], good, max_relative_change=0.1)
    with pytest.raises(ValueError, match="direction"):
        compare_samples(good, good, direction="up", max_relative_change=0.1)
    with pytest.raises(ValueError, match="max_relative_change"):
        compare_samples(good, good, max_relative_change=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        compare_samples(good, good, max_relative_change=0.1, alpha=0.7)


# --------------------------------------------------------------------------- values
def test_repeated_capacity_trials_that_halve_are_a_regression() -> None:
    result = compare_values(
        [1010, 985, 1002, 995],
        [505, 498, 512],
        direction="min",
        max_relative_change=0.15,
        statistic="sustained_rps",
    )
    assert result.verdict == Verdict.REGRESSION, result.reason
    assert result.method == "welch_log_t"
    assert result.ci_high < 0.85 and result.ratio == pytest.approx(0.5, rel=0.03)


def test_noisy_repeats_with_a_modest_drop_are_not_a_regression() -> None:
    result = compare_values(
        [1000, 900, 1100], [850, 700, 1000], direction="min", max_relative_change=0.15
    )
    assert result.ratio < 0.9
    assert result.verdict == Verdict.UNCHANGED


def test_rss_grown_beyond_its_allowance_is_a_regression() -> None:
    result = compare_values(
        [250.1, 250.3, 249.9], [320.4, 321.0, 320.2], direction="max", max_relative_change=0.2
    )
    assert result.verdict == Verdict.REGRESSION and result.ci_low > 1.2


def test_identical_repeats_give_an_exact_ratio() -> None:
    result = compare_values([100, 100], [130, 130], direction="max", max_relative_change=0.2)
    assert result.ci_low == result.ci_high == pytest.approx(1.3)
    assert result.verdict == Verdict.REGRESSION


def test_a_single_value_per_side_is_insufficient() -> None:
    result = compare_values([100], [300, 310], direction="max", max_relative_change=0.2)
    assert result.verdict == Verdict.INSUFFICIENT
    assert "at least 2 repeated values" in result.reason


# --------------------------------------------------------------------------- quality
def test_quality_is_judged_in_absolute_points() -> None:
    drop = compare_quality(0.962, 0.931, max_absolute_drop=0.02, metric="routing_accuracy")
    assert drop.verdict == Verdict.REGRESSION
    assert drop.difference == pytest.approx(-0.031)
    assert "-3.10 points" in drop.reason and "more than 2 points" in drop.reason
    small = compare_quality(0.962, 0.950, max_absolute_drop=0.02)
    assert small.verdict == Verdict.UNCHANGED
    gain = compare_quality(0.90, 0.95, max_absolute_drop=0.02)
    assert gain.verdict == Verdict.IMPROVEMENT


def test_quality_without_a_value_or_on_another_set_is_insufficient() -> None:
    missing = compare_quality(None, 0.9, max_absolute_drop=0.02)
    assert missing.verdict == Verdict.INSUFFICIENT and "baseline" in missing.reason
    other = compare_quality(
        0.95, 0.80, max_absolute_drop=0.02, baseline_set="sha-a", candidate_set="sha-b"
    )
    assert other.verdict == Verdict.INSUFFICIENT and "different evaluation sets" in other.reason
