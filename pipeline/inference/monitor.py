"""Real-time performance monitor: sliding-window metrics, recovery events, Prometheus text.

Per-request recording writes into preallocated ring buffers (no object per request), so the
monitor adds no garbage-collector pressure under load.

The Prometheus exposition holds what alert rules compute over a window of their own:
counters since the process started (`relcert_requests_total{outcome}`) and a latency
histogram (`relcert_request_latency_ms_bucket{le}`, `_sum`, `_count`), so
`rate(...[5m])` ratios and `histogram_quantile` work; the sliding-window figures are
exported as gauges for dashboards.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin

__all__ = [
    "DEFAULT_LATENCY_BUCKETS_MS",
    "PerformanceMetrics",
    "RealTimePerformanceMonitor",
    "check_latency_buckets",
]

#: Upper bounds (ms) of the latency histogram: a ladder from 1 ms to 10 s that holds the
#: default targets' alert thresholds (mean 33, p95 115, p99 360 ms) as bounds, so
#: `histogram_quantile` is exact at each threshold. A deployment whose thresholds differ
#: passes its own (the package sets LATENCY_BUCKETS_MS from its targets).
DEFAULT_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1.0, 2.5, 5.0, 10.0, 25.0, 33.0, 50.0, 75.0, 100.0, 115.0, 150.0, 200.0, 250.0,
    300.0, 360.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 10000.0,
)  # fmt: skip


def check_latency_buckets(bounds: Sequence[float], what: str = "latency buckets") -> tuple:
    """`bounds` as a tuple of floats, or ValueError unless finite, > 0 and increasing."""
    try:
        values = tuple(float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected numbers, got {bounds!r}") from None
    if not values:
        raise ValueError(f"{what}: expected at least one bucket bound")
    for value in values:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what}: bounds must be finite numbers > 0, got {value:g}")
    if any(b <= a for a, b in pairwise(values)):
        raise ValueError(f"{what}: bounds must be strictly increasing, got {values}")
    return values


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
        latency_buckets_ms: Sequence[float] | None = None,
    ) -> None:
        import psutil

        self.latency_buckets_ms = check_latency_buckets(
            DEFAULT_LATENCY_BUCKETS_MS if latency_buckets_ms is None else latency_buckets_ms
        )
        # per-bucket (not cumulative) counts since start; the last one is +Inf
        self._bucket_counts = [0] * (len(self.latency_buckets_ms) + 1)
        self._bounds = np.asarray(self.latency_buckets_ms, dtype=np.float64)
        self._latency_sum_ms = 0.0
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
        # a latency equal to a bound counts in that bucket (Prometheus `le`)
        self._bucket_counts[bisect_left(self.latency_buckets_ms, latency_ms)] += 1
        self._latency_sum_ms += latency_ms
        if not success:
            self._errors_total += 1

    def record_batch(
        self, latencies_ms: Sequence[float] | np.ndarray, success: bool, cache_hit: bool = False
    ) -> None:
        """`record` for several requests with the same outcome (the engine's per-batch call):
        the same ring entries, histogram and totals, written with a few array operations."""
        lat = np.asarray(latencies_ms, dtype=np.float64)
        k = int(lat.size)
        if k == 0:
            return
        now = time.perf_counter()
        cap = self._capacity
        start = self._n % cap
        keep = lat if k <= cap else lat[k - cap :]  # the ring holds the last `cap` only
        first = (start + k - keep.size) % cap
        m = keep.size
        head = min(m, cap - first)
        for lo, hi, part in ((first, first + head, keep[:head]), (0, m - head, keep[head:])):
            if hi > lo:
                self._t[lo:hi] = now
                self._lat[lo:hi] = part
                self._ok[lo:hi] = success
                self._hit[lo:hi] = cache_hit
        self._n += k
        # a latency equal to a bound counts in that bucket (Prometheus `le`), as in `record`
        where = np.searchsorted(self._bounds, lat, side="left")
        counts = self._bucket_counts
        for i, c in enumerate(np.bincount(where, minlength=len(counts)).tolist()):
            if c:
                counts[i] += c
        self._latency_sum_ms += float(lat.sum())
        if not success:
            self._errors_total += k

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

    def latency_histogram(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative counts per upper bound since start (the last bound is +inf) and the
        sum of every latency (ms): the Prometheus histogram of request latency."""
        counts = list(self._bucket_counts)  # one snapshot: the buckets agree with each other
        cumulative, total = [], 0
        for bound, count in zip((*self.latency_buckets_ms, math.inf), counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative, self._latency_sum_ms

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
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        monitor = self._monitor
        m = monitor.get_current_metrics()
        requests = CounterMetricFamily(
            "relcert_requests", "Inference requests completed", labels=["outcome"]
        )
        requests.add_metric(["success"], m.requests_total - m.errors_total)
        requests.add_metric(["error"], m.errors_total)
        yield requests
        buckets, latency_sum = monitor.latency_histogram()
        yield HistogramMetricFamily(
            "relcert_request_latency_ms",
            "Request latency since the process started (ms), from submission to result",
            buckets=[(floatToGoString(bound), count) for bound, count in buckets],
            sum_value=latency_sum,
        )
        quantiles = GaugeMetricFamily(
            "relcert_window_latency_ms",
            f"Request latency percentiles over the last {m.window_seconds:g} s (ms)",
            labels=["quantile"],
        )
        for q, v in (
            ("0.5", m.p50_latency_ms),
            ("0.95", m.p95_latency_ms),
            ("0.99", m.p99_latency_ms),
        ):
            quantiles.add_metric([q], v)
        yield quantiles
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
