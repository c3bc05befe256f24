"""Targets -> expectation specs: what each stage's gate checks, in plain Python.

The specs name GX expectations by their snake_case type with JSON-ready kwargs, so this
module needs no GX import; `pipeline.gates.runner` turns them into a GX suite.
Which target bounds which column is one table (`TARGET_BOUNDS`), not code per stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.criteria import Planned, plan
from pipeline.gates.contracts import STAGES, TABLES, TableContract
from pipeline.names import Status
from pipeline.stages.contracts import ATTEMPT_COLUMN
from pipeline.targets import Target, Targets, format_number, format_unit, tolerance_phrase

__all__ = [
    "TARGET_BOUNDS",
    "ExpectationSpec",
    "TargetBound",
    "row_condition_pairs",
    "suite_name",
    "suite_spec",
]


@dataclass(frozen=True)
class ExpectationSpec:
    """One expectation of a gate suite.

    `type` is the GX snake_case name, `kwargs` its JSON-ready arguments, `meaning` one human
    sentence, and `target` the targets.yaml metric it enforces (None for structural checks).
    """

    type: str
    kwargs: dict[str, Any]
    meaning: str
    target: str | None = field(default=None)


@dataclass(frozen=True)
class TargetBound:
    """A stage table column that must stay inside a target's threshold.

    The bound's side comes from the target's direction (max: upper bound, min: lower bound).
    `where` restricts the check to rows with `column == value` (every pair must hold);
    `floor` adds a fixed lower bound to a max target (a difference cannot be negative).
    """

    stage: str
    target: str
    column: str
    subject: str
    where: tuple[tuple[str, str], ...] = ()
    floor: float | None = None


#: rows whose verdict is a measurement (not applicable rows neither pass nor fail)
_MEASURED = ("status", "measured")

# (stage, target, column, subject): the rows the suites are built from. The certify stage
# additionally re-checks every declared target; see `_certification_bounds`.
TARGET_BOUNDS: tuple[TargetBound, ...] = (
    TargetBound(
        "build",
        "parity_max_abs_diff",
        "parity_max_abs_diff",
        "parity max |diff| of every exported model",
        where=(("parity_status", "measured"),),
        floor=0.0,
    ),
    TargetBound(
        "integration",
        "model_initialization_s",
        "measured",
        "initialisation time of every initialization check",
        where=(("check", "initialization"), _MEASURED),
    ),
    TargetBound("load", "error_rate", "error_rate", "error rate of every scenario"),
    TargetBound(
        "load", "average_inference_latency_ms", "mean_ms", "mean latency of every scenario"
    ),
    TargetBound("load", "p95_latency_ms", "p95_ms", "p95 latency of every scenario"),
    TargetBound("load", "p99_latency_ms", "p99_ms", "p99 latency of every scenario"),
    TargetBound("load", "memory_usage_mb", "peak_rss_mb", "peak RSS of every scenario"),
    # the interface SLAs, over HTTP on loopback (each model's /v2 endpoint: _per_model_bounds)
    TargetBound(
        "infra",
        "routing_endpoint_p99_ms",
        "measured",
        "p99 of POST /api/v1/predict/routing under the open-loop load",
        where=(("check", "routing_endpoint_p99_ms"), _MEASURED),
    ),
    TargetBound(
        "infra",
        "quality_endpoint_p99_ms",
        "measured",
        "p99 of POST /api/v1/predict/quality under the open-loop load",
        where=(("check", "quality_endpoint_p99_ms"), _MEASURED),
    ),
    TargetBound(
        "infra",
        "validation_endpoint_s",
        "measured",
        "completion time of POST /api/v1/validate/performance",
        where=(("check", "validation_endpoint_s"), _MEASURED),
    ),
    TargetBound(
        "infra",
        "availability",
        "measured",
        "share of health probes and load requests answered correctly",
        where=(("check", "availability"), _MEASURED),
    ),
)

#: per-model target bounds: (stage, metric, check), one bound per model with its own target
_PER_MODEL_BOUNDS: tuple[tuple[str, str, str], ...] = (
    ("infra", "endpoint_p99_latency_ms", "p99 of POST /v2/models/{model}/infer under the load"),
)

# Boolean columns that must be True on every row (each also must not be empty: GX column
# checks skip missing values, and a missing verdict is not a pass).
_ALL_TRUE: dict[str, tuple[str, ...]] = {
    "build": ("sha256_verified", "loaded", "outputs_finite"),
    "load": ("valid",),
    "stress": ("survived", "recovered"),
}

# Tables with a `status` column: every row is measured or not applicable (never invalid or
# not run), and the verdict column is True on every measured row.
_STATUS_VERDICT: dict[str, str] = {
    "integration": "passed",
    "infra": "passed",
    "certify": "met",
    "regression": "passed",
}

# Other columns that must have a value on every row.
_NOT_NULL: dict[str, tuple[str, ...]] = {
    "build": ("version",),
    "integration": ("check",),
}

# Bounds that do not come from a target: (stage, column, min, max, meaning).
_FIXED_BOUNDS: tuple[tuple[str, str, float, float, str], ...] = (
    ("stress", "lost", 0, 0, "no request is lost in any stress test (lost between 0 and 0)"),
)


def suite_name(stage: str) -> str:
    """The GX expectation suite name of a stage's gate."""
    return f"relcert_{stage}"


