"""Stress test `queue_overflow`: 1,000 requests sent in one burst at an engine with a bounded
queue (max_queue_size 256), each with a 10 s bound; every request is accounted for as
succeeded, rejected ("queue full") or failed, and lost = submitted - all three; survived
when rejected > 0, lost == 0 and every accepted request succeeded; recovered when the queue
drains and a follow-up batch of 50 requests all succeed.
"""

from __future__ import annotations

import asyncio
import time

from pipeline.stages.stress.common import (
    REQUEST_TIMEOUT_S,
    Check,
    StressContext,
    TestResult,
    _alternating,
    _burst,
    _verdict,
)

__all__ = ["queue_overflow"]


async def _queue_depth(ctx: StressContext) -> int:
    return int((await ctx.host.stats())["engine"]["queue_depth"])


async def queue_overflow(
    ctx: StressContext,
    requests: int = 1000,
    timeout_s: float = REQUEST_TIMEOUT_S,
    followup: int = 50,
) -> TestResult:
    """`requests` requests in one burst at the bounded queue; every one accounted for."""
    name = "queue_overflow"
    stats0 = (await ctx.host.stats())["engine"]
    max_queue = int(stats0["max_queue_size"])
    keys = _alternating(ctx, requests)
    outcomes = await _burst(ctx, keys, "burst", timeout_s)
    burst = ctx.level(name, "burst", outcomes)
    stats1 = (await ctx.host.stats())["engine"]
    engine_rejected = int(stats1["rejected"]) - int(stats0["rejected"])
    accepted = burst.submitted - burst.rejected - burst.lost
    # recovery: the queue drains (bounded poll), then a follow-up batch all succeeds
    drained_at = time.perf_counter()
    depth = await _queue_depth(ctx)
    while depth > 0 and time.perf_counter() - drained_at < 5.0:
        await asyncio.sleep(0.05)
        depth = await _queue_depth(ctx)
    follow = await _burst(ctx, _alternating(ctx, followup), "follow-up", timeout_s)
    after = ctx.level(name, "follow-up", follow)
    accounted = burst.succeeded + burst.rejected + burst.failed
    survival = [
        Check(
            f"{burst.rejected} of {requests} rejected with 'queue full' at max_queue_size "
            f"{max_queue} (criterion > 0: the queue is bounded)",
            burst.rejected > 0,
        ),
        Check(
            f"accounting: succeeded {burst.succeeded} + rejected {burst.rejected} + failed "
            f"{burst.failed} = {accounted}, submitted {burst.submitted}, lost "
            f"{burst.lost} within {timeout_s:g} s (criterion lost 0)",
            burst.lost == 0 and accounted == burst.submitted,
        ),
        Check(
            f"{burst.succeeded}/{accepted} accepted requests succeeded (criterion all)",
            burst.failed == 0 and burst.succeeded == accepted,
        ),
        Check(
            f"engine counted {engine_rejected} rejections (criterion = client count "
            f"{burst.rejected})",
            engine_rejected == burst.rejected,
        ),
    ]
    recovery = [
        Check(f"engine queue depth {depth} after the burst (criterion 0)", depth == 0),
        Check(
            f"{after.succeeded}/{after.submitted} follow-up requests succeeded (criterion all)",
            after.submitted == followup and after.succeeded == followup,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        burst,
        f"{requests} requests sent in one burst, {timeout_s:g} s bound each",
        {
            "max_queue_size": max_queue,
            "accepted": accepted,
            "failed_other": burst.failed,
            "engine_rejected": engine_rejected,
            "followup": followup,
            "errors": sorted({o.error for o in outcomes if o.error and not o.rejected})[:5],
        },
    )
    ctx.say(
        f"stress: {name}: {requests} at once, queue {max_queue}: {burst.succeeded} succeeded, "
        f"{burst.rejected} rejected, {burst.failed} failed, {burst.lost} lost; follow-up "
        f"{after.succeeded}/{after.submitted} -> {_verdict(result)}"
    )
    return result
