"""The release decision, as pure functions of the criteria, the gates and which stages ran.

The original plan's rule, made honest:

- readiness score = 0.3 x (integration gate passed) + 0.4 x (certification gate passed)
  + 0.3 x (load gate passed AND stress gate passed). A term counts only when its gate ran and
  passed: a stage that did not run counts as failed ("did not run").
- APPROVED (confidence HIGH): every criterion is met with a valid measurement or is not
  applicable (with its reason), no gate of a stage that ran or was expected failed (or is
  missing), and the score is >= 0.9. Failed criteria and failed gates are exactly the high
  risks, so this also means "no high risk".
- CONDITIONAL_APPROVAL (MEDIUM): not approved, but the score is >= 0.8 (so the
  integration, certification, load and stress gates all passed); or everything passed but
  the run certified against a relaxed target (or a waived regression): a run held to a
  weaker bar than declared is never a plain approval.
- NOT_APPROVED (LOW): everything else; always when the candidate regressed against its
  baseline (the last approved release: a change beyond its allowance that is significant,
  not waived), each regression named with its model, metric, baseline, ratio and evidence;
  and always when a *shipping* gate failed or did not run: the build (the models that
  would ship) or the infra stage (the HTTP service that would ship). The service that
  failed its own validation is the artifact being shipped, so no package is written for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pipeline.names import (
    APPROVED,
    CONDITIONAL_APPROVAL,
    CONFIDENCE,
    DECISIONS,
    NOT_APPROVED,
    Status,
)
from pipeline.stages.registry import STAGE_NAMES, STAGES

__all__ = [
    "APPROVED",
    "CONDITIONAL_APPROVAL",
    "CONFIDENCE",
    "DECISIONS",
    "GATE_OF_STAGE",
    "NOT_APPROVED",
    "SCORE_TERMS",
    "SHIPPING_STAGES",
    "STAGE_ORDER",
    "Decision",
    "blocking_issues",
    "blocks_approval",
    "considered_stages",
    "decide",
    "missing_source_stage",
    "next_steps",
    "readiness_score",
    "status_of",
]

APPROVAL_SCORE = 0.9
CONDITIONAL_SCORE = 0.8
#: stages whose gate failing (or not running) rules a release out whatever the score: what
#: they validate is what would ship
SHIPPING_STAGES = ("build", "infra")

#: stage -> the gate that validates its table (gates/<gate>.json), from the stage registry
GATE_OF_STAGE = {s.name: s.gate for s in STAGES}
STAGE_ORDER = STAGE_NAMES
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


def status_of(row: Mapping[str, Any]) -> Status:
    """A criterion row's status (rows written before statuses existed: from `valid`)."""
    try:
        return Status(str(row.get("status")))
    except ValueError:
        return Status.MEASURED if row.get("valid") else Status.INVALID


def missing_source_stage(row: Mapping[str, Any]) -> str | None:
    """The stage whose missing output left this criterion unmeasured (status not run), or
    None: the stage named by the row's source table (stages/<stage>/...), else certify."""
    if status_of(row) != Status.NOT_RUN:
        return None
    evidence = row.get("evidence")
    source = str(row.get("source") or (evidence or {}).get("table") or "")
    parts = source.split("/")
    if len(parts) >= 2 and parts[0] == "stages" and parts[1] in GATE_OF_STAGE:
        return parts[1]
    return "certify"


def blocks_approval(row: Mapping[str, Any]) -> bool:
    """A criterion stands between the run and approval: not run, invalid, or measured and
    not met. Not applicable never does."""
    status = status_of(row)
    if status == Status.NOT_APPLICABLE:
        return False
    return status != Status.MEASURED or not row.get("met")


