"""Small helpers for the inference tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import numpy as np

T = TypeVar("T")

QUALITY = "quality_predictor"
ROUTING = "routing_classifier"


def run(coro: Awaitable[T], timeout_s: float = 60.0) -> T:
    """Run a coroutine in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


def inputs(count: int, features: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, features), dtype=np.float32)
