"""Bounded concurrency for async work, with admission control and AIMD auto-scaling.

At most `limit` jobs run at once; up to `max_waiting` more wait for a slot (bounded by
`queue_timeout_s`); anything beyond is rejected at once with AdmissionRejectedError. With
`auto_scale`, the limit follows observed latency: every `adjust_every` completions, if the
window's p95 latency is within `target_latency_ms` the limit grows by one (additive
increase, up to `max_workers`); otherwise it is halved (multiplicative decrease, down to
`min_workers`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pipeline.inference._records import RecordMixin
from pipeline.inference.errors import AdmissionRejectedError

__all__ = ["ConcurrencyStats", "ConcurrentProcessingEngine"]

T = TypeVar("T")


@dataclass(frozen=True)
class ConcurrencyStats(RecordMixin):
    limit: int
    in_flight: int
    waiting: int
    admitted: int
    rejected: int
    timed_out: int
    completed: int
    failed: int
    peak_in_flight: int
    scale_ups: int
    scale_downs: int
    p95_latency_ms: float


class ConcurrentProcessingEngine:
    """Runs coroutines with a bounded, latency-driven concurrency limit."""

    def __init__(
        self,
        max_workers: int = 20,
        auto_scale: bool = True,
        *,
        min_workers: int = 1,
        initial_workers: int | None = None,
        max_waiting: int | None = None,
        queue_timeout_s: float = 10.0,
        target_latency_ms: float = 100.0,
        adjust_every: int = 20,
    ) -> None:
        if not 1 <= min_workers <= max_workers:
            raise ValueError(
                f"need 1 <= min_workers <= max_workers, got {min_workers} and {max_workers}"
            )
        self.max_workers = max_workers
        self.min_workers = min_workers
        self.auto_scale = auto_scale
        self.limit = initial_workers if initial_workers is not None else max_workers
        self.limit = max(min_workers, min(self.limit, max_workers))
        self.max_waiting = max_waiting if max_waiting is not None else 4 * max_workers
        self.queue_timeout_s = queue_timeout_s
        self.target_latency_ms = target_latency_ms
        self.adjust_every = adjust_every
        self._in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._latencies: deque[float] = deque(maxlen=max(adjust_every, 1) * 4)
        self._since_adjust = 0
        self._counts = dict.fromkeys(
            ("admitted", "rejected", "timed_out", "completed", "failed", "peak", "up", "down"), 0
        )
        self.limit_history: list[tuple[float, int]] = [(time.monotonic(), self.limit)]

    async def _acquire(self) -> None:
        if self._in_flight < self.limit and not self._waiters:
            self._in_flight += 1
            return
        if len(self._waiters) >= self.max_waiting:
            self._counts["rejected"] += 1
            raise AdmissionRejectedError(
                f"admission rejected: {self._in_flight} jobs in flight (limit {self.limit}) and "
                f"{len(self._waiters)} waiting (max_waiting={self.max_waiting})"
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.queue_timeout_s)
        except TimeoutError:
            self._counts["timed_out"] += 1
            raise AdmissionRejectedError(
                f"admission timed out after {self.queue_timeout_s:g} s waiting for a slot "
                f"(limit {self.limit})"
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        # the slot was handed over by _release (in_flight already counts it)

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    async def run(self, job: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run `job(*args, **kwargs)` once a slot is free; raises AdmissionRejectedError."""
        await self._acquire()
        self._counts["admitted"] += 1
        self._counts["peak"] = max(self._counts["peak"], self._in_flight)
        started = time.perf_counter()
        ok = False
        try:
            result = await job(*args, **kwargs)
            ok = True
            return result
        finally:
            self._observe((time.perf_counter() - started) * 1000.0, ok)
            self._release()

    async def map(
        self, job: Callable[[Any], Awaitable[T]], items: Iterable[Any]
    ) -> list[T | BaseException]:
        """Run `job(item)` for every item under the limit; exceptions are returned in place."""
        return list(
            await asyncio.gather(*(self.run(job, item) for item in items), return_exceptions=True)
        )

    def _observe(self, latency_ms: float, ok: bool) -> None:
        self._counts["completed" if ok else "failed"] += 1
        self._latencies.append(latency_ms)
        if not self.auto_scale:
            return
        self._since_adjust += 1
        if self._since_adjust < self.adjust_every:
            return
        self._since_adjust = 0
        p95 = float(np.percentile(list(self._latencies)[-self.adjust_every :], 95))
        if p95 <= self.target_latency_ms and ok:
            new = min(self.max_workers, self.limit + 1)
            self._counts["up"] += new > self.limit
        else:
            new = max(self.min_workers, self.limit // 2)
            self._counts["down"] += new < self.limit
        if new != self.limit:
            self.limit = new
            self.limit_history.append((time.monotonic(), new))
            self._wake()

    def get_stats(self) -> ConcurrencyStats:
        recent = list(self._latencies)
        return ConcurrencyStats(
            limit=self.limit,
            in_flight=self._in_flight,
            waiting=len(self._waiters),
            admitted=self._counts["admitted"],
            rejected=self._counts["rejected"],
            timed_out=self._counts["timed_out"],
            completed=self._counts["completed"],
            failed=self._counts["failed"],
            peak_in_flight=self._counts["peak"],
            scale_ups=self._counts["up"],
            scale_downs=self._counts["down"],
            p95_latency_ms=float(np.percentile(recent, 95)) if recent else 0.0,
        )