def _row_condition(where: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """A GX 1.x row condition (every `column == value` pair) in its serialised form."""
    comparisons = [
        {"type": "comparison", "column": {"name": c}, "operator": "==", "parameter": v}
        for c, v in where
    ]
    return comparisons[0] if len(comparisons) == 1 else {"type": "and", "conditions": comparisons}


def row_condition_pairs(condition: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The (column, value) pairs of a row condition made by `_row_condition`."""
    if not condition:
        return []
    parts = condition["conditions"] if condition.get("type") == "and" else [condition]
    return [(p["column"]["name"], p["parameter"]) for p in parts]


def _domain(column: str, where: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"column": column}
    if where:
        kwargs["row_condition"] = _row_condition(where)
    return kwargs


def _not_null(
    contract: TableContract, column: str, where: tuple[tuple[str, str], ...] = ()
) -> ExpectationSpec:
    rows = f"every {contract.row_noun}"
    if where:
        rows = f"every {' '.join(str(v) for _, v in where)} {contract.row_noun}"
    return ExpectationSpec(
        "expect_column_values_to_not_be_null",
        _domain(column, where),
        f"{column} is present for {rows}",
    )


def _bound_spec(bound: TargetBound, target: Target) -> ExpectationSpec:
    threshold = target.threshold
    unit = format_unit(target.unit)
    kwargs = _domain(bound.column, bound.where)
    if target.direction == "max":
        if bound.floor is not None:
            kwargs["min_value"] = bound.floor
            rule = f"between {format_number(bound.floor)} and {format_number(threshold)}{unit}"
        else:
            rule = f"<= {format_number(threshold)}{unit}"
        kwargs["max_value"] = threshold
    else:
        kwargs["min_value"] = threshold
        rule = f">= {format_number(threshold)}{unit}"
    return ExpectationSpec(
        "expect_column_values_to_be_between",
        kwargs,
        f"{bound.subject} {rule} ({tolerance_phrase(target)})",
        target=target.name,
    )


def _per_model_bounds(
    stage: str, targets: Targets, model_info: Mapping[str, Any] | None
) -> list[tuple[TargetBound, Target]]:
    """A bound per model on its own row of a per-model check, with the model's own target
    (a models-file value, else the run's)."""
    return [
        (
            TargetBound(
                stage,
                metric,
                "measured",
                subject.format(model=model),
                where=(("check", metric), ("model", model), _MEASURED),
            ),
            targets.for_model(model)[metric],
        )
        for bound_stage, metric, subject in _PER_MODEL_BOUNDS
        if bound_stage == stage and metric in targets
        for model in sorted(model_info or {})
    ]


def _certification_bounds(planned: list[Planned]) -> list[tuple[TargetBound, Target]]:
    """One independent re-check per planned criterion with a target, on its measured row."""
    return [
        (
            TargetBound(
                "certify",
                p.name,
                "measured",
                f"measured {p.name}",
                where=(("name", p.name), _MEASURED),
            ),
            p.target,
        )
        for p in planned
        if p.target is not None
    ]


def _row_count_specs(
    stage: str, contract: TableContract, targets: Targets, planned: list[Planned]
) -> list[ExpectationSpec]:
    if stage != "certify":
        return [
            ExpectationSpec(
                "expect_table_row_count_to_be_between",
                {"min_value": 1},
                f"{contract.path} has at least one {contract.row_noun}",
            )
        ]
    names = [p.name for p in planned]
    return [
        ExpectationSpec(
            "expect_table_row_count_to_equal",
            {"value": len(names)},
            f"{contract.path} has one row per planned criterion ({len(names)} rows)",
        ),
        ExpectationSpec(
            "expect_column_distinct_values_to_equal_set",
            {"column": "name", "value_set": names},
            f"the criteria are exactly the {len(names)} planned from {targets.source} and the "
            "run's models",
        ),
    ]


def _attempt_spec(contract: TableContract, attempt_id: str) -> ExpectationSpec:
    return ExpectationSpec(
        "expect_column_values_to_be_in_set",
        {"column": ATTEMPT_COLUMN, "value_set": [attempt_id]},
        f"every {contract.row_noun} is from this attempt ({attempt_id})",
    )


def _status_specs(contract: TableContract, verdict: str) -> list[ExpectationSpec]:
    return [
        _not_null(contract, "status"),
        ExpectationSpec(
            "expect_column_values_to_be_in_set",
            {"column": "status", "value_set": [str(Status.MEASURED), str(Status.NOT_APPLICABLE)]},
            f"every {contract.row_noun} was measured or is not applicable (none invalid or "
            "not run)",
        ),
        _not_null(contract, verdict, (_MEASURED,)),
        ExpectationSpec(
            "expect_column_values_to_be_in_set",
            {**_domain(verdict, (_MEASURED,)), "value_set": [True]},
            f"{verdict} is True for every measured {contract.row_noun}",
        ),
    ]


def suite_spec(
    stage: str,
    targets: Targets,
    attempt_id: str | None = None,
    model_info: Mapping[str, Any] | None = None,
) -> list[ExpectationSpec]:
    """The expectations of `stage`'s gate, with thresholds taken from `targets`; with an
    `attempt_id`, every row must carry it (evidence of another attempt fails the gate). The
    certify gate expects exactly the criteria planned for `targets` and the run's models
    (`model_info`, pipeline.criteria.plan) and re-checks each against its own target.

    A target bound whose metric is not declared in `targets` is left out: a targets file
    may certify a subset of the known metrics.
    """
    if stage not in TABLES:
        raise ValueError(f"unknown gate stage {stage!r}; known stages: {', '.join(STAGES)}")
    contract = TABLES[stage]
    planned = plan(targets, model_info) if stage == "certify" else []
    specs = _row_count_specs(stage, contract, targets, planned)
    if attempt_id is not None:
        specs.append(_attempt_spec(contract, attempt_id))
    if stage in _STATUS_VERDICT:
        specs += _status_specs(contract, _STATUS_VERDICT[stage])
    if stage == "build":  # parity: measured (and passed) or not applicable, never invalid
        specs.append(_not_null(contract, "parity_status"))
        specs.append(
            ExpectationSpec(
                "expect_column_values_to_be_in_set",
                {
                    "column": "parity_status",
                    "value_set": [str(Status.MEASURED), str(Status.NOT_APPLICABLE)],
                },
                "parity is measured or not applicable for every exported model",
            )
        )
        specs.append(
            ExpectationSpec(
                "expect_column_values_to_be_in_set",
                {**_domain("parity_passed", (("parity_status", "measured"),)), "value_set": [True]},
                "parity_passed is True for every exported model whose parity was measured",
            )
        )

    for column in _NOT_NULL.get(stage, ()):
        specs.append(_not_null(contract, column))
    for column in _ALL_TRUE.get(stage, ()):
        specs.append(_not_null(contract, column))
        specs.append(
            ExpectationSpec(
                "expect_column_values_to_be_in_set",
                {"column": column, "value_set": [True]},
                f"{column} is True for every {contract.row_noun}",
            )
        )

    bounds = [(b, targets[b.target]) for b in TARGET_BOUNDS if b.target in targets]
    bounds += _per_model_bounds(stage, targets, model_info)
    bounds += _certification_bounds(planned)
    for bound, target in bounds:
        if bound.stage != stage:
            continue
        specs.append(_not_null(contract, bound.column, bound.where))
        specs.append(_bound_spec(bound, target))

    for bound_stage, column, low, high, meaning in _FIXED_BOUNDS:
        if bound_stage == stage:
            specs.append(_not_null(contract, column))
            specs.append(
                ExpectationSpec(
                    "expect_column_values_to_be_between",
                    {"column": column, "min_value": low, "max_value": high},
                    meaning,
                )
            )
    return specs
