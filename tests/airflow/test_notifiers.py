"""RELCERT_NOTIFIER: Airflow's own notifier classes, configured from the environment."""

from __future__ import annotations

import json

import pytest
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from pipeline.airflow.notifiers import NotifierConfigError, dag_callbacks

pytestmark = pytest.mark.airflow

SMTP = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
KWARGS = '{"to": "ml-platform@example.com", "from_email": "airflow@example.com"}'


def test_no_notifier_unless_configured() -> None:
    assert dag_callbacks({}) == {}
    assert dag_callbacks({"RELCERT_NOTIFIER": " "}) == {}


def test_the_smtp_notifier_on_failure_by_default_and_on_success_when_asked() -> None:
    env = {"RELCERT_NOTIFIER": SMTP, "RELCERT_NOTIFIER_KWARGS": KWARGS}
    callbacks = dag_callbacks(env)
    assert list(callbacks) == ["on_failure_callback"]
    [notifier] = callbacks["on_failure_callback"]
    assert notifier.notifier_class is SmtpNotifier
    assert notifier.kwargs["to"] == "ml-platform@example.com"
    both = dag_callbacks({**env, "RELCERT_NOTIFY_ON": "failure,success"})
    assert set(both) == {"on_failure_callback", "on_success_callback"}


def test_each_run_is_notified_with_its_own_rendered_message(tmp_path) -> None:
    """The DAG processor runs several runs' callbacks on one parsed DAG: the second run's
    notification carries the second run's note, not the first's (a notifier renders its
    templates in place)."""
    from types import SimpleNamespace

    log = tmp_path / "notifications.jsonl"
    env = {
        "RELCERT_NOTIFIER": "tests.dags.recording_notifier.RecordingNotifier",
        "RELCERT_NOTIFIER_KWARGS": json.dumps({"path": str(log), "message": "{{ dag_run.note }}"}),
        "RELCERT_NOTIFY_ON": "success",
    }
    [callback] = dag_callbacks(env)["on_success_callback"]
    for run_id, note in (("run_a", "APPROVED (readiness 1.00)"), ("run_b", "NOT_APPROVED")):
        callback({"dag_run": SimpleNamespace(run_id=run_id, note=note), "reason": "success"})
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["run_id"], x["message"]) for x in lines] == [
        ("run_a", "APPROVED (readiness 1.00)"),
        ("run_b", "NOT_APPROVED"),
    ]


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RELCERT_NOTIFIER": "no.such.Notifier"}, r"RELCERT_NOTIFIER='no.such.Notifier': cannot"),
        ({"RELCERT_NOTIFIER": "Notifier"}, "RELCERT_NOTIFIER='Notifier': cannot import"),
        ({"RELCERT_NOTIFIER": "json.dumps"}, "not a subclass of airflow.sdk.BaseNotifier"),
        ({"RELCERT_NOTIFIER": SMTP, "RELCERT_NOTIFIER_KWARGS": "{to"}, "KWARGS is not valid"),
        ({"RELCERT_NOTIFIER": SMTP, "RELCERT_NOTIFIER_KWARGS": "[]"}, "must be a JSON object"),
        ({"RELCERT_NOTIFIER": SMTP, "RELCERT_NOTIFIER_KWARGS": "{}"}, "does not fit"),
        (
            {"RELCERT_NOTIFIER": SMTP, "RELCERT_NOTIFIER_KWARGS": KWARGS, "RELCERT_NOTIFY_ON": "x"},
            "RELCERT_NOTIFY_ON='x'",
        ),
    ],
)
def test_a_bad_configuration_is_an_import_error_naming_the_variable(env, message) -> None:
    with pytest.raises(NotifierConfigError, match=message) as caught:
        dag_callbacks(env)
    assert isinstance(caught.value, ImportError)
