"""The words relcert's parts share, declared once: the DAG, the CLI, the report, the package
and the Airflow plugin import them from here instead of repeating the strings.

Light on purpose (no third-party imports): the DAG file and the plugin import it at parse
time.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ALLOWS_PACKAGE",
    "APPROVED",
    "CONDITIONAL_APPROVAL",
    "CONFIDENCE",
    "CONF_KEYS",
    "DAG_ID",
    "DECISIONS",
    "DEFAULT_PROFILE",
    "EXIT_CODES",
    "EXIT_ERROR",
    "MAX_REASON_CHARS",
    "NOT_APPROVED",
    "PROFILE_NAMES",
    "SCHEDULED_PROFILE",
    "Status",
]

#: the certification DAG (its file is dags/<DAG_ID>.py)
DAG_ID = "model_release_certification"

# ------------------------------------------------------------------ decisions
APPROVED = "APPROVED"
CONDITIONAL_APPROVAL = "CONDITIONAL_APPROVAL"
NOT_APPROVED = "NOT_APPROVED"
DECISIONS = (APPROVED, CONDITIONAL_APPROVAL, NOT_APPROVED)
CONFIDENCE = {APPROVED: "HIGH", CONDITIONAL_APPROVAL: "MEDIUM", NOT_APPROVED: "LOW"}
#: decisions for which a deployment package is written
ALLOWS_PACKAGE = (APPROVED, CONDITIONAL_APPROVAL)
#: exit status of `relcert run` / `relcert report` per decision; EXIT_ERROR: a pipeline error
EXIT_CODES = {APPROVED: 0, CONDITIONAL_APPROVAL: 10, NOT_APPROVED: 20}
EXIT_ERROR = 1

# ------------------------------------------------------------------ profiles
PROFILE_NAMES = ("smoke", "nightly", "release")
#: manual runs and the quickstart
DEFAULT_PROFILE = "smoke"
#: scheduled and backfilled runs certify with the full plan
SCHEDULED_PROFILE = "nightly"

# ------------------------------------------------------------------ a run's conf (trigger form)
CONF_KEYS = (
    "profile",
    "models_file",
    "target_overrides",
    "allow_relaxed_targets",
    "build_package",
    "build_image",
    "reason",
    "waive_regression",
)
#: the longest `reason` a run accepts (it is shown in every row of the Certifications view,
#: in the report and in the run's conf.json): a sentence or two, not a document
MAX_REASON_CHARS = 500


# ------------------------------------------------------------------ verdicts
class Status(StrEnum):
    """What one row of a stage table, one criterion or one readiness item is.

    - MEASURED: a value with its evidence and sample count; met or unmet.
    - INVALID: measured on too little evidence; unmet, with the minimum it needed.
    - NOT_APPLICABLE: the check cannot apply to this model or run; the reason is recorded
      and it neither passes nor fails.
    - NOT_RUN: its stage failed or was skipped; unmet, with the stage's own message.
    """

    MEASURED = "measured"
    INVALID = "invalid"
    NOT_APPLICABLE = "not_applicable"
    NOT_RUN = "not_run"
