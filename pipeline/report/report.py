"""The final report: `<run>/report.json` and `<run>/report.html`, with the release decision.

The report reads only what the run wrote (stage tables and summaries, gate results, model
info) and decides with `pipeline.report.decision`. It is deterministic: the same run folder
gives the same bytes (no wall-clock time unless `generated_at` is passed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_json, atomic_write_text
from pipeline.report import collect
from pipeline.report.decision import (
    APPROVED,
    CONDITIONAL_APPROVAL,
    GATE_OF_STAGE,
    NOT_APPROVED,
    STAGE_ORDER,
    blocking_issues,
    considered_stages,
    decide,
    next_steps,
)
from pipeline.report.readiness import PACKAGE_ITEM, package_item, readiness
from pipeline.report.risks import derive_risks, headroom, is_marginal, recommendations
from pipeline.stages.registry import STAGE_NAMES

__all__ = [
    "DEFAULT_STAGES",
    "REPORT_HTML",
    "REPORT_JSON",
    "Report",
    "build_report_data",
    "render_report_html",
    "set_package",
    "without_release",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
DEFAULT_STAGES = STAGE_NAMES
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Report:
    """What `write_report` wrote: the decision, the score, both paths and report.json's data."""

    decision: str
    readiness_score: float
    path_json: Path
    path_html: Path
    data: dict[str, Any]


def _generated_by() -> str:
    from pipeline import __version__

    return f"relcert {__version__}"


def _profile(found: Mapping[str, Mapping[str, Any]]) -> str | None:
    for stage in ("load", "stress", "integration"):
        name = (found.get(stage) or {}).get("profile")
        if name:
            return str(name)
    return None


def _gates_section(
    gates: Mapping[str, dict[str, Any]], stages_ran: Mapping[str, bool]
) -> dict[str, dict[str, Any]]:
    """Every gate that ran, plus the gate of every stage that should have run and did not."""
    section: dict[str, dict[str, Any]] = {}
    for stage in considered_stages(gates, stages_ran):
        name = GATE_OF_STAGE.get(stage, stage)
        if name in gates:
            section[name] = {"ran": True, **gates[name]}
        else:
            why = "did not run" if not stages_ran.get(stage) else "gate did not run"
            section[name] = {
                "stage": stage,
                "ran": False,
                "success": False,
                "failed": [f"{stage}: {why}"],
                "path": None,
                "table": None,
                "row_count": None,
                "expectations": 0,
                "passed": 0,
                "data_docs": None,
                "data_docs_validation": None,
            }
    return section


def _relaxed_sentence(relaxed: list[dict[str, Any]], reason: str) -> str:
    """`Relaxed targets: p99_latency_ms relaxed from 300 to 1e+09; ... (reason: ...)`."""
    from pipeline.targets import Relaxation

    parts = [
        Relaxation(r["metric"], r["declared"], r["effective"], r.get("model")).describe()
        for r in relaxed
    ]
    why = f" (the trigger's reason: {reason})" if reason else " (no reason was given)"
    return f"Relaxed targets: {'; '.join(parts)}{why}."


def _regression_section(against: dict[str, Any] | None) -> dict[str, Any]:
    """report.json's "regression": the baseline, its comparisons and what they say; a run
    whose regression stage did not run says so (nothing was compared)."""
    if against is None:
        return {
            "ran": False,
            "baseline_run": None,
            "reason": "the regression stage did not run: nothing was compared",
            "rows": [],
            "regressions": [],
            "waived": [],
        }
    return {"ran": True, **against}


def _baseline_sentence(against: dict[str, Any] | None, decision: str) -> list[str]:
    """What the decision's regression side rests on (not repeated when it is the cause)."""
    if decision == NOT_APPROVED and against and against["regressions"]:
        return []
    if against is None:
        return ["No regression comparison: the regression stage did not run."]
    counts = against["counts"]
    if not against["comparable"] or not counts["measured"]:
        why = against.get("reason") or ""
        if against.get("baseline_run") and not against["comparable"]:
            why = "; ".join((against.get("comparability") or {}).get("reasons") or []) or why
        return [f"No regression comparison (all {counts['comparisons']} not applicable): {why}."]
    return [
        f"Against the baseline {against['baseline_run']}: {counts['measured']} comparison(s) "
        f"measured, {counts['regressions']} regression(s), {counts['waived']} waived, "
        f"{counts['improvements']} improvement(s), {counts['not_applicable']} not applicable."
    ]


