"""Certification targets: declared once in include/targets.yaml, used everywhere.

Like k6 thresholds, a target is written once and then drives the GX gate suites, the
certification stage and the final report. A target passes when the measurement is inside
its threshold: for a `max` target `measured <= target * (1 + tolerance)`, for a `min`
target `measured >= target * (1 - tolerance)` (the original plan's rule).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.metrics import KNOWN_METRICS, METRICS, Direction

__all__ = [
    "DEFAULT_TARGETS_FILE",
    "KNOWN_METRICS",
    "TARGETS_FILE_ENV",
    "Relaxation",
    "Target",
    "Targets",
    "TargetsError",
    "format_number",
    "format_unit",
    "load_targets",
    "tolerance_phrase",
]

TARGETS_FILE_ENV = "RELCERT_TARGETS_FILE"
DEFAULT_TARGETS_FILE = Path(__file__).resolve().parent.parent / "include" / "targets.yaml"
SUPPORTED_VERSION = 1

# Every metric relcert knows how to measure, and which way is better for it: declared once,
# in pipeline.metrics.
_METRIC_DIRECTIONS: dict[str, Direction] = {m.name: m.direction for m in METRICS.values()}

_REQUIRED_KEYS = ("name", "category", "target", "tolerance", "direction", "unit")
_OPTIONAL_KEYS = ("description",)
_TOP_LEVEL_KEYS = ("version", "targets", "models", "relaxed", "regression")


class TargetsError(ValueError):
    """A targets file or an override is unusable; the message names the file and entry."""


def _clean_float(value: float) -> float:
    """Drop binary floating-point noise: 100 * 1.15 is 114.99999999999999, we mean 115."""
    return float(f"{value:.12g}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Target:
    """One certification target, e.g. p99 latency <= 300 ms with 20% tolerance."""

    name: str
    category: str
    target: float
    tolerance: float
    direction: Direction
    unit: str
    description: str = ""

    @property
    def threshold(self) -> float:
        """The pass/fail boundary: target x (1 + tolerance) for max, x (1 - tolerance) for min."""
        factor = 1.0 + self.tolerance if self.direction == "max" else 1.0 - self.tolerance
        return _clean_float(self.target * factor)

    def passes(self, measured: float | None) -> bool:
        """True when `measured` is inside the threshold; a missing or NaN measurement fails."""
        if measured is None or not _is_number(measured) or math.isnan(measured):
            return False
        if self.direction == "max":
            return measured <= self.threshold
        return measured >= self.threshold

    def margin(self, measured: float | None) -> float:
        """Signed relative headroom to the threshold: > 0 inside, < 0 outside, NaN if unknown.

        For a max target 0.1 means the measurement is 10% of the threshold below it.
        A zero threshold has no relative scale, so the absolute headroom is returned.
        """
        if measured is None or not _is_number(measured) or math.isnan(measured):
            return math.nan
        headroom = (
            self.threshold - measured if self.direction == "max" else measured - self.threshold
        )
        scale = abs(self.threshold) or 1.0
        return headroom / scale

    def describe(self) -> str:
        """`p99_latency_ms <= 360 ms (target 300 ms +20%)`: the rule in one line."""
        op = "<=" if self.direction == "max" else ">="
        unit = format_unit(self.unit)
        return f"{self.name} {op} {format_number(self.threshold)}{unit} ({tolerance_phrase(self)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "category": self.category,
            "target": self.target,
            "tolerance": self.tolerance,
            "direction": self.direction,
            "unit": self.unit,
            "description": self.description,
            "threshold": self.threshold,
        }


# Units that read as plain numbers ("0.9801", not "0.9801 ratio").
_UNITLESS = frozenset({"ratio", "pearson_r", "abs", ""})


def format_unit(unit: str) -> str:
    """The unit as written after a number: " ms", or "" for dimensionless units."""
    return "" if unit in _UNITLESS else f" {unit}"


def format_number(value: float) -> str:
    """Short human form of a threshold: 360, 0.9801, 1e-05."""
    return f"{value:.6g}"


def tolerance_phrase(target: Target) -> str:
    """`target 300 ms +20%` (max) / `target 0.99 -1%` (min) / `target 0.95, no tolerance`."""
    base = f"target {format_number(target.target)}{format_unit(target.unit)}"
    if target.tolerance == 0:
        return f"{base}, no tolerance"
    sign = "+" if target.direction == "max" else "-"
    return f"{base} {sign}{format_number(target.tolerance * 100)}%"


@dataclass(frozen=True)
class Relaxation:
    """A target a run certified against a weaker bar than the targets file declares."""

    metric: str
    declared: float
    effective: float
    model: str | None = None  # None: the run-level target; else that model's own

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "model": self.model,
            "declared": self.declared,
            "effective": self.effective,
        }

    def describe(self) -> str:
        who = f" for model {self.model}" if self.model else ""
        return (
            f"{self.metric}{who} relaxed from {format_number(self.declared)} to "
            f"{format_number(self.effective)}"
        )


@dataclass(frozen=True)
class Targets(Mapping[str, Target]):
    """The declared targets: a read-only mapping name -> Target, in file order.

    `models` holds per-model target values (a model's own budget, from the models file),
    `relaxed` every target this run relaxes (by the form or a model's own value)."""

    items_in_order: tuple[Target, ...]
    source: str = field(default="<memory>", compare=False)
    models: Mapping[str, Mapping[str, float]] = field(default_factory=dict, compare=False)
    relaxed: tuple[Relaxation, ...] = field(default=(), compare=False)
    #: the allowed change against the baseline per regression metric (pipeline.regression)
    regression: Any = field(default=None, compare=False)
    _index: dict[str, Target] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[str, Target] = {}
        for target in self.items_in_order:
            if target.name in index:
                raise TargetsError(f"{self.source}: duplicate metric {target.name!r}")
            index[target.name] = target
        object.__setattr__(self, "_index", index)

    def __getitem__(self, name: str) -> Target:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(
                f"{self.source}: no target named {name!r}; declared: {', '.join(self._index)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def by_category(self) -> dict[str, tuple[Target, ...]]:
        """Targets grouped by category; categories and members keep file order."""
        groups: dict[str, list[Target]] = {}
        for target in self.items_in_order:
            groups.setdefault(target.category, []).append(target)
        return {category: tuple(members) for category, members in groups.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready {name: {name, category, target, tolerance, direction, unit, description,
        threshold}} in file order."""
        return {target.name: target.to_dict() for target in self.items_in_order}

    def _check_override(
        self, name: str, value: Any, allow_relaxed: bool, where: str
    ) -> tuple[Target, bool]:
        """The replaced target and whether the new value relaxes it (refused unless
        allowed)."""
        if name not in _METRIC_DIRECTIONS:
            raise TargetsError(
                f"{where}: unknown metric; known metrics: {', '.join(KNOWN_METRICS)}"
            )
        if name not in self._index:
            raise TargetsError(f"{where}: metric is not declared in {self.source}")
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise TargetsError(f"{where}: value must be a finite number >= 0, got {value!r}")
        current = self._index[name]
        relaxes = value > current.target if current.direction == "max" else value < current.target
        if relaxes and not allow_relaxed:
            stricter = "lower" if current.direction == "max" else "higher"
            raise TargetsError(
                f"{where}: {format_number(value)} relaxes the declared target "
                f"{format_number(current.target)}{format_unit(current.unit)} "
                f"(direction {current.direction}: only a {stricter} value tightens it); "
                "relaxing needs allow_relaxed=True"
            )
        return dataclasses.replace(current, target=float(value)), relaxes

    def with_overrides(
        self, overrides: Mapping[str, float], allow_relaxed: bool = False
    ) -> Targets:
        """A copy with some target values replaced (e.g. from a manual run's Params form).

        Only declared metrics can be overridden, and only towards a stricter value (lower for
        max, higher for min) unless `allow_relaxed` is True: a run may not quietly certify
        against a weaker bar than the one in the targets file. Every relaxed target is
        recorded in `relaxed`.
        """
        replaced: dict[str, Target] = {}
        relaxed = list(self.relaxed)
        for name, value in overrides.items():
            target, relaxes = self._check_override(
                name, value, allow_relaxed, f"target override {name!r}"
            )
            replaced[name] = target
            if relaxes:
                relaxed.append(Relaxation(name, self._index[name].target, float(value)))
        return dataclasses.replace(
            self,
            items_in_order=tuple(replaced.get(t.name, t) for t in self.items_in_order),
            relaxed=tuple(relaxed),
        )

    def with_model_overrides(
        self, model: str, overrides: Mapping[str, Any], allow_relaxed: bool = False
    ) -> Targets:
        """A copy where `model` has its own values for some targets (a model's own budget,
        from its models-file entry). The same rule as `with_overrides` holds against the
        run's targets: tightening only, unless relaxing is allowed (and then recorded)."""
        values: dict[str, float] = {}
        relaxed = list(self.relaxed)
        per_model = [n for n, m in METRICS.items() if m.scope != "run"]
        for name, value in overrides.items():
            where = f"model {model!r}: target {name!r}"
            self._check_override(name, value, allow_relaxed, where)
            if name not in per_model:
                raise TargetsError(
                    f"{where}: {name} is certified for the run as a whole, not per model "
                    f"(per-model metrics: {', '.join(per_model)})"
                )
            current = self._index[name]
            relaxes = (
                value > current.target if current.direction == "max" else value < current.target
            )
            if relaxes:
                relaxed.append(Relaxation(name, current.target, float(value), model))
            values[name] = float(value)
        models = {**self.models, model: values}
        return dataclasses.replace(self, models=models, relaxed=tuple(relaxed))

    def for_model(self, model: str) -> Targets:
        """The targets that hold for `model`: the run's, with the model's own values."""
        own = self.models.get(model) or {}
        if not own:
            return self
        return dataclasses.replace(
            self,
            items_in_order=tuple(
                dataclasses.replace(t, target=own[t.name]) if t.name in own else t
                for t in self.items_in_order
            ),
            models={},
        )

    def to_yaml(self) -> str:
        """The targets as a targets file (a run's effective targets.yaml): per-model values
        and relaxations included."""
        document: dict[str, Any] = {
            "version": SUPPORTED_VERSION,
            "targets": [
                {k: v for k, v in t.to_dict().items() if k != "threshold"}
                for t in self.items_in_order
            ],
        }
        if self.models:
            document["models"] = {m: dict(v) for m, v in self.models.items()}
        if self.relaxed:
            document["relaxed"] = [r.to_dict() for r in self.relaxed]
        if self.regression is not None:
            document["regression"] = self.regression.to_block()
        return yaml.safe_dump(document, sort_keys=False)

    def regression_config(self) -> Any:
        """The regression allowances (pipeline.regression.config): the file's block, else
        every default."""
        if self.regression is not None:
            return self.regression
        from pipeline.regression.config import default_regression_config

        return default_regression_config()


def _display_path(path: Path) -> str:
    """The path as a user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _parse_entry(entry: Any, where: str, seen: set[str]) -> Target:
    if not isinstance(entry, dict):
        raise TargetsError(f"{where}: must be a mapping of target fields, got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise TargetsError(f"{where}: name must be a non-empty string, got {name!r}")
    where = f"{where} ({name})"
    if name not in _METRIC_DIRECTIONS:
        raise TargetsError(
            f"{where}: unknown metric {name!r}; known metrics: {', '.join(KNOWN_METRICS)}"
        )
    if name in seen:
        raise TargetsError(f"{where}: duplicate metric {name!r} (each metric is declared once)")
    unknown = sorted(set(entry) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
        raise TargetsError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in entry]
    if missing:
        raise TargetsError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")

    for key in ("category", "unit"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise TargetsError(f"{where}: {key} must be a non-empty string, got {entry[key]!r}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise TargetsError(f"{where}: description must be a string, got {description!r}")

    value = entry["target"]
    if not _is_number(value):
        raise TargetsError(f"{where}: target must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise TargetsError(f"{where}: target must be a finite number >= 0, got {value!r}")

    tolerance = entry["tolerance"]
    if not _is_number(tolerance) or not math.isfinite(tolerance) or tolerance < 0:
        raise TargetsError(f"{where}: tolerance must be a number >= 0, got {tolerance!r}")

    direction = entry["direction"]
    if direction not in ("max", "min"):
        raise TargetsError(f"{where}: direction must be 'max' or 'min', got {direction!r}")
    expected = _METRIC_DIRECTIONS[name]
    if direction != expected:
        better = "lower" if expected == "max" else "higher"
        raise TargetsError(
            f"{where}: direction must be {expected!r} for this metric ({better} is better), "
            f"got {direction!r}"
        )
    if direction == "min" and tolerance >= 1:
        raise TargetsError(
            f"{where}: tolerance must be < 1 for a min target (1 or more would accept 0), "
            f"got {tolerance!r}"
        )

    seen.add(name)
    return Target(
        name=name,
        category=entry["category"],
        target=float(value),
        tolerance=float(tolerance),
        direction=direction,
        unit=entry["unit"],
        description=description,
    )


def load_targets(path: str | os.PathLike[str] | None = None) -> Targets:
    """Read and validate a targets file.

    `path` defaults to $RELCERT_TARGETS_FILE, then to include/targets.yaml of the project.
    Raises TargetsError naming the file and the entry for anything unusable.
    """
    if path is None:
        path = os.environ.get(TARGETS_FILE_ENV) or DEFAULT_TARGETS_FILE
    file = Path(path)
    shown = _display_path(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TargetsError(f"{shown}: targets file not found") from None
    except OSError as exc:
        raise TargetsError(f"{shown}: cannot read targets file: {exc.strerror or exc}") from None

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TargetsError(f"{shown}: malformed YAML{line}: {problem}") from None

    if not isinstance(document, dict):
        raise TargetsError(
            f"{shown}: top level must be a mapping with 'version' and 'targets', "
            f"got {type(document).__name__}"
        )
    unknown = sorted(set(document) - set(_TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise TargetsError(
            f"{shown}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(_TOP_LEVEL_KEYS)}"
        )
    version = document.get("version", SUPPORTED_VERSION)
    if version != SUPPORTED_VERSION or isinstance(version, bool):
        raise TargetsError(f"{shown}: version must be {SUPPORTED_VERSION}, got {version!r}")
    entries = document.get("targets")
    if not isinstance(entries, list) or not entries:
        raise TargetsError(
            f"{shown}: 'targets' must be a non-empty list of target entries, got {entries!r}"
        )

    seen: set[str] = set()
    parsed = tuple(
        _parse_entry(entry, f"{shown}: targets[{i}]", seen) for i, entry in enumerate(entries)
    )
    targets = Targets(parsed, source=shown)
    models = document.get("models") or {}
    if not isinstance(models, dict):
        raise TargetsError(f"{shown}: 'models' must map model names to target values")
    for model, values in models.items():
        if not isinstance(values, dict):
            raise TargetsError(f"{shown}: models.{model} must map metrics to values")
        targets = targets.with_model_overrides(str(model), values, allow_relaxed=True)
    relaxed = document.get("relaxed") or []
    try:
        recorded = tuple(
            Relaxation(
                str(r["metric"]), float(r["declared"]), float(r["effective"]), r.get("model")
            )
            for r in relaxed
        )
    except (TypeError, KeyError, ValueError):
        raise TargetsError(
            f"{shown}: 'relaxed' must be a list of {{metric, declared, effective, model}}"
        ) from None
    regression = None
    if "regression" in document:
        from pipeline.regression.config import parse_regression_block

        regression = parse_regression_block(document["regression"], shown)
    return dataclasses.replace(targets, relaxed=recorded, regression=regression)
