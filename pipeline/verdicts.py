"""Verdicts as data: one `Criterion` record per certified metric, with a `Status`.

The decision reads statuses and `met`, never prose (see ARCHITECTURE.md, verdict rules):

- MEASURED: a value with evidence and a sample count >= its minimum; met or unmet;
- INVALID: measured on too little evidence (fewer samples than `min_samples`): unmet;
- NOT_APPLICABLE: cannot apply to this model or run (the reason is the detail): it neither
  passes nor fails;
- NOT_RUN: the stage that measures it failed or did not run (its message is the detail):
  unmet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.names import Status

__all__ = ["BLOCKING", "Criterion", "Measurement", "NotApplicable", "NotRun", "judge"]

#: statuses that stand between a run and approval whatever the value
BLOCKING = (Status.INVALID, Status.NOT_RUN)


class NotRun(Exception):
    """The evidence a measurement needs was not produced (its stage failed or was skipped)."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(message)


class NotApplicable(Exception):
    """The measurement cannot apply to this run (the message says why)."""


@dataclass(frozen=True)
class Measurement:
    """What a measure function found: the value, how much evidence it rests on (`samples`,
    against the `min_samples` it needs to be valid) and what exactly was measured."""

    value: float
    samples: int
    min_samples: int
    detail: str

    @property
    def status(self) -> Status:
        if not isinstance(self.value, int | float) or math.isnan(self.value):
            return Status.INVALID
        return Status.MEASURED if self.samples >= self.min_samples else Status.INVALID


@dataclass(frozen=True)
class Criterion:
    """One certification criterion: the target, what was measured and the verdict."""

    name: str
    metric: str
    model: str  # "" for the run as a whole (the mix of every model)
    category: str
    status: Status
    target: float
    tolerance: float
    direction: str
    threshold: float
    measured: float
    met: bool
    samples: int
    min_samples: int
    source: str
    detail: str
    unit: str

    @property
    def valid(self) -> bool:
        """Measured on enough evidence (not applicable rows are not measurements)."""
        return self.status == Status.MEASURED

    @property
    def blocks_approval(self) -> bool:
        return self.status in BLOCKING or (self.status == Status.MEASURED and not self.met)

    def row(self) -> dict[str, Any]:
        """The criteria.csv row."""
        return {**asdict(self), "status": str(self.status), "valid": self.valid}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Criterion:
        """A criterion from a criteria.csv row (strings) or its dict form."""

        def number(key: str) -> float:
            try:
                return float(row.get(key))
            except (TypeError, ValueError):
                return math.nan

        def flag(key: str) -> bool:
            value = row.get(key)
            return value is True or str(value).strip().lower() in ("true", "1")

        samples = number("samples")
        min_samples = number("min_samples")
        model = row.get("model")
        return cls(
            name=str(row.get("name") or ""),
            metric=str(row.get("metric") or row.get("name") or ""),
            model="" if model is None or model != model else str(model),
            category=str(row.get("category") or ""),
            status=Status(str(row.get("status") or Status.NOT_RUN)),
            target=number("target"),
            tolerance=number("tolerance"),
            direction=str(row.get("direction") or ""),
            threshold=number("threshold"),
            measured=number("measured"),
            met=flag("met"),
            samples=0 if math.isnan(samples) else int(samples),
            min_samples=0 if math.isnan(min_samples) else int(min_samples),
            source=str(row.get("source") or ""),
            detail=str(row.get("detail") or ""),
            unit=str(row.get("unit") or ""),
        )


def judge(
    target: Any,
    source: str,
    measurement: Measurement | None = None,
    *,
    status: Status | None = None,
    detail: str = "",
    metric: str = "",
    model: str | None = None,
) -> Criterion:
    """The criterion for `target` (a pipeline.targets.Target, named as the criterion) from
    a measurement, or from a status with its reason (NOT_RUN, NOT_APPLICABLE) when there is
    no measurement."""
    if measurement is not None:
        status = measurement.status
        value, samples, need = measurement.value, measurement.samples, measurement.min_samples
        detail = measurement.detail
        if status == Status.INVALID:
            detail += f" (INVALID: needs >= {need} samples, has {samples})"
    else:
        if status is None or status == Status.MEASURED:
            raise ValueError("judge: a measured criterion needs its measurement")
        value, samples, need = math.nan, 0, 0
    met = status == Status.MEASURED and bool(target.passes(value))
    return Criterion(
        name=target.name,
        metric=metric or target.name,
        model=model or "",
        category=target.category,
        status=status,
        target=target.target,
        tolerance=target.tolerance,
        direction=target.direction,
        threshold=target.threshold,
        measured=value,
        met=met,
        samples=int(samples),
        min_samples=int(need),
        source=source,
        detail=detail,
        unit=target.unit,
    )
