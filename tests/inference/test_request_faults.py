"""A request's values that make the runtime raise are that request's error, never the model's
(issue 24): isolated from its batch-mates, counted apart, never reloading the model; a model
that faults on everything is still a fault and is reloaded. Out-of-range integers are refused,
never wrapped. A queued request expires at its deadline, not at its batch's dispatch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import (
    EngineSettings,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
)
from tests.fault_models import BAG, BREAK_VALUE, VOCAB, breakable_model, embedding_model
from tests.inference.helpers import inputs, run

pytestmark = pytest.mark.unit


INT64_RANGE = "[-9223372036854775808, 9223372036854775807]"


def _engine(folder: Path, key: str, **settings) -> ProductionInferenceEngine:
    manager = ProductionModelManager(folder)
    assert manager.load_model(key), manager.load_errors
    base = {"recovery_failure_threshold": 2, "recovery_cooldown_s": 0.0, "cache_entries": 0}
    return ProductionInferenceEngine(
        manager,
        settings=EngineSettings(**{**base, **settings}),
        monitor=RealTimePerformanceMonitor(),
    )


def _ids(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(count, 3), dtype=np.int64)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_index_past_the_table_fails_its_request_alone_and_never_reloads(
    tmp_path: Path, fmt: str
) -> None:
    key = f"{BAG}_{fmt}"
    engine = _engine(embedding_model(tmp_path / "models", fmt), key)
    generation = engine.model_manager.get_model(key).generation
    good = _ids(8, seed=1)
    bad = good.copy()
    bad[:, 2] = VOCAB + 40  # past the embedding table

    async def scenario():
        pairs = [
            await asyncio.gather(engine.predict(key, bad[i]), engine.predict(key, good[i]))
            for i in range(8)  # one bad request per batch, as a hostile client would send
        ]
        await engine.stop()
        return pairs

    pairs = run(scenario())
    for failed, ok in pairs:
        assert ok.success, ok.error
        assert not failed.success and failed.error_type == "InputRuntimeError", failed
    stats = engine.get_stats()
    assert stats["input_runtime_errors"] == 8
    assert stats["recoveries"] == 0
    assert not [e for e in engine.monitor.events if e.kind == "model_reload"]
    assert engine.model_manager.get_model(key).generation == generation


def test_every_bad_request_of_a_batch_is_isolated_and_no_good_one_fails(tmp_path: Path) -> None:
    key = f"{BAG}_onnx"
    engine = _engine(embedding_model(tmp_path / "models", "onnx"), key, max_batch_size=32)
    ids = _ids(32, seed=2)
    ids[::4, 0] = VOCAB + 5  # every 4th request is bad

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in ids))

    results = run(scenario())
    failed = [i for i, r in enumerate(results) if not r.success]
    assert failed == list(range(0, 32, 4)), [(i, r.error_type) for i, r in enumerate(results)]
    assert {results[i].error_type for i in failed} == {"InputRuntimeError"}
    # the good requests' answers are the model's, as if each had run alone
    alone = ProductionModelManager(tmp_path / "models")
    assert alone.load_model(key)
    good = [i for i in range(32) if i % 4]
    expected = alone.get_model(key).runtime.run(ids[good])
    np.testing.assert_allclose(np.stack([results[i].output for i in good]), expected, rtol=1e-6)
    # the bound of the docstring: the batch, at most 2 (n - 1) bisection runs, one probe
    stats = engine.get_stats()
    assert stats["runtime_calls"] <= 1 + 2 * 31 + 1, stats["runtime_calls"]
    assert stats["recoveries"] == 0 and stats["input_runtime_errors"] == 8


def test_a_model_that_faults_on_everything_is_a_fault_and_is_reloaded(tmp_path: Path) -> None:
    key = "quality_predictor_torchscript"
    engine = _engine(breakable_model(tmp_path / "models"), key, max_batch_size=32)
    generation = engine.model_manager.get_model(key).generation
    breaker = np.full(10, 0.5, dtype=np.float32)
    breaker[0] = BREAK_VALUE
    rows = inputs(32, 10, seed=4)

    async def scenario():
        broke = await engine.predict(key, breaker)
        before = engine.get_stats()["runtime_calls"]
        batch = await asyncio.gather(*(engine.predict(key, row) for row in rows))
        calls = engine.get_stats()["runtime_calls"] - before
        await engine.stop()  # waits for the reload the two faults started
        healed = await engine.predict(key, rows[0])
        return broke, batch, calls, healed

    broke, batch, calls, healed = run(scenario())
    assert not broke.success and broke.error_type != "InputRuntimeError"
    assert not any(r.success for r in batch)
    assert {r.error_type for r in batch} != {"InputRuntimeError"}
    # a broken runtime is found cheaply: the batch, one path down the bisection, one probe
    assert calls <= 1 + 5 + 1, calls
    stats = engine.get_stats()
    assert stats["input_runtime_errors"] == 0 and stats["recoveries"] == 1
    assert healed.success, healed.error
    assert engine.model_manager.get_model(key).generation == generation + 1


@pytest.mark.parametrize(
    "value",
    [[1e20, 1.0, 2.0], np.array([2**63, 1, 2], dtype=np.uint64), [-1e19, 0.0, 0.0]],
    ids=["1e20", "uint64-2**63", "-1e19"],
)
def test_out_of_range_integers_are_refused_never_wrapped(tmp_path: Path, value) -> None:
    key = f"{BAG}_torchscript"
    engine = _engine(embedding_model(tmp_path / "models"), key)

    async def scenario():
        return await engine.predict(key, value)

    result = run(scenario())
    assert not result.success and result.error_type == "InvalidInputError", result
    assert "element 0" in result.error and f"int64 range {INT64_RANGE}" in result.error
    assert engine.get_stats()["runtime_calls"] == 0  # refused before it reached the model


def test_a_queued_request_expires_at_its_deadline_not_at_dispatch(built_models: Path) -> None:
    key = "quality_predictor_onnx"
    engine = _engine(built_models, key, batch_timeout_ms=2000.0, default_deadline_ms=500.0)

    async def scenario():
        started = asyncio.get_running_loop().time()
        result = await engine.predict(key, inputs(1, 10)[0])
        return result, asyncio.get_running_loop().time() - started

    result, waited_s = run(scenario())
    assert not result.success and result.error_type == "DeadlineExceededError"
    assert 0.45 <= waited_s < 1.5, waited_s  # at its 500 ms deadline, not the 2 s batch wait
    assert engine.get_stats()["expired"] == 1 and engine.queue_depth == 0
