"""Issue queries at their scheduled times (open loop) and record what happened.

All per-query facts go into preallocated numpy arrays: the generator creates no object per
query beyond what the system under test returns, so it adds no garbage-collector pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.loadgen.schedule import poisson_schedule

__all__ = ["OpenLoopRecord", "run_open_loop"]


@dataclass
class OpenLoopRecord:
    """Raw per-query facts of one open-loop run (times in seconds from the run's start)."""

    rate_rps: float
    duration_s: float
    warmup_s: float
    scheduled: np.ndarray
    issued: np.ndarray  # NaN: never issued (the run was cut off)
    completed: np.ndarray  # NaN: never completed within the drain timeout
    success: np.ndarray
    batch_size: np.ndarray
    cache_hit: np.ndarray
    errors: dict[str, int]
    wall_s: float
    process_cpu_s: float


def _outcome(result: Any) -> tuple[bool, int, bool, str | None]:
    """(success, batch_size, cache_hit, error) from whatever the system under test returned."""
    if isinstance(result, bool):
        return result, 0, False, None if result else "failed"
    success = bool(getattr(result, "success", True))
    error = getattr(result, "error", None)
    return (
        success,
        int(getattr(result, "batch_size", 0) or 0),
        bool(getattr(result, "cache_hit", False)),
        (None if success else str(error or "failed")),
    )


async def run_open_loop(
    send: Callable[[int], Any],
    rate_rps: float,
    duration_s: float,
    *,
    warmup_s: float = 0.0,
    seed: int = 0,
    drain_timeout_s: float = 5.0,
    max_in_flight: int = 100_000,
) -> OpenLoopRecord:
    """Call `send(i)` at Poisson arrival times; `send` returns an awaitable result.

    `send` should submit the request at once and return a future (as
    `ProductionInferenceEngine.predict` does); a coroutine is wrapped in a task. Results are
    read from `success`, `batch_size`, `cache_hit` and `error` attributes (or a bool). The
    run is bounded: `warmup_s + duration_s` of sending, then at most `drain_timeout_s` for
    stragglers, which count as failures ("timeout").
    """
    loop = asyncio.get_running_loop()
    schedule = poisson_schedule(rate_rps, warmup_s + duration_s, seed)
    n = len(schedule)
    issued = np.full(n, np.nan)
    completed = np.full(n, np.nan)
    success = np.zeros(n, dtype=np.bool_)
    batch_size = np.zeros(n, dtype=np.int32)
    cache_hit = np.zeros(n, dtype=np.bool_)
    errors: dict[str, int] = {}
    pending = 0
    all_done = loop.create_future()
    clock = time.perf_counter
    cpu_start = time.process_time()

    def on_done(i: int, future: asyncio.Future) -> None:
        nonlocal pending
        completed[i] = clock() - t0
        pending -= 1
        if future.cancelled():
            ok, size, hit, err = False, 0, False, "cancelled"
        elif future.exception() is not None:
            exc = future.exception()
            ok, size, hit, err = False, 0, False, f"{type(exc).__name__}: {exc}"
        else:
            ok, size, hit, err = _outcome(future.result())
        success[i] = ok
        batch_size[i] = size
        cache_hit[i] = hit
        if err is not None:
            key = err.split(":", 1)[0][:80]
            errors[key] = errors.get(key, 0) + 1
        if pending == 0 and issued_all and not all_done.done():
            all_done.set_result(None)

    issued_all = False
    t0 = clock()
    hard_stop = warmup_s + duration_s + drain_timeout_s
    i = 0
    while i < n:
        now = clock() - t0
        if now > hard_stop:  # the system stopped completing: give up issuing, bounded
            break
        while i < n and schedule[i] <= now:
            if pending >= max_in_flight:
                break
            issued[i] = clock() - t0
            awaitable = send(i)
            if inspect.iscoroutine(awaitable):
                awaitable = asyncio.ensure_future(awaitable)
            pending += 1
            awaitable.add_done_callback(lambda f, i=i: on_done(i, f))
            i += 1
        if i < n:
            delay = schedule[i] - (clock() - t0)
            # sleep(0) still yields so completions and the engine run between sends
            await asyncio.sleep(delay if delay > 0 else 0)
    issued_all = True
    if pending and not all_done.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(all_done), drain_timeout_s)
    lost = int(np.sum(np.isnan(completed) & ~np.isnan(issued)))
    if lost:
        errors["timeout"] = errors.get("timeout", 0) + lost
    return OpenLoopRecord(
        rate_rps=rate_rps,
        duration_s=duration_s,
        warmup_s=warmup_s,
        scheduled=schedule,
        issued=issued,
        completed=completed,
        success=success,
        batch_size=batch_size,
        cache_hit=cache_hit,
        errors=errors,
        wall_s=clock() - t0,
        process_cpu_s=time.process_time() - cpu_start,
    )
