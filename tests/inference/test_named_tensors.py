"""Models of named tensors in the manager and the engine: a two-input transformer (int64
input_ids + attention_mask, dynamic batch and sequence, two outputs) and a single-input token
model (TorchScript and ONNX), as `relcert build` imported them from a models file.

The reference is the model file run directly (ONNX Runtime, torch.jit), not the engine."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import (
    MemoryPoolManager,
    ProductionInferenceEngine,
    ProductionModelManager,
    ResultCache,
)
from tests.text_models import SEQ_SIZES, VOCAB

pytestmark = pytest.mark.unit


def _ort(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _sample(seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=seq).astype(np.int64)
    mask = np.ones(seq, dtype=np.int64)
    mask[seq // 2 :] = rng.integers(0, 2, size=seq - seq // 2)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def manager(text_models: Path) -> ProductionModelManager:
    manager = ProductionModelManager(text_models)
    for key in ("sentiment_onnx", "bag_script_torchscript", "bag_graph_onnx"):
        assert manager.load_model(key), manager.load_errors
    return manager


def test_the_manager_loads_them_with_their_tensors(manager: ProductionModelManager) -> None:
    info = manager.model_info["sentiment_onnx"]
    assert info.loaded and info.warmup_complete and info.tensor_io
    signature = info.signature
    assert signature.input_names == ("input_ids", "attention_mask")
    assert signature.output_names == ("logits", "pooled")
    assert [t.shape for t in signature.inputs] == [(None, "seq"), (None, "seq")]
    assert signature.inputs[0].range == (0.0, float(VOCAB))
    assert dict(signature.dims) == {"seq": tuple(SEQ_SIZES)}
    assert manager.get_model("bag_script").tensor_io  # a dynamic sequence: named tensors


def test_a_dynamic_sequence_in_the_single_tensor_form_loads(
    text_models: Path, tmp_path: Path
) -> None:
    """model_info.json as the import wrote it before the tensor form (input_shape [null,
    null], int64): the manager used to refuse it for its unknown feature dimension."""
    folder = tmp_path / "models"
    shutil.copytree(text_models, folder)
    info_path = folder / "model_info.json"
    info = json.loads(info_path.read_text())
    for name in ("bag_graph", "bag_script"):
        for key in ("inputs", "outputs", "dims"):
            info[name].pop(key)
    info_path.write_text(json.dumps(info))
    manager = ProductionModelManager(folder)
    for key in ("bag_graph_onnx", "bag_script_torchscript"):
        assert manager.load_model(key), manager.load_errors
        assert manager.get_model(key).tensor_io

    async def run() -> list:
        engine = ProductionInferenceEngine(manager)
        return [
            await engine.predict("bag_graph", np.arange(n, dtype=np.int64) % VOCAB) for n in (3, 9)
        ]

    results = asyncio.run(run())
    assert all(r.success and r.output.shape == (4,) for r in results), results


def test_mixed_sequence_lengths_batch_by_shape_and_match_onnx_runtime(
    manager: ProductionModelManager, text_models: Path
) -> None:
    lengths = [6, 24, 6, 12, 24, 6, 12, 6]
    samples = [_sample(n, seed=i) for i, n in enumerate(lengths)]

    async def run() -> list:
        engine = ProductionInferenceEngine(manager, memory_pool=MemoryPoolManager(20))
        return list(await asyncio.gather(*(engine.predict("sentiment", s) for s in samples)))

    results = asyncio.run(run())
    assert all(r.success for r in results), [r.error for r in results]
    # submitted together: each sequence length ran as one batch of its own
    for n in set(lengths):
        same = [r for r, length in zip(results, lengths, strict=True) if length == n]
        assert {r.batch_size for r in same} == {lengths.count(n)}
        assert len({r.batch_id for r in same}) == 1
    assert len({r.batch_id for r in results}) == len(set(lengths))
    for sample, result in zip(samples, results, strict=True):
        expected = _ort(text_models / "sentiment.onnx", {k: v[None] for k, v in sample.items()})
        assert set(result.outputs) == {"logits", "pooled"}
        np.testing.assert_allclose(result.outputs["logits"], expected["logits"][0], atol=1e-5)
        np.testing.assert_allclose(result.outputs["pooled"], expected["pooled"][0], atol=1e-5)
        assert result.output is result.outputs["logits"]  # `output`: the first output


def test_the_token_model_as_torchscript_and_onnx(
    manager: ProductionModelManager, text_models: Path
) -> None:
    import torch

    module = torch.jit.load(str(text_models / "bag_script.pt"))
    rows = [np.random.default_rng(n).integers(0, VOCAB, size=n) for n in (3, 7, 7, 15)]

    async def run(model: str) -> list:
        engine = ProductionInferenceEngine(manager, cache=ResultCache(100))
        first = await asyncio.gather(*(engine.predict(model, r) for r in rows))
        again = await engine.predict(model, {"tokens": rows[0]})  # a mapping works too
        return [*first, again]

    for model in ("bag_script", "bag_graph"):
        results = asyncio.run(run(model))
        assert all(r.success for r in results), [r.error for r in results]
        assert results[-1].cache_hit and set(results[-1].outputs) == {"scores"}
        for row, result in zip(rows, results[:-1], strict=True):
            with torch.inference_mode():
                expected = module(torch.from_numpy(row[None].astype(np.int64)))[0].numpy()
            np.testing.assert_allclose(result.output, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"input_ids": [1, 2, 3]}, "missing 'attention_mask'"),
        ({"input_ids": [1], "attention_mask": [1], "extra": [0]}, "unknown 'extra'"),
        ({"input_ids": [1, 2, 3], "attention_mask": [1, 1]}, "dimension 'seq' is 2"),
        ({"input_ids": [1, 2, VOCAB], "attention_mask": [1, 1, 1]}, f"[0, {VOCAB})"),
        ({"input_ids": [1.5, 2, 3], "attention_mask": [1, 1, 1]}, "got non-integers"),
        ({"input_ids": [[1, 2], [3, 4]], "attention_mask": [1, 1]}, "must have shape [n]"),
        ([1, 2, 3], "send a mapping of input name -> array"),
    ],
)
def test_bad_requests_fail_alone_naming_the_input(
    manager: ProductionModelManager, request_, expected: str
) -> None:
    async def run() -> list:
        engine = ProductionInferenceEngine(manager)
        good = _sample(6, seed=0)
        return list(
            await asyncio.gather(
                engine.predict("sentiment", request_), engine.predict("sentiment", good)
            )
        )

    bad, good = asyncio.run(run())
    assert not bad.success and bad.error_type == "InvalidInputError"
    assert expected in bad.error, bad.error
    assert good.success  # its batch-mate is answered


def test_a_token_past_the_vocabulary_is_its_requests_error_not_the_models(
    text_models: Path, tmp_path: Path
) -> None:
    """Without a declared range the engine cannot refuse an id past the embedding table:
    the runtime raises on it, and fault isolation (its probe: one row of valid values)
    fails that request alone, never counting it against the model."""
    folder = tmp_path / "models"
    shutil.copytree(text_models, folder)
    info_path = folder / "model_info.json"
    info = json.loads(info_path.read_text())
    del info["bag_graph"]["inputs"][0]["range"]
    info_path.write_text(json.dumps(info))
    manager = ProductionModelManager(folder)
    assert manager.load_model("bag_graph_onnx"), manager.load_errors

    async def run() -> list:
        engine = ProductionInferenceEngine(manager)
        rows = [np.array([1, 2, 3]), np.array([4, VOCAB + 50, 6]), np.array([7, 8, 9])]
        results = list(await asyncio.gather(*(engine.predict("bag_graph", r) for r in rows)))
        # alone, nothing else tells the engine the model is healthy: it probes
        alone = await engine.predict("bag_graph", np.array([VOCAB + 1]))
        return [*results, alone, engine.get_stats()]

    good, bad, other, alone, stats = asyncio.run(run())
    assert good.success and other.success
    for failed in (bad, alone):
        assert not failed.success and failed.error_type == "InputRuntimeError", failed.error
    assert stats["probes"] == 1 and stats["input_runtime_errors"] == 2
    assert stats["recoveries"] == 0
