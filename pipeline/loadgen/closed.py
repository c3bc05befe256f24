"""Closed-loop users: each sends a request, waits for its answer, thinks, and repeats.

The plan's load scenarios, the concurrency sweep, the integration stage's concurrent
clients and the stress tests all simulate users this way; this is the one implementation.
Latency is counted from the time a user *meant* to send (after its think time), so a
generator that falls behind shows up as latency and issue delay, never as thinner load.

Every loop is bounded: by requests per user, by a duration, by a stop event, and by an
overall `timeout_s` after which requests still in flight are recorded as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Turn", "run_users"]

Think = float | Callable[[np.random.Generator], float]


@dataclass(slots=True)
class Turn:
    """One request of one user."""

    user: int
    index: int  # the user's n-th request
    scheduled_s: float  # when the user meant to send it, seconds from the run's start
    issue_delay_ms: float  # how late it really went out
    latency_ms: float  # from the scheduled time to the answer (NaN: lost)
    result: Any  # what `send` returned (None: lost)
    lost: bool = False  # still in flight when the run's time bound ran out


async def run_users(
    send: Callable[[int, int, np.random.Generator], Awaitable[Any]],
    users: int,
    *,
    requests_per_user: int | None = None,
    think_s: Think = 0.0,
    ramp_up_s: float = 0.0,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    seed: int = 0,
    timeout_s: float = 600.0,
) -> list[Turn]:
    """Run `users` closed-loop users; returns every request as a `Turn`, in completion order.

    `send(user, index, rng)` submits one request and returns an awaitable result (the user's
    own generator `rng` picks the model and input). User `u` starts at
    `ramp_up_s * u / users` and stops after `requests_per_user` requests, at
    `ramp_up_s + duration_s`, when `stop` is set, or when `timeout_s` (from the start) runs
    out; a request in flight at the timeout is a lost turn.
    """
    if requests_per_user is None and duration_s is None and stop is None:
        raise ValueError("closed-loop users need a bound: requests_per_user, duration_s or stop")
    clock = time.perf_counter
    t0 = clock()
    end = t0 + ramp_up_s + duration_s if duration_s is not None else float("inf")
    turns: list[Turn] = []
    in_flight: dict[int, tuple[int, float, float]] = {}

    def think(rng: np.random.Generator) -> float:
        return think_s(rng) if callable(think_s) else float(think_s)

    async def user(u: int) -> None:
        rng = np.random.default_rng(seed * 1000 + u)
        start = t0 + ramp_up_s * u / max(users, 1)
        await asyncio.sleep(max(0.0, start - clock()))
        intended = max(start, clock())
        i = 0
        while requests_per_user is None or i < requests_per_user:
            if intended >= end or (stop is not None and stop.is_set()):
                break
            sent = clock()
            in_flight[u] = (i, intended, sent)
            result = await send(u, i, rng)
            done = clock()
            del in_flight[u]
            turns.append(
                Turn(u, i, intended - t0, (sent - intended) * 1e3, (done - intended) * 1e3, result)
            )
            i += 1
            intended = done + think(rng)
            await asyncio.sleep(max(0.0, intended - clock()))

    tasks = [asyncio.ensure_future(user(u)) for u in range(users)]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for u, (i, intended, sent) in sorted(in_flight.items()):
        turns.append(
            Turn(u, i, intended - t0, (sent - intended) * 1e3, float("nan"), None, lost=True)
        )
    return turns
