"""Memory pool: real reuse, a hard limit, recovery after exhaustion."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline.inference import (
    MemoryPoolManager,
    PoolExhaustedError,
    ProductionInferenceEngine,
    ProductionModelManager,
)
from tests.inference.helpers import QUALITY, ROUTING, inputs, run

pytestmark = pytest.mark.unit


def test_buffers_are_reused_and_counted() -> None:
    pool = MemoryPoolManager(max_pool_size_mb=10)
    first = pool.allocate_tensor((8, 10))
    pool.release_tensor(first)
    second = pool.allocate_tensor((8, 10))
    assert second is first  # the same buffer came back
    stats = pool.get_memory_stats()
    assert stats.cache_hits == 1 and stats.cache_misses == 1 and stats.reuse_ratio == 0.5
    other = pool.allocate_tensor((8, 15))
    assert other is not first
    assert pool.get_memory_stats()["buffers_in_use"] == 2


def test_exhaustion_raises_then_recovers_after_release() -> None:
    pool = MemoryPoolManager(max_pool_size_mb=20)  # 1000x1000 float32 is ~3.8 MB
    held = []
    with pytest.raises(PoolExhaustedError, match="max_pool_size_mb=20"):
        for _ in range(100):
            held.append(pool.allocate_tensor((1000, 1000)))
    assert len(held) == 5
    stats = pool.get_memory_stats()
    assert stats.exhausted == 1 and stats.current_pool_size_mb <= 20
    for buffer in held:
        pool.release_tensor(buffer)
    again = [pool.allocate_tensor((1000, 1000)) for _ in range(5)]
    assert pool.get_memory_stats().cache_hits == 5  # recovered by reuse, not new memory
    for buffer in again:
        pool.release_tensor(buffer)
    assert pool.shrink(0) == pytest.approx(5 * 1000 * 1000 * 4 / 2**20)
    assert pool.get_memory_stats().current_pool_size_mb == 0


def test_free_buffers_are_evicted_to_stay_within_the_limit() -> None:
    pool = MemoryPoolManager(max_pool_size_mb=6)
    a = pool.allocate_tensor((1000, 1000))
    pool.release_tensor(a)
    b = pool.allocate_tensor((1001, 1000))  # does not fit beside the free one
    assert pool.get_memory_stats().evictions == 1
    assert pool.get_memory_stats().current_pool_size_mb <= 8
    pool.release_tensor(b)


def test_release_of_a_foreign_buffer_is_refused_and_views_release_their_base() -> None:
    pool = MemoryPoolManager(max_pool_size_mb=1)
    with pytest.raises(ValueError, match="not allocated by the pool"):
        pool.release_tensor(np.zeros(4))
    buffer = pool.allocate_tensor((16, 10))
    pool.release_tensor(buffer[:3])  # the engine releases views of its batch buffers
    assert pool.get_memory_stats().buffers_in_use == 0


def test_torch_tensors_share_pool_memory() -> None:
    import torch

    pool = MemoryPoolManager(max_pool_size_mb=1)
    tensor = pool.allocate_tensor((4, 10), as_torch=True)
    assert isinstance(tensor, torch.Tensor)
    pool.release_tensor(tensor)
    assert pool.get_memory_stats().releases == 1


def test_engine_reuses_batch_buffers_across_alternating_models(built_models) -> None:
    manager = ProductionModelManager(built_models)
    pool = MemoryPoolManager(max_pool_size_mb=400)
    engine = ProductionInferenceEngine(manager, memory_pool=pool)
    q, r = inputs(50, 10), inputs(50, 15)

    async def scenario():
        results = []
        for i in range(50):  # 100 requests alternating between the models
            results.append(await engine.predict(f"{QUALITY}_torchscript", q[i]))
            results.append(await engine.predict(f"{ROUTING}_onnx", r[i]))
        return results

    before = pool.get_memory_stats()
    results = run(scenario())
    assert all(x.success for x in results)
    stats = pool.get_memory_stats()
    assert stats.allocations - before.allocations == 100
    assert stats.reuse_ratio > 0.9  # two shapes, allocated once each
    assert stats.current_pool_size_mb < 400 and stats.buffers_in_use == 0


def test_engine_keeps_serving_when_the_pool_is_exhausted(built_models) -> None:
    manager = ProductionModelManager(built_models)
    pool = MemoryPoolManager(max_pool_size_mb=4)
    hog = pool.allocate_tensor((1024, 1024))  # exactly 4 MB: the pool is full
    engine = ProductionInferenceEngine(manager, memory_pool=pool)

    async def scenario():
        return await asyncio.gather(
            *(engine.predict(f"{QUALITY}_onnx", row) for row in inputs(8, 10))
        )

    assert all(x.success for x in run(scenario()))
    assert engine.get_stats()["unpooled_batches"] >= 1
    pool.release_tensor(hog)
