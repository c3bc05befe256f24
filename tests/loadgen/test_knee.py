"""pipeline.loadgen.search.find_knee: the operating envelope's knee and what stopped it.

The trials are synthetic (no engine, no event-loop timing): each returns the LoadSummary a
system with a known behaviour would give at the offered rate.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace

import pytest

from pipeline.loadgen import LoadSummary, failure_cause, find_knee, find_max_sustained_rate

pytestmark = pytest.mark.unit

BOUND_MS = 20.0


def summary(rate: float, **changes) -> LoadSummary:
    """A clean 2-second trial at `rate`: every query issued on time, p99 5 ms, no errors."""
    scheduled = int(rate * 2)
    base = LoadSummary(
        offered_rps=rate,
        achieved_rps=scheduled / 2.0,
        duration_s=2.0,
        scheduled=scheduled,
        measured=scheduled,
        succeeded=scheduled,
        failed=0,
        error_rate=0.0,
        p50_ms=1.0,
        p90_ms=2.0,
        p95_ms=3.0,
        p99_ms=5.0,
        max_ms=8.0,
        mean_ms=1.2,
        service_p50_ms=1.0,
        service_p99_ms=5.0,
        issue_delay_p50_ms=0.05,
        issue_delay_p99_ms=0.3,
        issue_delay_max_ms=1.0,
        mean_batch_size=1.0,
        cache_hit_rate=0.0,
        valid=True,
    )
    return replace(base, **changes)


def knee_system(knee: float):
    """p99 within bound below `knee` req/s, far over it above."""

    async def trial(rate: float) -> LoadSummary:
        return summary(rate, p99_ms=5.0 if rate <= knee else 250.0)

    return trial


def run(trial, **kwargs):
    kwargs.setdefault("p99_bound_ms", BOUND_MS)
    kwargs.setdefault("confirm_failures", False)
    return asyncio.run(find_knee(trial, **kwargs))


@pytest.mark.parametrize("knee", [1_337.0, 9_000.0, 52_000.0])
def test_a_known_knee_is_found_within_the_bisection_resolution(knee) -> None:
    result = run(knee_system(knee), start_rps=250, resolution=0.02)
    assert result.stopped_by == "p99" and not result.at_least
    assert result.knee_rps <= knee < result.limit_rps
    assert result.limit_rps - result.knee_rps <= 0.02 * result.limit_rps
    assert result.resolved
    assert result.best is not None and result.best.offered_rps == result.knee_rps
    assert "p99 over its 20 ms bound" in result.describe()
    assert result.operating_rps(0.5) == pytest.approx(result.knee_rps / 2)
    recorded = json.loads(json.dumps(result.to_dict()))
    assert recorded["stopped_by"] == "p99" and recorded["at_least"] is False
    assert len(result.trial_table()) == len(result.trials)
    # bounded: the ramp (log2(knee / 250) + 1 trials) plus the bisection
    assert len(result.trials) <= math.ceil(math.log2(knee / 250)) + 1 + 7


def test_the_old_cap_is_no_longer_where_the_search_stops() -> None:
    """The smoke profile stops at 4,000 req/s; the knee search goes on to the system's."""
    capped = asyncio.run(
        find_max_sustained_rate(
            knee_system(9_000), p99_bound_ms=BOUND_MS, start_rps=250, max_rps=4_000
        )
    )
    assert capped.capped and capped.max_sustained_rps == 4_000
    assert run(knee_system(9_000), start_rps=250).knee_rps > 8_000


def test_a_generator_that_cannot_keep_up_is_reported_as_the_limit() -> None:
    """The system would sustain anything; the generator issues late beyond 6,000 req/s."""

    async def trial(rate: float) -> LoadSummary:
        if rate <= 6_000:
            return summary(rate)
        return summary(rate, issue_delay_p99_ms=40.0, p99_ms=60.0, valid=False)

    result = run(trial, start_rps=500)
    assert result.stopped_by == "generator"
    assert result.at_least
    assert result.knee_rps <= 6_000 < result.limit_rps
    assert result.describe().startswith("at least ")
    assert "load generator could not offer more" in result.describe()


