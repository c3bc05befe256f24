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

The last task, `decision`, makes the decision Airflow's: the run **fails** when the
decision is NOT_APPROVED (failure callbacks and `RELCERT_NOTIFIER` fire), its **note**
carries the decision and first reasons, and an APPROVED run with its package emits an event
of the Asset `relcert://model_release_certification/<models>` (see
`relcert_deploy_on_approval`). CONDITIONAL_APPROVAL runs succeed with the note saying so.

The logical date picks the model snapshot, so
`airflow backfill create --dag-id model_release_certification --from-date A --to-date B`
re-certifies each date's snapshot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from airflow.sdk import AssetAlias, Param, TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipeline.airflow.notifiers import dag_callbacks
from pipeline.airflow.outcomes import APPROVALS_ALIAS, DECISION_TASK_ID
from pipeline.metrics import KNOWN_METRICS
from pipeline.names import ALLOWS_PACKAGE, DEFAULT_PROFILE, MAX_REASON_CHARS, PROFILE_NAMES
from pipeline.scaleout import perf_task_args, retry_delay
from pipeline.stages.registry import STAGES, Stage

DAG_ID = Path(__file__).stem

PARAMS = {
    "profile": Param(
        DEFAULT_PROFILE,
        type="string",
        enum=list(PROFILE_NAMES),
        title="Profile",
        description_md="How long and how large the measurements are: `smoke` (minutes), "
        "`nightly` (the full plan, statistically valid), `release` (nightly plus a soak). "
        "A profile never changes targets. Scheduled and backfilled runs certify with "
        "`nightly` unless their conf names a profile.",
        section="Run",
    ),
    "models_file": Param(
        "include/models.yaml",
        type="string",
        minLength=1,
        title="Models file",
        description_md="The models to certify (relative to the project, or absolute): built "
        "by a builder or imported from an `.onnx` / TorchScript `.pt` file. The file and every "
        "file it names must lie in a models folder (`RELCERT_MODELS_DIRS`, default `include/`), "
        "its builders under `RELCERT_BUILDER_PREFIXES`; anything else fails `prepare`.",
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
        maxLength=MAX_REASON_CHARS,
        title="Reason",
        description_md="Why this run was triggered (shown in the report and the "
        f"Certifications view), at most {MAX_REASON_CHARS} characters.",
        section="Release",
    ),
    "waive_regression": Param(
        None,
        type=["null", "object"],
        properties={
            "criterion": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
            "justification": {"type": "string", "minLength": 20},
        },
        required=["criterion", "justification"],
        additionalProperties=False,
        title="Waive a regression",
        description_md="Accept one regression against the baseline for this run, e.g. "
        '`{"criterion": "latency_p99_ms[quality_predictor]", "justification": "the new '
        'feature costs 2 ms, agreed with the service owners"}`. The waiver, its justification '
        "and who triggered the run are recorded; the decision is at most "
        "CONDITIONAL_APPROVAL.",
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


@contextlib.contextmanager
def _no_retry_for_model_defects():
    """A model defect (a build refusal, a model file that does not load) fails the task for
    good: retries are for infrastructure faults."""
    from pipeline.stages.common import ModelDefect

    try:
        yield
    except ModelDefect as exc:
        raise AirflowFailException(f"model defect (not retried): {exc}") from None


def _stage_task(spec: Stage):
    """The task that runs one registered stage (its title is the task's doc)."""
    options = {**(PERF if spec.perf else {})}
    if spec.always:  # measures whatever this run produced, even after a failed gate
        options["trigger_rule"] = TriggerRule.ALL_DONE

    @task(task_id=spec.task_id, doc_md=spec.title, **options)
    def run_stage(run: dict) -> dict:
        from pipeline.orchestrate import stage

        with _no_retry_for_model_defects():
            return stage(run, spec.name, progress=_progress)

    return run_stage


def _gate_task(spec: Stage):
    """The task that runs a stage's Great Expectations gate; a failed gate fails it."""

    @task(task_id=spec.gate_task_id, doc_md=f"Gate of the {spec.name} stage.", **GATE)
    def run_gate(run: dict) -> dict:
        from pipeline.orchestrate import gate

        return _check(gate(run, spec.gate))

    return run_gate


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
    **dag_callbacks(),  # RELCERT_NOTIFIER: Airflow's notifier on failed (and succeeded) runs
)
def model_release_certification():
    @task(retries=0, execution_timeout=dt.timedelta(minutes=5))
    def prepare() -> dict:
        """Validate the conf, start this run attempt (earlier attempts' evidence moves
        aside) and record the effective targets."""
        from pipeline.orchestrate import ConfError, prepare_run

        context = get_current_context()
        dag_run = context["dag_run"]
        snapshot = context.get("logical_date") or dag_run.run_after
        run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
        try:
            return prepare_run(
                DAG_ID,
                context["run_id"],
                snapshot,
                dict(context["params"]),
                run_type=str(run_type) if run_type else None,
                dag_run_conf=dict(dag_run.conf or {}),
                triggered_by=getattr(dag_run, "triggering_user_name", None),
            )
        except ConfError as exc:
            raise AirflowFailException(f"invalid conf: {exc}") from None

    @task(execution_timeout=dt.timedelta(minutes=1))
    def list_models(run: dict) -> list[str]:
        """The models of the run's models file (one build task each)."""
        return run["models"]

    @task(execution_timeout=dt.timedelta(minutes=20))
    def build_model(run: dict, name: str) -> dict:
        """Build (train + export) or import one model of the run."""
        from pipeline.orchestrate import build_part

        with _no_retry_for_model_defects():
            return build_part(run, name, progress=_progress)

    @task(task_id=STAGES[0].task_id, execution_timeout=dt.timedelta(minutes=10))
    def build_models(run: dict, parts: list[dict]) -> dict:
        """Assemble the built models and record the build table."""
        from pipeline.orchestrate import assemble

        return assemble(run, list(parts[:]))  # one slice read (iterating reads past the end)

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=1, execution_timeout=dt.timedelta(minutes=10))
    def final_report(run: dict) -> dict:
        """Write report.json and report.html with the decision (always runs)."""
        from pipeline.orchestrate import report

        result = report(run)
        _progress(f"decision: {result['decision']} -> {result['report_html']}")
        return result

    @task(retries=1, execution_timeout=dt.timedelta(minutes=10))
    def deployment_package(run: dict, decision: dict) -> dict:
        """Write the deployment package when the decision allows it."""
        from pipeline.orchestrate import package

        if not run["build_package"]:
            raise AirflowSkipException("build_package is off for this run")
        if decision["decision"] not in ALLOWS_PACKAGE:
            raise AirflowSkipException(f"no package: the decision is {decision['decision']}")
        return package(run, progress=_progress)

    @task(
        task_id=DECISION_TASK_ID,
        trigger_rule=TriggerRule.ALL_DONE,
        retries=0,
        execution_timeout=dt.timedelta(minutes=5),
        outlets=[AssetAlias(APPROVALS_ALIAS)],
    )
    def decision(run: dict | None, package: dict | None) -> dict:
        """Make the decision the run's: fail on NOT_APPROVED (or no decision), note the
        decision and its first reasons on the run, emit the approval Asset event."""
        from pipeline.airflow.outcomes import settle

        return settle(get_current_context(), run, package)

    run = prepare()
    parts = build_model.partial(run=run).expand(name=list_models(run))
    stages = {STAGES[0].name: build_models(run, parts)}
    gates = {}
    for spec in STAGES:  # every stage, then its gate, after the gates of the stages before it
        if spec.name not in stages:
            stages[spec.name] = _stage_task(spec)(run)
            for before in spec.after:
                gates[before] >> stages[spec.name]
        gates[spec.name] = _gate_task(spec)(run)
        stages[spec.name] >> gates[spec.name]
    report = final_report(run)
    gates[STAGES[-1].name] >> report
    decision(run, deployment_package(run, report))


model_release_certification()
