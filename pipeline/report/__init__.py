"""The final report of a run: `report.json` (the decision and its evidence) and a
self-contained `report.html` with plots. `decide` is the pure decision rule."""

from pipeline.report.decision import (
    APPROVED,
    CONDITIONAL_APPROVAL,
    DECISIONS,
    NOT_APPROVED,
    Decision,
    decide,
)
from pipeline.report.report import (
    DEFAULT_STAGES,
    REPORT_HTML,
    REPORT_JSON,
    Report,
    build_report_data,
    set_package,
    without_release,
    write_report,
)

__all__ = [
    "APPROVED",
    "CONDITIONAL_APPROVAL",
    "DECISIONS",
    "DEFAULT_STAGES",
    "NOT_APPROVED",
    "REPORT_HTML",
    "REPORT_JSON",
    "Decision",
    "Report",
    "build_report_data",
    "decide",
    "set_package",
    "without_release",
    "write_report",
]
