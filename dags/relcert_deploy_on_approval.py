"""
### Deploy on approval (example consumer)

An example of a deployment DAG driven by relcert's decisions. It is scheduled on the
approval Asset of `model_release_certification` for the model set of
`include/models.yaml` (`relcert://model_release_certification/quality_predictor+routing_classifier`):
each APPROVED certification run of those models, once its package is written, emits an
event of that Asset, and this DAG runs on it.

Airflow 3.3 queues one pending run per Asset: an approval that arrives while the previous
approval's queue entry is still pending is consumed by the run of the *next* approval, not by
a run of its own (apache/airflow#54659, #56050). With `max_active_runs=1` that window would
be a whole run of this DAG, so the example leaves it unset; to roll out one package at a
time, give the rollout task a pool with one slot.

`verify_package` trusts no event's extra on its word (anyone allowed to post Asset events,
or any DAG author, can emit one): each event must come from the certification DAG's
`decision` task (as Airflow recorded its source), the run's `report.json`, re-read from the
artifacts store, must say APPROVED, and the package it records must be the one the event
names, with the sha256 the certification recorded. A bad event fails the task at once (no
retry), naming every bad event and why; otherwise it returns the verified packages. Put your
rollout after it (e.g. `kubectl apply -k` of the package's `kubernetes/`, or a promotion to
your registry). Like every DAG it starts paused: unpause it to deploy.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import dag, get_current_context, task

from pipeline.airflow.outcomes import approval_asset, model_names
from pipeline.names import DAG_ID as CERTIFICATION_DAG_ID

DAG_ID = Path(__file__).stem
MODELS_FILE = Path(__file__).resolve().parent.parent / "include" / "models.yaml"
APPROVALS = approval_asset(CERTIFICATION_DAG_ID, model_names(MODELS_FILE))


@dag(
    dag_id=DAG_ID,
    schedule=[APPROVALS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    doc_md=__doc__,
    tags=["relcert", "deployment", "example"],
    default_args={
        "owner": "ml-platform",
        "retries": 1,
        "retry_delay": dt.timedelta(seconds=30),
        "execution_timeout": dt.timedelta(minutes=10),
    },
)
def relcert_deploy_on_approval():
    @task(inlets=[APPROVALS])
    def verify_package() -> list[dict]:
        """Verify every triggering approval event: its source (the certification DAG's
        decision task), the run's APPROVED report and the package's sha256, both read from
        the artifacts store; returns the packages (run, models, package, report)."""
        from pipeline.airflow.approvals import verify_approvals

        events = get_current_context()["triggering_asset_events"].get(APPROVALS, [])
        return verify_approvals(events)

    verify_package()


relcert_deploy_on_approval()
