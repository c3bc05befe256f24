"""Where `relcert run`'s output goes: relcert's lines on the terminal, the rest in log files.

The terminal gets what relcert itself says: where the metadata DB and the logs are, each
task of this run as its state changes, relcert's own warnings, and where each task's log is.
Everything else written while the DAG runs (Airflow's logging, third-party libraries'
warnings, the tasks' progress lines, the output of the processes they start) goes to files,
redirected at the file-descriptor level so that nothing reaches the terminal by another path:

    <logs>/dag_id=<dag>/run_id=<run>/task_id=<task>/[map_index=<i>/]attempt=<n>.log
        one per task attempt, named by Airflow's `[logging] log_filename_template`, so the
        Airflow UI (`relcert ui`, same metadata DB) shows it as the task's log;
    <logs>/dag_id=<dag>/run_id=<run>/relcert-run.log
        everything outside the tasks (parsing the DAG, scheduling), and the terminal's lines.

`dag.test()` runs the tasks one after another in this process: a listener of Airflow's task
runner points stdout and stderr at the task's log when the task starts and back when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["RUN_LOG_NAME", "RunOutput", "TaskLog", "task_label"]

#: warnings and log records from code under these folders are relcert's own: they stay visible
_PROJECT = Path(__file__).resolve().parents[2]
_OWN_CODE = tuple(f"{_PROJECT / folder}{os.sep}" for folder in ("pipeline", "dags", "plugins"))
RUN_LOG_NAME = "relcert-run.log"


def task_label(task_id: str, map_index: int) -> str:
    """How a task instance is named on the terminal: `build_model[1]` for a mapped one."""
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


@dataclass
class TaskLog:
    """One attempt of a task of this run and where its output went."""

    task_id: str
    map_index: int
    try_number: int
    path: Path
    error: str | None = None

    @property
    def label(self) -> str:
        return task_label(self.task_id, self.map_index)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def _first_line(error: Any) -> str | None:
    if error is None:
        return None
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."


class _OwnWarnings(logging.Handler):
    """relcert's own log records of level WARNING and above, on the terminal."""

    def __init__(self, output: RunOutput) -> None:
        super().__init__(logging.WARNING)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.warn(f"{record.name}: {record.getMessage()}")
        except Exception:  # a log record must never break a task
            self.handleError(record)


def _task_log_switch(output: RunOutput) -> Any:
    """A listener of Airflow's task runner that sends a task's output to its own log file
    (built on first use: Airflow is imported only once the output is redirected)."""
    from airflow.listeners import hookimpl

    class TaskLogSwitch:
        @hookimpl
        def on_task_instance_running(self, previous_state: Any, task_instance: Any) -> None:
            output.task_started(task_instance)

        @hookimpl
        def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
            output.task_ended(task_instance, None)

        @hookimpl
        def on_task_instance_failed(
            self, previous_state: Any, task_instance: Any, error: Any
        ) -> None:
            output.task_ended(task_instance, error if error is not None else "failed")

        @hookimpl
        def on_task_instance_skipped(self, previous_state: Any, task_instance: Any) -> None:
            output.task_ended(task_instance, None)

    return TaskLogSwitch()


