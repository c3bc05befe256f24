"""Infra stage: the real service over HTTP on loopback, always stopped afterwards."""

from __future__ import annotations

import json
import shutil
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


def test_every_model_is_validated_through_the_open_inference_protocol(
    mixed_models: Path, tmp_path: Path, mini_profile
) -> None:
    """Imported models (an ONNX image model with a fixed batch of 1, a TorchScript-only
    float64 model) are served and checked like the example models; the checks that cannot
    apply to them are marked not applicable, never passed or failed."""
    from tests.imported_models import IMAGE, PRECISE

    run = tmp_path / "run"
    shutil.copytree(mixed_models, run / "models")
    result = run_stage("infra", run, "mini")
    checks = pd.read_csv(run / "stages/infra/checks.csv", keep_default_na=False)
    failed = checks[(~checks["passed"]) & (checks["status"] != "not_applicable")]
    assert result["gate"]["success"], failed.to_dict("records")
    by_check = checks.set_index(["check", "model"])
    names = sorted(json.loads((run / "models/model_info.json").read_text()))
    for name in names:
        for check in ("model_metadata", "model_ready", "golden_requests", "invalid_request_400"):
            row = by_check.loc[(check, name)]
            assert row["status"] == "measured" and row["passed"], (check, name, row["detail"])
        assert by_check.loc[("golden_requests", name), "samples"] == 8
    assert by_check.loc[("golden_requests", PRECISE), "format"] == "torchscript"
    assert "FP64" in by_check.loc[("golden_requests", PRECISE), "detail"]
    assert "[1, 3, 8, 8]" in by_check.loc[("model_metadata", IMAGE), "detail"]
    # a fixed batch of 1 cannot take a batch; imports have no named endpoint
    image_batch = by_check.loc[("golden_batch", IMAGE)]
    assert image_batch["status"] == "not_applicable" and "fixed batch of 1" in image_batch["detail"]
    assert by_check.loc[("golden_batch", PRECISE), "passed"]
    for name in (IMAGE, PRECISE):
        for check in ("golden_requests_named", "invalid_body_422"):
            row = by_check.loc[(check, name)]
            assert row["status"] == "not_applicable" and "no named endpoint" in row["detail"]
    assert by_check.loc[("golden_requests_named", "quality_predictor"), "passed"]
    assert float(by_check.loc[("unknown_model_404", "all"), "measured"]) == 404
    # HTTP load over every model: a row per model and one for the mix
    load = pd.read_csv(run / "stages/infra/load.csv")
    assert sorted(load["model"]) == sorted([*names, "mixed"])
    mix = load.set_index("model").loc["mixed"]
    assert mix["requests"] == load[load["model"] != "mixed"]["requests"].sum()
    assert (load["error_rate"] == 0).all()
    summary = json.loads((run / "stages/infra/summary.json").read_text())
    assert summary["models"][PRECISE] == "torchscript" and summary["models"][IMAGE] == "onnx"
    assert not _alive(summary["server_pid"])
