"""What a run certifies: one planned criterion per target and scope, named once.

`plan(targets, model_info)` lists the criteria of a run: each target of the run's targets
for the mix of every model (`p99_latency_ms`) and, where the metric is certified per model,
for each model with that model's own values (`p99_latency_ms[quality_predictor]`), then
each model's quality SLA (`model_quality[<model>]`). Certification measures exactly these,
and its gate re-checks exactly these, so the two cannot drift apart.

Light on purpose: no pandas or numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.metrics import METRICS, MODEL_QUALITY
from pipeline.targets import Target, Targets

__all__ = ["Planned", "criterion_name", "plan", "quality_target"]


def criterion_name(metric: str, model: str | None = None) -> str:
    """`metric` for the run as a whole, `metric[model]` for one model."""
    return metric if model is None else f"{metric}[{model}]"


@dataclass(frozen=True)
class Planned:
    """One criterion the run certifies: its name, metric, model (None: the whole run) and
    the target that holds for it (a not-applicable quality criterion has none)."""

    name: str
    metric: str
    model: str | None
    target: Target | None
    reason: str = ""  # why there is no target (not applicable)


def quality_target(model: str, sla: Mapping[str, Any] | None) -> Target | None:
    """The model's quality SLA as a target (None when the model declares none)."""
    from pipeline.quality import SLA_METRICS

    if not sla:
        return None
    metric = SLA_METRICS[sla["metric"]]
    k = f" (k={sla['k']})" if sla.get("k") else ""
    return Target(
        name=criterion_name(MODEL_QUALITY, model),
        category="model_quality",
        target=float(sla["threshold"]),
        tolerance=0.0,
        direction=metric.direction,
        unit=metric.name,
        description=f"Model SLA: {metric.description}{k}, on its evaluation set.",
    )


def plan(targets: Targets, model_info: Mapping[str, Mapping[str, Any]] | None) -> list[Planned]:
    """Every criterion of a run, in the targets file's order, then the quality SLAs."""
    models = sorted(model_info or {})
    planned: list[Planned] = []
    for target in targets.values():
        scope = METRICS[target.name].scope
        if scope in ("run", "both"):
            planned.append(Planned(target.name, target.name, None, target))
        if scope in ("model", "both"):
            for model in models:
                own = targets.for_model(model)[target.name]
                name = criterion_name(target.name, model)
                planned.append(Planned(name, target.name, model, _renamed(own, name)))
    for model in models:
        sla = (model_info or {})[model].get("sla")
        target = quality_target(model, sla)
        reason = "" if target else "no quality evidence given (the models file declares no sla)"
        planned.append(
            Planned(criterion_name(MODEL_QUALITY, model), MODEL_QUALITY, model, target, reason)
        )
    return planned


def _renamed(target: Target, name: str) -> Target:
    import dataclasses

    return dataclasses.replace(target, name=name)


def placeholder_target(planned: Planned) -> Target:
    """A stand-in target for a planned criterion that has none (not applicable)."""
    return Target(
        name=planned.name,
        category="model_quality",
        target=math.nan,
        tolerance=0.0,
        direction="min",
        unit="",
    )
