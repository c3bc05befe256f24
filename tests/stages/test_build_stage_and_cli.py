"""The build stage's record and gate, and `relcert stage` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.stages import run_stage
from pipeline.stages.build import record_build

pytestmark = pytest.mark.stage


def test_build_record_verifies_every_file_and_the_gate_passes(run_dir: Path) -> None:
    record_build(run_dir)
    from pipeline.gates import run_gate

    table = pd.read_csv(run_dir / "stages/build/models.csv")
    assert len(table) == 4 and table["sha256_verified"].all() and table["outputs_finite"].all()
    assert (table["parity_max_abs_diff"] < 1e-5).all()
    assert run_gate("build", run_dir).success


def test_a_tampered_model_file_fails_the_build_gate(run_dir: Path) -> None:
    onnx_file = run_dir / "models/routing_classifier.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-8] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    record_build(run_dir)
    from pipeline.gates import run_gate

    table = pd.read_csv(run_dir / "stages/build/models.csv").set_index(["model", "format"])
    row = table.loc[("routing_classifier", "onnx")]
    assert not row["sha256_verified"] and "sha256 mismatch" in row["detail"]
    # the manager's refusal is reported as what it is, not as non-finite outputs
    assert not row["loaded"] and "sha256 mismatch" in row["load_refusal"]
    assert row["outputs_finite"]
    result = run_gate("build", run_dir)
    assert not result.success and any("sha256" in f for f in result.failed)
    assert any("loaded" in f for f in result.failed)
    assert not any("outputs_finite" in f for f in result.failed)


def test_a_token_model_with_a_dynamic_sequence_loads_in_the_build_table(tmp_path: Path) -> None:
    """One int64 input [batch, seq] in the single-tensor form (input_shape [null, null]):
    imported, then loaded by the engine's manager (it used to refuse it for its dynamic
    sequence, and the table said outputs_finite False)."""
    import yaml

    from pipeline.gates import run_gate
    from tests.text_models import write_bag_models

    user = write_bag_models(tmp_path / "user")
    models_file = user / "models.yaml"
    entry = {"name": "tokens", "path": "bag.onnx", "input_shape": [None, None]}
    models_file.write_text(yaml.safe_dump({"models": [entry]}))
    run = tmp_path / "run"
    result = run_stage("build", run, snapshot_date="2026-03-01", models_file=models_file)
    table = pd.read_csv(run / "stages/build/models.csv")
    assert table["loaded"].all(), table["load_refusal"].tolist()
    assert table["outputs_finite"].all() and table["load_refusal"].isna().all()
    assert result["gate"]["success"] and run_gate("build", run).success


def test_build_stage_builds_the_snapshot_of_its_date(tmp_path: Path) -> None:
    result = run_stage("build", tmp_path / "run", snapshot_date="2026-03-01")
    assert result["gate"]["success"]
    info = json.loads((tmp_path / "run/models/model_info.json").read_text())
    assert {e["version"] for e in info.values()} == {"1.0.20260301"}


def _relcert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_relcert_stage_exit_codes(run_dir: Path, tmp_path: Path) -> None:
    ok = _relcert("stage", "integration", "--run-dir", str(run_dir))
    assert ok.returncode == 0, ok.stderr
    assert "gate integration passed" in ok.stdout
    # certify without load/stress results: the certification gate fails -> exit 3
    failed = _relcert("stage", "certify", "--run-dir", str(run_dir))
    assert failed.returncode == 3 and "gate certify FAILED" in failed.stdout


def test_a_malformed_targets_file_is_refused_before_any_stage_runs(
    run_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "targets.yaml"
    bad.write_text(
        "\n".join(
            [
                "version: 1",
                "targets:",
                "  - {name: p99_latency_ms, category: latency, target: 300, tolerance: -0.2,"
                " direction: max, unit: ms}",
            ]
        )
    )
    result = _relcert("stage", "integration", "--run-dir", str(run_dir), "--targets", str(bad))
    assert result.returncode == 1
    assert "tolerance" in result.stderr and "p99_latency_ms" in result.stderr
    assert not (run_dir / "stages/integration").exists()  # nothing ran
