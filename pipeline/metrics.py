"""Every metric relcert can measure, declared once: its name, which way is better, and what
it is. The targets file may declare targets for a subset of these (a name outside this list
is a typo or an unmeasured claim, and is refused); `pipeline.stages.certify.MEASURES` has
exactly one measurement per metric (a test holds the three together).

Light on purpose (no third-party imports): the DAG file builds its trigger form from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KNOWN_METRICS", "METRICS", "Direction", "Metric"]

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    """One measurable metric: `max` when lower is better, `min` when higher is better."""

    name: str
    direction: Direction
    category: str
    unit: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("average_inference_latency_ms", "max", "latency", "ms"),
        Metric("p95_latency_ms", "max", "latency", "ms"),
        Metric("p99_latency_ms", "max", "latency", "ms"),
        Metric("sustained_throughput_rps", "min", "throughput", "req/s"),
        Metric("peak_throughput_rps", "min", "throughput", "req/s"),
        Metric("memory_usage_mb", "max", "memory", "MB"),
        Metric("memory_efficiency", "min", "memory", "ratio"),
        Metric("success_rate", "min", "reliability", "ratio"),
        Metric("error_rate", "max", "reliability", "ratio"),
        Metric("concurrent_users_supported", "min", "concurrency", "users"),
        Metric("cache_hit_rate", "min", "cache", "ratio"),
        Metric("routing_accuracy", "min", "model_quality", "ratio"),
        Metric("quality_correlation", "min", "model_quality", "pearson_r"),
        Metric("model_initialization_s", "max", "initialization", "s"),
        Metric("parity_max_abs_diff", "max", "model_quality", "abs"),
    )
}
KNOWN_METRICS: tuple[str, ...] = tuple(METRICS)
