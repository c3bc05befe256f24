"""Engine hardening (issues 12, 24): pooled-buffer views, poisoned requests, bounded isolation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inference import (
    EngineSettings,
    MemoryPoolManager,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
)
from tests.inference.helpers import QUALITY, inputs, run

pytestmark = pytest.mark.unit


def _torchscript_model(folder: Path, module: torch.nn.Module, features: int, outputs: int) -> str:
    """Save `module` as a scripted model `probe.pt` with its model_info.json; returns its key."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module.eval()), str(folder / "probe.pt"))
    info = {
        "probe": {
            "name": "probe",
            "version": "probe-1",
            "input_shape": [None, features],
            "output_shape": [None, outputs],
        }
    }
    (folder / "model_info.json").write_text(json.dumps(info))
    return "probe_torchscript"


class FirstTwo(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DoubleInPlace(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return x


class RaisesOnLargeFirstFeature(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 100.0).any()):
            raise RuntimeError("poisoned input")
        return x.sum(dim=1, keepdim=True)


class CountingRuntime:
    """Counts calls to a real runtime (the model still does the work)."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.format = runtime.format
        self.memory_bytes = runtime.memory_bytes
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.runtime.run(batch)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (FirstTwo(), lambda x: x[:, :2]),
        (Identity(), lambda x: x),
        (DoubleInPlace(), lambda x: 2.0 * x),
    ],
    ids=["slice-view", "identity", "in-place"],
)
def test_outputs_that_view_the_pooled_buffer_are_not_overwritten(
    tmp_path: Path, module, expected
) -> None:
    key = _torchscript_model(tmp_path / "models", module, features=6, outputs=6)
    manager = ProductionModelManager(tmp_path / "models")
    assert manager.load_model(key), manager.load_errors
    engine = ProductionInferenceEngine(
        manager, max_batch_size=32, memory_pool=MemoryPoolManager(16), cache=None
    )
    x = inputs(64, 6, seed=3)

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    results = run(scenario())
    assert all(r.success for r in results), [r.error for r in results if not r.success][:3]
    assert engine.get_stats()["batches"] == 2  # both batches reused one pooled buffer
    assert engine.memory_pool.get_memory_stats().cache_hits >= 1
    got = np.stack([r.output for r in results])
    wrong = int((~np.isclose(got, expected(x)).all(axis=1)).sum())
    assert wrong == 0, f"{wrong} of 64 results were overwritten by a later batch"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_poisoned_request_fails_alone_and_never_reloads_the_model(
    built_models: Path, fmt: str
) -> None:
    manager = ProductionModelManager(built_models)
    key = f"{QUALITY}_{fmt}"
    assert manager.load_model(key)
    generation = manager.get_model(key).generation
    monitor = RealTimePerformanceMonitor()
    engine = ProductionInferenceEngine(
        manager,
        settings=EngineSettings(recovery_failure_threshold=2, recovery_cooldown_s=0.0),
        monitor=monitor,
    )
    poison = np.full(10, 3e38, dtype=np.float32)  # finite, but the model answers NaN
    good = inputs(8, 10, seed=5)

    async def scenario():
        out = []
        for i in range(8):  # one poisoned request per batch, as a hostile client would
            out.append(
                await asyncio.gather(engine.predict(key, poison), engine.predict(key, good[i]))
            )
        await engine.stop()
        return out

    pairs = run(scenario())
    assert engine.get_stats()["recoveries"] == 0
    assert not [e for e in monitor.events if e.kind == "model_reload"]
    assert b'relcert_recoveries_total{kind="model_reload"} 1' not in monitor.prometheus_exposition()
    assert manager.get_model(key).generation == generation
    for bad, ok in pairs:
        assert ok.success
        assert not bad.success and bad.error_type == "NonFiniteOutputError"
        assert "NaN or Inf output" in bad.error


def test_one_bad_request_in_a_batch_costs_a_few_runs_not_one_per_request(tmp_path: Path) -> None:
    key = _torchscript_model(tmp_path / "models", RaisesOnLargeFirstFeature(), 4, 1)
    manager = ProductionModelManager(tmp_path / "models")
    assert manager.load_model(key), manager.load_errors
    counting = CountingRuntime(manager.get_model(key).runtime)
    manager.get_model(key).runtime = counting
    engine = ProductionInferenceEngine(manager, max_batch_size=32, memory_pool=MemoryPoolManager(8))
    x = inputs(32, 4, seed=7)
    x[13, 0] = 1000.0  # the one request the model raises on

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    results = run(scenario())
    assert [i for i, r in enumerate(results) if not r.success] == [13]
    assert "poisoned input" in results[13].error
    np.testing.assert_allclose(
        np.stack([r.output for i, r in enumerate(results) if i != 13]),
        np.delete(x, 13, axis=0).sum(axis=1, keepdims=True),
        rtol=1e-5,
    )
    # bisection: 1 batch + 2 runs per level of a 32-request batch (log2 32 = 5), not 1 + 32
    assert counting.calls <= 1 + 2 * 5
    assert engine.get_stats()["runtime_calls"] == counting.calls


def test_a_batch_of_bad_requests_costs_at_most_twice_the_runs_of_serving_each_alone(
    tmp_path: Path,
) -> None:
    # Every request makes the (healthy) runtime raise: each is isolated and fails alone as
    # its own error. The bisection's bound: 2 (n - 1) runs beyond the batch, plus one probe.
    # (A runtime that raises on everything is tests/inference/test_request_faults.py's.)
    key = _torchscript_model(tmp_path / "models", RaisesOnLargeFirstFeature(), 4, 1)
    manager = ProductionModelManager(tmp_path / "models")
    assert manager.load_model(key), manager.load_errors
    counting = CountingRuntime(manager.get_model(key).runtime)
    manager.get_model(key).runtime = counting
    engine = ProductionInferenceEngine(manager, max_batch_size=32)
    x = inputs(32, 4, seed=8)
    x[:, 0] = 1000.0  # every request makes it raise

    async def scenario():
        return await asyncio.gather(*(engine.predict(key, row) for row in x))

    results = run(scenario())
    assert not any(r.success for r in results)
    assert {r.error_type for r in results} == {"InputRuntimeError"}
    assert all("poisoned input" in r.error for r in results)
    assert counting.calls <= 1 + 2 * (32 - 1) + 1
    assert engine.get_stats()["recoveries"] == 0
