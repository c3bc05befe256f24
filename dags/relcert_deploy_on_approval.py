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

`verify_package` reads every triggering event's extra (the package's location in the
artifacts store, its sha256, the model versions, the report) and checks that the package is
there with the checksum the certification recorded; it returns the verified packages. Put
your rollout after it (e.g. `kubectl apply -k` of the package's `kubernetes/`, or a
promotion to your registry). Like every DAG it starts paused: unpause it to deploy.
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
        """Check every approved package of the triggering events against its recorded
        sha256 in the artifacts store; returns them (run, models, package, report)."""
        from pipeline.airflow.outcomes import verify_approvals

        events = get_current_context()["triggering_asset_events"].get(APPROVALS, [])
        return verify_approvals(events)

    verify_package()


relcert_deploy_on_approval()
