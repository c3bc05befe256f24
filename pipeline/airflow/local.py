"""`relcert run` and `relcert ui`: the DAG on an embedded Airflow inside the project.

Airflow is imported only inside these functions, after the environment is set (Airflow
reads its configuration when first imported). The metadata DB is SQLite under
`.relcert/airflow/` (created on first use: no setup step), readable by its owner only, as
are the folder and the UI's generated password file. One `relcert run` at a time uses it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.airflow.run_output import RUN_LOG_NAME, RunOutput, task_label
from pipeline.names import ALLOWS_PACKAGE, DAG_ID, DEFAULT_PROFILE, EXIT_CODES, EXIT_ERROR

__all__ = [
    "EXIT_CODES",
    "RunRefused",
    "airflow_env",
    "ensure_metadata_db",
    "ensure_pools",
    "one_run_at_a_time",
    "private_home",
    "run_dag",
    "run_ui",
    "ui_announcement",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCK_NAME = "relcert-run.lock"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
#: files of the embedded Airflow that hold secrets (the admin password, the API's JWT
#: secret) or the run history: owner-only, like the folder itself
_PRIVATE_FILES = ("airflow.db", "airflow.cfg", PASSWORDS_FILE)


def airflow_env(home: Path | None = None, log_level: str = "WARNING") -> dict[str, str]:
    """The environment of the embedded Airflow (project DAGs and plugins, SQLite DB, logs
    under its home). RELCERT_AIRFLOW_LOG_LEVEL overrides `log_level`."""
    home = Path(home or os.environ.get("RELCERT_AIRFLOW_HOME") or PROJECT_ROOT / ".relcert/airflow")
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("RELCERT_AIRFLOW_LOG_LEVEL", log_level),
        "GX_ANALYTICS_ENABLED": "False",
    }


def private_home(home: Path) -> None:
    """The embedded Airflow's folder and its secret-holding files, owner-only (created when
    missing; an existing DB from before is tightened)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    for name in _PRIVATE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(home / name, 0o600)


