"""Stress test `rapid_scaling`: closed-loop users at 1, 5, 15, 30, 50, 25, 10, 1, sent through
the service's admission control (`pipeline.inference.admission`, switched on in the engine
process for this test: its AIMD limit in front of the engine, with a waiting room as large
as its highest limit, so a step up waits for the limit instead of failing).

The admission limit is read from the engine's STATS every 10 ms during each level and at
its end (the limit follows the demand the engine sees, which is below the user count: users
also spend time in the load generator).

Survived when success > 80% at every level (the plan's criterion), no request is lost, and
the limit rose with the load: its peak during the peak level is >= 2x its value after the
first level (required when the users rise 4x or more). Recovered when the last level-1 p95
is within 2x of the first level-1 p95 (1 ms slack; when it is not, the 1-user level is
re-measured for a few seconds at most, and each extra round is a levels.csv row) and the
limit fell with the load: after the last level it is <= max(4 x that level's users,
min_concurrency) and <= half its peak during the peak level.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

from pipeline.stages.stress.common import (
    SCALING_LEVELS,
    SLACK_MS,
    Check,
    Outcome,
    StressContext,
    Tally,
    TestResult,
    _lost_check,
    _ms,
    _pct,
    _users,
    _verdict,
    _within_2x,
    tally,
)

__all__ = ["ADMISSION", "rapid_scaling"]

#: the admission control this test certifies: the service's algorithm with a window and
#: bounds that a few hundred requests exercise (the p95 target is the run's own)
#: how often the admission limit is read during a level
SAMPLE_S = 0.01
ADMISSION = {
    "max_concurrency": 64,
    "min_concurrency": 2,
    "adjust_every": 5,
    "max_waiting": 64,
    "queue_timeout_ms": 5000.0,
}


async def _limit(ctx: StressContext) -> int:
    return int((await ctx.host.stats())["admission"]["stats"]["limit"])


async def _level(
    ctx: StressContext, users: int, count: int, phase: str
) -> tuple[list[Outcome], int, int]:
    """One level's outcomes, with the admission limit's peak during it and its end value."""
    stop = asyncio.Event()
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, await _limit(ctx))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        outcomes = await _users(ctx, users, count, phase)
    finally:
        stop.set()
        await sampler
    end = await _limit(ctx)
    return outcomes, max(peak, end), end


def _admission_checks(
    levels: Sequence[int], peaks: Sequence[int], ends: Sequence[int], settings: dict[str, Any]
) -> tuple[Check, Check]:
    """The limit followed the load: up during the peak level, down after it."""
    peak_at = max(range(len(levels)), key=levels.__getitem__)
    peak_users, peak_limit = levels[peak_at], peaks[peak_at]
    low_users, low_limit = levels[0], ends[0]
    last_users, last_limit = levels[-1], ends[-1]
    down_bound = min(max(4 * last_users, settings["min_concurrency"]), peak_limit // 2)
    trace = ", ".join(f"{u} users: {p}/{e}" for u, p, e in zip(levels, peaks, ends, strict=True))
    if peak_users < 4 * low_users:  # a rise that small needs no more room than the start
        rose = Check(
            f"the load rises less than 4x ({low_users} to {peak_users} users): the limit's "
            f"rise is not required (peak/end per level: {trace})",
            True,
        )
    else:
        rose = Check(
            f"admission limit peaked at {peak_limit} during the {peak_users}-user level "
            f"(criterion >= {2 * low_limit} = 2x its {low_limit} after the first "
            f"{low_users}-user level: it rose with the load; peak/end per level: {trace})",
            peak_limit >= 2 * low_limit,
        )
    return (
        rose,
        Check(
            f"admission limit {last_limit} after the last {last_users}-user level (criterion "
            f"<= {down_bound} = min(max(4 x its users, min {settings['min_concurrency']}), "
            "half the peak): it fell with the load)",
            peak_at < len(levels) - 1 and last_limit <= down_bound,
        ),
    )


async def rapid_scaling(ctx: StressContext, levels: Sequence[int] = SCALING_LEVELS) -> TestResult:
    """Closed-loop users stepping through `levels` through admission control; success, p95
    and the admission limit per level."""
    settings = {**ADMISSION, "target_p95_ms": ctx.p95_target_ms}
    await ctx.host.admission(settings)
    try:
        return await _scale(ctx, levels, settings)
    finally:
        with contextlib.suppress(Exception):  # the tests after this one talk to the engine
            await ctx.host.admission(None)


async def _scale(ctx: StressContext, levels: Sequence[int], settings: dict) -> TestResult:
    name = "rapid_scaling"
    per_user = ctx.scaled(10, 3)
    min_per_level = 20  # so a level-1 p95 has some samples
    all_outcomes: list[Outcome] = []
    per_level: list[tuple[str, Tally]] = []
    peaks: list[int] = []
    ends: list[int] = []
    for i, users in enumerate(levels):
        count = max(per_user, math.ceil(min_per_level / users))
        phase = f"step {i + 1}: {users} users"
        outcomes, peak, end = await _level(ctx, users, count, phase)
        all_outcomes += outcomes
        per_level.append((phase, ctx.level(name, phase, outcomes)))
        peaks.append(peak)
        ends.append(end)
    whole = tally(all_outcomes)
    worst_phase, worst = min(per_level, key=lambda p: p[1].success_rate)
    ones = [t for (phase, t), users in zip(per_level, levels, strict=True) if users == 1]
    extra_outcomes: list[Outcome] = []
    first, last = (ones[0], ones[-1]) if len(ones) >= 2 else (None, None)
    survival = [
        Check(
            f"lowest success {_pct(worst.success_rate)} at {worst_phase} (criterion > 80% at "
            "every level)",
            all(t.submitted > 0 and t.success_rate > 0.8 for _, t in per_level),
        ),
        _lost_check(all_outcomes),
    ]
    rose, fell = _admission_checks(levels, peaks, ends, settings)  # before any extra round
    survival.append(rose)
    rounds = 0
    if first is not None:
        # recovery is measured: the 1-user level is repeated (bounded) until it meets the bar
        ok, bound = _within_2x(last.p95_ms, first.p95_ms)
        final, settled_at = last, time.perf_counter()
        deadline = settled_at + max(3.0, 5.0 * ctx.scale)
        while not ok and time.perf_counter() < deadline:
            rounds += 1
            count = max(per_user, min_per_level)
            again = await _users(ctx, 1, count, f"1 user again ({rounds})")
            extra_outcomes += again
            final = ctx.level(name, f"1 user again ({rounds})", again)
            ok, bound = _within_2x(final.p95_ms, first.p95_ms)
        recovery = [
            Check(
                f"final 1-user p95 {_ms(final.p95_ms)} after {rounds} extra round(s) "
                f"(criterion <= {_ms(bound)} = max(2x, +{SLACK_MS:g} ms) of the first 1-user "
                f"p95 {_ms(first.p95_ms)}, re-measured for at most "
                f"{max(3.0, 5.0 * ctx.scale):g} s)",
                ok,
            ),
            _lost_check(extra_outcomes, "the extra rounds"),
        ]
    else:
        recovery = [Check("levels do not start and end at 1 user: not measured", False)]
    recovery.append(fell)
    admission = (await ctx.host.stats())["admission"]["stats"]
    p95s = ", ".join(f"{u}: {_ms(t.p95_ms)}" for u, (_, t) in zip(levels, per_level, strict=True))
    result = TestResult(
        name,
        survival,
        recovery,
        whole,
        f"all levels {list(levels)} users x >= {per_user} requests each through admission "
        f"control (p95 per level: {p95s})",
        {
            "levels": list(levels),
            "requests_per_user": per_user,
            "success_by_level": [t.success_rate for _, t in per_level],
            "p95_by_level_ms": [t.p95_ms for _, t in per_level],
            "extra_single_user_rounds": rounds,
            "admission_settings": settings,
            "admission_peak_limit_by_level": peaks,
            "admission_limit_by_level": ends,
            "admission_stats": admission,
        },
    )
    ctx.say(
        f"stress: {name}: {whole.submitted} requests over levels {list(levels)}: lowest "
        f"success {_pct(worst.success_rate)}, p95 per level {p95s}, admission limit peak/end "
        f"per level {list(zip(peaks, ends, strict=True))} -> {_verdict(result)}"
    )
    return result
