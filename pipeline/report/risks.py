"""Risks and recommendations, derived from the criteria and the gates (pure functions).

Levels:
- high: a criterion measured and not met; a gate that failed, or did not run when expected;
- medium: a criterion not validly measured ("measurement not valid: ..."); a criterion met
  but marginal;
- low: a criterion met with little headroom (under 25%).

A criterion is *marginal* when it is met only thanks to its tolerance (the measurement is
worse than the nominal target, e.g. a success rate under 99% against 0.99 -1%), or when its
headroom is under 10%. Headroom is `Target.margin` (relative distance to the threshold),
except for min-ratios bounded by 1 (success rate, accuracy, correlation, hit rates): there a
perfect 1.0 can be only 2% above a 0.98 threshold, so headroom is the share of the achievable
range above the threshold that the measurement reaches (1.0 is always 100%).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.names import Status
from pipeline.report.collect import finite_number
from pipeline.report.decision import (
    GATE_OF_STAGE,
    considered_stages,
    missing_source_stage,
    status_of,
)

__all__ = [
    "GATE_MITIGATIONS",
    "LOW_HEADROOM",
    "MARGINAL_HEADROOM",
    "MITIGATIONS",
    "derive_risks",
    "headroom",
    "is_marginal",
    "recommendations",
]

MARGINAL_HEADROOM = 0.10
LOW_HEADROOM = 0.25
LEVEL_ORDER = {"high": 0, "medium": 1, "low": 2}
_BOUNDED_BY_ONE = frozenset({"ratio", "pearson_r"})

#: criterion category -> mitigations (the original plan's, extended to every category)
MITIGATIONS: dict[str, tuple[str, ...]] = {
    "latency": (
        "cache results of repeated inputs",
        "tune dynamic batching (batch size, queue delay)",
        "optimise the models (graph optimisation, quantisation, smaller architecture)",
    ),
    "throughput": (
        "autoscale replicas horizontally on CPU and latency",
        "load-balance requests across replicas",
    ),
    "concurrency": (
        "autoscale replicas horizontally on CPU and latency",
        "tune the concurrency limit and admission control",
    ),
    "reliability": (
        "put a circuit breaker in front of the model service",
        "degrade gracefully (load shedding with clear errors, fallback route)",
    ),
    "memory": (
        "monitor engine memory with alerts",
        "tune the memory pool size and buffer reuse",
        "quantise the models to shrink their footprint",
    ),
    "cache": (
        "size the result cache for the working set",
        "review the cache key design (input normalisation)",
    ),
    "model_quality": (
        "retrain the model on fresh data",
        "review the training and hold-out data (drift, labels)",
    ),
    "interface": (
        "profile the slow endpoint's request path (body parsing, serialisation) apart from "
        "the model",
        "scale the service out and keep each replica below the certified rate",
        "tune admission control so an overload is shed before it queues",
    ),
    "initialization": (
        "warm models up before taking traffic",
        "keep model files small and on local storage",
    ),
}
_DEFAULT_MITIGATION = ("investigate the measurement and its source table",)
_RERUN = "re-run with a profile that gives enough samples and stable windows (e.g. nightly)"

#: gate -> mitigations when it failed
GATE_MITIGATIONS: dict[str, tuple[str, ...]] = {
    "build": ("rebuild or re-import the models; check checksums, parity and finite outputs",),
    "integration": ("fix the failing integration checks before load testing",),
    "load": ("fix the failing load scenarios (validity, latency, error rate)",),
    "stress": MITIGATIONS["reliability"],
    "infra": ("fix the HTTP service (health endpoints, /metrics, predictions over loopback)",),
    "certify": ("address the unmet criteria",),
}


def headroom(row: Mapping[str, Any]) -> float | None:
    """How far inside its threshold a measurement is (see the module doc); None if unknown."""
    measured, threshold = finite_number(row.get("measured")), finite_number(row.get("threshold"))
    if measured is None or threshold is None:
        return None
    if row.get("direction") == "max":
        return (threshold - measured) / (abs(threshold) or 1.0)
    if row.get("unit") in _BOUNDED_BY_ONE and threshold < 1.0 and measured <= 1.0:
        return (measured - threshold) / (1.0 - threshold)
    return (measured - threshold) / (abs(threshold) or 1.0)


def _only_by_tolerance(row: Mapping[str, Any]) -> bool:
    measured, target = finite_number(row.get("measured")), finite_number(row.get("target"))
    if measured is None or target is None:
        return False
    return measured > target if row.get("direction") == "max" else measured < target


def is_marginal(row: Mapping[str, Any]) -> bool:
    """Met, but only thanks to the tolerance or with under 10% headroom."""
    if not (row.get("met") and row.get("valid")):
        return False
    room = headroom(row)
    return _only_by_tolerance(row) or (room is not None and room < MARGINAL_HEADROOM)


def _fmt(value: Any, unit: str) -> str:
    number = finite_number(value)
    if number is None:
        return "no value"
    suffix = "" if unit in ("", "ratio", "abs", "pearson_r") else f" {unit}"
    return f"{number:.4g}{suffix}"


def _criterion_risk(row: Mapping[str, Any]) -> dict[str, Any] | None:
    name, unit = str(row.get("name")), str(row.get("unit") or "")
    category = str(row.get("category") or "other")
    op = "<=" if row.get("direction") == "max" else ">="
    rule = f"{op} {_fmt(row.get('threshold'), unit)}"
    measured = _fmt(row.get("measured"), unit)
    mitigation = MITIGATIONS.get(category, _DEFAULT_MITIGATION)
    room = headroom(row)
    status = status_of(row)
    if status == Status.NOT_APPLICABLE:
        if category != "model_quality":
            return None
        level = "low"
        description = f"{name}: not applicable ({row.get('detail') or 'no reason given'})"
        mitigation = ("declare the model's quality evidence (evaluation set, metric, threshold)",)
    elif not row.get("valid"):
        level = "medium"
        description = f"{name}: measurement not valid: {row.get('detail') or 'no detail'}"
        stage = missing_source_stage(row)
        mitigation = (f"run the {stage} stage and its gate",) if stage else (_RERUN,)
    elif not row.get("met"):
        level = "high"
        description = f"{name} not met: measured {measured}, needs {rule}"
    elif is_marginal(row):
        level = "medium"
        why = (
            f"worse than the target {_fmt(row.get('target'), unit)}, passing only by tolerance"
            if _only_by_tolerance(row)
            else f"headroom {room:.1%}"
        )
        description = f"{name} marginal: measured {measured} against {rule} ({why})"
    elif room is not None and room < LOW_HEADROOM:
        level = "low"
        description = f"{name} has little headroom: measured {measured} against {rule} ({room:.1%})"
    else:
        return None
    return {
        "level": level,
        "area": category,
        "criterion": name,
        "gate": None,
        "description": description,
        "mitigation": "; ".join(mitigation),
    }


def derive_risks(
    criteria: Sequence[Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    stages_ran: Mapping[str, bool],
) -> list[dict[str, Any]]:
    """Risks, high first; within a level, gates in stage order then criteria in order."""
    risks: list[dict[str, Any]] = []
    for stage in considered_stages(gates, stages_ran):
        gate_name = GATE_OF_STAGE.get(stage, stage)
        gate = gates.get(gate_name)
        ran = stages_ran.get(stage, gate is not None)
        if not ran or gate is None or gate.get("success") is not True:
            if not ran:
                description = f"gate {gate_name}: the {stage} stage did not run"
                mitigation = (f"run the {stage} stage and its gate",)
            elif gate is None:
                description = f"gate {gate_name}: the {stage} stage ran but its gate did not"
                mitigation = (f"run the {gate_name} gate",)
            else:
                failed = [str(f) for f in gate.get("failed") or []]
                description = f"gate {gate_name} failed: " + ("; ".join(failed) or "no detail")
                mitigation = GATE_MITIGATIONS.get(gate_name, _DEFAULT_MITIGATION)
            risks.append(
                {
                    "level": "high",
                    "area": stage,
                    "criterion": None,
                    "gate": gate_name,
                    "description": description,
                    "mitigation": "; ".join(mitigation),
                }
            )
    for row in criteria:
        risk = _criterion_risk(row)
        if risk is not None:
            risks.append(risk)
    return sorted(risks, key=lambda r: LEVEL_ORDER[r["level"]])


def recommendations(
    risks: Sequence[Mapping[str, Any]], criteria: Sequence[Mapping[str, Any]]
) -> list[str]:
    """One line per distinct mitigation, highest risk first, naming the areas it addresses;
    then one line per measurement that was taken but is not valid, with its reason."""
    areas: dict[str, list[str]] = {}
    for risk in risks:
        for part in str(risk["mitigation"]).split("; "):
            if part and part != _RERUN:
                named = areas.setdefault(part, [])
                if risk["area"] not in named:
                    named.append(str(risk["area"]))
    lines = [f"{part} ({', '.join(named)})" for part, named in areas.items()]
    for row in criteria:
        if status_of(row) == Status.INVALID:
            lines.append(
                f"{row.get('name')}: measurement not valid ({row.get('detail') or 'no detail'}); "
                f"{_RERUN}"
            )
    return lines
