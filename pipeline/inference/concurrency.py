"""Bounded concurrency for async work, with admission control and AIMD auto-scaling.

At most `limit` slots are taken at once: a job takes one, a request of several rows takes
one per row, all at once or none (`try_acquire(slots)`, `acquire(slots)`). Up to
`max_waiting` requests wait for their slots, first come first served (bounded by
`queue_timeout_s`); anything beyond is rejected at once with AdmissionRejectedError. A
request that needs more slots than `max_workers` is always rejected: keep `min_workers` at
least the largest request, so a request that fits is never refused by an idle limiter.

With `auto_scale`, the limit follows observed latency and demand. Every `adjust_every`
completed jobs (a window) it looks at the window's p95 latency, its failures and its peak
demand (slots in flight plus wanted by waiting requests, at any moment of the window; a
rejection counts as demand beyond the limit):

- **overload** (p95 above `target_latency_ms`, or a job failed): the limit is halved
  (multiplicative decrease, down to `min_workers`);
- **demand near the limit** (peak demand >= half the limit) and latency within target: the
  limit grows by one (additive increase, up to `max_workers`);
- **demand far below the limit** (peak demand < a quarter of the limit): the limit is halved
  (down to `min_workers`), so a limit raised by a burst does not stay open after it;
- otherwise it holds.

So, while latency is healthy, the limit settles between 2x and 4x the demand (within
`min_workers`..`max_workers`): it rises with the load, falls after it, and falls further
when the work gets slow. A cancelled job (its caller left) frees its slot and is not
observed: it says nothing about latency.
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
#: limit changes kept in `limit_history` (newest last)
HISTORY = 1000


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
    #: of scale_downs: halvings because the window's latency (or a failure) said overload;
    #: the rest followed demand down
    overload_scale_downs: int = 0
    min_workers: int = 1
    max_workers: int = 1
    target_latency_ms: float = 0.0


class ConcurrentProcessingEngine:
    """Runs coroutines with a bounded, latency- and demand-driven concurrency limit."""

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
        self.adjust_every = max(int(adjust_every), 1)
        self._in_flight = 0
        #: requests waiting for slots, first come first served: (future, slots wanted)
        self._waiters: deque[tuple[asyncio.Future, int]] = deque()
        self._waiting_slots = 0
        self._latencies: deque[float] = deque(maxlen=self.adjust_every * 4)
        self._since_adjust = 0
        self._window_failed = False
        self._window_demand = 0
        self._counts = dict.fromkeys(
            (
                "admitted",
                "rejected",
                "timed_out",
                "completed",
                "failed",
                "peak",
                "up",
                "down",
                "overload",
            ),
            0,
        )
        #: (monotonic time, limit) at start and at every change; the last HISTORY changes
        self.limit_history: deque[tuple[float, int]] = deque(
            [(time.monotonic(), self.limit)], maxlen=HISTORY
        )

    # ----------------------------------------------------------------- admission
    def _demand(self, extra: int = 0) -> None:
        demand = self._in_flight + self._waiting_slots + extra
        if demand > self._window_demand:
            self._window_demand = demand

    def try_acquire(self, slots: int = 1) -> bool:
        """Take `slots` slots now if that many are free and nobody waits (no await); False
        otherwise. A True must be paired with exactly one `release(..., slots=slots)`."""
        if self._in_flight + slots <= self.limit and not self._waiters:
            self._in_flight += slots
            self._counts["admitted"] += 1
            self._counts["peak"] = max(self._counts["peak"], self._in_flight)
            self._demand()
            return True
        return False

    def reject(self, slots: int = 1) -> AdmissionRejectedError:
        """Count a request refused without waiting (the limit is full and so is the waiting
        room, or the caller does not wait); returns the error to raise or report."""
        self._counts["rejected"] += 1
        self._demand(extra=slots)
        wanted = f"; this request of {slots} rows needs {slots} slots" if slots > 1 else ""
        return AdmissionRejectedError(
            f"admission rejected: {self._in_flight} jobs in flight (limit {self.limit}) and "
            f"{len(self._waiters)} waiting (max_waiting={self.max_waiting}){wanted}"
        )

    def can_wait(self, slots: int = 1) -> bool:
        """Whether a request that found too few free slots may wait for them (a request of
        more slots than the highest limit never may)."""
        return len(self._waiters) < self.max_waiting and slots <= self.max_workers

    async def acquire(self, slots: int = 1) -> None:
        """Take `slots` slots at once, waiting (bounded, first come first served) if needed;
        raises AdmissionRejectedError. Pair with exactly one `release(..., slots=slots)`."""
        if self.try_acquire(slots):
            return
        if not self.can_wait(slots):
            raise self.reject(slots)
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, slots)
        self._waiters.append(entry)
        self._waiting_slots += slots
        self._demand()
        try:
            await asyncio.wait_for(waiter, self.queue_timeout_s)
        except TimeoutError:
            self._counts["timed_out"] += 1
            raise AdmissionRejectedError(
                f"admission timed out after {self.queue_timeout_s:g} s waiting for "
                f"{slots} slot(s) (limit {self.limit})"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed slots as we were cancelled
                self._in_flight -= slots
                self._wake()
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._waiting_slots -= slots
                self._wake()  # a large request that gave up no longer blocks the queue
        # the slots were handed over by _wake (in_flight already counts them)
        self._counts["admitted"] += 1
        self._counts["peak"] = max(self._counts["peak"], self._in_flight)

    def release(self, latency_ms: float | None, ok: bool = True, slots: int = 1) -> None:
        """Give a request's `slots` back. `latency_ms` None: it was cancelled (not
        observed); `ok` False: it failed in a way that signals overload."""
        self._in_flight -= slots
        if latency_ms is not None:
            self._observe(latency_ms, ok)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight + self._waiters[0][1] <= self.limit:
            waiter, slots = self._waiters.popleft()
            self._waiting_slots -= slots
            if not waiter.done():
                self._in_flight += slots
                waiter.set_result(None)

    # ----------------------------------------------------------------- running jobs
    async def run(self, job: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run `job(*args, **kwargs)` once a slot is free; raises AdmissionRejectedError."""
        await self.acquire()
        started = time.perf_counter()
        try:
            result = await job(*args, **kwargs)
        except asyncio.CancelledError:
            self.release(None)  # cancelled: says nothing about latency
            raise
        except BaseException:
            self.release((time.perf_counter() - started) * 1000.0, ok=False)
            raise
        self.release((time.perf_counter() - started) * 1000.0, ok=True)
        return result

    async def map(
        self, job: Callable[[Any], Awaitable[T]], items: Iterable[Any]
    ) -> list[T | BaseException]:
        """Run `job(item)` for every item under the limit; exceptions are returned in place."""
        return list(
            await asyncio.gather(*(self.run(job, item) for item in items), return_exceptions=True)
        )

    # ----------------------------------------------------------------- scaling
    def _observe(self, latency_ms: float, ok: bool) -> None:
        self._counts["completed" if ok else "failed"] += 1
        self._latencies.append(latency_ms)
        self._window_failed |= not ok
        if not self.auto_scale:
            return
        self._since_adjust += 1
        if self._since_adjust < self.adjust_every:
            return
        p95 = float(np.percentile(list(self._latencies)[-self.adjust_every :], 95))
        self._adjust(p95, self._window_failed, self._window_demand)
        self._since_adjust = 0
        self._window_failed = False
        self._window_demand = self._in_flight + self._waiting_slots

    def _adjust(self, p95_ms: float, failed: bool, demand: int) -> None:
        """One AIMD step at the end of a window (see the module docstring)."""
        limit = self.limit
        if failed or p95_ms > self.target_latency_ms:
            new = max(self.min_workers, limit // 2)
            self._counts["overload"] += new < limit
        elif 2 * demand >= limit:
            new = min(self.max_workers, limit + 1)
        elif 4 * demand < limit:
            new = max(self.min_workers, limit // 2)
        else:
            new = limit
        if new == limit:
            return
        self._counts["up" if new > limit else "down"] += 1
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
            overload_scale_downs=self._counts["overload"],
            min_workers=self.min_workers,
            max_workers=self.max_workers,
            target_latency_ms=float(self.target_latency_ms),
        )
