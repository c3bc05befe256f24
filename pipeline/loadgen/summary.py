"""Summarise an open-loop run: percentiles from scheduled time, issue delay, validity."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.loadgen.issue import OpenLoopRecord

__all__ = ["LoadSummary", "min_samples_for", "summarize"]

#: observations required beyond a percentile before it is reported as valid
TAIL_SAMPLES = 10


def min_samples_for(percentile: float) -> int:
    """Samples needed to claim `percentile` (e.g. 99 -> 1000: ten observations past it)."""
    return math.ceil(TAIL_SAMPLES / (1.0 - percentile / 100.0))


@dataclass(frozen=True)
class LoadSummary:
    offered_rps: float
    achieved_rps: float
    duration_s: float
    scheduled: int
    measured: int
    succeeded: int
    failed: int
    error_rate: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    service_p50_ms: float
    service_p99_ms: float
    issue_delay_p50_ms: float
    issue_delay_p99_ms: float
    issue_delay_max_ms: float
    mean_batch_size: float
    cache_hit_rate: float
    valid: bool
    invalid_reasons: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    record: OpenLoopRecord,
    *,
    percentile: float = 99.0,
    max_issue_delay_ms: float = 5.0,
    min_achieved_ratio: float = 0.95,
) -> LoadSummary:
    """Stats over queries scheduled after the warm-up. Invalid (with reasons) when the
    generator fell behind (issue delay p99 > `max_issue_delay_ms`, or fewer than
    `min_achieved_ratio` of scheduled queries went out) or when there are too few samples
    for `percentile`."""
    keep = record.scheduled >= record.warmup_s
    scheduled = record.scheduled[keep]
    issued = record.issued[keep]
    completed = record.completed[keep]
    success = record.success[keep]
    n = int(scheduled.size)
    done = ~np.isnan(completed)
    latency = (completed - scheduled)[done] * 1000.0
    service = (completed - issued)[done] * 1000.0
    went_out = ~np.isnan(issued)
    delay = (issued - scheduled)[went_out] * 1000.0

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    succeeded = int(np.sum(success & done))
    achieved = int(went_out.sum()) / record.duration_s if record.duration_s else 0.0
    reasons = []
    need = min_samples_for(percentile)
    if n < need:
        reasons.append(f"only {n} samples; p{percentile:g} needs at least {need}")
    if delay.size and pct(delay, 99) > max_issue_delay_ms:
        reasons.append(
            f"generator fell behind: issue delay p99 {pct(delay, 99):.2f} ms > "
            f"{max_issue_delay_ms:g} ms"
        )
    if n and went_out.sum() < min_achieved_ratio * n:
        reasons.append(f"only {int(went_out.sum())} of {n} scheduled queries were issued")
    sizes = record.batch_size[keep][done]
    return LoadSummary(
        offered_rps=record.rate_rps,
        achieved_rps=achieved,
        duration_s=record.duration_s,
        scheduled=n,
        measured=int(done.sum()),
        succeeded=succeeded,
        failed=n - succeeded,
        error_rate=(n - succeeded) / n if n else 1.0,
        p50_ms=pct(latency, 50),
        p90_ms=pct(latency, 90),
        p95_ms=pct(latency, 95),
        p99_ms=pct(latency, 99),
        max_ms=float(latency.max()) if latency.size else float("nan"),
        mean_ms=float(latency.mean()) if latency.size else float("nan"),
        service_p50_ms=pct(service, 50),
        service_p99_ms=pct(service, 99),
        issue_delay_p50_ms=pct(delay, 50),
        issue_delay_p99_ms=pct(delay, 99),
        issue_delay_max_ms=float(delay.max()) if delay.size else float("nan"),
        mean_batch_size=float(sizes[sizes > 0].mean()) if np.any(sizes > 0) else 0.0,
        cache_hit_rate=float(record.cache_hit[keep][done].mean()) if done.any() else 0.0,
        valid=not reasons,
        invalid_reasons=reasons,
        errors=dict(record.errors),
    )
