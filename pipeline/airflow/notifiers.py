"""The certification DAG's notifier, configured in the environment where the DAG is parsed.

Airflow's own notifier classes do the sending (any `airflow.sdk.BaseNotifier` subclass: the
SMTP provider's `SmtpNotifier`, Slack's, a team's own); relcert only builds one from:

==========================  =====================================================
``RELCERT_NOTIFIER``        import path of the notifier class, e.g.
                            ``airflow.providers.smtp.notifications.smtp.SmtpNotifier``;
                            unset or empty: no notifier
``RELCERT_NOTIFIER_KWARGS`` its keyword arguments as a JSON object (default ``{}``);
                            string values are Jinja templates rendered with the
                            callback's context (``{{ dag_run.run_id }}``,
                            ``{{ dag_run.note }}``, ``{{ reason }}``, ...)
``RELCERT_NOTIFY_ON``       when to notify: ``failure`` (default), ``success``, or
                            ``failure,success``
==========================  =====================================================

The notifier is the DAG's ``on_failure_callback`` (a run ends failed when the decision is
NOT_APPROVED or the run broke) and/or ``on_success_callback`` (APPROVED or
CONDITIONAL_APPROVAL; the run's note says which). A bad value is an import error of the DAG
file that names the variable, so a deployment sees it in the UI's import errors at once.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NOTIFY_EVENTS",
    "NotifierConfigError",
    "PerCallNotifier",
    "dag_callbacks",
    "notifier_class",
]

NOTIFY_EVENTS = {"failure": "on_failure_callback", "success": "on_success_callback"}


class NotifierConfigError(ImportError):
    """RELCERT_NOTIFIER* is invalid; the message names the variable (an ImportError, so the
    DAG file fails to import with it)."""


def notifier_class(path: str) -> type:
    """The BaseNotifier subclass at import path `path` (NotifierConfigError otherwise)."""
    from airflow.sdk import BaseNotifier

    module, _, name = path.rpartition(".")
    try:
        if not module:
            raise ImportError(f"{path!r} is not a dotted path")
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise NotifierConfigError(
            f"RELCERT_NOTIFIER={path!r}: cannot import it ({exc}); expected the import path "
            "of a notifier class, e.g. airflow.providers.smtp.notifications.smtp.SmtpNotifier"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise NotifierConfigError(
            f"RELCERT_NOTIFIER={path!r} is not a subclass of airflow.sdk.BaseNotifier"
        )
    return cls


def _kwargs(raw: str) -> dict[str, Any]:
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NotifierConfigError(f"RELCERT_NOTIFIER_KWARGS is not valid JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise NotifierConfigError(
            f"RELCERT_NOTIFIER_KWARGS must be a JSON object of keyword arguments, got {raw!r}"
        )
    return kwargs


def _events(raw: str) -> list[str]:
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = sorted(set(events) - set(NOTIFY_EVENTS))
    if unknown or not events:
        raise NotifierConfigError(
            f"RELCERT_NOTIFY_ON={raw!r}: expected failure, success or failure,success"
        )
    return events


def dag_callbacks(environ: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """``on_failure_callback`` / ``on_success_callback`` for the DAG from the environment:
    {} without RELCERT_NOTIFIER; raises NotifierConfigError naming the variable at fault."""
    env = os.environ if environ is None else environ
    path = (env.get("RELCERT_NOTIFIER") or "").strip()
    if not path:
        return {}
    cls = notifier_class(path)
    kwargs = _kwargs(env.get("RELCERT_NOTIFIER_KWARGS") or "{}")
    try:
        cls(**copy.deepcopy(kwargs))  # the arguments must fit now, not at the first callback
    except TypeError as exc:
        raise NotifierConfigError(f"RELCERT_NOTIFIER_KWARGS does not fit {path}: {exc}") from None
    return {
        NOTIFY_EVENTS[event]: [PerCallNotifier(cls, kwargs)]
        for event in _events(env.get("RELCERT_NOTIFY_ON") or "failure")
    }


class PerCallNotifier:
    """The configured notifier, a new instance for every callback.

    A BaseNotifier renders its templates in place, once (``render_template_fields`` is
    irreversible), and the DAG processor runs the callbacks of several runs on one parsed
    DAG: one shared instance would send the first run's rendered message for every later
    run. Each call here builds the notifier afresh from the class and its arguments."""

    def __init__(self, notifier_class: type, kwargs: Mapping[str, Any]) -> None:
        self.notifier_class = notifier_class
        self.kwargs = dict(kwargs)

    def __call__(self, *args: Any) -> None:
        self.notifier_class(**copy.deepcopy(self.kwargs))(*args)

    def __repr__(self) -> str:
        return f"PerCallNotifier({self.notifier_class.__module__}.{self.notifier_class.__name__})"
