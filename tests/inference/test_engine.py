"""The batching engine on real models: batching, parity, overload, deadlines, reload."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import (
    MemoryPoolManager,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
    ResultCache,
)
from tests.inference.helpers import QUALITY, ROUTING, inputs, run

pytestmark = pytest.mark.unit

FORMATS = ("torchscript", "onnx")


@pytest.fixture(scope="module")
def manager(built_models: Path) -> ProductionModelManager:
    manager = ProductionModelManager(built_models)
    for key in manager.available_models:
        assert manager.load_model(key), manager.load_errors
    return manager


def make_engine(manager: ProductionModelManager, **kwargs) -> ProductionInferenceEngine:
    kwargs.setdefault("memory_pool", MemoryPoolManager(64))
    return ProductionInferenceEngine(manager, **kwargs)


@pytest.mark.parametrize("fmt", FORMATS)
def test_requests_submitted_together_form_one_batch(manager, fmt: str) -> None:
    engine = make_engine(manager, max_batch_size=32)
    x = inputs(16, 15)

    async def scenario():
        return await asyncio.gather(*(engine.predict(f"{ROUTING}_{fmt}", row) for row in x))

    results = run(scenario())
    assert all(r.success for r in results)
    assert {r.batch_size for r in results} == {16}
    assert len({r.batch_id for r in results}) == 1
    assert all(r.output.shape == (4,) for r in results)
    assert all(abs(float(r.output.sum()) - 1.0) < 1e-5 for r in results)  # softmax rows


def test_batches_are_capped_at_max_batch_size(manager) -> None:
    engine = make_engine(manager, max_batch_size=8)

    async def scenario():
        return await asyncio.gather(
            *(engine.predict(f"{QUALITY}_onnx", row) for row in inputs(20, 10))
        )

    results = run(scenario())
    assert sorted(r.batch_size for r in results) == [4] * 4 + [8] * 16
    assert engine.get_stats()["batches"] == 3


def test_a_lone_request_is_not_held_back(manager) -> None:
    engine = make_engine(manager, max_batch_size=64)  # greedy: batch_timeout_ms = 0

    async def scenario():
        started = time.perf_counter()
        result = await engine.predict(f"{QUALITY}_torchscript", inputs(1, 10)[0])
        return result, (time.perf_counter() - started) * 1000

    result, waited_ms = run(scenario())
    assert result.success and result.batch_size == 1 and result.output.shape == (1,)
    # generous sanity bound on a shared machine; a timed wait would be >= 200 ms here
    assert waited_ms < 100 and result.queue_time_ms < 100


def test_batch_timeout_lets_a_partial_batch_wait_for_company(manager) -> None:
    engine = make_engine(manager, max_batch_size=8, batch_timeout_ms=200)

    async def scenario():
        first = engine.predict(f"{QUALITY}_onnx", inputs(1, 10)[0])
        await asyncio.sleep(0.02)
        second = engine.predict(f"{QUALITY}_onnx", inputs(1, 10, seed=1)[0])
        full = [engine.predict(f"{ROUTING}_onnx", row) for row in inputs(8, 15)]
        return await asyncio.gather(first, second, *full)

    first, second, *full = run(scenario())
    assert first.batch_size == second.batch_size == 2  # waited, then ran together
    assert first.queue_time_ms >= 150
    assert all(r.batch_size == 8 and r.queue_time_ms < 150 for r in full)  # full: no wait


@pytest.mark.parametrize("fmt", FORMATS)
def test_output_is_the_same_alone_batched_and_cached(manager, fmt: str) -> None:
    key = f"{QUALITY}_{fmt}"
    engine = make_engine(manager, cache=ResultCache(1000))
    x = inputs(12, 10, seed=3)

    async def scenario():
        alone = [await engine.predict(key, row, use_cache=False) for row in x]
        batched = await asyncio.gather(*(engine.predict(key, row) for row in x))
        cached = await asyncio.gather(*(engine.predict(key, row) for row in x))
        return alone, batched, cached

    alone, batched, cached = run(scenario())
    assert all(r.batch_size == 1 for r in alone) and batched[0].batch_size == 12
    assert all(r.cache_hit for r in cached) and not any(r.cache_hit for r in batched)
    for a, b, c in zip(alone, batched, cached, strict=True):
        np.testing.assert_allclose(a.output, b.output, atol=1e-6, rtol=0)
        np.testing.assert_allclose(a.output, c.output, atol=1e-6, rtol=0)
    direct = manager.get_model(key).runtime.run(x)
    np.testing.assert_allclose(np.stack([r.output for r in batched]), direct, atol=1e-6)


def test_accepts_tensors_arrays_and_lists_with_or_without_batch_dim(manager) -> None:
    import torch

    engine = make_engine(manager)
    row = inputs(1, 10)[0]
    forms = [
        row,
        row[None, :],
        row.tolist(),
        [row.tolist()],
        torch.from_numpy(row),
        torch.from_numpy(row[None, :]),
        row.astype(np.float64),
    ]

    async def scenario():
        return await asyncio.gather(*(engine.predict(f"{QUALITY}_onnx", f) for f in forms))

    results = run(scenario())
    assert all(r.success for r in results), [r.error for r in results]
    for r in results:
        np.testing.assert_allclose(r.output, results[0].output, atol=1e-6)


def test_bad_requests_fail_alone_with_clear_errors(manager) -> None:
    engine = make_engine(manager)
    good = inputs(4, 15)
    nan_row = good[0].copy()
    nan_row[2] = np.nan
    inf_row = good[0].copy()
    inf_row[5] = np.inf

    async def scenario():
        return await asyncio.gather(
            engine.predict(f"{ROUTING}_onnx", good[0]),
            engine.predict(f"{ROUTING}_onnx", nan_row),
            engine.predict(f"{ROUTING}_onnx", good[1]),
            engine.predict(f"{ROUTING}_onnx", np.zeros(14)),
            engine.predict(f"{ROUTING}_onnx", inf_row),
            engine.predict(f"{ROUTING}_onnx", ["a"] * 15),
            engine.predict("no_such_model", good[2]),
            engine.predict(f"{ROUTING}_onnx", good[3]),
        )

    ok1, nan, ok2, shape, inf, text, unknown, ok3 = run(scenario())
    assert ok1.success and ok2.success and ok3.success
    assert ok1.batch_size == ok2.batch_size == 3  # the good ones still ran as one batch
    assert not nan.success and "NaN or Inf" in nan.error and f"{ROUTING}_onnx" in nan.error
    assert not inf.success and "NaN or Inf" in inf.error
    assert not shape.success and "expected input of shape [15]" in shape.error
    assert "got [14]" in shape.error
    assert not text.success and "numeric" in text.error
    assert not unknown.success and "unknown model 'no_such_model'" in unknown.error


def test_queue_overflow_rejects_explicitly_and_accounts_for_every_request(manager) -> None:
    engine = make_engine(manager, max_queue_size=100, max_batch_size=32)
    x = inputs(1000, 10)

    async def scenario():
        futures = [engine.predict(f"{QUALITY}_onnx", row) for row in x]
        return await asyncio.wait_for(asyncio.gather(*futures), 30)

    results = run(scenario())
    accepted = [r for r in results if r.success]
    rejected = [r for r in results if r.rejected]
    assert len(accepted) == 100 and len(rejected) == 900
    assert len(accepted) + len(rejected) == len(results) == 1000
    assert all("queue full" in r.error for r in rejected)
    stats = engine.get_stats()
    assert stats["rejected"] == 900 and stats["succeeded"] == 100 and stats["queue_depth"] == 0


def test_expired_requests_fail_without_running(manager) -> None:
    engine = make_engine(manager)
    x = inputs(6, 10)

    async def scenario():
        tight = [engine.predict(f"{QUALITY}_onnx", row, deadline_ms=5) for row in x[:3]]
        loose = [engine.predict(f"{QUALITY}_onnx", row, deadline_ms=10_000) for row in x[3:]]
        time.sleep(0.05)  # the loop is busy elsewhere: the tight deadlines pass in the queue
        return await asyncio.gather(*tight, *loose)

    results = run(scenario())
    assert [r.success for r in results] == [False] * 3 + [True] * 3
    assert all("deadline exceeded" in r.error for r in results[:3])
    assert engine.get_stats()["expired"] == 3


def test_engine_serves_one_event_loop_after_another(manager) -> None:
    engine = make_engine(manager)
    for seed in range(3):  # each asyncio.run is a fresh loop, as in per-test loops
        result = run(engine.predict_batch(f"{ROUTING}_torchscript", inputs(2, 15, seed)))
        assert all(r.success for r in result)


def test_hot_reload_under_load_loses_nothing_and_never_mixes_versions(
    models_dir: Path, built_models_other_date: Path
) -> None:
    manager = ProductionModelManager(models_dir)
    key = f"{QUALITY}_onnx"
    assert manager.load_model(key)
    engine = make_engine(manager, max_batch_size=16)
    old_version = manager.get_model(key).version
    x = inputs(256, 10)

    async def scenario():
        futures = []
        for i in range(1200):
            futures.append(engine.predict(key, x[i % 256]))
            if i == 400:
                for name in (f"{QUALITY}.onnx", "model_info.json"):
                    shutil.copy(built_models_other_date / name, models_dir / name)
                reload_task = asyncio.ensure_future(manager.reload_model_async(key))
            if i % 8 == 0:
                await asyncio.sleep(0)
        assert await reload_task
        # requests sent after the reload finished are the new version's, however the
        # machine's load spread the reload over the first 1,200
        futures += [engine.predict(key, x[i % 256]) for i in range(50)]
        return await asyncio.gather(*futures)

    results = run(scenario())
    assert len(results) == 1250 and all(r.success for r in results)
    new_version = manager.get_model(key).version
    versions = {r.model_version for r in results}
    assert versions == {old_version, new_version} and old_version != new_version
    per_batch = defaultdict(set)
    for r in results:
        per_batch[r.batch_id].add(r.model_version)
    assert all(len(v) == 1 for v in per_batch.values())
    # once the new version served a request, no later request went back to the old one
    first_new = next(i for i, r in enumerate(results) if r.model_version == new_version)
    assert all(r.model_version == new_version for r in results[first_new:])


def test_reload_invalidates_the_cache(models_dir: Path, built_models_other_date: Path) -> None:
    manager = ProductionModelManager(models_dir)
    key = f"{ROUTING}_onnx"
    assert manager.load_model(key)
    cache = ResultCache(100)
    engine = make_engine(manager, cache=cache)
    row = inputs(1, 15)[0]
    (first,) = run(engine.predict_batch(key, [row]))
    assert run(engine.predict_batch(key, [row]))[0].cache_hit
    for name in (f"{ROUTING}.onnx", "model_info.json"):
        shutil.copy(built_models_other_date / name, models_dir / name)
    assert manager.reload_model(key)
    (after,) = run(engine.predict_batch(key, [row]))
    assert not after.cache_hit and after.model_version != first.model_version
    assert cache.get_stats().invalidations >= 1


def test_fixed_batch_dimension_model_is_served_one_at_a_time(tmp_path: Path) -> None:
    import warnings

    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, 8, 8),),
            tmp_path / "image.onnx",
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
        )
    (tmp_path / "model_info.json").write_text(json.dumps({"image": {"version": "7"}}))
    manager = ProductionModelManager(tmp_path)
    assert manager.load_model("image_onnx"), manager.load_errors
    assert manager.get_model("image_onnx").fixed_batch_size == 1
    engine = make_engine(manager)
    images = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)

    async def scenario():
        return await asyncio.gather(*(engine.predict("image_onnx", im) for im in images))

    results = run(scenario())
    assert all(r.success and r.batch_size == 1 and r.output.shape == (5,) for r in results)
    with torch.no_grad():
        expected = np.concatenate([net(torch.from_numpy(im[None])).numpy() for im in images])
    np.testing.assert_allclose(np.stack([r.output for r in results]), expected, atol=1e-5)


def test_a_model_that_keeps_failing_is_reloaded_from_its_verified_file(built_models) -> None:
    manager = ProductionModelManager(built_models)
    key = f"{QUALITY}_onnx"
    assert manager.load_model(key)
    monitor = RealTimePerformanceMonitor()
    engine = make_engine(manager, monitor=monitor, recovery_failure_threshold=3)
    loaded = manager.get_model(key)

    class Faulty:  # fault injection: the in-memory runtime breaks (a corrupted session)
        format = "onnx"
        memory_bytes = loaded.runtime.memory_bytes

        def run(self, batch):
            raise RuntimeError("simulated runtime fault")

    loaded.runtime = Faulty()

    async def scenario():
        failures = [await engine.predict(key, row) for row in inputs(3, 10)]
        await engine.stop()
        recovered = await engine.predict(key, inputs(1, 10, seed=9)[0])
        return failures, recovered

    failures, recovered = run(scenario())
    assert not any(r.success for r in failures)
    assert "simulated runtime fault" in failures[0].error
    assert recovered.success
    assert manager.get_model(key).generation == loaded.generation + 1
    events = [e for e in monitor.events if e.kind == "model_reload"]
    assert events and events[0].success and events[0].target == key
    assert b'relcert_recoveries_total{kind="model_reload"} 1.0' in monitor.prometheus_exposition()
