"""The DAG on a real distributed Airflow: PostgreSQL metadata DB, CeleryExecutor on this
machine's Redis, scheduler, DAG processor, API server and two Celery workers that report
different hostnames and have separate work folders (they share only the artifact store).

Two runs at once: the nightly schedule's (unpausing starts it) and a backfill of an earlier
date with a conf from the CLI (a backfill has its own active-run limit). (Triggering from the
UI's form in a browser is tested on the embedded Airflow: tests/dags/test_relcert_ui.py.)

1. While the backfill's run is in a measuring stage, the worker running it is killed (SIGKILL,
   with its task): the run still finishes, the killed task is retried on the other worker, and
   no artifact is half-written.
2. Both runs succeed; each date certifies its own model snapshot; the tasks spread over both
   workers; the perf-pool tasks never overlap, across runs too, and record the host that ran
   them; every report is approved with a complete package; the Certifications view shows the
   backfill's run to a signed-in user (in a real browser) and refuses anonymous users.
3. The decision as Airflow sees it, under the real scheduler: every run's note (set by the
   plugin's listener in the scheduler) states its decision, the RELCERT_NOTIFIER notifier
   fired on each successful run (in the DAG processor, with the note in its context), and
   each approval's Asset event triggered the example deployment DAG, whose runs verified
   every approved package.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.airflow_cluster import (
    DAG_ID,
    AirflowCluster,
    postgres_available,
    redis_available,
)

pytestmark = [
    pytest.mark.system,
    pytest.mark.xdist_group("measure"),  # its runs measure (and must pass their gates)
    pytest.mark.skipif(
        not (postgres_available() and redis_available()),
        reason="needs PostgreSQL on :5432 and Redis on :6379",
    ),
]

CHROMIUM = shutil.which("chromium")
REASON = "cli backfill"
BACKFILL_DATE = "2026-02-02"
RUNS = 2  # the schedule's and the backfill's
WORKERS = ("relcert-worker-a", "relcert-worker-b")
PERF_TASKS = {"load_test", "stress_test", "infra_validate"}
CONSUMER = "relcert_deploy_on_approval"
PROJECT = Path(__file__).resolve().parents[2]


def _run_dir(root: Path, run_id: str) -> Path:
    from pipeline.orchestrate import run_key

    return root / "artifacts" / DAG_ID / run_key(run_id)


def _report(root: Path, run_id: str) -> dict:
    path = _run_dir(root, run_id) / "report.json"
    assert path.exists(), f"no report for {run_id}"
    return json.loads(path.read_text())


def _browser():
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    browser = manager.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    return manager, browser


def _login(page, base: str) -> None:
    page.goto(base + "/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "admin")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base + "/", timeout=30_000)


def _assert_complete(run_dir: Path) -> dict:
    """The run's artifacts are whole: no temp file, every JSON parses, the report names
    both models and passed gates, and the package matches its checksums."""
    leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"half-written files left in the store: {leftovers}"
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # a torn write would not parse
    report = json.loads((run_dir / "report.json").read_text())
    assert {m["name"] for m in report["models"]} == {"quality_predictor", "routing_classifier"}
    assert report["decision"] in ("APPROVED", "CONDITIONAL_APPROVAL"), report["decision"]
    assert all(g["success"] for g in report["gates"].values()), report["gates"]
    package = run_dir / report["package"]
    assert package.is_file() and package.suffix == ".zip"
    import zipfile

    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
        sums = {}
        sums_name = next(n for n in names if n.endswith("SHA256SUMS"))
        prefix = sums_name[: -len("SHA256SUMS")]
        for line in archive.read(sums_name).decode().splitlines():
            digest, name = line.split(maxsplit=1)
            sums[prefix + name.lstrip("*")] = digest
        assert len(sums) >= 5, names
        for name, digest in sums.items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest, name
    return report


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    cluster = AirflowCluster(
        root,
        executor="CeleryExecutor",
        extra_env={
            # a killed worker's task is declared dead after 20 s without a heartbeat
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "RELCERT_RETRY_DELAY_S": "5",
            # the notifier of every successful run, rendered with the run's note
            "RELCERT_NOTIFIER": "tests.dags.recording_notifier.RecordingNotifier",
            "RELCERT_NOTIFIER_KWARGS": json.dumps(
                {"path": str(root / "notifications.jsonl"), "message": "{{ dag_run.note }}"}
            ),
            "RELCERT_NOTIFY_ON": "success",
            "PYTHONPATH": str(PROJECT),  # the DAG processor imports the notifier from tests/
        },
    )
    try:
        cluster.start()
        for hostname in WORKERS:
            cluster.start_worker(hostname, concurrency=1)
        cluster.wait_for_dag()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def triggered(cluster) -> AirflowCluster:
    """The nightly schedule's run (unpausing starts it) and, alongside it, a backfill of one
    earlier date with a conf from the CLI (the DAG allows one scheduled or manual run at a
    time; a backfill has its own limit)."""
    for dag_id in (CONSUMER, DAG_ID):  # the deployment DAG first: it waits for approvals
        unpaused = cluster.airflow("dags", "unpause", dag_id)
        assert unpaused.returncode == 0, unpaused.stderr[-2000:]
    backfill = cluster.airflow(
        "backfill",
        "create",
        "--dag-id",
        DAG_ID,
        "--from-date",
        BACKFILL_DATE,
        "--to-date",
        f"{BACKFILL_DATE}T23:00:00",
        "--max-active-runs",
        "1",
        "--dag-run-conf",
        json.dumps({"reason": REASON}),
    )
    assert backfill.returncode == 0, backfill.stdout[-2000:] + backfill.stderr[-2000:]
    return cluster


def _is_backfill(run_id: str) -> bool:
    return run_id.startswith("backfill__")


def test_a_worker_killed_mid_run_the_run_still_finishes_with_whole_artifacts(triggered) -> None:
    cluster = triggered
    # kill the worker running one of the backfill run's measuring stages (they run for tens
    # of seconds: a short task could end between being seen running and the kill, and then
    # there is nothing to retry)
    run_id, victim = None, None
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline:
        for ti in cluster.task_instances():
            if not _is_backfill(ti["run_id"]):
                continue
            run_id = ti["run_id"]
            if ti["state"] == "running" and ti["task_id"] in PERF_TASKS and ti["hostname"]:
                time.sleep(1.0)  # let it get going: it is killed mid-task
                now = next(
                    t
                    for t in cluster.task_instances(run_id)
                    if t["task_id"] == ti["task_id"] and t["map_index"] == ti["map_index"]
                )
                if now["state"] == "running" and now["try_number"] == ti["try_number"]:
                    victim = ti
                break
        cluster.check_alive()
        time.sleep(0.5)
    assert victim is not None, "no measuring stage of the backfill's run was seen running"
    cluster.kill_worker(victim["hostname"])

    deadline = time.monotonic() + 600
    state = None
    while state not in ("success", "failed") and time.monotonic() < deadline:
        state = next(r["state"] for r in cluster.runs() if r["run_id"] == run_id)
        cluster.check_alive()
        time.sleep(2)
    assert state == "success", f"{run_id}: {state}"
    survivor = next(w for w in WORKERS if w != victim["hostname"])
    retried = next(
        ti for ti in cluster.task_instances(run_id) if ti["task_id"] == victim["task_id"]
    )
    assert retried["try_number"] >= 2 and retried["hostname"] == survivor, retried
    report = _assert_complete(_run_dir(cluster.root, run_id))
    assert report["conf"]["reason"] == REASON


def test_schedule_and_backfill_runs_certify_across_both_workers(triggered) -> None:
    cluster = triggered
    runs = cluster.wait_for_runs(RUNS, timeout_s=900)
    assert len(runs) == RUNS and [r["state"] for r in runs] == ["success"] * RUNS, runs

    versions, reasons = {}, {}
    for run in runs:
        report = _assert_complete(_run_dir(cluster.root, run["run_id"]))
        day = report["conf"]["snapshot_date"]
        versions.setdefault(day, set()).update(m["version"] for m in report["models"])
        reasons[run["run_id"]] = (report["conf"].get("reason"), report["decision"])
    assert len(versions) == RUNS, versions  # the schedule's date and the backfill's
    for day, seen in versions.items():
        assert seen == {f"1.0.{day.replace('-', '')}"}, versions
    assert BACKFILL_DATE in versions
    assert sorted(why or "" for why, _ in reasons.values()) == ["", REASON], reasons

    tis = cluster.task_instances()
    assert {ti["hostname"] for ti in tis} == set(WORKERS), "both workers should run tasks"
    spread = [
        run["run_id"]
        for run in runs
        if {ti["hostname"] for ti in tis if ti["run_id"] == run["run_id"]} == set(WORKERS)
    ]
    assert spread, "some run should have its tasks spread over both workers"
    # the perf pool has one slot (one machine): its tasks never overlap, across runs too
    perf = sorted(
        (ti["start_date"], ti["end_date"], ti["task_id"])
        for ti in tis
        if ti["task_id"] in PERF_TASKS
    )
    assert len(perf) == 3 * len(runs)
    for (_, end, first), (start, _, second) in itertools.pairwise(perf):
        assert start >= end, f"{first} and {second} ran at the same time"
    # each measured stage says which host ran it, and it is the worker Airflow recorded
    stage_dirs = {"load_test": "load", "stress_test": "stress", "infra_validate": "infra"}
    for ti in tis:
        if ti["task_id"] in stage_dirs:
            summary = _run_dir(cluster.root, ti["run_id"]) / "stages" / stage_dirs[ti["task_id"]]
            host = json.loads((summary / "summary.json").read_text())["host"]["hostname"]
            assert host == ti["hostname"], (ti["task_id"], host, ti["hostname"])

    # the Certifications view shows the backfill's run to a signed-in user, nothing to others
    base = f"http://127.0.0.1:{cluster.port}"
    if CHROMIUM:
        decision = next(d for why, d in reasons.values() if why == REASON)
        manager, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            _login(page, base)
            page.goto(base + "/relcert/certifications")
            text = page.inner_text("body")
            assert REASON in text and decision in text
        finally:
            browser.close()
            manager.stop()
    anonymous = httpx.get(base + "/relcert/certifications", timeout=30)
    assert anonymous.status_code == 401
    assert REASON not in anonymous.text


def _verified_packages(cluster) -> list:
    """What the deployment DAG's verify_package tasks returned, one list per run."""
    rows = cluster.query(
        "SELECT x.value FROM xcom x JOIN dag_run r ON r.dag_id = x.dag_id "
        "AND r.run_id = x.run_id WHERE x.dag_id = %s AND x.task_id = %s "
        "AND x.key = 'return_value'",
        (CONSUMER, "verify_package"),
    )
    return [json.loads(v) if isinstance(v, str) else v for (v,) in rows]


