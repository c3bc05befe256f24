"""Stress stage: the original plan's stress tests against the engine in its own process.

Every test is bounded in request count and time, sends its traffic over loopback only, and
decides `survived` and `recovered` from its own measurements with the criterion written out
in the row's `detail` (never a constant). Recovery is measured (polled, bounded), not
assumed after a fixed pause. One module per test, each opening with what it does and its
criteria; `common` holds what they share; `run` (below) runs them in `TESTS` order.

A row's counts (submitted, succeeded, rejected, lost, success_rate, p95_ms) are those of
the test's measured phase (named in `detail`); every phase is a row of levels.csv.

Outputs in `stages/stress/`: tests.csv, levels.csv, resources.csv (the engine process's
RSS and CPU over the whole stage) and summary.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.stages.context import StageContext
from pipeline.stages.stress.common import (
    LEVEL_COLUMNS,
    QUEUE_SIZE,
    SCALING_LEVELS,
    TEST_COLUMNS,
    StressContext,
    TestResult,
    _frame,
    _not_run,
    stress_context,
)
from pipeline.stages.stress.cpu_saturation import cpu_saturation
from pipeline.stages.stress.memory_pressure import memory_pressure
from pipeline.stages.stress.model_switching import model_switching
from pipeline.stages.stress.pool_exhaustion import pool_exhaustion
from pipeline.stages.stress.queue_overflow import queue_overflow
from pipeline.stages.stress.rapid_scaling import rapid_scaling
from pipeline.stages.stress.reload_in_flight import reload_in_flight

__all__ = [
    "LEVEL_COLUMNS",
    "QUEUE_SIZE",
    "SCALING_LEVELS",
    "TESTS",
    "TEST_COLUMNS",
    "StressContext",
    "TestResult",
    "cpu_saturation",
    "memory_pressure",
    "model_switching",
    "pool_exhaustion",
    "queue_overflow",
    "rapid_scaling",
    "reload_in_flight",
    "run",
    "stress_context",
]

TESTS: tuple[tuple[str, Callable[[StressContext], Awaitable[TestResult]]], ...] = (
    ("memory_pressure", memory_pressure),
    ("cpu_saturation", cpu_saturation),
    ("queue_overflow", queue_overflow),
    ("rapid_scaling", rapid_scaling),
    ("model_switching", model_switching),
    ("pool_exhaustion", pool_exhaustion),
    ("reload_in_flight", reload_in_flight),
)


def run(ctx: StageContext) -> dict[str, Any]:
    """Run the stress stage; returns its summary (also written to stages/stress/summary.json)."""
    return asyncio.run(_run(ctx))


async def _one(sc: StressContext, name: str, test, bound_s: float) -> TestResult:
    """One test, bounded in time; an engine that died or a test that raised is a failed
    row saying so (never a crash of the stage)."""
    code = sc.host.process.poll()
    if code is not None:
        return _not_run(name, f"not run: the engine process exited (code {code})")
    try:
        result = await asyncio.wait_for(test(sc), bound_s)
    except TimeoutError:
        result = _not_run(name, f"did not finish within {bound_s:g} s")
    except Exception as exc:
        result = _not_run(name, f"error: {type(exc).__name__}: {exc}")
    if result.measured.startswith("none"):
        sc.say(f"stress: {name}: {result.detail}")
    return result


async def _run(ctx: StageContext) -> dict:
    started = time.perf_counter()
    results: list[TestResult] = []
    engine_stats: dict[str, Any] = {}
    async with stress_context(ctx) as sc:
        ctx.say(
            f"stress: engine process {sc.host.pid} serving {', '.join(sc.keys)} "
            f"(scale {sc.scale:g}, max_queue_size {sc.host.config.engine.max_queue_size})"
        )
        bound_s = 60.0 + 120.0 * sc.scale
        for name, test in TESTS:
            results.append(await _one(sc, name, test, bound_s))
        with contextlib.suppress(Exception):
            engine_stats = (await asyncio.wait_for(sc.host.stats(), 10))["engine"]
    wall_s = time.perf_counter() - started

    ctx.write_table("tests", _frame([r.row() for r in results], TEST_COLUMNS))
    ctx.write_table("levels", _frame(list(sc.levels), LEVEL_COLUMNS))
    ctx.write_table(
        "resources",
        _frame(
            [{"t_s": t, "rss_mb": m, "cpu_percent": c} for t, m, c in sc.sampler.samples],
            ("t_s", "rss_mb", "cpu_percent"),
        ),
    )
    config = sc.host.config
    summary = ctx.write_summary(
        {
            "scale": sc.scale,
            "engine_config": config.to_dict(),
            "engine_pid": sc.host.pid,
            "engine_exit_code": sc.exit_code,
            "engine_peak_rss_mb": sc.sampler.peak_rss_mb(),
            "engine_mean_cpu_percent": sc.sampler.mean_cpu_percent(),
            "engine_stats": {k: v for k, v in engine_stats.items() if not isinstance(v, dict)},
            "p95_target_ms": sc.p95_target_ms,
            "p95_target_source": sc.p95_target_source,
            "tests": {r.test: r.to_dict() for r in results},
            "survived": sum(r.survived for r in results),
            "recovered": sum(r.recovered for r in results),
            "total": len(results),
            "all_survived": all(r.survived for r in results),
            "all_recovered": all(r.recovered for r in results),
            "lost": sum(r.counts.lost for r in results),
            "wall_s": wall_s,
            "tables": {contract.name: contract.path for contract in ctx.stage.tables},
        }
    )
    ctx.say(
        f"stress: {summary['survived']}/{len(results)} survived, {summary['recovered']}/"
        f"{len(results)} recovered in {wall_s:.1f} s"
    )
    return summary
