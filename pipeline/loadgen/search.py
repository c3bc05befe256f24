"""Capacity search: the highest offered rate a system sustains within a latency bound.

Two searches over the same trials (`trial(rate)` runs one open-loop trial and summarises
it):

* `find_max_sustained_rate`: double from a start rate up to a fixed `max_rps`, then bisect
  a fixed number of steps (a profile's bounded search);
* `find_knee`: the operating envelope. Raise the offered rate until something stops it,
  p99 over its bound ("p99"), errors ("errors") or a generator that cannot keep up
  ("generator": issue delay or too few queries sent, so the trial measured the harness,
  not the system), then bisect to a relative resolution. A hard safety cap far above any
  expected capacity ("cap") and a trial and time budget ("budget") bound it; when one of
  those, or the generator, stopped it, the knee is only a lower bound (`at_least`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.loadgen.summary import LoadSummary

__all__ = [
    "CapacityResult",
    "KneeResult",
    "StopCause",
    "failure_cause",
    "find_knee",
    "find_max_sustained_rate",
]

Trial = Callable[[float], Awaitable[LoadSummary]]
#: what stopped a knee search: the system ("p99", "errors"), the harness ("generator"), or
#: the search's own bounds ("cap", "budget")
StopCause = Literal["p99", "errors", "generator", "cap", "budget"]
#: causes after which the knee is only a lower bound on capacity
LOWER_BOUND_CAUSES = frozenset({"generator", "cap", "budget"})


def _trial_rows(trials: list[LoadSummary]) -> list[dict]:
    return [
        {
            "offered_rps": t.offered_rps,
            "p50_ms": t.p50_ms,
            "p99_ms": t.p99_ms,
            "error_rate": t.error_rate,
            "valid": t.valid,
            "mean_batch_size": t.mean_batch_size,
            "issue_delay_p99_ms": t.issue_delay_p99_ms,
            "samples": t.scheduled,
            "invalid_reasons": "; ".join(t.invalid_reasons),
        }
        for t in trials
    ]


@dataclass
class CapacityResult:
    max_sustained_rps: float
    p99_bound_ms: float
    trials: list[LoadSummary] = field(default_factory=list)
    best: LoadSummary | None = None
    capped: bool = False  # every rate up to max_rps was sustained: capacity is at least this

    def trial_table(self) -> list[dict]:
        return _trial_rows(self.trials)


def sustained(
    summary: LoadSummary,
    p99_bound_ms: float,
    max_error_rate: float = 0.0,
    require_valid: bool = False,
) -> bool:
    """A rate is sustained when p99 (from scheduled time) is within bound and errors are
    within `max_error_rate` (and, with `require_valid`, the trial itself was valid: e.g. the
    generator kept up). Generator lateness is already inside that latency."""
    return (
        summary.p99_ms <= p99_bound_ms
        and summary.error_rate <= max_error_rate
        and (summary.valid or not require_valid)
    )


class _Trials:
    """Runs trials, records them, says how each went; with `confirm`, a failed rate is
    tried once more and counts as sustained if the repeat passes (on a shared machine one
    stray pause should not decide capacity). `judge` returns None for a sustained trial,
    else the cause of the failure."""

    def __init__(
        self,
        trial: Trial,
        judge: Callable[[LoadSummary], str | None],
        confirm: bool,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.trial, self.judge, self.confirm, self.progress = trial, judge, confirm, progress
        self.summaries: list[LoadSummary] = []

    async def once(self, rate: float) -> tuple[str | None, LoadSummary]:
        summary = await self.trial(rate)
        self.summaries.append(summary)
        cause = self.judge(summary)
        if self.progress:
            verdict = "ok" if cause is None else "over" if cause == "over" else f"over: {cause}"
            self.progress(
                f"  {rate:9.0f} req/s: p50 {summary.p50_ms:7.3f} ms  p99 {summary.p99_ms:8.3f} ms"
                f"  errors {summary.error_rate:.4f}  batch {summary.mean_batch_size:5.1f}"
                f"  -> {verdict}"
            )
        return cause, summary

    async def attempt(
        self, rate: float, allowed: Callable[[], bool] = lambda: True
    ) -> tuple[str | None, LoadSummary]:
        cause, summary = await self.once(rate)
        if cause is not None and self.confirm and allowed():
            cause, summary = await self.once(rate)
        return cause, summary


async def find_max_sustained_rate(
    trial: Trial,
    *,
    p99_bound_ms: float,
    start_rps: float = 500.0,
    max_rps: float = 200_000.0,
    refine_steps: int = 5,
    max_error_rate: float = 0.0,
    confirm_failures: bool = True,
    require_valid: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CapacityResult:
    """Double the rate from `start_rps` until a trial fails, then bisect `refine_steps` times.

    With `confirm_failures`, a failed trial is run once more and the rate counts as
    sustained if the repeat passes. Bounded: at most
    2 * (log2(max_rps / start_rps) + 1 + refine_steps) trials. `find_knee` is the search
    that says what stopped it and does not stop at a low cap.
    """
    result = CapacityResult(0.0, p99_bound_ms)
    trials = _Trials(
        trial,
        lambda s: None if sustained(s, p99_bound_ms, max_error_rate, require_valid) else "over",
        confirm_failures,
        progress,
    )
    result.trials = trials.summaries

    async def attempt(rate: float) -> bool:
        cause, summary = await trials.attempt(rate)
        if cause is None and rate >= result.max_sustained_rps:
            result.max_sustained_rps = rate
            result.best = summary
        return cause is None

    lo, hi = 0.0, None
    rate = start_rps
    while rate <= max_rps:
        if await attempt(rate):
            lo = rate
            rate *= 2
        else:
            hi = rate
            break
    if hi is None:
        result.capped = True
        return result
    for _ in range(refine_steps):
        mid = (lo + hi) / 2 if lo else hi / 2
        if await attempt(mid):
            lo = mid
        else:
            hi = mid
    return result


# --------------------------------------------------------------------------- the knee
def failure_cause(
    summary: LoadSummary,
    *,
    p99_bound_ms: float,
    max_error_rate: float = 0.0,
    max_issue_delay_ms: float = 5.0,
    min_achieved_ratio: float = 0.95,
) -> Literal["p99", "errors", "generator"] | None:
    """Why a trial was not sustained, or None when it was.

    "generator" first: when queries went out late (issue delay p99 over
    `max_issue_delay_ms`) or too few went out at all (fewer than `min_achieved_ratio` of
    those scheduled), the trial measured the harness, and neither its latency nor its
    errors can be blamed on the system. Then "errors" (error rate over `max_error_rate`),
    then "p99" (over its bound, or not measured). The thresholds are `summarize`'s.
    """
    issued = summary.achieved_rps * summary.duration_s
    if summary.issue_delay_p99_ms > max_issue_delay_ms or (
        summary.scheduled and issued < min_achieved_ratio * summary.scheduled - 0.5
    ):
        return "generator"
    if summary.error_rate > max_error_rate:
        return "errors"
    if not summary.p99_ms <= p99_bound_ms:  # NaN: nothing measured
        return "p99"
    return None


@dataclass
class KneeResult:
    """The operating envelope's knee: the highest rate sustained, and what stopped the
    search. `limit_rps` is the lowest rate that failed (None when none did), so the knee
    lies in [knee_rps, limit_rps); `resolution_rps` is that bracket's width."""

    knee_rps: float
    stopped_by: StopCause
    p99_bound_ms: float
    safety_cap_rps: float
    limit_rps: float | None = None
    resolution: float = 0.05
    trials: list[LoadSummary] = field(default_factory=list)
    best: LoadSummary | None = None
    seconds: float = 0.0

    @property
    def at_least(self) -> bool:
        """The knee is a lower bound: the search stopped before the system did."""
        return self.stopped_by in LOWER_BOUND_CAUSES

    @property
    def resolution_rps(self) -> float | None:
        return None if self.limit_rps is None else self.limit_rps - self.knee_rps

    @property
    def resolved(self) -> bool:
        """The bracket is within the asked relative resolution."""
        return self.limit_rps is not None and (
            self.limit_rps - self.knee_rps <= self.resolution * self.limit_rps
        )

    def operating_rps(self, safety_factor: float) -> float:
        """The recommended operating rate: the knee x `safety_factor` (in (0, 1])."""
        if not 0 < safety_factor <= 1:
            raise ValueError(f"safety_factor must be in (0, 1], got {safety_factor!r}")
        return self.knee_rps * safety_factor

    def describe(self) -> str:
        """`at least 8,000 req/s (stopped by the generator)` / `1,203 req/s (p99 ...)`."""
        rate = f"{'at least ' if self.at_least else ''}{self.knee_rps:,.0f} req/s"
        why = {
            "p99": f"p99 over its {self.p99_bound_ms:g} ms bound above it",
            "errors": "errors above it",
            "generator": "the load generator could not offer more",
            "cap": f"the safety cap of {self.safety_cap_rps:,.0f} req/s was sustained",
            "budget": "the trial or time budget ran out before a rate failed",
        }[self.stopped_by]
        bracket = f", next failing rate {self.limit_rps:,.0f} req/s" if self.limit_rps else ""
        return f"{rate} ({why}{bracket})"

    def trial_table(self) -> list[dict]:
        return _trial_rows(self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {
            "knee_rps": self.knee_rps,
            "at_least": self.at_least,
            "stopped_by": self.stopped_by,
            "limit_rps": self.limit_rps,
            "resolution": self.resolution,
            "resolution_rps": self.resolution_rps,
            "resolved": self.resolved,
            "p99_bound_ms": self.p99_bound_ms,
            "safety_cap_rps": self.safety_cap_rps,
            "trials": len(self.trials),
            "seconds": self.seconds,
            "describe": self.describe(),
        }


async def find_knee(
    trial: Trial,
    *,
    p99_bound_ms: float,
    start_rps: float = 250.0,
    growth: float = 2.0,
    safety_cap_rps: float = 1_000_000.0,
    resolution: float = 0.05,
    min_rps: float = 1.0,
    max_error_rate: float = 0.0,
    max_issue_delay_ms: float = 5.0,
    min_achieved_ratio: float = 0.95,
    confirm_failures: bool = True,
    max_trials: int = 40,
    max_seconds: float = 900.0,
    progress: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> KneeResult:
    """Find the knee: raise the rate x`growth` from `start_rps` until a trial fails (see
    `failure_cause`), then bisect until the bracket is within `resolution` of the failing
    rate (0.05: 5%). Bounded by `safety_cap_rps` (tried once, as the last rate of the
    ramp), `max_trials` and `max_seconds` (checked before each trial; `clock` is for
    tests). Rates below `min_rps` are not tried: a system that sustains nothing has knee 0.
    """
    if not (start_rps > 0 and growth > 1 and 0 < resolution < 1 and safety_cap_rps >= start_rps):
        raise ValueError(
            "find_knee needs start_rps > 0, growth > 1, 0 < resolution < 1 and "
            f"safety_cap_rps >= start_rps; got {start_rps}, {growth}, {resolution}, "
            f"{safety_cap_rps}"
        )
    started = clock()
    result = KneeResult(0.0, "budget", p99_bound_ms, safety_cap_rps, resolution=resolution)

    def judge(summary: LoadSummary) -> str | None:
        return failure_cause(
            summary,
            p99_bound_ms=p99_bound_ms,
            max_error_rate=max_error_rate,
            max_issue_delay_ms=max_issue_delay_ms,
            min_achieved_ratio=min_achieved_ratio,
        )

    def budget_left() -> bool:
        return len(trials.summaries) < max_trials and clock() - started < max_seconds

    trials = _Trials(trial, judge, confirm_failures, progress)
    result.trials = trials.summaries
    lo, hi, cause = 0.0, None, None
    rate = start_rps
    while hi is None and budget_left():
        failed, summary = await trials.attempt(rate, budget_left)
        if failed is None:
            lo, result.best = rate, summary
            if rate >= safety_cap_rps:
                cause = "cap"
                break
            rate = min(rate * growth, safety_cap_rps)
        else:
            hi, cause = rate, failed
    while hi is not None and hi - lo > resolution * hi and budget_left():
        mid = (lo + hi) / 2
        if mid < min_rps:
            break
        failed, summary = await trials.attempt(mid, budget_left)
        if failed is None:
            lo, result.best = mid, summary
        else:
            hi, cause = mid, failed
    result.knee_rps = lo
    result.limit_rps = hi
    result.stopped_by = cause or "budget"
    result.seconds = clock() - started
    return result
