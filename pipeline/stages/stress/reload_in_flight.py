"""Stress test `reload_in_flight`: the model is hot-reloaded with 25+ requests in flight and as
many sent behind the reload (50+ in all); survived when none is lost and all succeed;
recovered when the versions before, from the reload and after agree and the model serves
again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pipeline.stages.stress.common import (
    REQUEST_TIMEOUT_S,
    Check,
    StressContext,
    TestResult,
    _collect,
    _send_burst,
    _users,
    _verdict,
)

__all__ = ["reload_in_flight"]


async def reload_in_flight(ctx: StressContext, key: str | None = None) -> TestResult:
    """Hot-reload a model while requests for it are in flight."""
    name = "reload_in_flight"
    key = key or ctx.keys[0]
    n = ctx.scaled(100, 50)
    models0 = (await ctx.host.stats())["models"][key]
    first = [key] * (n // 2)
    second = [key] * (n - n // 2)
    f1, e1, s1 = _send_burst(ctx, first)
    reload_started = time.perf_counter()
    reload_task = asyncio.ensure_future(ctx.host.reload(key))
    await asyncio.sleep(0)  # the reload request goes out now, behind the first half
    in_flight = sum(not f.done() for f in f1)
    f2, e2, s2 = _send_burst(ctx, second)  # sent while the reload runs
    reply: dict[str, Any] = {}
    try:
        reply = await asyncio.wait_for(reload_task, 60)
    finally:
        reload_s = time.perf_counter() - reload_started
        deadline = time.perf_counter() + REQUEST_TIMEOUT_S
        outcomes = await _collect(first, f1, e1, s1, "around reload", deadline)
        outcomes += await _collect(second, f2, e2, s2, "around reload", deadline)
    t = ctx.level(name, "around reload", outcomes)
    models1 = (await ctx.host.stats())["models"][key]
    post = await _users(ctx, 2, 10, "after reload", keys=[key])
    t_post = ctx.level(name, "after reload", post)
    versions = [models0.get("version"), reply.get("version"), models1.get("version")]
    survival = [
        Check(
            f"reload {'succeeded' if reply.get('ok') else 'failed'} in {reload_s:.3f} s "
            f"({reply.get('error') or 'no error'})",
            bool(reply.get("ok")),
        ),
        Check(
            f"{in_flight} requests in flight when the reload was sent, {len(second)} more sent "
            "behind it (criterion >= 10 in flight)",
            in_flight >= 10,
        ),
        Check(
            f"{t.succeeded}/{t.submitted} succeeded, {t.lost} lost (criterion all succeed, "
            "none lost)",
            t.submitted == n and t.succeeded == n and t.lost == 0,
        ),
        Check(
            f"{sum(o.ok and ctx.size_ok(key, o.output_size) for o in outcomes)}/"
            f"{t.succeeded} outputs of size {ctx.output_sizes[key]} (criterion all)",
            all(ctx.size_ok(key, o.output_size) for o in outcomes if o.ok),
        ),
    ]
    recovery = [
        Check(
            f"versions before/reload/after {versions} (criterion all equal)",
            None not in versions and len(set(versions)) == 1,
        ),
        Check(
            f"model loaded after reload ({models1.get('loaded')}) and "
            f"{t_post.succeeded}/{t_post.submitted} requests after it succeeded "
            "(criterion all)",
            bool(models1.get("loaded"))
            and t_post.submitted > 0
            and t_post.succeeded == t_post.submitted,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t,
        f"{n} requests for {key} sent around a hot reload",
        {
            "model": key,
            "in_flight_at_reload": in_flight,
            "reload_s": reload_s,
            "versions": versions,
            "sha256_before": models0.get("sha256"),
            "sha256_after": models1.get("sha256"),
        },
    )
    ctx.say(
        f"stress: {name}: reload of {key} with {in_flight} in flight: {t.succeeded}/"
        f"{t.submitted} succeeded, {t.lost} lost, versions {versions} -> {_verdict(result)}"
    )
    return result
