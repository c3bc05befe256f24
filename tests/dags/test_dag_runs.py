"""The DAG end to end through Airflow (`relcert run` = dag.test on an embedded SQLite DB)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DAG_ID = "model_release_certification"


@pytest.fixture(scope="module")
def airflow_env(
    tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path
) -> dict[str, str]:
    from tests.conftest import copy_airflow_home

    root = tmp_path_factory.mktemp("relcert-run")
    return {
        **os.environ,
        "RELCERT_ARTIFACTS": str(root / "artifacts"),
        "RELCERT_AIRFLOW_HOME": str(copy_airflow_home(migrated_airflow_db, root / "airflow")),
        # no run here is about retry delays: a failed prepare's final_report retries once
        "RELCERT_RETRY_DELAY_S": "1",
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


def _metadata(env: dict[str, str], output: str) -> dict:
    """The DAG run as Airflow recorded it in the embedded metadata DB: its state, its note
    (the grid shows it), its decision task's state, and the asset events it emitted."""
    line = next(line for line in output.splitlines() if line.startswith("==> airflow run "))
    run_id = line[len("==> airflow run ") :].rsplit(": ", 1)[0]
    db = sqlite3.connect(Path(env["RELCERT_AIRFLOW_HOME"]) / "airflow.db")
    try:
        state, note = db.execute(
            "SELECT r.state, n.content FROM dag_run r "
            "LEFT JOIN dag_run_note n ON n.dag_run_id = r.id WHERE r.dag_id = ? AND r.run_id = ?",
            (DAG_ID, run_id),
        ).fetchone()
        [(decision_state,)] = db.execute(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (DAG_ID, run_id, "decision"),
        ).fetchall()
        columns = "a.name, a.uri, e.extra, e.source_dag_id, e.source_task_id, e.source_run_id"
        events = [
            (row[1], json.loads(row[2]), row)
            for row in db.execute(
                f"SELECT {columns}, e.source_map_index, e.timestamp FROM asset_event e "
                "JOIN asset a ON a.id = e.asset_id "
                "WHERE e.source_dag_id = ? AND e.source_run_id = ?",
                (DAG_ID, run_id),
            )
        ]
    finally:
        db.close()
    return {"state": state, "note": note, "decision": decision_state, "events": events}


def _verify_recorded(env: dict[str, str], row: tuple) -> tuple[dict, str]:
    """verify_approvals on an asset_event row as the Task SDK delivers it to the consumer,
    and on the same extra as a REST API post would leave it: (verified record, refusal)."""
    import datetime as dt

    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    from pipeline.airflow.approvals import verify_approvals

    name, uri, extra, dag_id, task_id, run_id, map_index, timestamp = row
    when = dt.datetime.fromisoformat(str(timestamp)).replace(tzinfo=dt.UTC)
    fields = {"asset": {"name": name, "uri": uri, "extra": {}}, "timestamp": when}
    recorded = AssetEventDagRunReferenceResult(
        **fields,
        extra=json.loads(extra),
        source_dag_id=dag_id,
        source_task_id=task_id,
        source_run_id=run_id,
        source_map_index=map_index,
        source_aliases=[{"name": "relcert_approvals"}],
    )
    posted = AssetEventDagRunReferenceResult(
        **fields,
        extra={**json.loads(extra), "from_rest_api": True},
        source_dag_id=None,
        source_task_id=None,
        source_run_id=None,
        source_map_index=None,
        source_aliases=[],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELCERT_ARTIFACTS", env["RELCERT_ARTIFACTS"])
        [verified] = verify_approvals([recorded])
        with pytest.raises(AirflowFailException) as refused:
            verify_approvals([posted])
    return verified, str(refused.value)


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
    # Airflow's view: a successful run whose note says APPROVED, and one approval event
    # carrying the package, its checksum, the model versions and the report
    airflow = _metadata(airflow_env, result.stdout)
    assert airflow["state"] == "success" and airflow["decision"] == "success"
    assert airflow["note"].startswith("APPROVED (readiness 1.00)\n- All ")
    [(uri, extra, row)] = airflow["events"]
    assert uri == f"relcert://{DAG_ID}/quality_predictor+routing_classifier"
    assert Path(extra["package"]) == package and extra["decision"] == "APPROVED"
    assert extra["package_sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert extra["models"] == {m["name"]: m["version"] for m in report["models"]}
    assert Path(extra["report_json"]) == run_dir / "report.json"
    # the event as Airflow recorded it passes the deployment DAG's checks; the same extra
    # posted through the REST API does not
    verified, refusal = _verify_recorded(airflow_env, row)
    assert verified["package"] == str(package) and verified["decision"] == "APPROVED"
    assert "posted through the REST API" in refusal


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
    failed = [
        c["name"]
        for c in report["criteria"]
        if not c["met"] and c["status"] not in ("not_applicable", "not_run")
    ]
    # the failed load gate stops the infra stage: its criteria (the interface SLAs and the
    # availability) are not run, saying so, never passed
    not_run = [c for c in report["criteria"] if c["status"] == "not_run"]
    assert {c["name"] for c in not_run} == {
        "routing_endpoint_p99_ms",
        "quality_endpoint_p99_ms",
        "endpoint_p99_latency_ms[quality_predictor]",
        "endpoint_p99_latency_ms[routing_classifier]",
        "validation_endpoint_s",
        "availability",
    }
    assert all("the infra stage did not run" in c["detail"] for c in not_run)
    # the override reaches the stages that measure against it: the capacity search looks
    # for a rate whose p99 is within 1.2 microseconds, and finds none (for the mix and for
    # each model on its own)
    models = ("quality_predictor", "routing_classifier")
    assert failed == [
        "p99_latency_ms",
        *(f"p99_latency_ms[{m}]" for m in models),
        "sustained_throughput_rps",
        *(f"sustained_throughput_rps[{m}]" for m in models),
    ]
    sustained = next(c for c in report["criteria"] if c["name"] == "sustained_throughput_rps")
    assert "p99 <= 0.0012 ms" in sustained["detail"]
    assert report["gates"]["certify"]["success"] is False
    assert report["gates"]["load"]["success"] is False  # the load gate checks p99 too
    # Airflow's view: the run failed (its decision task failed with the first reasons, so
    # failure callbacks fire), its note gives the decision and why, and nothing was approved
    airflow = _metadata(airflow_env, result.stdout)
    assert airflow["state"] == "failed" and airflow["decision"] == "failed"
    note = airflow["note"].splitlines()
    assert note[0] == f"NOT_APPROVED (readiness {report['readiness_score']:.2f})"
    assert note[1:4] == [f"- {reason}" for reason in report["reasons"][:3]]
    assert note[-1] == f"report: {run_dir / 'report.html'}"
    assert airflow["events"] == []
    assert "==> airflow run " in result.stdout and result.stdout.rstrip().endswith(": failed")


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
