"""Percentile tallies of latency samples: one implementation for every stage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Percentiles", "percentiles"]


@dataclass(frozen=True)
class Percentiles:
    """Latency statistics of `count` samples (NaN when there are none)."""

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def percentiles(latencies_ms: Iterable[float] | np.ndarray) -> Percentiles:
    """Mean, p50, p95, p99 and max of the finite values in `latencies_ms`."""
    values = np.asarray(
        list(latencies_ms) if not isinstance(latencies_ms, np.ndarray) else latencies_ms,
        dtype=float,
    )
    values = values[np.isfinite(values)]
    if not values.size:
        nan = float("nan")
        return Percentiles(0, nan, nan, nan, nan, nan)
    p50, p95, p99 = np.percentile(values, (50, 95, 99))
    return Percentiles(
        int(values.size),
        float(values.mean()),
        float(p50),
        float(p95),
        float(p99),
        float(values.max()),
    )
