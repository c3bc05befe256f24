"""Model manager: discovery, verification, warm-up, budget, reload, bad files."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import ModelNotLoadedError, ProductionModelManager
from tests.inference.helpers import QUALITY, ROUTING

pytestmark = pytest.mark.unit

ALL_KEYS = [
    f"{QUALITY}_onnx",
    f"{QUALITY}_torchscript",
    f"{ROUTING}_onnx",
    f"{ROUTING}_torchscript",
]


def test_discovers_and_loads_both_models_in_both_formats(built_models: Path) -> None:
    manager = ProductionModelManager(built_models)
    assert manager.available_models == ALL_KEYS
    info_file = json.loads((built_models / "model_info.json").read_text())
    for key in ALL_KEYS:
        assert manager.load_model(key), manager.load_errors
        info = manager.model_info[key]
        name = key.rsplit("_", 1)[0]
        fmt = key.rsplit("_", 1)[1]
        assert info.warmup_complete and info["warmup_complete"]
        assert info.version == info_file[name]["version"]
        assert info.sha256 == info_file[name]["files"][fmt]["sha256"]
        assert info.checksum_verified
        assert info.load_time_ms is not None and info.load_time_ms > 0
    assert manager.model_info[f"{QUALITY}_onnx"].feature_shape == (10,)
    assert manager.model_info[f"{ROUTING}_torchscript"].feature_shape == (15,)
    # generous sanity bound; the real goal (< 3 s) is measured by bench/engine.py
    total_s = (
        sum(
            manager.model_info[k].load_time_ms + manager.model_info[k].warmup_time_ms
            for k in ALL_KEYS
        )
        / 1000
    )
    assert total_s < 30


def test_base_name_resolves_and_unknown_name_is_reported(built_models: Path) -> None:
    manager = ProductionModelManager(built_models)
    assert manager.load_model(QUALITY)
    assert manager.is_loaded(f"{QUALITY}_onnx") or manager.is_loaded(f"{QUALITY}_torchscript")
    assert not manager.load_model("no_such_model")
    assert "no_such_model" in manager.load_errors["no_such_model"]
    with pytest.raises(ModelNotLoadedError, match="not loaded"):
        manager.get_model(f"{ROUTING}_onnx")


def test_checksum_mismatch_is_refused(models_dir: Path) -> None:
    onnx_file = models_dir / f"{QUALITY}.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the weights
    onnx_file.write_bytes(bytes(data))
    manager = ProductionModelManager(models_dir)
    assert manager.load_model(f"{QUALITY}_onnx") is False
    error = manager.load_errors[f"{QUALITY}_onnx"]
    assert "sha256 mismatch" in error and str(onnx_file) in error
    assert manager.load_model(f"{QUALITY}_torchscript")  # the other file is untouched


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_corrupt_file_without_checksum_gives_a_clear_reason(
    models_dir: Path, fmt: str, suffix: str
) -> None:
    path = models_dir / f"{QUALITY}{suffix}"
    path.write_bytes(path.read_bytes()[:100])
    info = json.loads((models_dir / "model_info.json").read_text())
    del info[QUALITY]["files"][fmt]["sha256"]
    (models_dir / "model_info.json").write_text(json.dumps(info))
    manager = ProductionModelManager(models_dir)
    assert manager.load_model(f"{QUALITY}_{fmt}") is False
    error = manager.load_errors[f"{QUALITY}_{fmt}"]
    expected = "not a loadable ONNX model" if fmt == "onnx" else "not a loadable TorchScript"
    assert expected in error and f"{QUALITY}_{fmt}" in error


def test_missing_checksum_warns_or_refuses_when_strict(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info = json.loads((models_dir / "model_info.json").read_text())
    del info[ROUTING]["files"]["onnx"]["sha256"]
    (models_dir / "model_info.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING):
        lenient = ProductionModelManager(models_dir)
        assert lenient.load_model(f"{ROUTING}_onnx")
    assert "loading unverified" in caplog.text
    assert not lenient.model_info[f"{ROUTING}_onnx"].checksum_verified
    strict = ProductionModelManager(models_dir, strict=True)
    assert strict.load_model(f"{ROUTING}_onnx") is False
    assert "strict" in strict.load_errors[f"{ROUTING}_onnx"]


def test_plan_style_model_info_without_checksums_still_serves(models_dir: Path) -> None:
    """The original plan's model_info.json: example shapes like [1, 10], no files/sha256."""
    legacy = {
        QUALITY: {
            "input_shape": [1, 10],
            "output_shape": [1, 1],
            "model_type": "regression",
            "version": "1.0",
        },
        ROUTING: {
            "input_shape": [1, 15],
            "output_shape": [1, 4],
            "model_type": "classification",
            "version": "1.0",
        },
    }
    (models_dir / "model_info.json").write_text(json.dumps(legacy))
    manager = ProductionModelManager(models_dir)
    assert manager.load_model(f"{QUALITY}_torchscript"), manager.load_errors
    model = manager.get_model(f"{QUALITY}_torchscript")
    assert model.fixed_batch_size is None  # probed: the module accepts any batch
    assert manager.load_model(f"{ROUTING}_onnx"), manager.load_errors
    assert manager.get_model(f"{ROUTING}_onnx").fixed_batch_size is None  # the graph says so


