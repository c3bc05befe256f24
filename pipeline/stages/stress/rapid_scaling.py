"""Stress test `rapid_scaling`: closed-loop users at 1, 5, 15, 30, 50, 25, 10, 1; survived when
success > 80% at every level (the plan's criterion); recovered when the last level-1 p95 is
within 2x of the first level-1 p95 (1 ms slack; when it is not, the 1-user level is re-
measured for a few seconds at most, and each extra round is a levels.csv row).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

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

__all__ = ["rapid_scaling"]


async def rapid_scaling(ctx: StressContext, levels: Sequence[int] = SCALING_LEVELS) -> TestResult:
    """Closed-loop users stepping through `levels`; success and p95 per level."""
    name = "rapid_scaling"
    per_user = ctx.scaled(10, 3)
    min_per_level = 20  # so a level-1 p95 has some samples
    all_outcomes: list[Outcome] = []
    per_level: list[tuple[str, Tally]] = []
    for i, users in enumerate(levels):
        count = max(per_user, math.ceil(min_per_level / users))
        phase = f"step {i + 1}: {users} users"
        outcomes = await _users(ctx, users, count, phase)
        all_outcomes += outcomes
        per_level.append((phase, ctx.level(name, phase, outcomes)))
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
    p95s = ", ".join(f"{u}: {_ms(t.p95_ms)}" for u, (_, t) in zip(levels, per_level, strict=True))
    result = TestResult(
        name,
        survival,
        recovery,
        whole,
        f"all levels {list(levels)} users x >= {per_user} requests each (p95 per level: {p95s})",
        {
            "levels": list(levels),
            "requests_per_user": per_user,
            "success_by_level": [t.success_rate for _, t in per_level],
            "p95_by_level_ms": [t.p95_ms for _, t in per_level],
            "extra_single_user_rounds": rounds,
        },
    )
    ctx.say(
        f"stress: {name}: {whole.submitted} requests over levels {list(levels)}: lowest "
        f"success {_pct(worst.success_rate)}, p95 per level {p95s} -> {_verdict(result)}"
    )
    return result
