"""The release decision, as pure functions of the criteria, the gates and which stages ran.

The original plan's rule, made honest:

- readiness score = 0.3 x (integration gate passed) + 0.4 x (certification gate passed)
  + 0.3 x (load gate passed AND stress gate passed). A term counts only when its gate ran and
  passed: a stage that did not run counts as failed ("did not run").
- APPROVED (confidence HIGH): every criterion is met with a valid measurement, no gate of a
  stage that ran or was expected failed (or is missing), and the score is >= 0.9. Failed
  criteria and failed gates are exactly the high risks, so this also means "no high risk".
- CONDITIONAL_APPROVAL (MEDIUM): not approved, but the score is >= 0.8. Since the smallest
  pair of terms sums to 0.7, that means the integration, certification, load and stress
  gates all passed and something outside the score blocks approval: a failed build or
  infra gate, or an expected stage (e.g. infra) that did not run.
- NOT_APPROVED (LOW): everything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pipeline.stages import STAGE_GATES

__all__ = [
    "APPROVED",
    "CONDITIONAL_APPROVAL",
    "CONFIDENCE",
    "DECISIONS",
    "DECISION_EXIT_CODES",
    "GATE_OF_STAGE",
    "NOT_APPROVED",
    "SCORE_TERMS",
    "STAGE_ORDER",
    "Decision",
    "blocking_issues",
    "considered_stages",
    "decide",
    "missing_source_stage",
    "next_steps",
    "readiness_score",
]

APPROVED = "APPROVED"
CONDITIONAL_APPROVAL = "CONDITIONAL_APPROVAL"
NOT_APPROVED = "NOT_APPROVED"
DECISIONS = (APPROVED, CONDITIONAL_APPROVAL, NOT_APPROVED)
CONFIDENCE = {APPROVED: "HIGH", CONDITIONAL_APPROVAL: "MEDIUM", NOT_APPROVED: "LOW"}
#: the exit status of `relcert run`, `relcert report` (1 is a pipeline error)
DECISION_EXIT_CODES = {APPROVED: 0, CONDITIONAL_APPROVAL: 10, NOT_APPROVED: 20}

APPROVAL_SCORE = 0.9
CONDITIONAL_SCORE = 0.8

#: stage -> the gate that validates its table (gates/<gate>.json); one map for all of relcert
GATE_OF_STAGE = STAGE_GATES
STAGE_ORDER = tuple(GATE_OF_STAGE)
_STAGE_OF_GATE = {gate: stage for stage, gate in GATE_OF_STAGE.items()}

#: (what the term stands for, stages whose gates must all pass, weight)
SCORE_TERMS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("integration", ("integration",), 0.3),
    ("certification", ("certify",), 0.4),
    ("load and stress", ("load", "stress"), 0.3),
)


class Decision(NamedTuple):
    decision: str
    confidence: str
    readiness_score: float
    reasons: list[str]


def _gate_passed(gates: Mapping[str, Mapping[str, Any]], stage: str) -> bool:
    gate = gates.get(GATE_OF_STAGE[stage])
    return bool(gate) and gate.get("success") is True


def readiness_score(gates: Mapping[str, Mapping[str, Any]]) -> float:
    """The weighted share of the scored gates that ran and passed (0 .. 1)."""
    score = sum(
        weight
        for _, stages, weight in SCORE_TERMS
        if all(_gate_passed(gates, stage) for stage in stages)
    )
    return round(score, 4)


def considered_stages(
    gates: Mapping[str, Mapping[str, Any]], stages_ran: Mapping[str, bool]
) -> list[str]:
    """Stages whose gates matter: the scored ones, the expected or run ones, any with a gate."""
    wanted = {stage for _, stages, _ in SCORE_TERMS for stage in stages}
    wanted |= set(stages_ran)
    wanted |= {_STAGE_OF_GATE.get(gate, gate) for gate in gates}
    known = [s for s in STAGE_ORDER if s in wanted]
    return known + sorted(wanted - set(STAGE_ORDER))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "no value"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    unit = "" if unit in ("", "ratio", "abs", "pearson_r") else f" {unit}"
    return f"{value:.4g}{unit}"


def missing_source_stage(row: Mapping[str, Any]) -> str | None:
    """The stage whose missing output left this criterion unmeasured, or None.

    The certify stage says so in the row's detail ("... did not run"); the stage is the
    one named by the row's source table (stages/<stage>/...), else "certify" when the
    certify stage itself did not run.
    """
    if row.get("valid") or "did not run" not in str(row.get("detail") or ""):
        return None
    evidence = row.get("evidence")
    source = str(row.get("source") or (evidence or {}).get("table") or "")
    parts = source.split("/")
    if str(row.get("detail")).startswith("not measured: the certify stage"):
        return "certify"
    if len(parts) >= 2 and parts[0] == "stages":
        return parts[1]
    return "certify"


def blocking_issues(
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    stages_ran: Mapping[str, bool],
) -> list[str]:
    """Everything that stands between this run and APPROVED, one sentence each.

    `criteria`: rows with name, met, valid (and measured, threshold, direction, unit, detail
    for the sentence). `gates`: gate name -> {success, failed} for every gate that ran.
    `stages_ran`: stage -> ran, for every stage that was expected or ran; a stage listed
    with False was expected and did not run.
    """
    issues: list[str] = []
    for stage in considered_stages(gates, stages_ran):
        gate_name = GATE_OF_STAGE.get(stage, stage)
        gate = gates.get(gate_name)
        ran = stages_ran.get(stage, gate is not None)
        if not ran:
            issues.append(f"{stage}: did not run, so its gate '{gate_name}' counts as failed.")
        elif gate is None:
            issues.append(
                f"{stage}: ran, but its gate '{gate_name}' did not run (counts as failed)."
            )
        elif gate.get("success") is not True:
            failed = [str(f) for f in gate.get("failed") or []]
            shown = "; ".join(failed[:3]) + (
                f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
            )
            issues.append(
                f"Gate '{gate_name}' failed: {len(failed)} expectation(s) not met"
                + (f" ({shown})." if shown else ".")
            )
    if not criteria:
        issues.append("No certification criterion was measured.")
    unmeasured: dict[str, list[str]] = {}
    for row in criteria:
        stage = missing_source_stage(row)
        if not row.get("valid") and stage:
            unmeasured.setdefault(stage, []).append(str(row.get("name")))
    for stage, names in unmeasured.items():
        issues.append(
            f"{len(names)} criteria not measured because the {stage} stage did not run: "
            f"{', '.join(names)}."
        )
    for row in criteria:
        name = row.get("name")
        if not row.get("valid"):
            if not missing_source_stage(row):
                detail = row.get("detail") or "no detail"
                issues.append(f"{name}: measurement not valid ({detail}).")
        elif not row.get("met"):
            op = "<=" if row.get("direction") == "max" else ">="
            unit = str(row.get("unit") or "")
            issues.append(
                f"{name}: not met, measured {_fmt(row.get('measured'), unit)} "
                f"(needs {op} {_fmt(row.get('threshold'), unit)})."
            )
    return issues


def decide(
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    stages_ran: Mapping[str, bool],
) -> Decision:
    """(decision, confidence, readiness_score, reasons) for one run; see the module doc."""
    score = readiness_score(gates)
    issues = blocking_issues(criteria, gates, stages_ran)
    terms = ", ".join(
        f"{label} {'passed' if all(_gate_passed(gates, s) for s in stages) else 'failed'}"
        f" ({weight:g})"
        for label, stages, weight in SCORE_TERMS
    )
    if not issues and score >= APPROVAL_SCORE:
        decision = APPROVED
        ran = [
            GATE_OF_STAGE.get(s, s)
            for s in considered_stages(gates, stages_ran)
            if GATE_OF_STAGE.get(s, s) in gates
        ]
        reasons = [
            f"All {len(criteria)} criteria are met with valid measurements.",
            f"Every gate passed ({', '.join(ran)}).",
            f"Readiness score {score:.2f}: {terms}.",
        ]
    elif score >= CONDITIONAL_SCORE:
        decision = CONDITIONAL_APPROVAL
        reasons = [
            f"Readiness score {score:.2f} (>= {CONDITIONAL_SCORE}): {terms}; but approval is "
            f"blocked by {len(issues)} issue(s):",
            *issues,
        ]
    else:
        decision = NOT_APPROVED
        reasons = [
            f"Readiness score {score:.2f} is below {CONDITIONAL_SCORE}: {terms}.",
            *issues,
        ]
    return Decision(decision, CONFIDENCE[decision], score, reasons)


def next_steps(decision: str, issues: Sequence[str]) -> list[str]:
    """What to do after this decision, naming the issues to resolve."""
    if decision == APPROVED:
        return [
            "Generate the deployment package (the decision allows it) and deploy it with its "
            "monitoring configuration.",
            "Watch latency percentiles, error rate and engine memory against the targets "
            "after the rollout.",
            "Re-certify when a model, the targets or the serving configuration change.",
        ]
    fixes = [f"Resolve: {issue}" for issue in issues]
    if decision == CONDITIONAL_APPROVAL:
        return [
            "Deploy only to staging or a canary with close monitoring; do not promote to full "
            "production until the issues below are resolved.",
            *fixes,
            "Re-run the affected stages and their gates, then regenerate this report.",
        ]
    return [
        "Do not deploy: no deployment package is generated for this run.",
        *fixes,
        "Re-run from the first failed stage (its gate and every later stage), then re-certify.",
    ]
