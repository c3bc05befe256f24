"""`relcert run --profile smoke` twice in one project, as a new user would: the second run's
output shows its own tasks only, as they change, and no third-party warning; each task's log
is named and holds what the task wrote; a run started while another is going is refused at
once, touching nothing; the report opens in a browser and every link leads to a file.

Two whole runs (the quick profile under the name `smoke`): the first fails at `prepare` (its
models file lies outside the models folders: seconds), so its task lines are unlike any of
a healthy run; the second measures."""

from __future__ import annotations

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

DAG_ID = "model_release_certification"
TASK_LINE = re.compile(r"^\[\s*[\d.]+s\] (\S+)\s+(\w+)(?:\s+\(log: (.+)\))?$")
THIRD_PARTY_NOISE = ("Deprecat", "deprecated", "[warning", "[info", "Traceback", "py.warnings")


def _relcert_run(env: dict[str, str], date: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--profile", "smoke", "--date", date, *args],
        env=env,
        text=True,
        **popen,
    )


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


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("run-twice")
    profiles = root / "quick-profiles.yaml"
    profiles.write_text(QUICK_PROFILES)
    env = {
        **os.environ,
        "RELCERT_ARTIFACTS": str(root / "artifacts"),
        "RELCERT_AIRFLOW_HOME": str(root / "airflow"),
        "RELCERT_PROFILES_FILE": str(profiles),
        "RELCERT_RETRY_DELAY_S": "1",
    }
    bad_conf = json.dumps({"models_file": "../../../../etc/passwd"})
    first = _relcert_run(env, "2026-01-14", "--conf", bad_conf, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    first_out, first_err = first.communicate(timeout=900)
    # the second run, and while it runs, a third on the same project
    out_file, err_file = root / "second.out", root / "second.err"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        second = _relcert_run(env, "2026-01-15", stdout=out, stderr=err)
        deadline = time.monotonic() + 300
        # once its prepare task is shown done, its DAG run and run folder exist
        while ("prepare", "success") not in _task_lines(out_file.read_text()):
            if second.poll() is not None or time.monotonic() > deadline:
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
        second.wait(timeout=900)
    return {
        "env": env,
        "root": root,
        "first": (first.returncode, first_out, first_err),
        "second": (second.returncode, out_file.read_text(), err_file.read_text()),
        "third": (third.returncode, third.stdout, third.stderr, third_seconds),
        "dag_runs": (runs_before, runs_after),
        "run_folders": (folders_before, folders_after),
    }


def _run_folders(env: dict[str, str]) -> list[str]:
    folder = Path(env["RELCERT_ARTIFACTS"]) / DAG_ID
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _dag_runs(env: dict[str, str]) -> list[str]:
    db = sqlite3.connect(Path(env["RELCERT_AIRFLOW_HOME"]) / "airflow.db")
    try:
        return [r for (r,) in db.execute("SELECT run_id FROM dag_run ORDER BY run_id")]
    finally:
        db.close()


def test_the_second_run_shows_its_own_tasks_only(runs: dict) -> None:
    _, first_out, _ = runs["first"]
    code, second_out, second_err = runs["second"]
    assert code in (0, 10, 20), second_out[-3000:] + second_err[-3000:]
    first_lines, second_lines = _task_lines(first_out), _task_lines(second_out)
    assert ("prepare", "failed") in first_lines and ("build_models", "upstream_failed") in (
        first_lines
    )
    # every task line of the second run is a state its own task instance went through
    mine = _task_instances(runs["env"], _run_id(second_out))
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


def test_no_third_party_warning_reaches_the_terminal(runs: dict) -> None:
    for name in ("first", "second"):
        _, out, err = runs[name][:3]
        for line in (out + err).splitlines():
            assert not any(noise in line for noise in THIRD_PARTY_NOISE), (name, line)
    # they went to the run's log, which the output names
    _, out, _ = runs["second"]
    line = next(line for line in out.splitlines() if line.startswith("==> the whole run's"))
    run_log = Path(line.rsplit(": ", 1)[1])
    assert "is deprecated" in run_log.read_text()


def test_the_output_names_the_db_and_where_each_task_log_is(runs: dict) -> None:
    home = Path(runs["env"]["RELCERT_AIRFLOW_HOME"])
    for name in ("first", "second"):
        out = runs[name][1]
        assert out.splitlines()[0].startswith(
            f"==> relcert run on the embedded Airflow: metadata DB {home / 'airflow.db'}"
        ), out[:500]
    # the failed first run: where the failed task's log is, and why it failed
    _, first_out, _ = runs["first"]
    failed = next(m for line in first_out.splitlines() if (m := TASK_LINE.match(line))
                  and m.group(1, 2) == ("prepare", "failed"))  # fmt: skip
    log = Path(failed.group(3))
    assert log.is_file() and "outside the models folders" in log.read_text()
    assert "        error: invalid conf: conf.models_file: '../../../../etc/passwd'" in first_out
    assert "root:x:" not in first_out + log.read_text()
    # the second run: one line per task instance, with its log (its own output inside)
    _, out, _ = runs["second"]
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
    mine = _task_instances(runs["env"], _run_id(out))
    assert set(listed) == set(mine)
    for label, (state, where) in listed.items():
        assert state == mine[label][0], label
        if where.startswith("(did not run"):
            assert state in ("upstream_failed", "skipped", "removed"), label
            continue
        assert (folder / where).is_file() and (folder / where).stat().st_size > 0, where
    load_log = folder / listed["load_test"][1]
    assert "load: capacity " in load_log.read_text()  # the stage's own progress lines


def test_a_run_started_during_another_is_refused_at_once(runs: dict) -> None:
    code, out, err, seconds = runs["third"]
    assert code == 1, out + err
    assert "relcert run: error: another relcert run (pid " in err
    assert "one run at a time per metadata DB" in err and "RELCERT_AIRFLOW_HOME" in err
    assert seconds < 60  # at once: it does not wait for the other run
    before, after = runs["dag_runs"]
    assert len(after) == 2 and after == before  # it started nothing: no DAG run, no folder
    assert runs["run_folders"][1] == runs["run_folders"][0]
    assert runs["second"][0] in (0, 10, 20)  # and the running one was not disturbed


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_reports_links_all_open_in_a_browser(runs: dict) -> None:
    _, out, _ = runs["second"]
    report = Path(next(line for line in out.splitlines() if line.startswith("==> report: "))[12:])
    followed = follow_every_link(report)
    assert any(url.endswith("/gates/certify.json") for url in followed)
    assert any(url.endswith("/stages/regression/comparisons.csv") for url in followed)