def blocking_issues(
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    stages_ran: Mapping[str, bool],
    errors: Mapping[str, str] | None = None,
) -> list[str]:
    """Everything that stands between this run and APPROVED, one sentence each.

    `criteria`: rows with name, status, met (and measured, threshold, direction, unit,
    detail for the sentence). `gates`: gate name -> {success, failed} for every gate that
    ran. `stages_ran`: stage -> ran, for every stage that was expected or ran; a stage
    listed with False was expected and did not run. `errors`: stage -> the message it
    failed with (so the reason names what failed, not only that it did not run).
    """
    issues: list[str] = []
    errors = errors or {}
    for stage in considered_stages(gates, stages_ran):
        gate_name = GATE_OF_STAGE.get(stage, stage)
        gate = gates.get(gate_name)
        ran = stages_ran.get(stage, gate is not None)
        if not ran and errors.get(stage):
            issues.append(f"{stage}: failed: {errors[stage]}")
        elif not ran:
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
        if stage:
            unmeasured.setdefault(stage, []).append(str(row.get("name")))
    for stage, names in unmeasured.items():
        why = f"failed ({errors[stage]})" if errors.get(stage) else "did not run"
        issues.append(
            f"{len(names)} criteria not measured because the {stage} stage {why}: "
            f"{', '.join(names)}."
        )
    for row in criteria:
        name = row.get("name")
        status = status_of(row)
        if status == Status.INVALID:
            detail = row.get("detail") or "no detail"
            issues.append(f"{name}: measurement not valid ({detail}).")
        elif status == Status.MEASURED and not row.get("met"):
            op = "<=" if row.get("direction") == "max" else ">="
            unit = str(row.get("unit") or "")
            issues.append(
                f"{name}: not met, measured {_fmt(row.get('measured'), unit)} "
                f"(needs {op} {_fmt(row.get('threshold'), unit)})."
            )
    return issues


def _shipping_failures(
    gates: Mapping[str, Mapping[str, Any]], stages_ran: Mapping[str, bool]
) -> list[str]:
    """Shipping stages (expected or run) whose gate did not pass."""
    return [
        stage for stage in SHIPPING_STAGES if stage in stages_ran and not _gate_passed(gates, stage)
    ]


def decide(
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    stages_ran: Mapping[str, bool],
    errors: Mapping[str, str] | None = None,
    caps: Sequence[str] = (),
    regressions: Sequence[str] = (),
) -> Decision:
    """(decision, confidence, readiness_score, reasons) for one run; see the module doc.
    `caps`: why this run can be at most CONDITIONAL_APPROVAL (relaxed targets, waivers),
    one sentence each. `regressions`: the candidate's unwaived regressions against its
    baseline, one sentence each; any rules the release out."""
    score = readiness_score(gates)
    issues = blocking_issues(criteria, gates, stages_ran, errors)
    if regressions:
        decision = NOT_APPROVED
        reasons = [
            f"Not approved: {len(regressions)} regression(s) against the baseline (the last "
            "approved release); a regression is not made up for by meeting the targets.",
            *regressions,
            f"Readiness score {score:.2f}.",
            *[i for i in issues if not i.startswith("Gate 'regression' failed")],
            *caps,
        ]
        return Decision(decision, CONFIDENCE[decision], score, reasons)
    terms = ", ".join(
        f"{label} {'passed' if all(_gate_passed(gates, s) for s in stages) else 'failed'}"
        f" ({weight:g})"
        for label, stages, weight in SCORE_TERMS
    )
    shipping = _shipping_failures(gates, stages_ran)
    if shipping:
        decision = NOT_APPROVED
        what = {"build": "the models that would ship", "infra": "the HTTP service that would ship"}
        reasons = [
            "Not approved: the gate of "
            + " and of ".join(f"the {s} stage ({what[s]})" for s in shipping)
            + " did not pass, so nothing is packaged.",
            f"Readiness score {score:.2f}: {terms}.",
            *issues,
            *caps,
        ]
        return Decision(decision, CONFIDENCE[decision], score, reasons)
    if not issues and score >= APPROVAL_SCORE and caps:
        decision = CONDITIONAL_APPROVAL
        reasons = [
            f"Every criterion and gate passed (readiness {score:.2f}), but the run is capped at "
            "conditional approval:",
            *caps,
        ]
        return Decision(decision, CONFIDENCE[decision], score, reasons)
    if not issues and score >= APPROVAL_SCORE:
        decision = APPROVED
        ran = [
            GATE_OF_STAGE.get(s, s)
            for s in considered_stages(gates, stages_ran)
            if GATE_OF_STAGE.get(s, s) in gates
        ]
        not_applicable = [r for r in criteria if status_of(r) == Status.NOT_APPLICABLE]
        measured = len(criteria) - len(not_applicable)
        reasons = [
            f"All {measured} criteria are met with valid measurements"
            + (
                f"; {len(not_applicable)} not applicable "
                f"({', '.join(str(r.get('name')) for r in not_applicable)})."
                if not_applicable
                else "."
            ),
            f"Every gate passed ({', '.join(ran)}).",
            f"Readiness score {score:.2f}: {terms}.",
        ]
    elif score >= CONDITIONAL_SCORE:
        decision = CONDITIONAL_APPROVAL
        reasons = [
            f"Readiness score {score:.2f} (>= {CONDITIONAL_SCORE}): {terms}; but approval is "
            f"blocked by {len(issues)} issue(s):",
            *issues,
            *caps,
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
