"""RELCERT_NOTIFIER: Airflow's own notifier classes, configured from the environment."""

from __future__ import annotations

import pytest
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from pipeline.airflow.notifiers import NotifierConfigError, dag_callbacks

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
    assert isinstance(notifier, SmtpNotifier) and notifier.to == "ml-platform@example.com"
    both = dag_callbacks({**env, "RELCERT_NOTIFY_ON": "failure,success"})
    assert set(both) == {"on_failure_callback", "on_success_callback"}
    # one instance per callback: rendering a notifier's templates changes it
    assert both["on_failure_callback"][0] is not both["on_success_callback"][0]


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
