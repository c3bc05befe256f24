"""Stress test `memory_pressure`: closed-loop users keep sending while the engine process holds
growing ballast (+200 MB at smoke, +1 GB at scale 1, in steps), which is then freed;
survived when >= 99% of the requests sent under pressure succeed (and the pressure was
really applied: RSS grew by >= 90% of the ballast); recovered when the engine's RSS returns
to within baseline + max(10% of the ballast, 50 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from pipeline.stages.stress.common import (
    REQUEST_TIMEOUT_S,
    Check,
    StressContext,
    TestResult,
    _lost_check,
    _pct,
    _users,
    _verdict,
    tally,
)

__all__ = ["memory_pressure"]


async def memory_pressure(ctx: StressContext) -> TestResult:
    """Grow ballast in the engine process while closed-loop users keep sending; free it."""
    name = "memory_pressure"
    bound_mb = ctx.scaled(1000, 200)
    steps = max(2, min(5, bound_mb // 50))  # steps of >= 40 MB: mmapped, returned on free
    sizes = [round(bound_mb * (i + 1) / steps) for i in range(steps)]
    hold_s = max(0.5, 1.5 * ctx.scale)
    allowance = max(0.1 * bound_mb, 50.0)
    users, think_s = 3, 0.005
    state = {"phase": "baseline"}
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(
        _users(ctx, users, None, lambda: state["phase"], think_s=think_s, stop=stop)
    )
    rss: dict[str, float] = {}
    try:
        await asyncio.sleep(hold_s)
        baseline = rss["baseline"] = ctx.rss_mb()
        ballast_held = 0.0
        for mb in sizes:
            state["phase"] = f"ballast {mb} MB"
            ballast_held = (await ctx.host.ballast(mb))["ballast_mb"]
            await asyncio.sleep(hold_s)
            rss[state["phase"]] = ctx.rss_mb()
        peak = max(rss.values())
        state["phase"] = "freed"
        await ctx.host.ballast(0)
        freed_at = time.perf_counter()
        after = ctx.rss_mb()
        limit = baseline + allowance
        deadline = freed_at + max(5.0, 10.0 * ctx.scale)
        while after > limit and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            after = ctx.rss_mb()
        recovery_s = time.perf_counter() - freed_at
        await asyncio.sleep(min(hold_s, 0.5))  # traffic after the release too
        rss["freed"] = ctx.rss_mb()
    finally:
        stop.set()
        outcomes = await asyncio.wait_for(traffic, REQUEST_TIMEOUT_S + 5)
        with contextlib.suppress(Exception):
            await ctx.host.ballast(0)
    phases = ["baseline", *(f"ballast {mb} MB" for mb in sizes), "freed"]
    for phase in phases:
        ctx.level(name, phase, [o for o in outcomes if o.phase == phase], rss.get(phase))
    pressure = [o for o in outcomes if o.phase.startswith("ballast")]
    under = tally(pressure)
    freed = tally([o for o in outcomes if o.phase == "freed"])
    grew = peak - baseline
    survival = [
        Check(
            f"{under.succeeded}/{under.submitted} requests under pressure succeeded "
            f"({_pct(under.success_rate)}; criterion >= 99%)",
            under.submitted > 0 and under.success_rate >= 0.99,
        ),
        Check(
            f"pressure applied: engine RSS grew {grew:.0f} MB with {ballast_held:.0f} MB "
            f"ballast (criterion >= 90% of {bound_mb} MB)",
            grew >= 0.9 * bound_mb,
        ),
        _lost_check(outcomes),
    ]
    recovery = [
        Check(
            f"engine RSS {after:.1f} MB {recovery_s:.2f} s after freeing (criterion <= "
            f"{limit:.1f} MB = baseline {baseline:.1f} + max(10% of ballast, 50 MB))",
            after <= limit,
        ),
        Check(
            f"{freed.succeeded}/{freed.submitted} requests after freeing succeeded (criterion all)",
            freed.submitted > 0 and freed.succeeded == freed.submitted,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        under,
        f"requests sent while the ballast was held ({users} closed-loop users)",
        {
            "ballast_mb": bound_mb,
            "steps_mb": sizes,
            "hold_s": hold_s,
            "baseline_rss_mb": baseline,
            "peak_rss_mb": peak,
            "rss_after_free_mb": after,
            "recovery_s": recovery_s,
            "rss_limit_mb": limit,
        },
    )
    ctx.say(
        f"stress: {name}: +{bound_mb} MB in {steps} steps, RSS {baseline:.0f} -> "
        f"{peak:.0f} -> {after:.0f} MB, success {_pct(under.success_rate)} -> "
        f"{_verdict(result)}"
    )
    return result
