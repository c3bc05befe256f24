"""The open-loop load generator: schedules, latency from scheduled time, validity, search."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pipeline.loadgen import (
    find_max_sustained_rate,
    min_samples_for,
    poisson_schedule,
    run_open_loop,
    summarize,
)

pytestmark = pytest.mark.stage


def test_poisson_schedule_has_the_rate_and_is_seeded() -> None:
    offsets = poisson_schedule(2000, 5.0, seed=1)
    assert len(offsets) == pytest.approx(10_000, rel=0.05)
    assert np.all(np.diff(offsets) > 0) and offsets[-1] < 5.0
    np.testing.assert_array_equal(offsets, poisson_schedule(2000, 5.0, seed=1))
    assert not np.array_equal(offsets, poisson_schedule(2000, 5.0, seed=2))
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(0, 1.0)


class DelayServer:
    """Completes every request `delay_s` after it is sent, without blocking the loop."""

    def __init__(self, delay_s: float, fail_every: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.sent = 0

    def send(self, i: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.sent += 1
        ok = not (self.fail_every and i % self.fail_every == 0)
        loop.call_later(self.delay_s, future.set_result, ok)
        return future


def test_latency_is_measured_from_the_scheduled_time() -> None:
    server = DelayServer(0.004)
    record = asyncio.run(run_open_loop(server.send, 500, 2.0, warmup_s=0.2, seed=3))
    summary = summarize(record, percentile=95)
    assert server.sent == len(record.scheduled)
    assert summary.error_rate == 0 and summary.valid, summary.invalid_reasons
    assert summary.p50_ms >= 4.0  # the service delay is inside every latency
    assert summary.p50_ms < 50  # generous: a shared machine
    assert summary.achieved_rps == pytest.approx(500, rel=0.15)


def test_a_stall_shows_up_as_latency_not_as_missing_load() -> None:
    """Coordinated omission: queries due during a 200 ms stall are late, and counted so."""
    server = DelayServer(0.0)
    stalled = False

    def send(i: int) -> asyncio.Future:
        nonlocal stalled
        if i == 200 and not stalled:
            stalled = True
            time.sleep(0.2)  # the whole process stalls (e.g. a long GC pause)
        return server.send(i)

    record = asyncio.run(run_open_loop(send, 1000, 1.5, seed=4))
    summary = summarize(record, percentile=99)
    assert summary.max_ms >= 150
    assert summary.issue_delay_max_ms >= 150
    assert summary.scheduled == len(record.scheduled)  # nothing silently dropped


def test_errors_and_too_few_samples_make_the_summary_say_so() -> None:
    server = DelayServer(0.001, fail_every=10)
    record = asyncio.run(run_open_loop(server.send, 200, 1.0, seed=5))
    summary = summarize(record, percentile=99)
    assert summary.error_rate == pytest.approx(0.1, abs=0.03)
    assert summary.errors == {"failed": summary.failed}
    assert not summary.valid
    assert f"p99 needs at least {min_samples_for(99)}" in summary.invalid_reasons[0]
    assert min_samples_for(99) == 1000 and min_samples_for(95) == 200


def test_requests_that_never_complete_are_bounded_and_counted_as_timeouts() -> None:
    def send(i: int) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()  # never completes

    started = time.perf_counter()
    record = asyncio.run(run_open_loop(send, 100, 0.5, drain_timeout_s=0.3, seed=6))
    assert time.perf_counter() - started < 5
    summary = summarize(record)
    assert summary.succeeded == 0 and record.errors["timeout"] == summary.scheduled


class CapacityServer:
    """A single FIFO server: each request takes `service_s` of its (virtual) time."""

    def __init__(self, service_s: float) -> None:
        self.service_s = service_s
        self.free_at = 0.0

    def send(self, i: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        start = max(loop.time(), self.free_at)
        self.free_at = start + self.service_s
        loop.call_at(self.free_at, future.set_result, True)
        return future


def test_capacity_search_finds_the_knee_of_a_known_server() -> None:
    server = CapacityServer(service_s=0.001)  # saturates at 1000 req/s

    async def trial(rate: float):
        server.free_at = 0.0
        return summarize(await run_open_loop(server.send, rate, 1.0, warmup_s=0.2, seed=7))

    result = asyncio.run(
        find_max_sustained_rate(
            trial, p99_bound_ms=30, start_rps=200, refine_steps=3, confirm_failures=False
        )
    )
    assert 400 <= result.max_sustained_rps < 1000
    assert all(t.p99_ms > 30 for t in result.trials if t.offered_rps > result.max_sustained_rps)
    assert result.best is not None and result.best.p99_ms <= 30
