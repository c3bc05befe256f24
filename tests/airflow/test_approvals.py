"""What the example deployment DAG's `verify_package` task checks in the approval events it
was triggered by (`pipeline.airflow.approvals.verify_approvals`).

The events are the Task SDK's own: the one `settle` emits through the decision task's
outlet, delivered as Airflow delivers triggering events to a task
(`TriggeringAssetEventsAccessor` of `AssetEventDagRunReferenceResult`s, with the source DAG,
task and run Airflow recorded), and forged ones as the REST API or another DAG's task would
leave them. The run's report and package are in a real artifacts store. (The real metadata DB
round trip is in tests/dags/test_dag_runs.py and tests/integration.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from airflow.sdk.api.datamodels._generated import (
    AssetAliasReferenceAssetEventDagRun,
    AssetReferenceAssetEventDagRun,
)
from airflow.sdk.exceptions import AirflowFailException
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

from pipeline.airflow.approvals import verify_approvals
from pipeline.airflow.outcomes import APPROVALS_ALIAS, approval_asset, approval_uri, settle
from pipeline.names import APPROVED, CONDITIONAL_APPROVAL, DAG_ID
from tests.airflow.test_outcomes import MODELS, _context, _events, _package, _report

pytestmark = pytest.mark.airflow

RUN_ID = "manual__1"
APPROVALS = approval_asset(DAG_ID, MODELS)


@dataclass
class Approval:
    run_dir: Path
    package: dict
    extra: dict


@pytest.fixture
def approval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Approval:
    """An APPROVED run in the store with its package, and the event its decision emitted."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(root))
    run_dir = root / DAG_ID / RUN_ID
    run_dir.mkdir(parents=True)
    run = {
        "dag_id": DAG_ID,
        "run_id": RUN_ID,
        "run_dir": str(run_dir),
        "snapshot_date": "2026-01-15",
        "models": MODELS,
        "build_package": True,
    }
    _report(run, APPROVED, ["All 12 criteria are met"])
    package = _package(run)
    _record(run_dir, package=f"package/{Path(package['package']).name}")  # as set_package does
    context = _context()
    settle(context, run, package)
    [event] = _events(context)
    return Approval(run_dir, package, dict(event.extra))


def _record(run_dir: Path, **fields: object) -> None:
    path = run_dir / "report.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def delivered(
    extra: dict,
    *,
    dag_id: str | None = DAG_ID,
    task_id: str | None = "decision",
    run_id: str | None = RUN_ID,
) -> list[AssetEventDagRunReferenceResult]:
    """The events as the consumer's task gets them: triggering_asset_events[APPROVALS]."""
    uri = approval_uri(DAG_ID, MODELS)
    event = AssetEventDagRunReferenceResult(
        asset=AssetReferenceAssetEventDagRun(name=uri, uri=uri, extra={}),
        extra=extra,
        source_task_id=task_id,
        source_dag_id=dag_id,
        source_run_id=run_id,
        source_map_index=-1 if task_id else None,
        source_aliases=[AssetAliasReferenceAssetEventDagRun(name=APPROVALS_ALIAS)]
        if task_id
        else [],
        timestamp=dt.datetime(2026, 1, 15, 3, tzinfo=dt.UTC),
    )
    return list(TriggeringAssetEventsAccessor.build([event])[APPROVALS])


def refused(events: list, match: str, **kwargs: object) -> str:
    """verify_approvals fails the task cleanly: AirflowFailException (no retry), naming why."""
    with pytest.raises(AirflowFailException, match=match) as caught:
        verify_approvals(events, **kwargs)
    assert type(caught.value) is AirflowFailException
    return str(caught.value)


def test_an_approval_of_the_decision_task_is_verified_against_the_store(
    approval: Approval,
) -> None:
    [verified] = verify_approvals(delivered(approval.extra))
    assert verified["verified"] and verified["decision"] == APPROVED
    assert verified["package"] == approval.package["package"]
    assert verified["sha256"] == approval.package["sha256"]
    assert verified["models"] == dict.fromkeys(MODELS, "1.0.20260115")
    assert verified["run_id"] == RUN_ID
    assert verified["report_html"] == str(approval.run_dir / "report.html")


def test_a_tampered_package_is_refused_naming_both_checksums(approval: Approval) -> None:
    Path(approval.package["package"]).write_bytes(b"tampered")
    message = refused(delivered(approval.extra), "sha256")
    assert hashlib.sha256(b"tampered").hexdigest() in message
    assert approval.package["sha256"] in message


def test_events_not_emitted_by_the_decision_task_are_refused(approval: Approval) -> None:
    """Whoever may post Asset events, or write a DAG, can emit an event of the Asset with any
    extra; only where Airflow says it came from counts."""
    rest = {**approval.extra, "from_rest_api": True}
    refused(delivered(rest, dag_id=None, task_id=None, run_id=None), "posted through the REST API")
    refused(delivered(approval.extra, dag_id="someone_elses_dag"), "other than .*decision")
    refused(delivered(approval.extra, task_id="deployment_package"), "other than .*decision")
    # the decision task of another run does not vouch for this one
    refused(delivered(approval.extra, run_id="manual__2"), "names run .*manual__1.*manual__2")


def test_the_decision_is_read_from_the_runs_report_not_the_event(approval: Approval) -> None:
    _record(approval.run_dir, decision=CONDITIONAL_APPROVAL)
    events = delivered(approval.extra)  # the extra still says APPROVED
    refused(events, "report.json says 'CONDITIONAL_APPROVAL'; accepted: \\['APPROVED'\\]")
    # a consumer that deploys conditional approvals says so
    [verified] = verify_approvals(events, accept=(APPROVED, CONDITIONAL_APPROVAL))
    assert verified["decision"] == CONDITIONAL_APPROVAL
    (approval.run_dir / "report.json").unlink()
    refused(events, "the run has no report.json in the artifacts store")


def test_a_package_other_than_the_reports_is_refused(approval: Approval, tmp_path: Path) -> None:
    """With its checksum right, a file outside the store, or another file of the run, is
    still not the certified package."""
    outside = tmp_path / "elsewhere.zip"
    outside.write_bytes(b"PK not certified")
    forged = {
        **approval.extra,
        "package": str(outside),
        "package_sha256": hashlib.sha256(outside.read_bytes()).hexdigest(),
    }
    refused(delivered(forged), "outside the artifacts store")
    report = approval.run_dir / "report.json"
    other = {
        **approval.extra,
        "package": str(report),
        "package_sha256": hashlib.sha256(report.read_bytes()).hexdigest(),
    }
    refused(delivered(other), "is not the one report.json records")
    _record(approval.run_dir, package="../manual__0/package/old.zip")
    refused(delivered(approval.extra), "outside the run")


def test_one_bad_event_fails_the_task_and_nothing_is_verified(approval: Approval) -> None:
    good = delivered(approval.extra)
    forged = delivered({**approval.extra, "from_rest_api": True}, dag_id=None, task_id=None)
    message = refused(good + forged, r"^1 of 2 approval event\(s\) refused")
    assert "REST API" in message
    # a run that certified another model set than the Asset's does not approve this one
    _record(approval.run_dir, models=[{"name": "routing_classifier", "version": "1.0"}])
    refused(good, r"certifies \['routing_classifier'\], not relcert://")
