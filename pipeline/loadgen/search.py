"""Capacity search: the highest offered rate a system sustains within a latency bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipeline.loadgen.summary import LoadSummary

__all__ = ["CapacityResult", "find_max_sustained_rate"]


@dataclass
class CapacityResult:
    max_sustained_rps: float
    p99_bound_ms: float
    trials: list[LoadSummary] = field(default_factory=list)
    best: LoadSummary | None = None
    capped: bool = False  # every rate up to max_rps was sustained: capacity is at least this

    def trial_table(self) -> list[dict]:
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
            for t in self.trials
        ]


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


async def find_max_sustained_rate(
    trial: Callable[[float], Awaitable[LoadSummary]],
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
    sustained if the repeat passes: on a shared machine one stray pause (another process,
    a collection) should not decide capacity. Bounded: at most
    2 * (log2(max_rps / start_rps) + 1 + refine_steps) trials.
    """
    result = CapacityResult(0.0, p99_bound_ms)

    async def attempt(rate: float) -> bool:
        if await attempt_once(rate):
            return True
        return confirm_failures and await attempt_once(rate)

    async def attempt_once(rate: float) -> bool:
        summary = await trial(rate)
        result.trials.append(summary)
        ok = sustained(summary, p99_bound_ms, max_error_rate, require_valid)
        if progress:
            progress(
                f"  {rate:9.0f} req/s: p50 {summary.p50_ms:7.3f} ms  p99 {summary.p99_ms:8.3f} ms"
                f"  errors {summary.error_rate:.4f}  batch {summary.mean_batch_size:5.1f}"
                f"  -> {'ok' if ok else 'over'}"
            )
        if ok and rate >= result.max_sustained_rps:
            result.max_sustained_rps = rate
            result.best = summary
        return ok

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
