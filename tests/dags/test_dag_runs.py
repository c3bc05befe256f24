"""The DAG end to end through Airflow (`relcert run` = dag.test on an embedded SQLite DB),
as a new user would run it, in one project (one metadata DB, one artifacts store):

1. a run whose models file lies outside the models folders: refused at `prepare`, in seconds;
2. the quickstart (`relcert run --profile smoke`, the real profile): APPROVED, its report,
   package and approval event; its output shows its own tasks only (none of run 1's), as
   they change, no third-party warning, and where each task's log is; while it runs, a third
   `relcert run` on the same project is refused at once, touching nothing; its report opens
   in a browser and every link leads to a file;
3. an impossible target from the trigger conf (the quick profile that still gives every
   criterion enough samples): NOT_APPROVED, no package, no approval, the run failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.quick_profile import QUICK_PROFILES
from tests.report_browser import CHROMIUM, follow_every_link

pytestmark = pytest.mark.e2e

DAG_ID = "model_release_certification"
TASK_LINE = re.compile(r"^\[\s*[\d.]+s\] (\S+)\s+(\w+)(?:\s+\(log: (.+)\))?$")
THIRD_PARTY_NOISE = ("Deprecat", "deprecated", "[warning", "[info", "Traceback", "py.warnings")
OUTSIDE = json.dumps({"models_file": "../../../../etc/passwd"})
IMPOSSIBLE = json.dumps({"target_overrides": {"p99_latency_ms": 0.001}, "reason": "strict"})


def _relcert_run(env: dict[str, str], date: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--date", date, *args],
        env=env,
        text=True,
        **popen,
    )


def _finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path) -> dict:
    """The three runs (and the refused one) in one project; what each printed."""
    from tests.conftest import copy_airflow_home

    root = tmp_path_factory.mktemp("relcert-run")
    profiles = root / "quick-profiles.yaml"
    profiles.write_text(QUICK_PROFILES)
    env = {
        **os.environ,
        "RELCERT_ARTIFACTS": str(root / "artifacts"),
        "RELCERT_AIRFLOW_HOME": str(copy_airflow_home(migrated_airflow_db, root / "airflow")),
        # no run here is about retry delays: a failed prepare's final_report retries once
        "RELCERT_RETRY_DELAY_S": "1",
    }
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    outside = _finished(_relcert_run(env, "2026-01-14", "--conf", OUTSIDE, **pipe))
    # the quickstart, and while it runs, another run on the same project
    out_file, err_file = root / "quickstart.out", root / "quickstart.err"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        quickstart = _relcert_run(
            env, "2026-01-15", "--profile", "smoke", "--conf", '{"reason": "nightly ci"}',
            stdout=out, stderr=err,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        # once its prepare task is shown done, its DAG run and run folder exist
        while ("prepare", "success") not in _task_lines(out_file.read_text()):
            if quickstart.poll() is not None or time.monotonic() > deadline:
                break  # the tests below say what went wrong
            time.sleep(0.5)
        runs_before, folders_before = _dag_runs(env), _run_folders(env)
        started = time.monotonic()
        third = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run", "--date", "2026-01-16"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        third_seconds = time.monotonic() - started
        runs_after, folders_after = _dag_runs(env), _run_folders(env)
        quickstart.wait(timeout=900)
    strict = _finished(
        _relcert_run(
            {**env, "RELCERT_PROFILES_FILE": str(profiles)}, "2026-01-16", "--conf", IMPOSSIBLE,
            **pipe,
        )
    )  # fmt: skip
    as_tuple = lambda done: (done.returncode, done.stdout, done.stderr)  # noqa: E731
    return {
        "env": env,
        "outside_": as_tuple(outside),
        "quickstart_": (quickstart.returncode, out_file.read_text(), err_file.read_text()),
        "outside": outside,
        "quickstart": subprocess.CompletedProcess(
            quickstart.args, quickstart.returncode, out_file.read_text(), err_file.read_text()
        ),
        "third": (third.returncode, third.stdout, third.stderr, third_seconds),
        "dag_runs": (runs_before, runs_after),
        "run_folders": (folders_before, folders_after),
        "strict": strict,
    }


def _task_lines(output: str) -> list[tuple[str, str]]:
    return [m.group(1, 2) for line in output.splitlines() if (m := TASK_LINE.match(line))]


def _task_instances(env: dict[str, str], run_id: str) -> dict[str, tuple[str, int]]:
    """label -> (state, try_number) of one run's task instances, as Airflow recorded them."""
    db = sqlite3.connect(Path(env["RELCERT_AIRFLOW_HOME"]) / "airflow.db")
    try:
        rows = db.execute(
            "SELECT task_id, map_index, state, try_number FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            (DAG_ID, run_id),
        ).fetchall()
    finally:
        db.close()
    return {(t if m < 0 else f"{t}[{m}]"): (s, n) for t, m, s, n in rows}