def _counts(rows: list[dict[str, str]] | None, *columns: str) -> dict[str, int] | None:
    if rows is None:
        return None
    passed = sum(all(collect.as_bool(r.get(c)) is True for c in columns) for r in rows)
    return {"total": len(rows), "passed": passed}


def _summary(
    root: Path,
    criteria: list[dict[str, Any]],
    gates_section: Mapping[str, Mapping[str, Any]],
    risks: list[dict[str, Any]],
    decision: str,
) -> dict[str, Any]:
    return {
        "criteria": {
            "total": len(criteria),
            "met": sum(c["met"] for c in criteria),
            "invalid": sum(c["status"] == "invalid" for c in criteria),
            "not_run": sum(c["status"] == "not_run" for c in criteria),
            "not_applicable": sum(c["status"] == "not_applicable" for c in criteria),
            "marginal": sum(c["marginal"] for c in criteria),
        },
        "gates": {
            "total": len(gates_section),
            "passed": sum(g["success"] is True for g in gates_section.values()),
            "failed": [n for n, g in gates_section.items() if g["success"] is not True],
        },
        "integration_checks": _counts(
            collect.read_csv(root, collect.STAGE_TABLES["integration"]), "passed"
        ),
        "load_scenarios": _counts(collect.read_csv(root, collect.STAGE_TABLES["load"]), "valid"),
        "stress_tests": _counts(
            collect.read_csv(root, collect.STAGE_TABLES["stress"]), "survived", "recovered"
        ),
        "critical_issues": sum(r["level"] == "high" for r in risks),
        "approved": decision == APPROVED,
        "deployment_allowed": decision in (APPROVED, CONDITIONAL_APPROVAL),
    }


def build_report_data(
    run_dir: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    targets: Any = None,
    profile: str | None = None,
    stages_expected: Iterable[str] = DEFAULT_STAGES,
    conf: Mapping[str, Any] | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """report.json's content for a run folder (nothing is written)."""
    from pipeline.targets import load_targets

    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} does not exist")
    targets = targets if targets is not None else load_targets()
    expected = list(dict.fromkeys(stages_expected))
    unknown = [s for s in expected if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(
            f"stages_expected: unknown stage(s) {unknown}; expected some of {list(STAGE_ORDER)}"
        )

    found = collect.summaries(root)
    gates = collect.gate_statuses(root)
    stages_ran = {
        stage: collect.stage_ran(root, stage)
        for stage in STAGE_ORDER
        if stage in expected or collect.stage_ran(root, stage)
    }
    criteria = collect.criteria_rows(root, targets)
    for row in criteria:
        room = headroom(row)
        row["headroom"] = room
        row["marginal"] = is_marginal(row)

    errors = collect.stage_errors(root)
    relaxed = [r.to_dict() for r in getattr(targets, "relaxed", ())] or list(
        (conf or {}).get("relaxed_targets") or []
    )
    caps = [_relaxed_sentence(relaxed, (conf or {}).get("reason") or "")] if relaxed else []
    against = collect.regression(root)
    if against and against["waived"]:
        waiver = against.get("waiver") or {}
        caps.append(
            f"Waived regression (by {waiver.get('by') or 'the trigger'}: "
            f"{waiver.get('justification')}): " + "; ".join(against["waived"])
        )
    verdict = decide(
        criteria, gates, stages_ran, errors, caps, against["regressions"] if against else ()
    )
    issues = blocking_issues(criteria, gates, stages_ran, errors)
    risks = derive_risks(criteria, gates, stages_ran)
    gates_section = _gates_section(gates, stages_ran)
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id or root.name,
        "attempt_id": collect.current_attempt(root),
        "profile": profile or _profile(found),
        "conf": dict(conf or {}),
        "relaxed_targets": relaxed,
        "profile_definition": (conf or {}).get("profile_definition"),
        "generated_by": _generated_by(),
        "generated_at": generated_at,
        "decision": verdict.decision,
        "confidence": verdict.confidence,
        "readiness_score": verdict.readiness_score,
        "reasons": list(verdict.reasons) + _baseline_sentence(against, verdict.decision),
        "next_steps": next_steps(verdict.decision, issues),
        "criteria": criteria,
        "gates": gates_section,
        "stages": collect.stages_section(root, expected, found, gates),
        "models": collect.models(root, found),
        "risks": risks,
        "recommendations": recommendations(risks, criteria),
        "readiness": readiness(root, criteria, gates, verdict.decision),
        "performance": collect.performance_analysis(root, criteria),
        "package": None,
        "regression": _regression_section(against),
        "environment": collect.environment(root, found),
    }
    data["summary"] = _summary(root, criteria, gates_section, risks, verdict.decision)
    return collect.jsonable(data)


