"""Real-time performance monitor: sliding-window metrics, recovery events, Prometheus text.

Per-request recording writes into preallocated ring buffers (no object per request), so the
monitor adds no garbage-collector pressure under load.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin

__all__ = ["PerformanceMetrics", "RealTimePerformanceMonitor"]


@dataclass(frozen=True)
class PerformanceMetrics(RecordMixin):
    """Metrics over the monitor's sliding window (`window_seconds`)."""

    latency_ms: float
    p50_latency_ms: float
    p95_latency_ms: float
    p99_latency_ms: float
    throughput_rps: float
    memory_usage_mb: float
    cpu_usage_percent: float
    queue_depth: int
    cache_hit_rate: float
    error_rate: float
    sample_count: int
    window_seconds: float
    requests_total: int
    errors_total: int
    recoveries_total: int


@dataclass(frozen=True)
class RecoveryEvent(RecordMixin):
    at: float
    kind: str
    target: str
    detail: str
    success: bool


class RealTimePerformanceMonitor:
    """Records request outcomes and derives the metrics of a sliding time window."""

    def __init__(
        self,
        window_seconds: float = 60.0,
        capacity: int = 1 << 16,
        *,
        memory_limit_mb: float | None = None,
    ) -> None:
        import psutil

        self.window_seconds = float(window_seconds)
        self.memory_limit_mb = memory_limit_mb
        self._capacity = int(capacity)
        self._t = np.zeros(self._capacity, dtype=np.float64)
        self._lat = np.zeros(self._capacity, dtype=np.float64)
        self._ok = np.zeros(self._capacity, dtype=np.bool_)
        self._hit = np.zeros(self._capacity, dtype=np.bool_)
        self._n = 0
        self._errors_total = 0
        self._starts: dict[Any, float] = {}
        self._queue_depth: Callable[[], int] = lambda: 0
        self._pressure_hooks: list[Callable[[], str]] = []
        self.events: deque[RecoveryEvent] = deque(maxlen=1000)
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._lock = threading.Lock()
        self._registry = None

    # ----------------------------------------------------------------- recording
    def record_request_start(self, request_id: Any) -> None:
        self._starts[request_id] = time.perf_counter()

    def record_request_completion(
        self, request_id: Any, success: bool, cache_hit: bool = False
    ) -> float:
        """Close a request opened with `record_request_start`; returns its latency in ms."""
        started = self._starts.pop(request_id, None)
        if started is None:
            raise KeyError(f"record_request_completion: unknown request id {request_id!r}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.record(latency_ms, success, cache_hit)
        return latency_ms

    def record(self, latency_ms: float, success: bool, cache_hit: bool = False) -> None:
        """Fast path used by the engine: one completed request."""
        i = self._n % self._capacity
        self._t[i] = time.perf_counter()
        self._lat[i] = latency_ms
        self._ok[i] = success
        self._hit[i] = cache_hit
        self._n += 1
        if not success:
            self._errors_total += 1

    def set_queue_depth_provider(self, provider: Callable[[], int]) -> None:
        self._queue_depth = provider

    def add_pressure_hook(self, hook: Callable[[], str]) -> None:
        """`hook()` frees memory under pressure and returns a description of what it did."""
        self._pressure_hooks.append(hook)

    def record_event(self, kind: str, target: str, detail: str, success: bool = True) -> None:
        self.events.append(RecoveryEvent(time.time(), kind, target, detail, success))

    # ----------------------------------------------------------------- reading
    def _window(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        count = min(self._n, self._capacity)
        t, lat, ok, hit = self._t[:count], self._lat[:count], self._ok[:count], self._hit[:count]
        mask = t >= time.perf_counter() - self.window_seconds
        return t[mask], lat[mask], ok[mask], hit[mask]

    def memory_usage_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def get_current_metrics(self) -> PerformanceMetrics:
        t, lat, ok, hit = self._window()
        n = int(t.size)
        if n:
            span = max(float(t.max() - t.min()), 1e-3) if n > 1 else self.window_seconds
            p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
            mean = float(lat.mean())
            throughput = n / min(span, self.window_seconds) if n > 1 else 0.0
        else:
            p50 = p95 = p99 = mean = throughput = 0.0
        return PerformanceMetrics(
            latency_ms=mean,
            p50_latency_ms=p50,
            p95_latency_ms=p95,
            p99_latency_ms=p99,
            throughput_rps=throughput,
            memory_usage_mb=self.memory_usage_mb(),
            cpu_usage_percent=float(self._process.cpu_percent(None)),
            queue_depth=int(self._queue_depth()),
            cache_hit_rate=float(hit.mean()) if n else 0.0,
            error_rate=float(1.0 - ok.mean()) if n else 0.0,
            sample_count=n,
            window_seconds=self.window_seconds,
            requests_total=self._n,
            errors_total=self._errors_total,
            recoveries_total=len(self.events),
        )

    def check_memory_pressure(self) -> list[str]:
        """Above `memory_limit_mb`, run the pressure hooks (pool and cache give memory back)."""
        if self.memory_limit_mb is None:
            return []
        rss = self.memory_usage_mb()
        if rss <= self.memory_limit_mb:
            return []
        actions = [hook() for hook in self._pressure_hooks]
        self.record_event(
            "memory_pressure",
            "process",
            f"rss {rss:.1f} MB > limit {self.memory_limit_mb:g} MB: " + "; ".join(actions),
        )
        return actions

    # ----------------------------------------------------------------- prometheus
    @property
    def registry(self) -> Any:
        """A prometheus_client registry exposing this monitor's metrics (computed at scrape)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(_MonitorCollector(self))
            self._registry = registry
        return self._registry

    def prometheus_exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _MonitorCollector:
    def __init__(self, monitor: RealTimePerformanceMonitor) -> None:
        self._monitor = monitor

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        m = self._monitor.get_current_metrics()
        requests = CounterMetricFamily(
            "relcert_requests", "Inference requests completed", labels=["outcome"]
        )
        requests.add_metric(["success"], m.requests_total - m.errors_total)
        requests.add_metric(["error"], m.errors_total)
        yield requests
        summary = SummaryMetricFamily(
            "relcert_request_latency_ms",
            f"Request latency over the last {m.window_seconds:g} s (ms)",
            labels=["quantile"],
        )
        for q, v in (
            ("0.5", m.p50_latency_ms),
            ("0.95", m.p95_latency_ms),
            ("0.99", m.p99_latency_ms),
        ):
            summary.add_sample("relcert_request_latency_ms", {"quantile": q}, v)
        summary.add_sample("relcert_request_latency_ms_count", {}, m.sample_count)
        summary.add_sample("relcert_request_latency_ms_sum", {}, m.latency_ms * m.sample_count)
        yield summary
        for name, help_text, value in (
            (
                "relcert_throughput_rps",
                "Completed requests per second in the window",
                m.throughput_rps,
            ),
            ("relcert_queue_depth", "Requests waiting in the batching queue", m.queue_depth),
            (
                "relcert_memory_rss_bytes",
                "Resident memory of this process",
                m.memory_usage_mb * 2**20,
            ),
            (
                "relcert_cache_hit_rate",
                "Share of requests served from the result cache",
                m.cache_hit_rate,
            ),
            ("relcert_error_rate", "Share of failed requests in the window", m.error_rate),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        recoveries = CounterMetricFamily(
            "relcert_recoveries", "Automatic recovery actions", labels=["kind"]
        )
        kinds: dict[str, int] = {}
        for event in self._monitor.events:
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
        for kind, count in sorted(kinds.items()):
            recoveries.add_metric([kind], count)
        yield recoveries