def _run_id(output: str) -> str:
    line = next(line for line in output.splitlines() if line.startswith("==> running "))
    return line.rsplit(", run ", 1)[1]


def _run_folders(env: dict[str, str]) -> list[str]:
    folder = Path(env["RELCERT_ARTIFACTS"]) / DAG_ID
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _dag_runs(env: dict[str, str]) -> list[str]:
    db = sqlite3.connect(Path(env["RELCERT_AIRFLOW_HOME"]) / "airflow.db")
    try:
        return [r for (r,) in db.execute("SELECT run_id FROM dag_run ORDER BY run_id")]
    finally:
        db.close()


def _report(output: str) -> tuple[dict, Path]:
    line = next(line for line in output.splitlines() if line.startswith("==> report: "))
    run_dir = Path(line.split(": ", 1)[1]).parent
    return json.loads((run_dir / "report.json").read_text()), run_dir


def _metadata(env: dict[str, str], output: str) -> dict:
    """The DAG run as Airflow recorded it in the embedded metadata DB: its state, its note
    (the grid shows it), its decision task's state, and the asset events it emitted."""
    line = next(line for line in output.splitlines() if line.startswith("==> airflow run "))
    run_id = line[len("==> airflow run ") :].rsplit(": ", 1)[0]
    db = sqlite3.connect(Path(env["RELCERT_AIRFLOW_HOME"]) / "airflow.db")
    try:
        state, note = db.execute(
            "SELECT r.state, n.content FROM dag_run r "
            "LEFT JOIN dag_run_note n ON n.dag_run_id = r.id WHERE r.dag_id = ? AND r.run_id = ?",
            (DAG_ID, run_id),
        ).fetchone()
        [(decision_state,)] = db.execute(
            "SELECT state FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (DAG_ID, run_id, "decision"),
        ).fetchall()
        columns = "a.name, a.uri, e.extra, e.source_dag_id, e.source_task_id, e.source_run_id"
        events = [
            (row[1], json.loads(row[2]), row)
            for row in db.execute(
                f"SELECT {columns}, e.source_map_index, e.timestamp FROM asset_event e "
                "JOIN asset a ON a.id = e.asset_id "
                "WHERE e.source_dag_id = ? AND e.source_run_id = ?",
                (DAG_ID, run_id),
            )
        ]
    finally:
        db.close()
    return {"state": state, "note": note, "decision": decision_state, "events": events}


