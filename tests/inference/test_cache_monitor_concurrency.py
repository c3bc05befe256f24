"""Result cache, monitor and concurrency limiter."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.inference import (
    AdmissionRejectedError,
    ConcurrentProcessingEngine,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
    ResultCache,
)
from tests.inference.helpers import QUALITY, inputs, run

pytestmark = pytest.mark.unit


def test_cache_is_a_bounded_lru_with_a_measured_hit_rate() -> None:
    cache = ResultCache(max_entries=3)
    for i in range(4):
        cache.put(("m", 1, (1,), bytes([i])), np.array([i], dtype=np.float32))
    assert len(cache) == 3 and cache.get_stats().evictions == 1
    assert cache.get(("m", 1, (1,), bytes([0]))) is None  # evicted (least recently used)
    hit = cache.get(("m", 1, (1,), bytes([3])))
    assert hit is not None and not hit.flags.writeable
    stats = cache.get_stats()
    assert stats.hits == 1 and stats.misses == 1 and stats.hit_rate == 0.5
    assert cache.invalidate("m") == 3 and len(cache) == 0


def test_monitor_metrics_come_from_recorded_requests(built_models) -> None:
    manager = ProductionModelManager(built_models)
    monitor = RealTimePerformanceMonitor(window_seconds=60)
    engine = ProductionInferenceEngine(manager, cache=ResultCache(100), monitor=monitor)
    x = inputs(20, 10)

    async def scenario():
        await asyncio.gather(*(engine.predict(f"{QUALITY}_onnx", row) for row in x))
        await asyncio.gather(*(engine.predict(f"{QUALITY}_onnx", row) for row in x[:10]))
        await engine.predict(f"{QUALITY}_onnx", np.full(10, np.nan))
        return monitor.get_current_metrics()

    metrics = run(scenario())
    assert metrics.sample_count == 31 and metrics.requests_total == 31
    assert metrics.cache_hit_rate == pytest.approx(10 / 31)
    assert metrics.error_rate == pytest.approx(1 / 31)
    assert 0 < metrics.p50_latency_ms <= metrics.p95_latency_ms <= metrics.p99_latency_ms
    assert metrics.memory_usage_mb > 50  # this process has numpy and a runtime loaded
    assert metrics["queue_depth"] == 0
    families = {
        f.name: f for f in text_string_to_metric_families(monitor.prometheus_exposition().decode())
    }
    requests = {s.labels["outcome"]: s.value for s in families["relcert_requests"].samples}
    assert requests == {"success": 30.0, "error": 1.0}
    assert "relcert_request_latency_ms" in families


def test_monitor_exports_a_latency_histogram_and_counters_since_start() -> None:
    """What rate() and histogram_quantile need: cumulative buckets (a latency equal to a
    bound counts in it), _count and _sum over every request, counters typed as counters."""
    monitor = RealTimePerformanceMonitor(latency_buckets_ms=(10, 33, 100))
    for latency_ms in (1.0, 10.0, 10.5, 33.0, 250.0):
        monitor.record(latency_ms, success=True, cache_hit=False)
    monitor.record(5.0, success=False)
    text = monitor.prometheus_exposition().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "# TYPE relcert_request_latency_ms histogram" in text
    latency = families["relcert_request_latency_ms"]
    assert latency.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}
    assert buckets == {"10.0": 3, "33.0": 5, "100.0": 5, "+Inf": 6}
    by_name = {s.name: s.value for s in latency.samples if not s.name.endswith("_bucket")}
    assert by_name == {
        "relcert_request_latency_ms_count": 6,
        "relcert_request_latency_ms_sum": 309.5,
    }
    assert families["relcert_requests"].type == "counter"
    for gauge in ("relcert_memory_rss_bytes", "relcert_queue_depth", "relcert_window_latency_ms"):
        assert families[gauge].type == "gauge", gauge
    with pytest.raises(ValueError, match="strictly increasing"):
        RealTimePerformanceMonitor(latency_buckets_ms=(10, 5))


def test_monitor_start_and_completion_api() -> None:
    monitor = RealTimePerformanceMonitor()
    monitor.record_request_start("a")
    latency = monitor.record_request_completion("a", success=True, cache_hit=True)
    assert latency >= 0
    assert monitor.get_current_metrics().cache_hit_rate == 1.0
    with pytest.raises(KeyError, match="unknown request id"):
        monitor.record_request_completion("never-started", success=True)


def test_memory_pressure_makes_pool_and_cache_give_memory_back(built_models) -> None:
    from pipeline.inference import MemoryPoolManager

    manager = ProductionModelManager(built_models)
    pool, cache = MemoryPoolManager(100), ResultCache(100)
    monitor = RealTimePerformanceMonitor(memory_limit_mb=1)  # any real process is above it
    engine = ProductionInferenceEngine(manager, memory_pool=pool, cache=cache, monitor=monitor)
    run(engine.predict_batch(f"{QUALITY}_onnx", inputs(8, 10)))
    assert pool.get_memory_stats().current_pool_size_mb > 0 and len(cache) == 8
    actions = monitor.check_memory_pressure()
    assert actions and pool.get_memory_stats().current_pool_size_mb == 0 and len(cache) == 0
    assert monitor.events[-1].kind == "memory_pressure"


def test_engine_checks_memory_pressure_by_itself(built_models) -> None:
    from pipeline.inference import MemoryPoolManager

    manager = ProductionModelManager(built_models)
    pool = MemoryPoolManager(100)
    monitor = RealTimePerformanceMonitor(memory_limit_mb=1)
    engine = ProductionInferenceEngine(
        manager, memory_pool=pool, monitor=monitor, memory_check_interval_s=0
    )
    run(engine.predict_batch(f"{QUALITY}_onnx", inputs(8, 10)))
    assert [e.kind for e in monitor.events] == ["memory_pressure"]
    assert "pool released" in monitor.events[0].detail
    assert pool.get_memory_stats().current_pool_size_mb == 0


def test_concurrency_is_bounded_and_excess_is_rejected() -> None:
    limiter = ConcurrentProcessingEngine(max_workers=4, auto_scale=False, max_waiting=6)
    active = 0
    peak = 0

    async def job(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return i

    async def scenario():
        return await limiter.map(job, range(20))

    results = run(scenario())
    done = [r for r in results if isinstance(r, int)]
    rejected = [r for r in results if isinstance(r, AdmissionRejectedError)]
    assert len(done) == 10 and len(rejected) == 10  # 4 running + 6 waiting admitted
    assert peak == 4 and limiter.get_stats().peak_in_flight == 4
    assert "admission rejected" in str(rejected[0])


def test_auto_scaling_follows_latency_aimd() -> None:
    limiter = ConcurrentProcessingEngine(
        max_workers=16,
        initial_workers=8,
        target_latency_ms=20,
        adjust_every=5,
        max_waiting=1000,
    )

    async def slow(_: int) -> None:
        await asyncio.sleep(0.05)

    async def fast(_: int) -> None:
        await asyncio.sleep(0)

    run(limiter.map(slow, range(20)))
    after_slow = limiter.limit
    assert after_slow < 8 and limiter.get_stats().scale_downs >= 1  # multiplicative decrease
    run(limiter.map(fast, range(40)))
    assert limiter.limit > after_slow and limiter.get_stats().scale_ups >= 1  # additive increase
    assert limiter.limit <= 16
