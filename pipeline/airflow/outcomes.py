"""The decision as Airflow users see it: the run's state, its note and the approval Asset.

A certification run's last task, `decision` (`settle`), runs after the report and the
package (whatever happened to them) and turns the report's decision into what Airflow's
users and tools rely on:

- **NOT_APPROVED**: the task fails (`AirflowFailException`, no retry) with the decision's
  first reasons, so the DAG run ends *failed* and `on_failure_callback` / notifiers fire.
  A run that broke before deciding (no report), or an approval whose package was not
  written, fails the same way.
- **CONDITIONAL_APPROVAL**: the task succeeds (the run is green: something blocks full
  approval, but the package is written for a human to decide); the run's note starts with
  ``CONDITIONAL_APPROVAL`` and the reasons. No approval event: nothing deploys it by itself.
- **APPROVED** with its package: the task succeeds and emits an event of the approval
  Asset (`approval_asset`: ``relcert://<dag_id>/<model>+<model>...``, one per DAG and model
  set) through the task's AssetAlias outlet (`APPROVALS_ALIAS`), with the package location,
  its sha256, the model versions and the report's location in the event's extra
  (`EVENT_KEYS`). A deployment DAG is scheduled on that Asset
  (dags/relcert_deploy_on_approval.py) and checks each event with
  `pipeline.airflow.approvals.verify_approvals` (its source, and the decision and package
  from the store, never the extra's word alone).

The DAG run's **note** carries the decision and its first reasons (shown in the grid).
A task cannot set it in Airflow 3.3: the Task Execution API exposes the run's note read-only
(and a note only for runs a task *triggers*), and tasks have no metadata DB access. So the
task leaves the note as an XCom (`NOTE_KEY`) and `RunNoteListener`, a listener of the relcert
plugin (plugins/relcert_plugin.py), sets ``DagRun.note`` from it when the run finishes:
listeners of DAG runs run where the run's state is decided (the scheduler, or the process
of ``dag.test()``), with the run in the session that commits its state. A note a user wrote
(e.g. in the trigger form) is kept after ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from airflow.listeners import hookimpl
from airflow.sdk import Asset, AssetAlias

from pipeline.names import ALLOWS_PACKAGE, APPROVED, DECISIONS, NOT_APPROVED

__all__ = [
    "APPROVALS_ALIAS",
    "DECISION_TASK_ID",
    "EVENT_KEYS",
    "NOTE_KEY",
    "RunNoteListener",
    "approval_asset",
    "approval_uri",
    "model_names",
    "run_note",
    "settle",
]

DECISION_TASK_ID = "decision"
#: XCom key of the note the decision task leaves for RunNoteListener
NOTE_KEY = "relcert_note"
#: the AssetAlias the decision task emits approval events through
APPROVALS_ALIAS = "relcert_approvals"
#: what an approval event's extra holds
EVENT_KEYS = (
    "dag_id",
    "run_id",
    "snapshot_date",
    "decision",
    "readiness_score",
    "models",
    "package",
    "package_sha256",
    "package_version",
    "report_json",
    "report_html",
)
#: reasons in the note and in the failure message (the rest are in the report)
NOTE_REASONS = 3
#: dag_run_note.content is a String(1000)
NOTE_MAX_CHARS = 1000
_NO_DECISION = "NO DECISION"


def approval_uri(dag_id: str, models: Iterable[str]) -> str:
    """``relcert://<dag_id>/<sorted model names joined by +>``: one Asset per DAG and model
    set, so a deployment DAG subscribes to the models it deploys."""
    names = sorted({str(m) for m in models})
    if not names:
        raise ValueError("approval_uri: a model set needs at least one model name")
    return f"relcert://{dag_id}/{'+'.join(names)}"


def approval_asset(dag_id: str, models: Iterable[str]) -> Asset:
    """The Asset whose events are this DAG's approvals of this model set."""
    return Asset(approval_uri(dag_id, models))


def model_names(models_file: str | os.PathLike[str]) -> tuple[str, ...]:
    """The model names of a models file (its ``models[].name``), read without importing the
    build (a DAG file calls this when it is parsed); ValueError names the file."""
    import yaml

    path = Path(models_file)
    try:
        entries = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("models")
        names = tuple(str(entry["name"]) for entry in entries)
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the model names ({exc})") from None
    if not names:
        raise ValueError(f"{path}: lists no models")
    return names


def _decision_line(outcome: Mapping[str, Any]) -> str:
    score = outcome.get("readiness_score")
    readiness = f" (readiness {score:.2f})" if isinstance(score, int | float) else ""
    return f"{outcome['decision']}{readiness}"