def render_report_html(run_dir: str | os.PathLike[str], data: Mapping[str, Any]) -> str:
    """report.html for `data` (report.json's content), with figures from the run's tables."""
    from pipeline.report.html import render_html
    from pipeline.report.plots import draw_plots

    root = Path(run_dir).resolve()
    return render_html(data, root, draw_plots(root, data.get("criteria") or []))


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    targets: Any = None,
    profile: str | None = None,
    stages_expected: Iterable[str] = DEFAULT_STAGES,
    conf: Mapping[str, Any] | None = None,
    generated_at: str | None = None,
) -> Report:
    """Write `<run_dir>/report.json` and `<run_dir>/report.html` (each atomically).

    `targets` (default: include/targets.yaml) orders the criteria and stands in for the
    certify table's rows when that stage did not run; the certify table is the record of what
    was measured and judged. `stages_expected`: a stage listed here that did not run counts
    as a failed gate ("did not run"); the infra stage is expected by default.
    """
    root = Path(run_dir).resolve()
    data = build_report_data(
        root,
        run_id=run_id,
        targets=targets,
        profile=profile,
        stages_expected=stages_expected,
        conf=conf,
        generated_at=generated_at,
    )
    html = render_report_html(root, data)
    path_json = atomic_write_json(root / REPORT_JSON, data)
    path_html = atomic_write_text(root / REPORT_HTML, html)
    return Report(data["decision"], data["readiness_score"], path_json, path_html, data)


def without_release(data: Mapping[str, Any]) -> dict[str, Any]:
    """report.json's data as it was before `set_package` named the package: what the
    package embeds a hash of, so building it again after that gives the same bytes."""
    source = {k: v for k, v in data.items() if k not in ("package", "image")}
    operational = (source.get("readiness") or {}).get("operational")
    if isinstance(operational, list):
        decision = str(source.get("decision"))
        source["readiness"] = {
            **source["readiness"],
            "operational": [
                package_item(decision, None)
                if isinstance(item, Mapping) and item.get("item") == PACKAGE_ITEM
                else item
                for item in operational
            ],
        }
    return source


def set_package(
    run_dir: str | os.PathLike[str],
    path: str | os.PathLike[str] | None,
    image: Mapping[str, Any] | None = None,
) -> Report:
    """Record the deployment package in report.json and report.html (both atomically).

    `path` is stored relative to the run folder when it is inside it. A NOT_APPROVED run has
    no package; `path=None` clears the entry. `image` is the package's container image (its
    OCI archive, digest, base image and wheels), or None when it has none.
    """
    import json

    root = Path(run_dir).resolve()
    report_path = root / REPORT_JSON
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} does not exist: write the report first")
    data = json.loads(report_path.read_text(encoding="utf-8"))
    data["image"] = dict(image) if image is not None and path is not None else None
    if path is None:
        data["package"] = None
    else:
        package = Path(path)
        package = package if package.is_absolute() else root / package
        if not package.exists():
            raise FileNotFoundError(f"deployment package {package} does not exist")
        if data.get("decision") == NOT_APPROVED:
            raise ValueError(
                f"{report_path}: the decision is NOT_APPROVED, so the run has no deployment package"
            )
        try:
            data["package"] = package.resolve().relative_to(root).as_posix()
        except ValueError:
            data["package"] = str(package.resolve())
    operational = (data.get("readiness") or {}).get("operational") or []
    for i, item in enumerate(operational):
        if item.get("item") == PACKAGE_ITEM:
            operational[i] = package_item(str(data.get("decision")), data["package"])
    html = render_report_html(root, data)
    path_json = atomic_write_json(report_path, data)
    path_html = atomic_write_text(root / REPORT_HTML, html)
    return Report(data["decision"], data["readiness_score"], path_json, path_html, data)
