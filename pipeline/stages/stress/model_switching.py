"""Stress test `model_switching`: 100+ sequential requests alternating between the models;
survived when all succeed with mean latency < 100 ms (the plan's criterion); recovered when
every response has its model's output size (quality 1, routing 4).
"""

from __future__ import annotations

from pipeline.stages.stress.common import (
    Check,
    StressContext,
    TestResult,
    _alternating,
    _lost_check,
    _ms,
    _request,
    _verdict,
)

__all__ = ["model_switching"]


async def model_switching(ctx: StressContext) -> TestResult:
    """Sequential requests alternating between the models."""
    name = "model_switching"
    n = ctx.scaled(100, 100)
    outcomes = []
    for key in _alternating(ctx, n):
        outcomes.append(await _request(ctx, key, "alternating"))
    t = ctx.level(name, "alternating", outcomes)
    wrong = [o for o in outcomes if o.ok and not ctx.size_ok(o.key, o.output_size)]
    sizes = ", ".join(f"{k} [{v}]" for k, v in ctx.output_sizes.items())
    survival = [
        Check(
            f"{t.succeeded}/{t.submitted} succeeded (criterion all)",
            t.submitted == n and t.succeeded == n,
        ),
        Check(f"mean latency {_ms(t.mean_ms)} (criterion < 100 ms)", t.mean_ms < 100.0),
        _lost_check(outcomes),
    ]
    recovery = [
        Check(
            f"{t.succeeded - len(wrong)}/{t.succeeded} responses had their model's output "
            f"size ({sizes}; criterion all, and every request answered)",
            not wrong and t.succeeded == n,
        )
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t,
        f"{n} sequential requests alternating between {len(ctx.keys)} models",
        {"requests": n, "wrong_model_outputs": len(wrong), "mean_ms": t.mean_ms},
    )
    ctx.say(
        f"stress: {name}: {n} alternating requests: {t.succeeded} succeeded, mean "
        f"{_ms(t.mean_ms)}, {len(wrong)} wrong outputs -> {_verdict(result)}"
    )
    return result
