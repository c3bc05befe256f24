"""When each query should be sent."""

from __future__ import annotations

import numpy as np

__all__ = ["poisson_schedule"]


def poisson_schedule(rate_rps: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send offsets (seconds from start) of a Poisson process at `rate_rps` over `duration_s`."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate_rps and duration_s must be positive, got {rate_rps}, {duration_s}")
    rng = np.random.default_rng(seed)
    expected = rate_rps * duration_s
    count = int(expected + 6 * np.sqrt(expected) + 16)
    offsets = np.cumsum(rng.exponential(1.0 / rate_rps, size=count))
    return offsets[offsets < duration_s]
