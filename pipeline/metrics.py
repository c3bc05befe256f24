"""Every metric relcert can measure, declared once: its name, which way is better, and what
it is. The targets file may declare targets for a subset of these (a name outside this list
is a typo or an unmeasured claim, and is refused); `pipeline.stages.certify.MEASURES` has
exactly one measurement per metric (a test holds the three together).

Light on purpose (no third-party imports): the DAG file builds its trigger form from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["KNOWN_METRICS", "METRICS", "MODEL_QUALITY", "Direction", "Metric", "Scope"]

Direction = Literal["max", "min"]
#: where a metric is certified: for the run as a whole (the mix of every model), for each
#: model on its own, or both (a slow model must not hide behind a fast one in a mix)
Scope = Literal["run", "model", "both"]

#: each model's quality SLA (metric and threshold from its models-file entry), certified as
#: `model_quality[<model>]`: not in the targets file, its threshold belongs to the model
MODEL_QUALITY = "model_quality"


@dataclass(frozen=True)
class Metric:
    """One measurable metric: `max` when lower is better, `min` when higher is better."""

    name: str
    direction: Direction
    category: str
    unit: str
    scope: Scope = "run"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("average_inference_latency_ms", "max", "latency", "ms", "both"),
        Metric("p95_latency_ms", "max", "latency", "ms", "both"),
        Metric("p99_latency_ms", "max", "latency", "ms", "both"),
        Metric("sustained_throughput_rps", "min", "throughput", "req/s", "both"),
        Metric("peak_throughput_rps", "min", "throughput", "req/s"),
        Metric("memory_usage_mb", "max", "memory", "MB"),
        Metric("memory_efficiency", "min", "memory", "ratio"),
        Metric("success_rate", "min", "reliability", "ratio", "both"),
        Metric("error_rate", "max", "reliability", "ratio", "both"),
        Metric("concurrent_users_supported", "min", "concurrency", "users"),
        Metric("cache_hit_rate", "min", "cache", "ratio"),
        Metric("soak_p99_drift_ratio", "max", "stability", "ratio"),
        Metric("soak_rss_growth_mb", "max", "stability", "MB"),
        Metric("soak_error_rate", "max", "stability", "ratio"),
        Metric("model_initialization_s", "max", "initialization", "s"),
        # the service's interface (the infra stage, over HTTP on loopback)
        Metric("routing_endpoint_p99_ms", "max", "interface", "ms"),
        Metric("quality_endpoint_p99_ms", "max", "interface", "ms"),
        Metric("endpoint_p99_latency_ms", "max", "interface", "ms", "model"),
        Metric("validation_endpoint_s", "max", "interface", "s"),
        Metric("availability", "min", "reliability", "ratio"),
        Metric("parity_max_abs_diff", "max", "model_quality", "abs", "model"),
    )
}
KNOWN_METRICS: tuple[str, ...] = tuple(METRICS)