def _verify_recorded(env: dict[str, str], row: tuple) -> tuple[dict, str]:
    """verify_approvals on an asset_event row as the Task SDK delivers it to the consumer,
    and on the same extra as a REST API post would leave it: (verified record, refusal)."""
    import datetime as dt

    from airflow.sdk.exceptions import AirflowFailException
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    from pipeline.airflow.approvals import verify_approvals

    name, uri, extra, dag_id, task_id, run_id, map_index, timestamp = row
    when = dt.datetime.fromisoformat(str(timestamp)).replace(tzinfo=dt.UTC)
    fields = {"asset": {"name": name, "uri": uri, "extra": {}}, "timestamp": when}
    recorded = AssetEventDagRunReferenceResult(
        **fields,
        extra=json.loads(extra),
        source_dag_id=dag_id,
        source_task_id=task_id,
        source_run_id=run_id,
        source_map_index=map_index,
        source_aliases=[{"name": "relcert_approvals"}],
    )
    posted = AssetEventDagRunReferenceResult(
        **fields,
        extra={**json.loads(extra), "from_rest_api": True},
        source_dag_id=None,
        source_task_id=None,
        source_run_id=None,
        source_map_index=None,
        source_aliases=[],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RELCERT_ARTIFACTS", env["RELCERT_ARTIFACTS"])
        [verified] = verify_approvals([recorded])
        with pytest.raises(AirflowFailException) as refused:
            verify_approvals([posted])
    return verified, str(refused.value)


def test_the_quickstart_is_approved_with_report_package_and_approval(project: dict) -> None:
    result, airflow_env = project["quickstart"], project["env"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> decision: APPROVED" in result.stdout
    # progress per task was shown
    for task in ("prepare", "build_model[0]", "gate_load", "final_report"):
        assert task in result.stdout
    report, run_dir = _report(result.stdout)
    assert report["decision"] == "APPROVED"
    assert (run_dir / "data_docs/index.html").exists() and (run_dir / "report.html").exists()
    assert all(g["success"] for g in report["gates"].values())
    assert report["conf"]["reason"] == "nightly ci"
    package = run_dir / report["package"]
    assert package.exists() and package.suffix == ".zip"
    assert {m["name"] for m in report["models"]} == {"quality_predictor", "routing_classifier"}
    # Airflow's view: a successful run whose note says APPROVED, and one approval event
    # carrying the package, its checksum, the model versions and the report
    airflow = _metadata(airflow_env, result.stdout)
    assert airflow["state"] == "success" and airflow["decision"] == "success"
    assert airflow["note"].startswith("APPROVED (readiness 1.00)\n- All ")
    [(uri, extra, row)] = airflow["events"]
    assert uri == f"relcert://{DAG_ID}/quality_predictor+routing_classifier"
    assert Path(extra["package"]) == package and extra["decision"] == "APPROVED"
    assert extra["package_sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    assert extra["models"] == {m["name"]: m["version"] for m in report["models"]}
    assert Path(extra["report_json"]) == run_dir / "report.json"
    # the event as Airflow recorded it passes the deployment DAG's checks; the same extra
    # posted through the REST API does not
    verified, refusal = _verify_recorded(airflow_env, row)
    assert verified["package"] == str(package) and verified["decision"] == "APPROVED"
    assert "posted through the REST API" in refusal


def test_an_impossible_target_gives_not_approved_and_no_package(project: dict) -> None:
    result, airflow_env = project["strict"], project["env"]
    assert result.returncode == 20, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> decision: NOT_APPROVED" in result.stdout
    report, run_dir = _report(result.stdout)
    assert report["package"] is None and not (run_dir / "package").exists()
    failed = [
        c["name"]
        for c in report["criteria"]
        if not c["met"] and c["status"] not in ("not_applicable", "not_run")
    ]
    # the failed load gate stops the infra stage: its criteria (the interface SLAs and the
    # availability) are not run, saying so, never passed
    not_run = [c for c in report["criteria"] if c["status"] == "not_run"]
    assert {c["name"] for c in not_run} == {
        "routing_endpoint_p99_ms",
        "quality_endpoint_p99_ms",
        "endpoint_p99_latency_ms[quality_predictor]",
        "endpoint_p99_latency_ms[routing_classifier]",
        "validation_endpoint_s",
        "availability",
    }
    assert all("the infra stage did not run" in c["detail"] for c in not_run)
    # the override reaches the stages that measure against it: the capacity search looks
    # for a rate whose p99 is within 1.2 microseconds, and finds none (for the mix and for
    # each model on its own)
    models = ("quality_predictor", "routing_classifier")
    assert failed == [
        "p99_latency_ms",
        *(f"p99_latency_ms[{m}]" for m in models),
        "sustained_throughput_rps",
        *(f"sustained_throughput_rps[{m}]" for m in models),
    ]
    sustained = next(c for c in report["criteria"] if c["name"] == "sustained_throughput_rps")
    assert "p99 <= 0.0012 ms" in sustained["detail"]
    assert report["gates"]["certify"]["success"] is False
    assert report["gates"]["load"]["success"] is False  # the load gate checks p99 too
    # Airflow's view: the run failed (its decision task failed with the first reasons, so
    # failure callbacks fire), its note gives the decision and why, and nothing was approved
    airflow = _metadata(airflow_env, result.stdout)
    assert airflow["state"] == "failed" and airflow["decision"] == "failed"
    note = airflow["note"]
    head = "\n".join(
        [
            f"NOT_APPROVED (readiness {report['readiness_score']:.2f})",
            *(f"- {reason}" for reason in report["reasons"][:3]),
        ]
    )
    assert len(note) <= 1000  # a note is cut at 1,000 characters, ending "..."
    cut = note.endswith("...") and len(note) == 1000
    assert note.startswith(head) or (cut and head.startswith(note[:-3])), note
    assert note.endswith(f"report: {run_dir / 'report.html'}") or cut
    assert airflow["events"] == []
    assert "==> airflow run " in result.stdout and result.stdout.rstrip().endswith(": failed")


def test_invalid_conf_is_refused_with_a_message(project: dict) -> None:
    result = _finished(
        _relcert_run(project["env"], "2026-01-17", "--conf", '{"profile": "weekly"}',
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )  # fmt: skip
    assert result.returncode == 1
    assert "profile" in (result.stdout + result.stderr)


def test_a_models_file_outside_the_models_folders_fails_prepare(project: dict) -> None:
    """Whoever triggers a run cannot make a worker read any file: prepare fails, naming the
    file and the setting, and nothing of the file shows."""
    result = project["outside"]
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "invalid conf: conf.models_file: '../../../../etc/passwd' resolves to" in output
    assert "outside the models folders (RELCERT_MODELS_DIRS=" in output
    assert "root:x:" not in output


def test_the_quickstart_shows_its_own_tasks_only(project: dict) -> None:
    _, first_out, _ = project["outside_"]
    code, second_out, second_err = project["quickstart_"]
    assert code in (0, 10, 20), second_out[-3000:] + second_err[-3000:]
    first_lines, second_lines = _task_lines(first_out), _task_lines(second_out)
    assert ("prepare", "failed") in first_lines and ("build_models", "upstream_failed") in (
        first_lines
    )
    # every task line of the second run is a state its own task instance went through
    mine = _task_instances(project["env"], _run_id(second_out))
    for label, state in second_lines:
        final, tries = mine[label]
        assert state in (final, "running") or (state == "up_for_retry" and tries > 1), (
            f"{label} {state}: not a state of this run's {label} ({final})"
        )
    assert ("prepare", "failed") not in second_lines
    # ... and each of its task instances is shown with the state it ended in
    for label, (final, _) in mine.items():
        if final in ("success", "failed", "skipped", "upstream_failed"):
            assert (label, final) in second_lines, label


def test_no_third_party_warning_reaches_the_terminal(project: dict) -> None:
    for name in ("outside_", "quickstart_"):
        _, out, err = project[name][:3]
        for line in (out + err).splitlines():
            assert not any(noise in line for noise in THIRD_PARTY_NOISE), (name, line)
    # they went to the run's log, which the output names
    _, out, _ = project["quickstart_"]
    line = next(line for line in out.splitlines() if line.startswith("==> the whole run's"))
    run_log = Path(line.rsplit(": ", 1)[1])
    assert "is deprecated" in run_log.read_text()


def test_the_output_names_the_db_and_where_each_task_log_is(project: dict) -> None:
    home = Path(project["env"]["RELCERT_AIRFLOW_HOME"])
    for name in ("outside_", "quickstart_"):
        out = project[name][1]
        assert out.splitlines()[0].startswith(
            f"==> relcert run on the embedded Airflow: metadata DB {home / 'airflow.db'}"
        ), out[:500]
    # the failed first run: where the failed task's log is, and why it failed
    _, first_out, _ = project["outside_"]
    failed = next(m for line in first_out.splitlines() if (m := TASK_LINE.match(line))
                  and m.group(1, 2) == ("prepare", "failed"))  # fmt: skip
    log = Path(failed.group(3))
    assert log.is_file() and "outside the models folders" in log.read_text()
    assert "        error: invalid conf: conf.models_file: '../../../../etc/passwd'" in first_out
    assert "root:x:" not in first_out + log.read_text()
    # the second run: one line per task instance, with its log (its own output inside)
    _, out, _ = project["quickstart_"]
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("==> task logs, under ")))
    folder = Path(lines[start].removeprefix("==> task logs, under ").rstrip(":"))
    listed = {}
    for line in lines[start + 1 :]:
        if not line.startswith("    ") or line.startswith("        "):
            if line.startswith("==> "):
                break
            continue
        label, state, where = line.split(None, 2)
        listed[label] = (state, where)
    mine = _task_instances(project["env"], _run_id(out))
    assert set(listed) == set(mine)
    for label, (state, where) in listed.items():
        assert state == mine[label][0], label
        if where.startswith("(did not run"):
            assert state in ("upstream_failed", "skipped", "removed"), label
            continue
        assert (folder / where).is_file() and (folder / where).stat().st_size > 0, where
    load_log = folder / listed["load_test"][1]
    assert "load: capacity " in load_log.read_text()  # the stage's own progress lines


def test_a_run_started_during_another_is_refused_at_once(project: dict) -> None:
    code, out, err, seconds = project["third"]
    assert code == 1, out + err
    assert "relcert run: error: another relcert run (pid " in err
    assert "one run at a time per metadata DB" in err and "RELCERT_AIRFLOW_HOME" in err
    assert seconds < 60  # at once: it does not wait for the other run
    before, after = project["dag_runs"]
    assert (
        len(after) == 2 and after == before
    )  # runs 1 and 2  # it started nothing: no DAG run, no folder
    assert project["run_folders"][1] == project["run_folders"][0]
    assert project["quickstart_"][0] in (0, 10, 20)  # and the running one was not disturbed


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_reports_links_all_open_in_a_browser(project: dict) -> None:
    _, out, _ = project["quickstart_"]
    report = Path(next(line for line in out.splitlines() if line.startswith("==> report: "))[12:])
    followed = follow_every_link(report)
    assert any(url.endswith("/gates/certify.json") for url in followed)
    assert any(url.endswith("/stages/regression/comparisons.csv") for url in followed)
