"""Infra stage: the real service over HTTP on loopback, always stopped afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import psutil

from pipeline.stages import run_stage


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_service_passes_golden_error_and_load_checks(run_dir: Path, mini_profile) -> None:
    result = run_stage("infra", run_dir, "mini")
    checks = pd.read_csv(run_dir / "stages/infra/checks.csv")
    assert result["gate"]["success"], checks[~checks["passed"]].to_dict("records")
    by_check = checks.set_index(["check", "model"])
    assert by_check.loc[("golden_requests", "routing_classifier"), "measured"] <= 1e-5
    assert by_check.loc[("invalid_body_422", "quality_predictor"), "measured"] == 422
    assert by_check.loc[("oversized_body_413", "all"), "measured"] == 413
    summary = json.loads((run_dir / "stages/infra/summary.json").read_text())
    assert 20 < summary["peak_rss_mb"] < 2000
    assert not _alive(summary["server_pid"])  # the service process was stopped


def test_a_service_that_cannot_load_fails_the_gate_and_is_still_stopped(
    run_dir: Path, mini_profile
) -> None:
    info_path = run_dir / "models/model_info.json"
    info = json.loads(info_path.read_text())
    info["routing_classifier"]["files"]["onnx"]["sha256"] = "0" * 64  # checksum mismatch
    info_path.write_text(json.dumps(info))
    result = run_stage("infra", run_dir, "mini")
    assert not result["gate"]["success"]
    checks = pd.read_csv(run_dir / "stages/infra/checks.csv").set_index("check")
    assert not checks.loc["readiness", "passed"]
    assert "sha256" in checks.loc["readiness", "detail"]
    assert checks.loc["clean_shutdown", "passed"]
    summary = json.loads((run_dir / "stages/infra/summary.json").read_text())
    assert not _alive(summary["server_pid"])