def run_note(outcome: Mapping[str, Any] | None, problem: str | None = None) -> str:
    """The DAG run's note: the decision, its first reasons, the report; at most 1000
    characters. `outcome` None: the run ended without a decision (`problem` says why)."""
    if outcome is None:
        lines = [_NO_DECISION, f"- {problem or 'the run has no report'}"]
    else:
        lines = [_decision_line(outcome)]
        if problem:
            lines.append(f"- {problem}")
        reasons = list(outcome.get("reasons") or [])
        lines += [f"- {reason}" for reason in reasons[:NOTE_REASONS]]
        more = len(reasons) - NOTE_REASONS + int(outcome.get("more_reasons") or 0)
        if more > 0:
            lines.append(f"- ... {more} more in the report")
        if outcome.get("package"):
            lines.append(f"package: {outcome['package']}")
        lines.append(f"report: {outcome.get('report_html')}")
    text = "\n".join(lines)
    return text if len(text) <= NOTE_MAX_CHARS else text[: NOTE_MAX_CHARS - 3] + "..."


def _fail(ti: Any, note: str, message: str) -> NoReturn:
    from airflow.sdk.exceptions import AirflowFailException

    ti.xcom_push(key=NOTE_KEY, value=note)
    raise AirflowFailException(message)


def settle(
    context: Mapping[str, Any],
    run: Mapping[str, Any] | None,
    package: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The `decision` task: read the run's outcome, leave the run's note, emit the approval
    event, and fail unless the decision is APPROVED or CONDITIONAL_APPROVAL with its package
    (see the module docstring). `run`: prepare's run context (None if prepare failed);
    `package`: what the package task returned (None when it wrote none)."""
    from pipeline.orchestrate import outcome as read_outcome

    ti = context["ti"]
    if run is None:
        _fail(ti, run_note(None, "the run was not prepared"), "no decision: prepare failed")
    try:
        outcome = read_outcome(dict(run), dict(package) if package else None)
    except FileNotFoundError:
        problem = "the final report was not written (see final_report)"
        _fail(ti, run_note(None, problem), f"no decision: {problem}")
    decision = outcome["decision"]
    if decision not in DECISIONS:
        problem = f"report.json has an unknown decision {decision!r}"
        _fail(ti, run_note(None, problem), f"no decision: {problem}")
    reasons = "; ".join(outcome["reasons"][:NOTE_REASONS])
    if decision == NOT_APPROVED:
        _fail(ti, run_note(outcome), f"{_decision_line(outcome)}: {reasons}")
    if decision in ALLOWS_PACKAGE and run.get("build_package", True) and package is None:
        problem = "the deployment package was not written (see deployment_package)"
        _fail(ti, run_note(outcome, problem), f"{decision}, but {problem}")
    ti.xcom_push(key=NOTE_KEY, value=run_note(outcome))
    if decision == APPROVED and outcome["package"]:
        event = {key: outcome[key] for key in EVENT_KEYS}
        asset = approval_asset(outcome["dag_id"], run["models"])
        context["outlet_events"][AssetAlias(APPROVALS_ALIAS)].add(asset, extra=event)
        outcome["approval_asset"] = asset.uri
    return outcome


class RunNoteListener:
    """Sets a finished DAG run's note from its decision task's `NOTE_KEY` XCom (runs with no
    such XCom, i.e. other DAGs, are left alone). Registered by the relcert plugin."""

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        _note_from_decision(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        _note_from_decision(dag_run)


def _note_from_decision(dag_run: Any) -> str | None:
    """Set the run's note in the session that holds the run (the scheduler's), so it is
    committed with the run's state (a second session could wait on the scheduler's lock of
    the run's row). `dag.test()` hands listeners a run outside any session: its note is set
    in a session of our own."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        return _set_note(session, dag_run)
    with create_session() as own:
        attached = own.get(DagRun, dag_run.id)
        return None if attached is None else _set_note(own, attached)


def _set_note(session: Any, dag_run: Any) -> str | None:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    row = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_run.dag_id,
            XComModel.run_id == dag_run.run_id,
            XComModel.task_id == DECISION_TASK_ID,
            XComModel.key == NOTE_KEY,
            XComModel.map_index == -1,
        )
    ).first()
    if row is None:
        return None
    note = XComModel.deserialize_value(row)
    if not isinstance(note, str):
        return None
    prior = dag_run.note
    if prior and not _ours(prior) and prior not in note:
        note = f"{note}\n\n{prior}"  # a user's note (e.g. from the trigger form) stays
    dag_run.note = note[:NOTE_MAX_CHARS]
    return dag_run.note


def _ours(note: str) -> bool:
    first = note.split("\n", 1)[0]
    return first.startswith(_NO_DECISION) or any(first.startswith(d) for d in DECISIONS)
