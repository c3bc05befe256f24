"""The decision task's verdicts (`settle`), the run's note and the approval Asset, on a run
folder with a report.json (no Airflow run: the real runs are in tests/dags and
tests/integration)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from airflow.sdk import AssetAlias
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.context import OutletEventAccessors

from pipeline.airflow.outcomes import (
    APPROVALS_ALIAS,
    EVENT_KEYS,
    NOTE_KEY,
    NOTE_MAX_CHARS,
    approval_uri,
    model_names,
    run_note,
    settle,
)
from pipeline.names import APPROVED, CONDITIONAL_APPROVAL, DAG_ID, NOT_APPROVED

pytestmark = pytest.mark.airflow

PROJECT = Path(__file__).resolve().parents[2]
MODELS = ["routing_classifier", "quality_predictor"]


class _TI:
    def __init__(self) -> None:
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    root = tmp_path / "artifacts"
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(root))
    run_dir = root / DAG_ID / "manual__1"
    run_dir.mkdir(parents=True)
    return {
        "dag_id": DAG_ID,
        "run_id": "manual__1",
        "run_dir": str(run_dir),
        "snapshot_date": "2026-01-15",
        "models": MODELS,
        "build_package": True,
    }


def _report(run: dict, decision: str, reasons: list[str]) -> None:
    data = {
        "decision": decision,
        "readiness_score": 1.0 if decision == APPROVED else 0.6,
        "reasons": reasons,
        "models": [{"name": n, "version": "1.0.20260115"} for n in MODELS],
    }
    (Path(run["run_dir"]) / "report.json").write_text(json.dumps(data))


def _package(run: dict) -> dict:
    path = Path(run["run_dir"]) / "package" / "relcert-service-1.0.zip"
    path.parent.mkdir()
    path.write_bytes(b"a package")
    digest = hashlib.sha256(b"a package").hexdigest()
    return {"package": str(path), "version": "1.0", "sha256": digest}


def _context() -> dict:
    return {"ti": _TI(), "outlet_events": OutletEventAccessors()}


def _events(context: dict) -> list:
    return context["outlet_events"][AssetAlias(APPROVALS_ALIAS)].asset_alias_events


def test_not_approved_fails_the_task_with_its_first_reasons_and_notes_them(run: dict) -> None:
    reasons = ["Readiness score 0.60 is below 0.8", "p99_latency_ms unmet", "load gate failed"]
    _report(run, NOT_APPROVED, [*reasons, "a fourth", "a fifth"])
    context = _context()
    with pytest.raises(AirflowFailException, match=r"NOT_APPROVED \(readiness 0.60\): Readiness"):
        settle(context, run, None)
    note = context["ti"].xcoms[NOTE_KEY]
    assert note.startswith("NOT_APPROVED (readiness 0.60)\n- Readiness score 0.60")
    assert "- load gate failed" in note and "a fourth" not in note
    assert "2 more in the report" in note and "report.html" in note
    assert _events(context) == []


def test_approved_with_a_package_emits_the_approval_event(run: dict) -> None:
    _report(run, APPROVED, ["All 12 criteria are met"])
    package = _package(run)
    context = _context()
    outcome = settle(context, run, package)
    assert outcome["decision"] == APPROVED
    [event] = _events(context)
    assert event.dest_asset_key.uri == approval_uri(DAG_ID, MODELS)
    assert event.dest_asset_key.uri == f"relcert://{DAG_ID}/quality_predictor+routing_classifier"
    assert set(event.extra) == set(EVENT_KEYS)
    assert event.extra["package"] == package["package"]
    assert event.extra["package_sha256"] == package["sha256"]
    assert event.extra["models"] == dict.fromkeys(MODELS, "1.0.20260115")
    assert event.extra["report_json"].endswith("report.json")
    assert context["ti"].xcoms[NOTE_KEY].startswith("APPROVED (readiness 1.00)\n")
    # what a deployment DAG does with it: tests/airflow/test_approvals.py


def test_conditional_approval_succeeds_without_an_event_and_says_so(run: dict) -> None:
    _report(run, CONDITIONAL_APPROVAL, ["Readiness score 0.85", "infra gate failed"])
    context = _context()
    assert settle(context, run, _package(run))["decision"] == CONDITIONAL_APPROVAL
    assert context["ti"].xcoms[NOTE_KEY].startswith("CONDITIONAL_APPROVAL (readiness 0.60)")
    assert _events(context) == []


def test_an_approval_without_its_package_or_a_run_without_report_fails(run: dict) -> None:
    context = _context()
    with pytest.raises(AirflowFailException, match="final report was not written"):
        settle(context, run, None)
    assert context["ti"].xcoms[NOTE_KEY].startswith("NO DECISION")
    _report(run, APPROVED, ["All met"])
    with pytest.raises(AirflowFailException, match="APPROVED, but the deployment package"):
        settle(_context(), run, None)
    # with build_package off an approval has no package, and no event either
    context = _context()
    assert settle(context, {**run, "build_package": False}, None)["decision"] == APPROVED
    assert _events(context) == []


def test_the_note_fits_the_metadata_db_column() -> None:
    outcome = {"decision": NOT_APPROVED, "readiness_score": 0.1, "reasons": ["x" * 900] * 3}
    assert len(run_note(outcome)) == NOTE_MAX_CHARS


def test_model_names_are_read_from_the_models_file(tmp_path: Path) -> None:
    assert model_names(PROJECT / "include/models.yaml") == tuple(sorted(MODELS))
    bad = tmp_path / "models.yaml"
    bad.write_text("models: 3\n")
    with pytest.raises(ValueError, match=r"models\.yaml"):
        model_names(bad)
