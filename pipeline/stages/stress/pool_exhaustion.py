"""Stress test `pool_exhaustion`: the engine's memory pool is exhausted from inside the engine
process (1000x1000 float32 allocations until PoolExhaustedError, then the rest filled);
survived when requests sent meanwhile all succeed on unpooled buffers (engine
unpooled_batches grows); recovered when after the release a 1000x1000 pool allocation
succeeds and requests are served from the pool again, all succeeding.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.stages.stress.common import (
    _MB,
    POOL_ALLOC_SHAPE,
    Check,
    StressContext,
    TestResult,
    _lost_check,
    _users,
    _verdict,
)

__all__ = ["pool_exhaustion"]


async def pool_exhaustion(ctx: StressContext) -> TestResult:
    """Exhaust the engine's memory pool from inside the engine process, serve, release."""
    name = "pool_exhaustion"
    n = ctx.scaled(100, 50)
    users = 5
    alloc_mb = POOL_ALLOC_SHAPE[0] * POOL_ALLOC_SHAPE[1] * 4 / _MB
    attempts = max(100, math.ceil(ctx.host.config.engine.pool_mb / alloc_mb) + 5)
    stats0 = (await ctx.host.stats())["engine"]
    held: dict[str, Any] = {}
    released: dict[str, Any] = {}
    try:
        held = await ctx.host.pool(
            "exhaust", shape=list(POOL_ALLOC_SHAPE), count=attempts, fill=True
        )
        during = await _users(ctx, users, math.ceil(n / users), "exhausted")
        stats1 = (await ctx.host.stats())["engine"]
    finally:
        released = await ctx.host.pool("release")
    probe = await ctx.host.pool("probe", shape=list(POOL_ALLOC_SHAPE))
    after = await _users(ctx, users, math.ceil(n / users), "released")
    stats2 = (await ctx.host.stats())["engine"]
    t_during = ctx.level(name, "exhausted", during)
    t_after = ctx.level(name, "released", after)
    unpooled_during = int(stats1["unpooled_batches"]) - int(stats0["unpooled_batches"])
    unpooled_after = int(stats2["unpooled_batches"]) - int(stats1["unpooled_batches"])
    pooled_after = int(stats2["memory_pool"]["allocations"]) - int(
        stats1["memory_pool"]["allocations"]
    )
    allocated, failed = int(held.get("allocated", 0)), int(held.get("failed", 0))
    survival = [
        Check(
            f"pool exhausted: {allocated} of {attempts} allocations of "
            f"{POOL_ALLOC_SHAPE[0]}x{POOL_ALLOC_SHAPE[1]} float32 succeeded, {failed} raised "
            f"PoolExhaustedError, {held.get('filled_bytes', 0)} bytes left filled "
            "(criterion >= 1 failure)",
            failed > 0,
        ),
        Check(
            f"{t_during.succeeded}/{t_during.submitted} requests during exhaustion succeeded "
            "(criterion all)",
            t_during.submitted > 0 and t_during.succeeded == t_during.submitted,
        ),
        Check(
            f"engine served them from unpooled buffers: unpooled_batches +{unpooled_during} "
            "(criterion > 0)",
            unpooled_during > 0,
        ),
        _lost_check([*during, *after]),
    ]
    recovery = [
        Check(
            f"released {released.get('released', 0)} held buffers (criterion all "
            f"{int(held.get('held', 0))})",
            int(released.get("released", -1)) == int(held.get("held", 0))
            and released.get("held") == 0,
        ),
        Check(
            f"a {POOL_ALLOC_SHAPE[0]}x{POOL_ALLOC_SHAPE[1]} pool allocation after release "
            f"{'succeeded' if probe.get('ok') else 'failed: ' + str(probe.get('error'))}",
            bool(probe.get("ok")),
        ),
        Check(
            f"{t_after.succeeded}/{t_after.submitted} requests after release succeeded from "
            f"the pool (unpooled_batches +{unpooled_after}, pool allocations +{pooled_after}; "
            "criterion all succeed, no unpooled batch)",
            t_after.submitted > 0
            and t_after.succeeded == t_after.submitted
            and unpooled_after == 0
            and pooled_after > 0,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t_during,
        f"{t_during.submitted} requests ({users} closed-loop users) while the pool was exhausted",
        {
            "pool_mb": ctx.host.config.engine.pool_mb,
            "allocation_attempts": attempts,
            "allocated": allocated,
            "allocation_failures": failed,
            "filled_bytes": held.get("filled_bytes", 0),
            "unpooled_batches_during": unpooled_during,
            "unpooled_batches_after": unpooled_after,
            "probe_after_release_ok": bool(probe.get("ok")),
        },
    )
    ctx.say(
        f"stress: {name}: {allocated} allocations then {failed} failures; "
        f"{t_during.succeeded}/{t_during.submitted} requests served unpooled "
        f"(+{unpooled_during} batches); after release probe "
        f"{'ok' if probe.get('ok') else 'FAILED'}, {t_after.succeeded}/{t_after.submitted} "
        f"-> {_verdict(result)}"
    )
    return result