def test_decisions_reach_airflow_notes_notifiers_and_the_deployment_dag(triggered) -> None:
    cluster = triggered
    runs = cluster.wait_for_runs(RUNS, timeout_s=900)
    notes = dict(
        cluster.query(
            "SELECT r.run_id, n.content FROM dag_run r LEFT JOIN dag_run_note n "
            "ON n.dag_run_id = r.id WHERE r.dag_id = %s",
            (DAG_ID,),
        )
    )
    packages = {}
    for run in runs:
        report = _report(cluster.root, run["run_id"])
        note = notes[run["run_id"]] or ""
        assert note.startswith(f"{report['decision']} (readiness "), (run["run_id"], note)
        assert f"- {report['reasons'][0]}" in note
        if report["decision"] == "APPROVED":
            packages[run["run_id"]] = str(_run_dir(cluster.root, run["run_id"]) / report["package"])
    assert packages, "no approved run"

    # every approval emitted its Asset event, and the deployment DAG verified the package of
    # every event it was triggered by. Airflow 3.3 keeps one pending run per Asset: an event
    # that arrives while the previous one's is pending is delivered with the next approval
    # (apache/airflow#54659, #56050), so the newest approvals may still be held; an older
    # one missing would be a lost approval
    emitted = {
        extra["run_id"]: when
        for extra, when in (
            (json.loads(e) if isinstance(e, str) else e, when)
            for e, when in cluster.query(
                "SELECT e.extra, e.timestamp FROM asset_event e JOIN asset a "
                "ON a.id = e.asset_id WHERE a.uri LIKE %s",
                (f"relcert://{DAG_ID}/%",),
            )
        )
    }
    assert set(emitted) == set(packages), (sorted(emitted), sorted(packages))
    seen: dict[str, dict] = {}
    states: set[str] = set()
    settled_since = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = {v["run_id"]: v for verified in _verified_packages(cluster) for v in verified}
        consumer = cluster.query("SELECT state FROM dag_run WHERE dag_id = %s", (CONSUMER,))
        states = {state for (state,) in consumer}
        settled = bool(states) and states <= {"success", "failed"}
        if set(seen) >= set(packages) and settled:
            break
        # the rest is held for the next approval (above) when nothing moves for 30 s
        settled_since = (settled_since or time.monotonic()) if settled else None
        if settled_since is not None and time.monotonic() - settled_since > 30:
            break
        cluster.check_alive()
        time.sleep(3)
    consumer_runs = cluster.query(
        "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = %s", (CONSUMER,)
    )
    assert seen and set(seen) <= set(packages), (sorted(seen), sorted(packages), consumer_runs)
    held = set(packages) - set(seen)
    newest_delivered = max(emitted[s] for s in seen)
    assert all(emitted[r] > newest_delivered for r in held), (held, emitted, consumer_runs)
    for run_id, record in seen.items():
        assert record["verified"] and record["package"] == packages[run_id], record
        assert set(record["models"]) == {"quality_predictor", "routing_classifier"}
    assert states == {"success"}, states

    # the notifier ran for each successful run, in the DAG processor, with the run's note
    log = cluster.root / "notifications.jsonl"
    deadline = time.monotonic() + 120
    lines: list[dict] = []
    while len(lines) < len(runs) and time.monotonic() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        time.sleep(2)
    assert sorted(line["run_id"] for line in lines) == sorted(r["run_id"] for r in runs), lines
    for line in lines:
        assert line["reason"] == "success"
        assert line["message"] == notes[line["run_id"]], line
