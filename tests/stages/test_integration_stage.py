"""Integration stage and its gate on real models, and on models that misbehave."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.stages import run_stage
from tests.stages.conftest import onnx_run

pytestmark = pytest.mark.stage


def test_healthy_models_pass_every_integration_check(run_dir: Path, mini_profile) -> None:
    result = run_stage("integration", run_dir, "mini")
    checks = pd.read_csv(run_dir / "stages/integration/checks.csv")
    assert result["gate"]["success"], result["gate"]["failed"]
    assert checks["passed"].all(), checks[~checks["passed"]].to_dict("records")
    kinds = set(checks["check"])
    for kind in (
        "model_load",
        "initialization",
        "end_to_end",
        "batching",
        "memory_management",
        "concurrent_load",
        "cross_model_workflow",
        "parity_batched_single_cached",
        "parity_torchscript_onnx",
        "parity_eager_build",
        "model_quality",
    ):
        assert kind in kinds
    assert (checks[checks["check"] == "batching"]["measured"] > 1).all()
    quality = checks[checks["check"] == "model_quality"].set_index("model")
    assert quality.loc["routing_classifier", "unit"] == "accuracy"
    assert quality.loc["routing_classifier", "measured"] > 0.95
    assert quality.loc["quality_predictor", "unit"] == "pearson_r"
    assert quality.loc["quality_predictor", "measured"] > 0.9
    assert (quality["samples"] > 100).all()  # the whole hold-out split
    gate = json.loads((run_dir / "gates/integration.json").read_text())
    assert gate["success"] is True
    assert (run_dir / "data_docs/index.html").exists()


class _NaNModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * torch.log(x[:, :1] - 10.0)  # log of a negative: NaN


class _BatchDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x - x.mean(dim=0, keepdim=True))  # depends on the batch-mates


def test_a_model_emitting_nan_fails_the_integration_gate(tmp_path: Path, mini_profile) -> None:
    run = onnx_run(tmp_path, "nan_model", _NaNModel(), 10, 1)
    result = run_stage("integration", run, "mini")
    assert not result["gate"]["success"]
    checks = pd.read_csv(run / "stages/integration/checks.csv")
    load = checks[checks["check"] == "model_load"].iloc[0]
    assert not load["passed"] and "NaN" in load["detail"]
    gate = json.loads((run / "gates/integration.json").read_text())
    assert gate["success"] is False and gate["failed"]


def test_a_batch_dependent_model_fails_parity(tmp_path: Path, mini_profile) -> None:
    run = onnx_run(tmp_path, "batchy", _BatchDependent(), 10, 1)
    result = run_stage("integration", run, "mini")
    checks = pd.read_csv(run / "stages/integration/checks.csv")
    parity = checks[checks["check"] == "parity_batched_single_cached"].iloc[0]
    assert not parity["passed"] and parity["measured"] > 1e-3
    assert not result["gate"]["success"]
    assert any("passed" in failed for failed in result["gate"]["failed"])
