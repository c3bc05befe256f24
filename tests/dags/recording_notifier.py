"""A notifier for the tests: an Airflow BaseNotifier that appends what it was given to a
file (how tests see that RELCERT_NOTIFIER fires, and with which context)."""

from __future__ import annotations

import json
from pathlib import Path

from airflow.sdk import BaseNotifier


class RecordingNotifier(BaseNotifier):
    """Appends one JSON line per notification: the rendered message, the callback's reason
    and the DAG run id."""

    template_fields = ("message",)

    def __init__(self, path: str, message: str = "") -> None:
        super().__init__()
        self.path = path
        self.message = message

    def notify(self, context) -> None:
        run = context.get("dag_run")
        line = {
            "message": self.message,
            "reason": context.get("reason"),
            "run_id": getattr(run, "run_id", None) or context.get("run_id"),
        }
        with Path(self.path).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
