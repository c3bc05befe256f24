"""Load stage and its gate: real engine process, real traffic on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.stages import run_stage
from pipeline.stages.load import REQUEST_COLUMNS
from tests.stages.conftest import onnx_run

pytestmark = pytest.mark.stage


def test_load_stage_measures_the_engine_process_and_passes_its_gate(
    run_dir: Path, mini_profile
) -> None:
    result = run_stage("load", run_dir, "mini")
    folder = run_dir / "stages/load"
    summary = json.loads((folder / "summary.json").read_text())
    scenarios = pd.read_csv(folder / "scenarios.csv")
    requests = pd.read_csv(folder / "requests.csv")
    assert result["gate"]["success"], result["gate"]["failed"]
    assert list(requests.columns) == [*REQUEST_COLUMNS, "attempt_id"]
    assert set(requests["model"]) == {"quality_predictor", "routing_classifier"}
    assert scenarios["valid"].all() and (scenarios["error_rate"] == 0).all()
    assert (requests["latency_ms"] > 0).all() and requests["success"].all()
    for table in ("windows.csv", "capacity.csv", "concurrency.csv", "resources.csv"):
        assert len(pd.read_csv(folder / table)) > 0, table
    # memory is the engine process's, not ours
    assert summary["engine_stats"]["batches"] > 0
    assert 20 < summary["memory"]["peak_rss_mb"] < 2000
    assert summary["calibration"]["samples"] > 0
    assert summary["capacity"]["max_sustained_rps"] >= 50
    assert summary["peak"]["throughput_rps"] > 0
    # every level of the sweep (1, 4) passed, so it went on until one failed (or its bound)
    concurrency = summary["concurrency"]
    assert concurrency["supported_users"] >= 4
    assert concurrency["levels_tested"][:2] == [1, 4] and len(concurrency["levels_tested"]) > 2
    assert concurrency["ceiling_found"] == (concurrency["extra_levels"] < 6)
    cache = summary["cache"]
    assert 0 < cache["hit_rate"] <= cache["best_possible_hit_rate"] + 1e-9
    assert summary["host"]["hostname"]


class _Slow(torch.nn.Module):
    """Heavy compute in forward (an exported graph cannot sleep): ~0.1 s per call."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(1024, 1024) / 1024)
        self.head = torch.nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * x.mean()
        for _ in range(8):  # well past the 33 ms mean bound on any machine this runs on
            w = w @ self.weight
        return self.head(x) + w.mean()


def test_a_slowed_model_fails_the_latency_gate(tmp_path: Path, mini_profile) -> None:
    run = onnx_run(tmp_path, "slow_model", _Slow(), 10, 1)
    result = run_stage("load", run, "mini")
    assert not result["gate"]["success"]
    failed = " ".join(result["gate"]["failed"])
    assert "33" in failed or "mean" in failed.lower()  # the average latency bound (30 ms +10%)
    scenarios = pd.read_csv(run / "stages/load/scenarios.csv")
    assert (scenarios["mean_ms"] > 33).all()
    assert os.path.exists(run / "gates/load.json")


def test_the_stage_measures_against_the_runs_own_targets(run_dir: Path, mini_profile) -> None:
    from pipeline.targets import load_targets

    tight = load_targets().with_overrides({"p95_latency_ms": 0.001, "p99_latency_ms": 0.001})
    (run_dir / "targets.yaml").write_text(tight.to_yaml())  # the run's effective targets
    run_stage("load", run_dir, "mini")
    summary = json.loads((run_dir / "stages/load/summary.json").read_text())
    assert summary["targets"] == {"p95_bound_ms": 0.00115, "p99_bound_ms": 0.0012}
    assert summary["concurrency"]["supported_users"] == 0  # no level has p95 <= 1.15 us
    assert "0.00115 ms" in summary["concurrency"]["criterion"]
    assert summary["capacity"]["max_sustained_rps"] == 0.0


def test_a_broken_run_targets_file_is_an_error_not_a_default(run_dir: Path, mini_profile) -> None:
    from pipeline.targets import TargetsError

    (run_dir / "targets.yaml").write_text("version: 1\ntargets: [")
    with pytest.raises(TargetsError, match=r"targets\.yaml: malformed YAML"):
        run_stage("load", run_dir, "mini")
