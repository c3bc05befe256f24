"""DAG integrity: imports cleanly, without heavy imports, and follows the project's policies."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

PROJECT = Path(__file__).resolve().parents[2]
DAG_FILE = PROJECT / "dags" / "model_release_certification.py"
DAG_ID = "model_release_certification"
CONSUMER_FILE = PROJECT / "dags" / "relcert_deploy_on_approval.py"
CONSUMER_ID = "relcert_deploy_on_approval"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    import os

    home = tmp_path_factory.mktemp("airflow-home")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAG_FILE.parent))


@pytest.fixture(scope="module")
def dag(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors
    return dagbag.dags[DAG_ID]


def test_dag_parses_without_errors(dagbag) -> None:
    """(Its parse time is measured by bench/dag_parse.py; here only a sanity bound well
    inside Airflow's own 30 s import timeout.)"""
    assert dagbag.import_errors == {}
    stats = [s for s in dagbag.dagbag_stats if s.file.endswith(DAG_FILE.name)]
    assert stats and stats[0].dag_num == 1
    duration = stats[0].duration
    seconds = duration.total_seconds() if isinstance(duration, dt.timedelta) else duration
    assert seconds < 15.0, f"parse took {seconds:.2f} s"


@pytest.mark.parametrize("dag_file", [DAG_FILE, CONSUMER_FILE], ids=lambda p: p.stem)
def test_no_heavy_imports_at_parse_time(dag_file: Path) -> None:
    code = f"""
import sys, json, importlib.util
import airflow.sdk  # Airflow itself is allowed
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("dagfile", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    new = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = {"torch", "great_expectations", "pandas", "onnxruntime", "onnx", "matplotlib"}
    assert not heavy & {m.split(".")[0] for m in new}, sorted(heavy & set(new))


def test_schedule_and_run_policies(dag) -> None:
    assert dag.dag_id == DAG_FILE.stem
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.timetable.expression == "0 2 * * *"
    assert dag.doc_md and "Model release certification" in dag.doc_md
    assert {"relcert", "certification"} <= set(dag.tags)


def test_every_task_has_an_owner_a_timeout_and_sane_retries(dag) -> None:
    for task in dag.tasks:
        assert task.owner == "ml-platform", task.task_id
        assert task.execution_timeout is not None, task.task_id
        if task.task_id.startswith("gate_") or task.task_id in ("prepare", "decision"):
            assert task.retries == 0, f"{task.task_id}: a gate failure is final"
        elif task.task_id not in ("final_report", "deployment_package"):
            assert task.retries >= 1, f"{task.task_id}: transient failures should retry"


def test_the_shape_follows_the_architecture(dag) -> None:
    def downstream(task_id: str) -> set[str]:
        return set(dag.get_task(task_id).downstream_task_ids)

    assert "gate_build" in downstream("build_models")
    assert "validate_integration" in downstream("gate_build")
    assert {"load_test", "stress_test"} <= downstream("gate_integration")
    assert "infra_validate" in downstream("gate_load") and "infra_validate" in downstream(
        "gate_stress"
    )
    assert "certify" in downstream("gate_infra")
    assert "regression" in downstream("gate_certify")  # against the last approved release
    assert str(dag.get_task("regression").trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert "final_report" in downstream("gate_regression")
    assert "deployment_package" in downstream("final_report")
    assert str(dag.get_task("final_report").trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    # the decision is the run's only leaf: its state is the run's state
    assert "decision" in downstream("deployment_package")
    assert [t.task_id for t in dag.leaves] == ["decision"]
    assert str(dag.get_task("decision").trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert (
        dag.get_task("build_model").is_mapped
        if hasattr(dag.get_task("build_model"), "is_mapped")
        else True
    )


def test_params_form_is_titled_and_described(dag) -> None:
    from pipeline.names import CONF_KEYS

    params = dag.params
    assert set(params.keys()) == set(CONF_KEYS), "the form and the conf check agree"
    for key in CONF_KEYS:
        schema = params.get_param(key).schema
        assert schema.get("title"), key
        assert schema.get("description_md") or schema.get("description"), key
    assert params.get_param("profile").schema["enum"] == ["smoke", "nightly", "release"]
    assert params.get_param("build_image").value is False  # the image is opt-in


@pytest.mark.parametrize(
    "conf,message",
    [
        ({"profile": "weekly"}, "profile"),
        ({"target_overrides": {"made_up_metric": 1}}, "made_up_metric"),
        ({"target_overrides": {"p99_latency_ms": "fast"}}, "p99_latency_ms"),
        ({"build_package": "yes"}, "build_package"),
        ({"build_image": "yes"}, "build_image"),
        ({"reason": "x" * 501}, "reason"),
    ],
)
def test_invalid_params_are_refused_by_the_form_schema(dag, conf, message) -> None:
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match=message):
        for key, value in conf.items():
            params[key] = value
        params.validate()


def test_overrides_that_relax_a_target_are_refused_unless_allowed() -> None:
    from pipeline.orchestrate import ConfError, validate_conf

    with pytest.raises(ConfError, match="p99_latency_ms"):
        validate_conf({"target_overrides": {"p99_latency_ms": 900}})
    ok = validate_conf({"target_overrides": {"p99_latency_ms": 900}, "allow_relaxed_targets": True})
    assert ok["targets"]["p99_latency_ms"].target == 900
    tightened = validate_conf({"target_overrides": {"p99_latency_ms": 100}})
    assert tightened["targets"]["p99_latency_ms"].target == 100


def test_build_image_is_a_conf_key_off_by_default() -> None:
    from pipeline.orchestrate import ConfError, validate_conf

    assert validate_conf({})["build_image"] is False
    assert validate_conf({"build_image": True})["build_image"] is True
    with pytest.raises(ConfError, match=r"conf\.build_image must be true or false"):
        validate_conf({"build_image": "yes"})


def test_a_reason_is_capped_and_refused_whole_when_longer() -> None:
    """The reason is shown in every row of the Certifications view: 10 MB of it is refused
    before anything runs, naming the limit, never cut silently."""
    from pipeline.names import MAX_REASON_CHARS
    from pipeline.orchestrate import ConfError, validate_conf

    assert MAX_REASON_CHARS == 500
    longest = "r" * MAX_REASON_CHARS
    assert validate_conf({"reason": longest})["reason"] == longest
    assert validate_conf({"reason": None})["reason"] == ""
    with pytest.raises(ConfError, match=r"conf\.reason is 10485760 characters long; at most 500"):
        validate_conf({"reason": "x" * (10 << 20)})
    with pytest.raises(ConfError, match=r"conf\.reason must be a string or null, got dict"):
        validate_conf({"reason": {"text": "hotfix"}})


def test_performance_tasks_share_the_perf_pool_and_cheap_tasks_run_freely(dag) -> None:
    from pipeline.scaleout import PERF_POOL

    perf = {"load_test", "stress_test", "infra_validate"}
    for task in dag.tasks:
        if task.task_id in perf:
            assert task.pool == PERF_POOL, task.task_id
        else:
            assert task.pool == "default_pool", f"{task.task_id} should not wait for the pool"


def test_the_perf_pool_and_queue_follow_the_environment(tmp_path: Path) -> None:
    import os

    from pipeline.scaleout import render_k8s

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "RELCERT_PERF_POOL": "perf_nodes",
        "RELCERT_PERF_QUEUE": "perf",
        "RELCERT_RETRY_DELAY_S": "7",
    }
    probe = (
        "from airflow.dag_processing.dagbag import DagBag; import json; "
        f"d = DagBag({str(DAG_FILE.parent)!r}).dags[{DAG_ID!r}]; "
        "print(json.dumps({t.task_id: [t.pool, t.queue, t.retry_delay.total_seconds()] "
        "for t in d.tasks}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tasks = json.loads(out.stdout.strip().splitlines()[-1])
    assert tasks["load_test"] == ["perf_nodes", "perf", 7.0]
    assert tasks["infra_validate"] == ["perf_nodes", "perf", 7.0]
    assert tasks["certify"][0] == "default_pool" and tasks["certify"][1] != "perf"
    # a bad retry delay is an import error that names the variable
    errors = (
        "from airflow.dag_processing.dagbag import DagBag; "
        f"print(list(DagBag({str(DAG_FILE.parent)!r}).import_errors.values()))"
    )
    bad = subprocess.run(
        [sys.executable, "-c", errors],
        env={**env, "RELCERT_RETRY_DELAY_S": "soon"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 0, bad.stderr[-2000:]
    assert "RELCERT_RETRY_DELAY_S must be seconds" in bad.stdout
    # the deployment templates create the pool the DAG names
    render_k8s(tmp_path / "k8s", pool_name="perf_nodes", perf_nodes=3)
    pools = json.loads((tmp_path / "k8s" / "pools.json").read_text())
    assert pools["perf_nodes"]["slots"] == 3


def test_approvals_are_an_asset_the_example_deployment_dag_is_scheduled_on(dagbag) -> None:
    from airflow.sdk import AssetAlias

    from pipeline.airflow.outcomes import APPROVALS_ALIAS, approval_asset

    dag = dagbag.dags[DAG_ID]
    assert dag.get_task("decision").outlets == [AssetAlias(APPROVALS_ALIAS)]
    consumer = dagbag.dags[CONSUMER_ID]
    approvals = approval_asset(DAG_ID, ["quality_predictor", "routing_classifier"])
    assert consumer.schedule == [approvals]
    assert consumer.catchup is False and consumer.doc_md and "approval" in consumer.doc_md
    assert {"relcert", "deployment"} <= set(consumer.tags)
    [verify] = consumer.tasks
    assert verify.task_id == "verify_package" and verify.inlets == [approvals]
    assert verify.owner == "ml-platform" and verify.execution_timeout is not None


def test_the_notifier_comes_from_the_environment_and_a_bad_one_is_an_import_error(
    tmp_path: Path,
) -> None:
    import os

    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "home"),
        "RELCERT_NOTIFIER": "airflow.providers.smtp.notifications.smtp.SmtpNotifier",
        "RELCERT_NOTIFIER_KWARGS": '{"to": "ml-platform@example.com"}',
        "RELCERT_NOTIFY_ON": "failure,success",
    }
    probe = (
        "from airflow.dag_processing.dagbag import DagBag; import json; "
        f"b = DagBag({str(DAG_FILE.parent)!r}); d = b.dags.get({DAG_ID!r}); "
        "print(json.dumps({'errors': list(b.import_errors.values()), 'callbacks': d and ["
        "c.notifier_class.__name__ for c in d.on_failure_callback + d.on_success_callback]}))"
    )

    def parse(**extra: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert parse() == {"errors": [], "callbacks": ["SmtpNotifier", "SmtpNotifier"]}
    bad = parse(RELCERT_NOTIFIER="airflow.providers.smtp.notifications.smtp.NoSuchNotifier")
    assert bad["callbacks"] is None
    [error] = bad["errors"]
    assert "RELCERT_NOTIFIER='airflow.providers.smtp.notifications.smtp.NoSuchNotifier'" in error
    assert "cannot import it" in error