def ensure_metadata_db(env: dict[str, str], say: Callable[[str], None] = print) -> None:
    """Create (migrate) the SQLite metadata DB on first use, readable by its owner only."""
    home = Path(env["AIRFLOW_HOME"])
    stamp = home / ".relcert-migrated"
    private_home(home)
    if stamp.exists():
        return
    say(f"==> creating the Airflow metadata DB in {home} (first run only)")
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run(
        [str(airflow), "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        umask=0o077,  # the DB (and SQLite's journals, which copy its mode) owner-only
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    private_home(home)
    stamp.write_text("ok\n")


def ensure_pools(say: Callable[[str], None] = print) -> None:
    """The perf pool the load/stress/infra tasks take (one slot: one machine)."""
    from pipeline.airflow.pools import ensure_perf_pool
    from pipeline.scaleout import perf_task_args

    if ensure_perf_pool(slots=1):
        say(f"==> created the Airflow pool {perf_task_args()['pool']} (1 slot)")


class RunRefused(RuntimeError):
    """This `relcert run` may not start: another one is using the same metadata DB."""


@contextlib.contextmanager
def one_run_at_a_time(home: Path) -> Iterator[None]:
    """Hold the embedded Airflow's run lock for one `relcert run`, or refuse at once.

    Two runs on one metadata DB collide: `dag.test()` deletes an earlier run of the same
    logical date (the other run then fails on its own DAG run), both write the SQLite DB, and
    their measurements would share the machine's CPUs. The lock is held for the process's
    life (the kernel releases it when the process ends, however it ends)."""
    lock_path = home / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "pid unknown"
        os.close(fd)
        raise RunRefused(
            f"another relcert run ({holder}) is using the embedded Airflow in {home}: one run "
            "at a time per metadata DB, and nothing of this run was started. Wait for it to "
            "finish, or give this run an Airflow of its own with RELCERT_AIRFLOW_HOME=<another "
            "folder> (its measurements then share this machine's CPUs with the other run)."
        ) from None
    try:
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {started}\n".encode())
        yield
    finally:
        os.close(fd)


def _task_rows(run_id: str) -> list[tuple[str, int, str | None, int]]:
    """(task_id, map_index, state, try_number) of this run's task instances, in the order
    they started (those that never started last)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(
                TaskInstance.task_id,
                TaskInstance.map_index,
                TaskInstance.state,
                TaskInstance.try_number,
                TaskInstance.start_date,
            )
            .filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)
            .all()
        )
    rows.sort(key=lambda r: (r[4] is None, r[4] or dt.datetime.min.replace(tzinfo=dt.UTC), r[0]))
    return [(task, index, _state(state), tries) for task, index, state, tries, _ in rows]


def _state(state: Any) -> str | None:
    return None if state is None else str(state.value if hasattr(state, "value") else state)


class _Watcher:
    """Prints each task instance of this run (and only this run) as its state changes."""

    SHOWN = ("running", "success", "failed", "skipped", "upstream_failed", "up_for_retry")

    def __init__(self, run_id: str, out: RunOutput) -> None:
        self.run_id, self.out = run_id, out
        self.seen: dict[tuple[str, int], str] = {}
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(Exception):  # the DB may be busy: the next poll will see
                self.poll()

    def poll(self) -> None:
        for task_id, map_index, state, try_number in _task_rows(self.run_id):
            key = (task_id, map_index)
            if state not in self.SHOWN or self.seen.get(key) == state:
                continue
            self.seen[key] = state
            label = task_label(task_id, map_index)
            line = f"[{time.monotonic() - self.started:6.1f}s] {label:28s} {state}"
            if state in ("failed", "up_for_retry"):
                line += f"  (log: {self.out.task_log_path(task_id, map_index, try_number)})"
            self.out.say(line)

    def __enter__(self) -> _Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.poll()  # the states reached after the last poll


def _say_task_logs(out: RunOutput, run_id: str) -> None:
    """Where the log of each task of the run is (the last attempt's), and why a task failed."""
    folder = out.run_log_path.parent
    out.say(f"==> task logs, under {folder}:")
    for task_id, map_index, state, _ in _task_rows(run_id):
        attempt = out.last_attempt(task_id, map_index)
        label = task_label(task_id, map_index)
        if attempt is None:
            why = (
                "did not run: no log"
                if state in (None, "upstream_failed", "skipped", "removed")
                else f"no log of its own: see {RUN_LOG_NAME}"
            )
            out.say(f"    {label:28s} {state or 'not started':16s} ({why})")
            continue
        path = attempt.path
        shown = path.relative_to(folder) if path.is_relative_to(folder) else path
        out.say(f"    {label:28s} {state or '?':16s} {shown}")
        if attempt.error and state in ("failed", "up_for_retry"):
            out.say(f"        error: {attempt.error}")
    out.say(f"==> the whole run's output (Airflow, libraries, between tasks): {out.run_log_path}")


def run_dag(
    profile: str = DEFAULT_PROFILE,
    conf: dict[str, Any] | None = None,
    snapshot_date: dt.date | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run the DAG once with `dag.test()`; returns (exit code, report summary).

    The terminal shows relcert's own lines only (see pipeline.airflow.run_output); the
    output of Airflow, libraries and tasks goes to the run's log files. Raises RunRefused
    when another `relcert run` is using the same metadata DB."""
    env = airflow_env(log_level="INFO")  # only the log files see Airflow's own lines
    home = Path(env["AIRFLOW_HOME"])
    print(
        f"==> relcert run on the embedded Airflow: metadata DB {home / 'airflow.db'}, "
        f"logs under {env['AIRFLOW__LOGGING__BASE_LOG_FOLDER']}",
        flush=True,
    )
    private_home(home)
    with one_run_at_a_time(home):
        os.environ.update(env)
        with RunOutput(Path(env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]), DAG_ID) as out:
            return _run_dag(out, env, profile, conf, snapshot_date)


def _run_dag(
    out: RunOutput,
    env: dict[str, str],
    profile: str,
    conf: dict[str, Any] | None,
    snapshot_date: dt.date | None,
) -> tuple[int, dict[str, Any]]:
    if os.environ.get("RELCERT_NOTIFIER"):
        # dag.test() of Airflow 3.3 hands DAG callbacks a serialized DAG, on which a
        # notifier cannot render its templates: notifiers are for deployments (they run in
        # the DAG processor there)
        out.say("==> RELCERT_NOTIFIER is ignored by relcert run: it notifies in a deployment")
        os.environ["RELCERT_NOTIFIER"] = ""
    ensure_metadata_db(env, out.say)
    ensure_pools(out.say)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    bag = DagBag(str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    run_conf = {"profile": profile, **(conf or {})}
    day = snapshot_date or dt.datetime.now(dt.UTC).date()
    logical = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    # the run's id is known before it starts, so only its own task instances are shown
    run_after = dt.datetime.now(dt.UTC)
    run_id = DagRun.generate_run_id(
        run_type=DagRunType.MANUAL, logical_date=logical, run_after=run_after
    )
    out.start(run_id)
    out.say(
        f"==> running {DAG_ID} for snapshot {day} (profile {run_conf['profile']}), run {run_id}"
    )
    with _Watcher(run_id, out):
        dag_run = dag.test(logical_date=logical, run_after=run_after, run_conf=run_conf)
    _say_task_logs(out, run_id)
    return _outcome(dag_run, run_id, out)


def _outcome(dag_run: Any, run_id: str, out: RunOutput) -> tuple[int, dict[str, Any]]:
    from pipeline.orchestrate import artifacts_root, run_key

    report_path = artifacts_root() / DAG_ID / run_key(run_id) / "report.json"
    if not report_path.exists():
        out.say(f"==> the run ended ({getattr(dag_run, 'state', '?')}) without a report")
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
        out.say(f"==> the run failed after a {decision} report: see its failed tasks")
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
        "log": str(out.run_log_path),
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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ui_announcement(host: str, port: int, passwords: Path) -> list[str]:
    """What `relcert ui` prints before it starts: the URLs, how to log in, and a warning
    when the UI is reachable from other machines."""
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "localhost"
    lines = [
        f"==> Airflow UI: http://{shown}:{port}  (Certifications view: "
        f"http://{shown}:{port}/relcert/certifications), listening on {host}",
        f"==> log in as admin; the password is in {passwords} (written at first start, "
        "readable by you only)",
        "==> the DAG starts paused: unpause it in the UI, or trigger it with its params form",
    ]
    if not _loopback(host):
        lines.append(
            f"==> WARNING: --host {host} makes the UI reachable from other machines: anyone "
            f"who reaches port {port} can try the admin login (Airflow's simple auth manager, "
            "for development only) and read every run's artifacts. Use the default "
            "(127.0.0.1) unless this network is trusted; put a real auth manager and TLS in "
            "front of anything shared."
        )
    return lines


def run_ui(port: int = 8080, host: str = "127.0.0.1", say: Callable[[str], None] = print) -> int:
    """`relcert ui`: Airflow standalone (scheduler, API server, DAG processor, triggerer)
    with the project's DAGs and plugins, on the embedded metadata DB, listening on `host`
    (loopback by default). Blocks until stopped."""
    env = airflow_env()
    env["AIRFLOW__API__HOST"] = host
    env["AIRFLOW__API__PORT"] = str(port)
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = os.environ.get(
        "RELCERT_UI_USERS", "admin:admin"
    )
    os.environ.update(env)
    ensure_metadata_db(env, say)
    ensure_pools(say)
    home = Path(env["AIRFLOW_HOME"])
    passwords = home / PASSWORDS_FILE
    # Airflow appends the generated password to this file and keeps an existing file's mode
    os.close(os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    private_home(home)
    for line in ui_announcement(host, port, passwords):
        say(line)
    airflow = Path(sys.executable).with_name("airflow")
    # standalone starts its components as `airflow ...` from PATH: use this environment's
    path = f"{airflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.call([str(airflow), "standalone"], env={**os.environ, **env, "PATH": path})
