"""`relcert run` and `relcert ui`: the DAG on an embedded Airflow inside the project.

Airflow is imported only inside these functions, after the environment is set (Airflow
reads its configuration when first imported). The metadata DB is SQLite under
`.relcert/airflow/` (created on first use: no setup step).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.names import ALLOWS_PACKAGE, DAG_ID, DEFAULT_PROFILE, EXIT_CODES, EXIT_ERROR

__all__ = ["EXIT_CODES", "airflow_env", "ensure_metadata_db", "ensure_pools", "run_dag"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def airflow_env(home: Path | None = None) -> dict[str, str]:
    """The environment of the embedded Airflow (project DAGs and plugins, SQLite DB)."""
    home = Path(home or os.environ.get("RELCERT_AIRFLOW_HOME") or PROJECT_ROOT / ".relcert/airflow")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("RELCERT_AIRFLOW_LOG_LEVEL", "WARNING"),
        "GX_ANALYTICS_ENABLED": "False",
    }


def ensure_metadata_db(env: dict[str, str], say: Callable[[str], None] = print) -> None:
    """Create (migrate) the SQLite metadata DB on first use."""
    home = Path(env["AIRFLOW_HOME"])
    stamp = home / ".relcert-migrated"
    if stamp.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    say(f"==> creating the Airflow metadata DB in {home} (first run only)")
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run(
        [str(airflow), "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    stamp.write_text("ok\n")


def ensure_pools(say: Callable[[str], None] = print) -> None:
    """The perf pool the load/stress/infra tasks take (one slot: one machine)."""
    from pipeline.airflow.pools import ensure_perf_pool
    from pipeline.scaleout import perf_task_args

    if ensure_perf_pool(slots=1):
        say(f"==> created the Airflow pool {perf_task_args()['pool']} (1 slot)")


def _watch(run_id_box: dict, stop: threading.Event, say: Callable[[str], None]) -> None:
    """Print each task instance's state changes while the DAG runs (polls the DB)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    seen: dict[tuple[str, int], str] = {}
    started = time.monotonic()
    while not stop.wait(1.0):
        try:
            with create_session() as session:
                rows = (
                    session.query(
                        TaskInstance.task_id,
                        TaskInstance.map_index,
                        TaskInstance.state,
                        TaskInstance.run_id,
                    )
                    .filter(TaskInstance.dag_id == DAG_ID)
                    .all()
                )
        except Exception:
            continue
        run_id = run_id_box.get("run_id")
        for task_id, map_index, state, row_run in rows:
            if run_id is None:
                run_id_box["run_id"] = run_id = row_run if state else None
            if row_run != run_id or state is None:
                continue
            key = (task_id, map_index)
            state = str(state.value if hasattr(state, "value") else state)
            if seen.get(key) != state and state in (
                "running",
                "success",
                "failed",
                "skipped",
                "upstream_failed",
                "up_for_retry",
            ):
                seen[key] = state
                label = task_id if map_index < 0 else f"{task_id}[{map_index}]"
                say(f"[{time.monotonic() - started:6.1f}s] {label:28s} {state}")


def run_dag(
    profile: str = DEFAULT_PROFILE,
    conf: dict[str, Any] | None = None,
    snapshot_date: dt.date | None = None,
    say: Callable[[str], None] = print,
) -> tuple[int, dict[str, Any]]:
    """Run the DAG once with `dag.test()`; returns (exit code, report summary)."""
    env = airflow_env()
    os.environ.update(env)
    if os.environ.get("RELCERT_NOTIFIER"):
        # dag.test() of Airflow 3.3 hands DAG callbacks a serialized DAG, on which a
        # notifier cannot render its templates: notifiers are for deployments (they run in
        # the DAG processor there)
        say("==> RELCERT_NOTIFIER is ignored by relcert run: it notifies in a deployment")
        os.environ["RELCERT_NOTIFIER"] = ""
    ensure_metadata_db(env, say)
    ensure_pools(say)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    run_conf = {"profile": profile, **(conf or {})}
    day = snapshot_date or dt.datetime.now(dt.UTC).date()
    logical = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    say(
        f"==> running {DAG_ID} for snapshot {day} (profile {run_conf['profile']}) on the "
        f"embedded Airflow ({env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']})"
    )
    stop = threading.Event()
    box: dict[str, Any] = {}
    watcher = threading.Thread(target=_watch, args=(box, stop, say), daemon=True)
    watcher.start()
    try:
        dag_run = dag.test(logical_date=logical, run_conf=run_conf)
    finally:
        stop.set()
        watcher.join(timeout=5)
    run_id = dag_run.run_id if dag_run is not None else box.get("run_id")
    from pipeline.orchestrate import artifacts_root, run_key

    report_path = artifacts_root() / DAG_ID / run_key(run_id or "") / "report.json"
    if not report_path.exists():
        say(f"==> the run ended ({getattr(dag_run, 'state', '?')}) without a report")
        return 1, {"state": str(getattr(dag_run, "state", None)), "run_id": run_id}
    report = json.loads(report_path.read_text())
    decision = report["decision"]
    package = report.get("package")
    if package:
        package = str((report_path.parent / package).resolve())
    state = str(getattr(dag_run, "state", None))
    code = EXIT_CODES.get(decision, EXIT_ERROR)
    # the run fails on NOT_APPROVED (its decision task says so): that is exit 20; a run that
    # failed although the decision allows a release broke after the report (the package)
    if state == "failed" and decision in ALLOWS_PACKAGE:
        say(f"==> the run failed after a {decision} report: see its failed tasks")
        code = EXIT_ERROR
    return code, {
        "decision": decision,
        "readiness_score": report.get("readiness_score"),
        "report_json": str(report_path),
        "report_html": str(report_path.with_name("report.html")),
        "package": package,
        "state": state,
        "run_id": run_id,
        "note": _note(run_id),
    }


def _note(run_id: str | None) -> str | None:
    """The DAG run's note (the decision task's verdict, set by the relcert plugin's
    listener), as the grid shows it."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    if run_id is None:
        return None
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id=DAG_ID, run_id=run_id).one_or_none()
        return run.note if run is not None else None


def run_ui(port: int = 8080, say: Callable[[str], None] = print) -> int:
    """`relcert ui`: Airflow standalone (scheduler, API server, DAG processor, triggerer)
    with the project's DAGs and plugins, on the embedded metadata DB. Blocks until stopped."""
    env = airflow_env()
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = os.environ.get(
        "RELCERT_UI_USERS", "admin:admin"
    )
    os.environ.update(env)
    ensure_metadata_db(env, say)
    ensure_pools(say)
    home = Path(env["AIRFLOW_HOME"])
    passwords = home / "simple_auth_manager_passwords.json.generated"
    say(
        f"==> Airflow UI: http://localhost:{port}  (Certifications view: "
        f"http://localhost:{port}/relcert/certifications)"
    )
    say(f"==> log in as admin; the password is in {passwords} (written at first start)")
    say("==> the DAG starts paused: unpause it in the UI, or trigger it with its params form")
    airflow = Path(sys.executable).with_name("airflow")
    # standalone starts its components as `airflow ...` from PATH: use this environment's
    path = f"{airflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.call([str(airflow), "standalone"], env={**os.environ, **env, "PATH": path})
