"""Run folders for the stage tests: the built example models, or small models of our own
that misbehave in one specific way (slow, NaN, batch-dependent)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

MINI_PROFILE = """
version: 1
scenarios:
  baseline_performance:
    {users: 4, requests_per_user: 15, ramp_up_s: 0.2, duration_s: 3, pattern: constant,
     behaviour: mixed}
patterns:
  constant: {think_ms: 20}
behaviours:
  mixed: {quality_predictor: 0.6, routing_classifier: 0.4}
profiles:
  mini:
    scenario_time_scale: 1.0
    think_time_scale: 1.0
    min_requests_per_scenario: 60
    max_requests_per_user: 15
    warmup_s: 0.2
    window_s: 1.0
    stability_tolerance: 1.0
    stability_floor_ms: 5.0
    percentiles_claimed: [50]
    capacity: {trial_s: 0.5, warmup_s: 0.1, start_rps: 50, max_rps: 100,
               resolution: 0.5, max_seconds: 20}
    burst_requests: 20
    concurrency: {users: [1, 4], requests_per_user: 3, think_ms: 10}
    cache: {distinct_inputs: 10, requests: 40, zipf_a: 1.3, concurrency: 2}
    calibration_s: 0.3
    integration: {concurrent_clients: 3, requests_per_client: 3, think_ms: 5, memory_requests: 20}
    stress: {scale: 0.1}
    infra: {rates: [100], duration_s: 1.0, warmup_s: 0.2}
"""


@pytest.fixture
def mini_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A profile small enough for tests (`mini`), installed as the profiles file."""
    from pipeline.profiles import load_profile

    path = tmp_path / "profiles.yaml"
    path.write_text(MINI_PROFILE)
    monkeypatch.setenv("RELCERT_PROFILES_FILE", str(path))
    return load_profile("mini", path)


@pytest.fixture
def run_dir(built_models: Path, tmp_path: Path) -> Path:
    """A run folder whose models/ holds the built example models."""
    run = tmp_path / "run"
    shutil.copytree(built_models, run / "models")
    return run


def onnx_run(tmp_path: Path, name: str, module, features: int, outputs: int) -> Path:
    """A run folder with one ONNX model exported from `module` (dynamic batch)."""
    import torch

    run = tmp_path / f"run-{name}"
    models = run / "models"
    models.mkdir(parents=True)
    path = models / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.rand(2, features),),
            path,
            dynamo=False,
            input_names=["features"],
            output_names=["out"],
            do_constant_folding=False,
            dynamic_axes={"features": {0: "batch"}, "out": {0: "batch"}},
            opset_version=17,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        name: {
            "name": name,
            "model_type": "regression",
            "source": "imported",
            "version": "test-1",
            "input_name": "features",
            "output_name": "out",
            "input_shape": [None, features],
            "output_shape": [None, outputs],
            "input_dtype": "float32",
            "output_dtype": "float32",
            "files": {"onnx": {"path": path.name, "sha256": digest, "bytes": path.stat().st_size}},
            "parity": {"reference": None},
        }
    }
    (models / "model_info.json").write_text(json.dumps(info))
    return run
