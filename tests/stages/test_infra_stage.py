"""Infra stage: the real service over HTTP on loopback, always stopped afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipeline.stages import run_stage
from pipeline.stages.certify import measure_targets

pytestmark = pytest.mark.stage


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
    # the interface SLAs, over HTTP: each endpoint's p99 under the load, against its target
    for check, model, endpoint in (
        ("routing_endpoint_p99_ms", "routing_classifier", "/api/v1/predict/routing"),
        ("quality_endpoint_p99_ms", "quality_predictor", "/api/v1/predict/quality"),
        ("endpoint_p99_latency_ms", "routing_classifier", "/v2/models/routing_classifier/infer"),
    ):
        row = by_check.loc[(check, model)]
        assert row["status"] == "measured" and row["passed"] and endpoint in row["detail"]
        assert 0 < row["measured"] <= row["limit"] and row["samples"] > 0
    load = pd.read_csv(run_dir / "stages/infra/load.csv")
    assert set(load["endpoint"]) == {
        "all",
        "/api/v1/predict/routing",
        "/api/v1/predict/quality",
        "/v2/models/routing_classifier/infer",
        "/v2/models/quality_predictor/infer",
    }
    # the validation endpoint, enabled for this instance only: refused without its token
    assert by_check.loc[("validate_requires_token", "all"), "measured"] == 401
    validation = by_check.loc[("validation_endpoint_s", "all")]
    assert validation["passed"] and 0 < validation["measured"] <= 60
    assert summary["validation"]["completed"] and summary["validation"]["requests"] > 0
    # availability: probes of both health endpoints alongside the load, all answered
    availability = by_check.loc[("availability", "all")]
    assert availability["measured"] == 1.0 and availability["passed"]
    probes = {p["path"]: p for p in summary["availability"]["paths"]}
    assert probes["/health/live"]["sent"] == probes["/health/live"]["ok"] > 5
    assert probes["/health/ready"]["ok"] > 5 and summary["availability"]["restarts"] == 0
    assert len(summary["availability"]["uptime_gauge_s"]) == 2  # the gauge read both ends
    # the mini profile is too short for the claims: invalid, saying what they needed
    criteria = {c.name: c for c in measure_targets(run_dir, profile="mini")}
    few = criteria["availability"]
    assert few.status == "invalid" and not few.met
    assert few.samples == summary["availability"]["probes"] < 100
    assert "needs >= 100 samples" in few.detail
    routing = criteria["routing_endpoint_p99_ms"]
    assert routing.status == "invalid" and "needs >= 1000 samples" in routing.detail


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
    # HTTP load over every endpoint: a row per model's /v2 endpoint, one per named endpoint
    # of an example model, and one for the mix
    load = pd.read_csv(run / "stages/infra/load.csv")
    v2 = load[load["endpoint"].str.startswith("/v2/")]
    assert sorted(v2["model"]) == names
    assert sorted(load[load["endpoint"].str.startswith("/api/")]["model"]) == [
        "quality_predictor",
        "routing_classifier",
    ]
    assert (load["model"] == "mixed").sum() == 1
    # imports are certified on their /v2 endpoint; no named-endpoint SLA applies to them
    for name in (IMAGE, PRECISE):
        row = by_check.loc[("endpoint_p99_latency_ms", name)]
        assert row["status"] == "measured" and f"/v2/models/{name}/infer" in row["detail"]
        assert ("routing_endpoint_p99_ms", name) not in by_check.index
    mix = load.set_index("model").loc["mixed"]
    assert mix["requests"] == load[load["model"] != "mixed"]["requests"].sum()
    assert (load["error_rate"] == 0).all()
    summary = json.loads((run / "stages/infra/summary.json").read_text())
    assert summary["models"][PRECISE] == "torchscript" and summary["models"][IMAGE] == "onnx"
    assert not _alive(summary["server_pid"])


def test_the_validation_token_reaches_the_service_on_stdin_not_in_its_environment(
    built_models: Path, tmp_path: Path, monkeypatch
) -> None:
    import secrets
    import time

    import httpx

    from pipeline.stages.infra import ServerProcess

    monkeypatch.setenv("VALIDATE_TOKEN", "inherited-token-must-not-pass-0123")
    token = secrets.token_urlsafe(32)
    server = ServerProcess(built_models, validate_token=token).start(tmp_path / "server.log")
    try:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            body = {"requests": 20, "duration_s": 1.0, "concurrency": 2}
            refused = client.post("/api/v1/validate/performance", json=body)
            inherited = client.post(
                "/api/v1/validate/performance",
                json=body,
                headers={"authorization": "Bearer inherited-token-must-not-pass-0123"},
            )
            ran = client.post(
                "/api/v1/validate/performance",
                json=body,
                headers={"authorization": f"Bearer {token}"},
            )
    finally:
        server.stop()
    # held in memory only: neither the environment nor the command line of the service has it
    assert token.encode() not in environ and b"VALIDATE_TOKEN" not in environ
    assert token.encode() not in cmdline
    assert (refused.status_code, inherited.status_code) == (401, 401)
    assert ran.status_code == 200, ran.text
    assert ran.json()["requests"] > 0
    assert token not in (tmp_path / "server.log").read_text()