def test_too_few_queries_sent_is_the_generator_too() -> None:
    async def trial(rate: float) -> LoadSummary:
        sent = min(rate, 3_000.0)  # never more than 3,000 req/s go out
        return summary(rate, achieved_rps=sent, valid=sent >= 0.95 * rate)

    result = run(trial, start_rps=1_000)
    assert result.stopped_by == "generator" and result.at_least
    assert result.knee_rps <= 3_000 / 0.95 < result.limit_rps


def test_errors_are_reported_as_the_limit() -> None:
    async def trial(rate: float) -> LoadSummary:
        return summary(rate, error_rate=0.0 if rate <= 2_500 else 0.2)

    result = run(trial, start_rps=250)
    assert result.stopped_by == "errors" and not result.at_least
    assert result.knee_rps <= 2_500 < result.limit_rps
    assert "errors above it" in result.describe()


def test_a_system_that_sustains_the_safety_cap_is_reported_as_at_least_the_cap() -> None:
    result = run(knee_system(math.inf), start_rps=1_000, safety_cap_rps=50_000)
    assert result.stopped_by == "cap" and result.at_least
    assert result.knee_rps == 50_000 and result.limit_rps is None
    assert result.trials[-1].offered_rps == 50_000  # the cap itself was tried, once
    assert "at least 50,000 req/s" in result.describe()


def test_the_trial_budget_bounds_the_search() -> None:
    result = run(knee_system(math.inf), start_rps=1, max_trials=5)
    assert len(result.trials) == 5
    assert result.stopped_by == "budget" and result.at_least and result.knee_rps == 16
    bisecting = run(knee_system(1_337), start_rps=250, resolution=0.001, max_trials=8)
    assert len(bisecting.trials) == 8
    assert bisecting.stopped_by == "p99" and not bisecting.resolved


def test_the_time_budget_bounds_the_search() -> None:
    now = [0.0]

    async def slow_trial(rate: float) -> LoadSummary:
        now[0] += 10.0  # each trial takes 10 s of the (fake) clock
        return summary(rate)

    result = run(slow_trial, start_rps=100, max_seconds=35, clock=lambda: now[0])
    assert len(result.trials) == 4 and result.stopped_by == "budget"
    assert result.seconds == 40.0


def test_a_failure_confirmed_by_a_repeat_counts_and_a_stray_one_does_not() -> None:
    calls: dict[float, int] = {}

    async def trial(rate: float) -> LoadSummary:
        calls[rate] = calls.get(rate, 0) + 1
        stray = rate == 2_000 and calls[rate] == 1  # one stray pause at 2,000 req/s
        return summary(rate, p99_ms=250.0 if stray or rate > 5_000 else 5.0)

    result = run(trial, start_rps=1_000, confirm_failures=True)
    assert calls[2_000] == 2
    assert result.knee_rps <= 5_000 < result.limit_rps and result.knee_rps > 4_500


def test_a_system_that_sustains_nothing_has_knee_zero() -> None:
    async def trial(rate: float) -> LoadSummary:
        return summary(rate, error_rate=1.0)

    result = run(trial, start_rps=100, min_rps=5)
    assert result.knee_rps == 0 and result.stopped_by == "errors" and result.best is None
    assert min(t.offered_rps for t in result.trials) >= 5


def test_failure_cause_puts_the_generator_first() -> None:
    late = summary(1_000, issue_delay_p99_ms=9.0, error_rate=0.5, p99_ms=99.0)
    assert failure_cause(late, p99_bound_ms=BOUND_MS) == "generator"
    assert failure_cause(summary(1_000, error_rate=0.01), p99_bound_ms=BOUND_MS) == "errors"
    assert failure_cause(summary(1_000, p99_ms=math.nan), p99_bound_ms=BOUND_MS) == "p99"
    assert failure_cause(summary(1_000), p99_bound_ms=BOUND_MS) is None


def test_arguments_that_cannot_bound_a_search_are_refused() -> None:
    with pytest.raises(ValueError, match="growth > 1"):
        run(knee_system(1_000), growth=1.0)
    with pytest.raises(ValueError, match="safety_factor"):
        run(knee_system(1_000)).operating_rps(1.5)
