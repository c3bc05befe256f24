"""`relcert run`'s output: relcert's own lines and warnings on the terminal; Airflow's output,
libraries' warnings, the tasks' own output and their children's, in the run's log files (one
per task attempt, where Airflow's UI looks for it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

PROJECT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import logging, os, sys, warnings
from pathlib import Path
from types import SimpleNamespace

from pipeline.airflow.run_output import RunOutput

warnings.simplefilter("always")  # every warning is emitted: where it goes is the point
own_module = str(Path(sys.argv[2]) / "pipeline" / "inference" / "model_manager.py")
with RunOutput(Path(sys.argv[1]), "some_dag") as out:
    out.say("==> a line of relcert's")
    import airflow.settings  # noqa: F401  (its import-time output goes to the log)

    out.start("manual__test")
    print("a line printed between tasks")
    warnings.warn_explicit("old API is deprecated", DeprecationWarning, "/x/somelib/api.py", 10)
    warnings.warn_explicit("the model has no checksum", UserWarning, own_module, 20)
    logging.getLogger("somelib").warning("a library's warning")
    ti = SimpleNamespace(dag_id="some_dag", run_id="manual__test", task_id="load_test",
                         map_index=-1, try_number=2)
    out.task_started(ti)
    print("load: a task's progress line")
    os.system("echo a child process writes to its inherited stderr >&2")
    logging.getLogger("pipeline.storage").warning("removing an unfinished upload")
    out.task_ended(ti, RuntimeError("gate load failed: p99 too high\ntraceback..."))
    print(f"recorded: {out.tasks[0].path} {out.tasks[0].error}")
print("==> back on the terminal")
"""


def test_the_terminal_gets_relcerts_lines_and_the_logs_get_the_rest(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(logs), str(PROJECT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "==> a line of relcert's",
        "warning: UserWarning: the model has no checksum (pipeline/inference/model_manager.py:20)",
        "warning (in load_test): pipeline.storage: removing an unfinished upload",
        "==> back on the terminal",
    ]
    folder = logs / "dag_id=some_dag" / "run_id=manual__test"
    run_log = (folder / "relcert-run.log").read_text()
    task_log = (folder / "task_id=load_test" / "attempt=2.log").read_text()
    # everything else is in the run's log or the task's, and nothing of a task outside it
    for line in (
        "==> a line of relcert's",
        "a line printed between tasks",
        "old API is deprecated",
        "a library's warning",
        f"recorded: {folder / 'task_id=load_test' / 'attempt=2.log'} gate load failed: p99 "
        "too high",
    ):
        assert line in run_log, line
    assert "load: a task's progress line" in task_log
    assert "a child process writes to its inherited stderr" in task_log
    assert "progress line" not in run_log and "child process" not in run_log
    assert not list(logs.glob(".relcert-run-*"))  # the run log moved beside the tasks' logs