def test_a_folder_in_the_plans_format_loads_and_serves(models_dir: Path) -> None:
    """The plan wrote feature dimensions only (`input_shape: [10]`, `output_shape: [1]`):
    the batch dimension is implied and dynamic; both formats load, batch and answer."""
    import asyncio

    from pipeline.inference import ProductionInferenceEngine

    plan = {
        QUALITY: {"input_shape": [10], "output_shape": [1], "model_type": "regression"},
        ROUTING: {"input_shape": [15], "output_shape": [4], "model_type": "classification"},
    }
    (models_dir / "model_info.json").write_text(json.dumps(plan))
    manager = ProductionModelManager(models_dir)
    for key in (f"{QUALITY}_torchscript", f"{QUALITY}_onnx", f"{ROUTING}_onnx"):
        assert manager.load_model(key), manager.load_errors
        assert manager.model_info[key].input_shape[0] is None  # dynamic, implied
        assert manager.get_model(key).fixed_batch_size is None
    engine = ProductionInferenceEngine(manager, max_batch_size=8)

    async def burst():
        return await asyncio.gather(
            *(engine.predict(f"{ROUTING}_onnx", [0.5] * 15) for _ in range(8))
        )

    results = asyncio.run(burst())
    assert all(r.success and r.output.shape == (4,) for r in results)
    assert max(r.batch_size for r in results) > 1

    async def one():
        return await engine.predict(f"{QUALITY}_torchscript", [0.5] * 10)

    quality = asyncio.run(one())
    assert quality.success and quality.output.shape == (1,)


def test_memory_budget_evicts_least_recently_used_or_refuses(built_models: Path) -> None:
    probe = ProductionModelManager(built_models)
    sizes = {}
    for key in (f"{QUALITY}_onnx", f"{ROUTING}_onnx"):
        assert probe.load_model(key)
        sizes[key] = probe.model_info[key].memory_mb
    budget = max(sizes.values()) + min(sizes.values()) / 2  # room for either, not both
    manager = ProductionModelManager(built_models, max_memory_mb=budget)
    assert manager.load_model(f"{QUALITY}_onnx")
    assert manager.load_model(f"{ROUTING}_onnx")
    assert manager.loaded_models == [f"{ROUTING}_onnx"]  # the LRU model was evicted
    assert manager.memory_usage_mb() <= budget

    pinned = ProductionModelManager(built_models, max_memory_mb=budget)
    assert pinned.load_model(f"{QUALITY}_onnx", priority=True)
    assert pinned.load_model(f"{ROUTING}_onnx") is False
    assert "priority" in pinned.load_errors[f"{ROUTING}_onnx"]
    assert pinned.loaded_models == [f"{QUALITY}_onnx"]

    tiny = ProductionModelManager(built_models, max_memory_mb=1e-6)
    assert tiny.load_model(f"{QUALITY}_onnx") is False
    assert "max_memory_mb" in tiny.load_errors[f"{QUALITY}_onnx"]


def test_unload_and_reload_pick_up_a_new_snapshot(
    models_dir: Path, built_models_other_date: Path
) -> None:
    manager = ProductionModelManager(models_dir)
    key = f"{QUALITY}_onnx"
    assert manager.load_model(key)
    old = manager.get_model(key)
    for name in (f"{QUALITY}.onnx", "model_info.json"):
        shutil.copy(built_models_other_date / name, models_dir / name)
    assert manager.reload_model(key), manager.load_errors
    new = manager.get_model(key)
    assert new.generation == old.generation + 1
    assert new.version != old.version
    x = np.random.default_rng(1).random((4, 10), dtype=np.float32)
    assert not np.allclose(new.runtime.run(x), old.runtime.run(x))
    assert manager.unload_model(key)
    assert not manager.is_loaded(key)
    assert manager.unload_model(key) is False


def test_a_model_with_nan_outputs_is_refused_at_warm_up(tmp_path: Path) -> None:
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * float("nan")

    torch.jit.save(torch.jit.script(Broken()), tmp_path / "broken.pt")
    (tmp_path / "model_info.json").write_text(
        json.dumps({"broken": {"input_shape": [None, 10], "output_shape": [None, 1]}})
    )
    manager = ProductionModelManager(tmp_path)
    assert manager.load_model("broken_torchscript") is False
    assert "NaN" in manager.load_errors["broken_torchscript"]


def test_a_file_over_the_memory_budget_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 64 MB model file and a 16 MB budget: load_model says no, with the reason, without
    reading the file (it could never fit: its weights take at least its size)."""
    import tracemalloc

    big = tmp_path / "huge.onnx"
    with open(big, "wb") as handle:
        handle.truncate(64 * 2**20)  # sparse: no disk, but 64 MB to whoever reads it
    manager = ProductionModelManager(tmp_path, max_memory_mb=16)
    tracemalloc.start()
    try:
        assert manager.load_model("huge") is False
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # nothing like the file's 64 MB was read
    reason = manager.load_errors["huge_onnx"]
    assert f"{big} is 64.0 MB, more than max_memory_mb=16; not loaded" in reason
    assert manager.model_info["huge_onnx"].last_error == reason
    assert manager.loaded_models == []
