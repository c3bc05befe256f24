"""A real Airflow deployment for tests: its own PostgreSQL database, scheduler, DAG
processor and API server as subprocesses, optionally CeleryExecutor workers on this
machine's Redis (under a key prefix of its own), all stopped (and cleaned) after."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pipeline._proc import signal_group, stop_process_group
from pipeline.scaleout import PERF_POOL
from tests.quick_profile import QUICK_PROFILES

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PG_DSN = "postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
DAG_ID = "model_release_certification"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def postgres_available() -> bool:
    return _listening(5432)


def redis_available() -> bool:
    return _listening(6379)


def _psql(sql: str, args: tuple = (), dbname: str = "postgres") -> list[tuple]:
    """Run one statement (autocommit: CREATE/DROP DATABASE too); its rows, if any."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowCluster:
    """Start with `start()`, always `stop()` (kills every process group, drops the DB)."""

    def __init__(self, root: Path, executor: str = "LocalExecutor", extra_env=None) -> None:
        self.root = root
        self.db = f"relcert_test_{uuid.uuid4().hex[:10]}"
        self.redis_prefix = f"{self.db}:"
        self.workers: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.processes: list[tuple[str, subprocess.Popen]] = []
        profiles = root / "profiles.yaml"
        profiles.parent.mkdir(parents=True, exist_ok=True)
        profiles.write_text(QUICK_PROFILES)  # its profile is named smoke, as the form accepts
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": PG_DSN.format(db=self.db),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "RELCERT_ARTIFACTS": str(root / "artifacts"),
            "RELCERT_PROFILES_FILE": str(profiles),
            "GX_ANALYTICS_ENABLED": "False",
            # the broker (used by the CeleryExecutor): this machine's Redis, keys prefixed
            "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/0",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": self.redis_prefix,
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            **(extra_env or {}),
        }

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [AIRFLOW, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, name: str, *args: str, env=None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [AIRFLOW, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((name, process))
        return process

    def start(self) -> AirflowCluster:
        home = Path(self.env["AIRFLOW_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "simple_auth_manager_passwords.json.generated").write_text('{"admin": "admin"}')
        _psql(f'CREATE DATABASE "{self.db}"')
        migrated = self.airflow("db", "migrate", timeout=600)
        if migrated.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed: {migrated.stderr[-2000:]}")
        # the perf pool every deployment needs: one slot, this is one machine
        pool = self.airflow("pools", "set", PERF_POOL, "1", "relcert perf tasks: one machine")
        if pool.returncode != 0:
            raise RuntimeError(f"airflow pools set failed: {pool.stderr[-2000:]}")
        self.spawn("api-server", "api-server", "--port", str(self.port))
        self.spawn("scheduler", "scheduler")
        self.spawn("dag-processor", "dag-processor")
        return self

    def start_worker(self, hostname: str, queues: str = "default", concurrency: int = 1):
        """`airflow celery worker` reporting `hostname` (TaskInstance.hostname and relcert's
        stage results), with a work folder of its own: it shares nothing with the other
        workers but the artifact store."""
        workdir = self.root / "workers" / hostname
        workdir.mkdir(parents=True, exist_ok=True)
        process = self.spawn(
            f"worker-{hostname}",
            "celery",
            "worker",
            "--celery-hostname",
            f"{hostname}@%h",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--skip-serve-logs",
            env={
                "RELCERT_HOSTNAME": hostname,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipeline.scaleout.worker_hostname",
                "RELCERT_WORKDIR": str(workdir),
                "TMPDIR": str(workdir),
            },
        )
        self.workers[hostname] = process
        return process

    def kill_worker(self, hostname: str) -> None:
        """SIGKILL a worker and everything it started (its tasks die mid-flight)."""
        process = self.workers.pop(hostname)
        signal_group(process, signal.SIGKILL)
        process.wait(timeout=30)
        self.processes = [(n, p) for n, p in self.processes if p is not process]

    def wait_for_dag(self, timeout_s: float = 180) -> None:
        """Until the DAG processor has serialized the DAG (read from the metadata DB: each
        `airflow` CLI call costs seconds of start-up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.query("SELECT count(*) FROM serialized_dag WHERE dag_id = %s", (DAG_ID,))
            if rows and rows[0][0]:
                return
            self.check_alive()
            time.sleep(1)
        raise TimeoutError(f"{DAG_ID} was not parsed within {timeout_s:g} s")

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return _psql(sql, args, dbname=self.db)

    def task_instances(self, run_id: str | None = None) -> list[dict]:
        """Task instances of the DAG (of one run if given), with where they ran."""
        sql = (
            "SELECT run_id, task_id, map_index, state, hostname, try_number, "
            "start_date, end_date "
            "FROM task_instance WHERE dag_id = %s"
        )
        args: tuple = (DAG_ID,)
        if run_id is not None:
            sql += " AND run_id = %s"
            args += (run_id,)
        keys = (
            "run_id",
            "task_id",
            "map_index",
            "state",
            "hostname",
            "try_number",
            "start_date",
            "end_date",
        )
        return [dict(zip(keys, row, strict=True)) for row in self.query(sql, args)]

    def runs(self) -> list[dict]:
        """The DAG's runs, read from the metadata DB (faster and steadier than the CLI)."""
        rows = self.query(
            "SELECT run_id, state, logical_date FROM dag_run WHERE dag_id = %s", (DAG_ID,)
        )
        return [{"run_id": r, "state": s, "logical_date": str(d)} for r, s, d in rows]

    def wait_for_runs(self, count: int, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = self.runs()
            states = [r.get("state") for r in runs]
            if len(runs) >= count and all(s in ("success", "failed") for s in states):
                return runs
            self.check_alive()
            time.sleep(5)
        raise TimeoutError(f"runs not finished within {timeout_s:g} s: {runs}")

    def stop(self) -> None:
        for _, process in reversed(self.processes):  # all at once: they stop in parallel
            signal_group(process, signal.SIGTERM)
        for _, process in reversed(self.processes):
            stop_process_group(process, 20, signalled=True)
        with contextlib.suppress(Exception):
            _psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        if redis_available():
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis(host="127.0.0.1", port=6379, db=0)
                keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=500))
                if keys:
                    client.delete(*keys)
                client.close()