class RunOutput:
    """The context of one `relcert run`: the terminal for relcert's lines, log files for the
    rest (see the module's docstring). `say` writes a line to the terminal and the run log."""

    def __init__(self, logs: Path, dag_id: str) -> None:
        self.logs = Path(logs)
        self.dag_id = dag_id
        self.run_id: str | None = None
        self.run_log_path = self.logs / f".relcert-run-{os.getpid()}.log"  # until the run id
        self.tasks: list[TaskLog] = []
        self._current: TaskLog | None = None
        self._task_file: TextIO | None = None
        self._lock = threading.RLock()
        self._saved: tuple[int, int] | None = None
        self._listener: Any = None
        self._showwarning: Any = None
        self._handler = _OwnWarnings(self)

    # ----------------------------------------------------------------------- the streams
    def __enter__(self) -> RunOutput:
        self.logs.mkdir(parents=True, exist_ok=True)
        _flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = open(
            os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace"
        )
        self._run_log = open(self.run_log_path, "a", buffering=1, encoding="utf-8")
        self._point_at(self._run_log)
        logging.getLogger("pipeline").addHandler(self._handler)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        logging.getLogger("pipeline").removeHandler(self._handler)
        self._stop_listening()
        if self._current is not None:  # a task interrupted mid-way
            self.task_ended(None, "interrupted")
        if exc_type is not None:  # the run broke off: its output so far is in the run log
            self.say(f"==> the run's output so far: {self.run_log_path}")
        _flush()
        assert self._saved is not None
        for saved, fd in zip(self._saved, (1, 2), strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = None
        self._run_log.close()
        self.terminal.close()

    def _point_at(self, file: TextIO) -> None:
        _flush()
        file.flush()
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)

    def say(self, line: str) -> None:
        with self._lock:
            self.terminal.write(line + "\n")
            self.terminal.flush()
            self._run_log.write(line + "\n")

    def warn(self, message: str) -> None:
        where = f" (in {self._current.label})" if self._current is not None else ""
        self.say(f"warning{where}: {message}")

    # ----------------------------------------------------------------------- the run
    def start(self, run_id: str) -> None:
        """The run's id is known (Airflow imported): move the run log beside the task logs,
        show relcert's own Python warnings, and route each task's output to its own log."""
        from airflow.sdk.listener import get_listener_manager

        self.run_id = run_id
        folder = self.logs / f"dag_id={self.dag_id}" / f"run_id={run_id}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / RUN_LOG_NAME
        os.replace(self.run_log_path, target)  # the open file follows the rename
        self.run_log_path = target
        # Airflow sends warnings to its log (installed when it is imported): wrap its hook
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning
        self._listener = _task_log_switch(self)
        get_listener_manager().add_listener(self._listener)

    def _stop_listening(self) -> None:
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None
        if self._listener is not None:
            from airflow.sdk.listener import get_listener_manager

            manager = get_listener_manager()
            if manager.pm.is_registered(self._listener):
                manager.pm.unregister(self._listener)
            self._listener = None

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if str(filename).startswith(_OWN_CODE):
            where = Path(filename).relative_to(_PROJECT)
            self.warn(f"{category.__name__}: {message} ({where}:{lineno})")
        self._showwarning(message, category, filename, lineno, file, line)

    def task_log_path(self, task_id: str, map_index: int, try_number: int) -> Path:
        """The log of one task attempt, by Airflow's own file name template."""
        from types import SimpleNamespace

        from airflow.configuration import conf
        from airflow.utils.helpers import parse_template_string, render_template

        ti = SimpleNamespace(
            dag_id=self.dag_id,
            run_id=self.run_id,
            task_id=task_id,
            map_index=-1 if map_index is None else map_index,
            try_number=try_number,
        )
        template = conf.get("logging", "log_filename_template")
        plain, jinja = parse_template_string(template)
        if jinja is not None:
            name = render_template(jinja, {"ti": ti, "try_number": try_number}, native=False)
        else:
            name = str(plain).format(**vars(ti))
        return self.logs / name

    # ----------------------------------------------------------------------- the tasks
    def task_started(self, ti: Any) -> None:
        if ti.run_id != self.run_id or ti.dag_id != self.dag_id:
            return
        map_index = -1 if ti.map_index is None else int(ti.map_index)
        try_number = int(ti.try_number)
        path = self.task_log_path(ti.task_id, map_index, try_number)
        record = TaskLog(ti.task_id, map_index, try_number, path)
        record.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._task_file = open(record.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._current = record
            self.tasks.append(record)
            self._point_at(self._task_file)

    def task_ended(self, ti: Any, error: Any) -> None:
        current = self._current
        if current is None or (ti is not None and ti.task_id != current.task_id):
            return
        with self._lock:
            current.error = _first_line(error)
            self._point_at(self._run_log)
            if self._task_file is not None:
                self._task_file.close()
            self._task_file = None
            self._current = None

    def last_attempt(self, task_id: str, map_index: int) -> TaskLog | None:
        found = [t for t in self.tasks if t.task_id == task_id and t.map_index == map_index]
        return found[-1] if found else None
