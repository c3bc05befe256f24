"""
### Model release certification

Builds the candidate models for the run's snapshot date (or imports yours), validates them
end to end on the shared inference library, load- and stress-tests the library and the
HTTP service, certifies the measurements against `include/targets.yaml`, and writes the
final report with a decision: **APPROVED**, **CONDITIONAL_APPROVAL** or **NOT_APPROVED**.
Approved candidates get a deployment package.

Every stage is followed by a Great Expectations gate; a failed gate stops the stages after
it, and the final report still runs and says which gate failed and why. Artifacts:
`$RELCERT_ARTIFACTS/model_release_certification/<run>/` (report.html, data_docs/, ...).

The logical date picks the model snapshot, so
`airflow backfill create --dag-id model_release_certification --from-date A --to-date B`
re-certifies each date's snapshot.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipeline.scaleout import perf_task_args, retry_delay
from pipeline.targets import KNOWN_METRICS

DAG_ID = Path(__file__).stem

PARAMS = {
    "profile": Param(
        "smoke",
        type="string",
        enum=["smoke", "nightly", "release"],
        title="Profile",
        description_md="How long and how large the measurements are: `smoke` (minutes), "
        "`nightly` (the full plan, statistically valid), `release` (nightly plus a soak). "
        "A profile never changes targets.",
        section="Run",
    ),
    "models_file": Param(
        "include/models.yaml",
        type="string",
        minLength=1,
        title="Models file",
        description_md="The models to certify (relative to the project, or absolute): built "
        "by a builder or imported from an `.onnx` / TorchScript `.pt` file.",
        section="Run",
    ),
    "target_overrides": Param(
        {},
        type="object",
        propertyNames={"enum": list(KNOWN_METRICS)},
        additionalProperties={"type": "number"},
        title="Target overrides",
        description_md='New target values by metric, e.g. `{"p99_latency_ms": 200}`. Only '
        "known metrics; only tightening unless *Allow relaxed targets* is set.",
        section="Targets",
    ),
    "allow_relaxed_targets": Param(
        False,
        type="boolean",
        title="Allow relaxed targets",
        description_md="Let overrides loosen a target (recorded in the report).",
        section="Targets",
    ),
    "build_package": Param(
        True,
        type="boolean",
        title="Build the deployment package",
        description_md="Write the deployment package when the decision allows it.",
        section="Release",
    ),
    "build_image": Param(
        False,
        type="boolean",
        title="Build the package's container image",
        description_md="Also build the package's OCI image with podman or docker, offline "
        "(base image `RELCERT_BASE_IMAGE`, wheels from `RELCERT_WHEELHOUSE`), saved beside "
        "the package; report.json records its digest. Needs *Build the deployment package*.",
        section="Release",
    ),
    "reason": Param(
        None,
        type=["null", "string"],
        title="Reason",
        description_md="Why this run was triggered (shown in the report and the "
        "Certifications view).",
        section="Release",
    ),
}

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": retry_delay(),  # RELCERT_RETRY_DELAY_S, default 30 s
    "execution_timeout": dt.timedelta(minutes=60),
}
GATE = {"retries": 0, "execution_timeout": dt.timedelta(minutes=10)}
# load, stress and infra measure speed: they take the perf pool (one slot per machine that
# runs them, so two never share CPUs) and, when set, the perf workers' Celery queue
PERF = perf_task_args()


def _progress(line: str) -> None:
    print(line, flush=True)


def _check(result: dict) -> dict:
    if not result["success"]:
        raise AirflowFailException(f"gate {result['stage']} failed: " + "; ".join(result["failed"]))
    return result


@dag(
    dag_id=DAG_ID,
    schedule="0 2 * * *",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["relcert", "certification", "ml-platform"],
    params=PARAMS,
    default_args=DEFAULT_ARGS,
)
def model_release_certification():
    @task(retries=0, execution_timeout=dt.timedelta(minutes=5))
    def prepare() -> dict:
        from pipeline.orchestrate import ConfError, prepare_run

        context = get_current_context()
        snapshot = context.get("logical_date") or context["dag_run"].run_after
        try:
            return prepare_run(DAG_ID, context["run_id"], snapshot, dict(context["params"]))
        except ConfError as exc:
            raise AirflowFailException(f"invalid conf: {exc}") from None

    @task(execution_timeout=dt.timedelta(minutes=1))
    def list_models(run: dict) -> list[str]:
        return run["models"]

    @task(execution_timeout=dt.timedelta(minutes=20))
    def build_model(run: dict, name: str) -> dict:
        from pipeline.orchestrate import build_part

        return build_part(run, name, progress=_progress)

    @task(execution_timeout=dt.timedelta(minutes=10))
    def build_models(run: dict, parts: list[dict]) -> dict:
        from pipeline.orchestrate import assemble

        return assemble(run, list(parts[:]))  # one slice read (iterating reads past the end)

    @task(**GATE)
    def gate_build(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "build"))

    @task
    def validate_integration(run: dict) -> dict:
        from pipeline.orchestrate import stage

        return stage(run, "integration", progress=_progress)

    @task(**GATE)
    def gate_integration(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "integration"))

    @task(**PERF)
    def load_test(run: dict) -> dict:
        from pipeline.orchestrate import stage

        return stage(run, "load", progress=_progress)

    @task(**GATE)
    def gate_load(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "load"))

    @task(**PERF)
    def stress_test(run: dict) -> dict:
        from pipeline.orchestrate import stage

        return stage(run, "stress", progress=_progress)

    @task(**GATE)
    def gate_stress(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "stress"))

    @task(**PERF)
    def infra_validate(run: dict) -> dict:
        from pipeline.orchestrate import stage

        return stage(run, "infra", progress=_progress)

    @task(**GATE)
    def gate_infra(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "infra"))

    # Certification measures whatever this run produced, even after a failed gate, so the
    # report can name every unmet criterion (a stage that did not run leaves its own unmet).
    @task(trigger_rule=TriggerRule.ALL_DONE)
    def certify(run: dict) -> dict:
        from pipeline.orchestrate import stage

        return stage(run, "certify", progress=_progress)

    @task(**GATE)
    def gate_certification(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, "certification"))

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=1, execution_timeout=dt.timedelta(minutes=10))
    def final_report(run: dict) -> dict:
        from pipeline.orchestrate import report

        result = report(run)
        _progress(f"decision: {result['decision']} -> {result['report_html']}")
        return result

    @task(retries=1, execution_timeout=dt.timedelta(minutes=10))
    def deployment_package(run: dict, decision: dict) -> dict:
        from pipeline.orchestrate import package

        if not run["build_package"]:
            raise AirflowSkipException("build_package is off for this run")
        if decision["decision"] not in ("APPROVED", "CONDITIONAL_APPROVAL"):
            raise AirflowSkipException(f"no package: the decision is {decision['decision']}")
        return package(run, progress=_progress)

    run = prepare()
    parts = build_model.partial(run=run).expand(name=list_models(run))
    built = build_models(run, parts)
    g_build = gate_build(run)
    integration = validate_integration(run)
    g_integration = gate_integration(run)
    load = load_test(run)
    g_load = gate_load(run)
    stress = stress_test(run)
    g_stress = gate_stress(run)
    infra = infra_validate(run)
    g_infra = gate_infra(run)
    certified = certify(run)
    g_cert = gate_certification(run)
    report = final_report(run)

    built >> g_build >> integration >> g_integration >> [load, stress]
    load >> g_load
    stress >> g_stress
    [g_load, g_stress] >> infra >> g_infra >> certified >> g_cert >> report
    deployment_package(run, report)


model_release_certification()
