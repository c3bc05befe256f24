"""The DAG end to end through Airflow (`relcert run` = dag.test on an embedded SQLite DB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAG_ID = "model_release_certification"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("relcert-run")
    return {
        **os.environ,
        "RELCERT_ARTIFACTS": str(root / "artifacts"),
        "RELCERT_AIRFLOW_HOME": str(root / "airflow"),
    }


def relcert_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--date", "2026-01-15", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _report(output: str) -> tuple[dict, Path]:
    line = next(line for line in output.splitlines() if line.startswith("==> report: "))
    run_dir = Path(line.split(": ", 1)[1]).parent
    return json.loads((run_dir / "report.json").read_text()), run_dir


def test_an_approved_run_writes_report_and_package(airflow_env: dict[str, str]) -> None:
    result = relcert_run(airflow_env, "--conf", '{"reason": "nightly ci"}')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> decision: APPROVED" in result.stdout
    # progress per task was shown
    for task in ("prepare", "build_model[0]", "gate_load", "final_report"):
        assert task in result.stdout
    report, run_dir = _report(result.stdout)
    assert report["decision"] == "APPROVED"
    assert (run_dir / "data_docs/index.html").exists() and (run_dir / "report.html").exists()
    assert all(g["success"] for g in report["gates"].values())
    assert report["conf"]["reason"] == "nightly ci"
    package = run_dir / report["package"]
    assert package.exists() and package.suffix == ".zip"
    assert {m["name"] for m in report["models"]} == {"quality_predictor", "routing_classifier"}


def test_an_impossible_target_gives_not_approved_and_no_package(
    airflow_env: dict[str, str],
) -> None:
    from tests.quick_profile import QUICK_PROFILES

    # the quick profile that still gives every criterion enough samples (the test above
    # runs the quickstart's real smoke profile)
    profiles = Path(airflow_env["RELCERT_ARTIFACTS"]).parent / "quick-profiles.yaml"
    profiles.write_text(QUICK_PROFILES)
    conf = json.dumps({"target_overrides": {"p99_latency_ms": 0.001}, "reason": "strict"})
    result = relcert_run({**airflow_env, "RELCERT_PROFILES_FILE": str(profiles)}, "--conf", conf)
    assert result.returncode == 20, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> decision: NOT_APPROVED" in result.stdout
    report, run_dir = _report(result.stdout)
    assert report["package"] is None and not (run_dir / "package").exists()
    failed = [c["name"] for c in report["criteria"] if not c["met"]]
    # the override reaches the stages that measure against it: the capacity search looks
    # for a rate whose p99 is within 1.2 microseconds, and finds none
    assert failed == ["p99_latency_ms", "sustained_throughput_rps"]
    sustained = next(c for c in report["criteria"] if c["name"] == "sustained_throughput_rps")
    assert "p99 <= 0.0012 ms" in sustained["detail"]
    assert report["gates"]["certify"]["success"] is False
    assert report["gates"]["load"]["success"] is False  # the load gate checks p99 too


def test_invalid_conf_is_refused_with_a_message(airflow_env: dict[str, str]) -> None:
    result = relcert_run(airflow_env, "--conf", '{"profile": "weekly"}')
    assert result.returncode == 1
    assert "profile" in (result.stdout + result.stderr)


def test_a_models_file_outside_the_models_folders_fails_prepare(
    airflow_env: dict[str, str],
) -> None:
    """Whoever triggers a run cannot make a worker read any file: prepare fails, naming the
    file and the setting, and nothing of the file shows."""
    result = relcert_run(airflow_env, "--conf", '{"models_file": "../../../../etc/passwd"}')
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "invalid conf: conf.models_file: '../../../../etc/passwd' resolves to" in output
    assert "outside the models folders (RELCERT_MODELS_DIRS=" in output
    assert "root:x:" not in output
