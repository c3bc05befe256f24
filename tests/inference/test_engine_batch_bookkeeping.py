"""Issue 17 part 4: the engine's bookkeeping is per batch, and every per-request guarantee
holds: a bad row fails alone, the cache reads input bytes only when it is used, and the
monitor's and cache's per-batch updates equal their per-request ones."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import (
    MemoryPoolManager,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
    ResultCache,
)
from tests.inference.helpers import QUALITY, inputs, run

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def manager(built_models: Path) -> ProductionModelManager:
    manager = ProductionModelManager(built_models)
    for key in manager.available_models:
        assert manager.load_model(key), manager.load_errors
    manager.register_null_model(QUALITY, (10,), (1,))
    return manager


class CountingBytes(np.ndarray):
    """An input that counts how often its bytes are read (the cache key's only source)."""

    reads = 0

    def tobytes(self, order: str = "C") -> bytes:
        CountingBytes.reads += 1
        return super().tobytes(order)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_nan_rows_in_a_full_batch_fail_alone_and_the_rest_match_a_direct_run(
    manager, fmt: str
) -> None:
    key = f"{QUALITY}_{fmt}"
    monitor = RealTimePerformanceMonitor()
    cache = ResultCache(1000)
    engine = ProductionInferenceEngine(
        manager, max_batch_size=32, memory_pool=MemoryPoolManager(16), cache=cache, monitor=monitor
    )
    x = inputs(32, 10, seed=11)
    x[3, 4] = np.nan
    x[17, 0] = -np.inf
    bad = {3, 17}

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    results = run(scenario())
    good = [i for i in range(32) if i not in bad]
    expected = manager.get_model(key).runtime.run(np.ascontiguousarray(x[good]))
    for i in bad:
        assert not results[i].success
        assert results[i].error_type == "InvalidInputError"
        assert "NaN or Inf" in results[i].error
    for j, i in enumerate(good):
        r = results[i]
        assert r.success, r.error
        assert r.batch_size == 30  # the good requests still ran together, as one batch
        np.testing.assert_allclose(r.output, expected[j], rtol=1e-5, atol=1e-6)
    assert len({results[i].batch_id for i in good}) == 1
    stats = engine.get_stats()
    assert stats["invalid"] == 2 and stats["succeeded"] == 30 and stats["failed"] == 2
    assert stats["runtime_calls"] == 1
    metrics = monitor.get_current_metrics()
    assert metrics.requests_total == 32 and metrics.errors_total == 2
    buckets, _ = monitor.latency_histogram()
    assert buckets[-1][1] == 32
    assert len(cache) == 30  # only the answered requests are cached


def test_an_all_nan_batch_fails_every_request_and_never_runs_the_model(manager) -> None:
    key = f"{QUALITY}_null"
    engine = ProductionInferenceEngine(manager, memory_pool=MemoryPoolManager(16))
    x = np.full((5, 10), np.nan, dtype=np.float32)

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    results = run(scenario())
    assert all(not r.success and r.error_type == "InvalidInputError" for r in results)
    assert engine.get_stats()["runtime_calls"] == 0


def test_huge_finite_inputs_are_not_taken_for_nan(manager) -> None:
    """The per-batch finiteness check must not be fooled by values whose sum overflows."""
    key = f"{QUALITY}_null"
    engine = ProductionInferenceEngine(manager, memory_pool=MemoryPoolManager(16))
    x = np.full((16, 10), 3e38, dtype=np.float32)
    x[::2] *= -1

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    assert all(r.success for r in run(scenario()))


def test_the_cache_reads_input_bytes_only_for_requests_that_use_it(manager) -> None:
    key = f"{QUALITY}_null"
    x = inputs(8, 10, seed=2).view(CountingBytes)

    async def submit(engine, use_cache: bool):
        return await asyncio.gather(*(engine.predict(key, row, use_cache=use_cache) for row in x))

    CountingBytes.reads = 0
    no_cache = ProductionInferenceEngine(manager)  # no cache at all
    assert all(r.success for r in run(submit(no_cache, True)))
    assert CountingBytes.reads == 0

    cache = ResultCache(100)
    with_cache = ProductionInferenceEngine(manager, cache=cache)
    assert all(r.success for r in run(submit(with_cache, False)))  # cache off per request
    assert CountingBytes.reads == 0
    assert cache.get_stats().misses == 0 and len(cache) == 0

    assert all(r.success for r in run(submit(with_cache, True)))  # and on: one read each
    assert CountingBytes.reads == 8 and len(cache) == 8
    again = run(submit(with_cache, True))
    assert all(r.cache_hit for r in again)


def test_a_batch_updates_the_monitor_like_its_requests_one_by_one() -> None:
    rng = np.random.default_rng(3)
    latencies = np.concatenate(
        [rng.exponential(20.0, 40), [1.0, 5.0, 10000.0, 20000.0, 0.5]]  # bounds and beyond
    )
    one, batch = (RealTimePerformanceMonitor(capacity=16) for _ in range(2))
    start = 0
    for size, success, hit in (
        (3, True, False),
        (5, False, False),
        (20, True, True),
        (17, True, False),
    ):
        chunk = latencies[start : start + size]
        start += size
        for value in chunk:
            one.record(float(value), success, hit)
        batch.record_batch(chunk.tolist(), success, hit)
    assert start == latencies.size
    assert one._n == batch._n == latencies.size  # past the ring's capacity: it wrapped
    np.testing.assert_array_equal(one._lat, batch._lat)
    np.testing.assert_array_equal(one._ok, batch._ok)
    np.testing.assert_array_equal(one._hit, batch._hit)
    assert one.latency_histogram()[0] == batch.latency_histogram()[0]
    assert one.latency_histogram()[1] == pytest.approx(batch.latency_histogram()[1])
    a, b = one.get_current_metrics(), batch.get_current_metrics()
    assert (a.requests_total, a.errors_total) == (b.requests_total, b.errors_total) == (45, 5)
    assert a.p99_latency_ms == b.p99_latency_ms and a.error_rate == b.error_rate
    batch.record_batch([], False)  # an empty batch changes nothing
    assert batch._n == 45 and batch.get_current_metrics().errors_total == 5


def test_put_many_equals_put_one_by_one() -> None:
    items = [(("m", 1, (1,), bytes([i])), np.array([float(i)], dtype=np.float32)) for i in range(9)]
    one, many = ResultCache(5), ResultCache(5)
    for key, value in items:
        one.put(key, value)
    many.put_many(items[:4])
    many.put_many(items[4:])
    assert list(one._entries) == list(many._entries)
    assert one.get_stats() == many.get_stats()
    stored = many.get(items[-1][0])
    assert stored is not None and not stored.flags.writeable
    items[-1][1][0] = -1.0  # the caller's array changing does not change the cached copy
    assert float(many.get(items[-1][0])[0]) == 8.0


def test_pool_buffers_are_released_whole_or_as_views_and_foreign_arrays_are_refused() -> None:
    pool = MemoryPoolManager(1)
    a = pool.allocate_tensor((8, 10))
    pool.release_tensor(a)
    b = pool.allocate_tensor((8, 10))
    assert b is a and pool.get_memory_stats().cache_hits == 1
    pool.release_tensor(b[:3])  # a view of the buffer
    assert pool.get_memory_stats().buffers_in_use == 0
    pool.shrink(0.0)  # evicted: a new buffer (maybe at a reused address) is tracked afresh
    c = pool.allocate_tensor((8, 10))
    pool.release_tensor(c)
    assert pool.get_memory_stats().releases == 3
    with pytest.raises(ValueError, match="not allocated by the pool"):
        pool.release_tensor(np.empty((8, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="not allocated by the pool"):
        pool.release_tensor(c)  # already released
