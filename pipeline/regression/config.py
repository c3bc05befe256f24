"""The `regression:` block of targets.yaml: how much each metric may change against the
baseline before the change counts, and how sure the comparison must be.

```yaml
regression:
  alpha: 0.01                   # 1 - confidence of every interval (per metric: `alpha`)
  bootstrap_resamples: 10000
  envelope_safety_factor: 0.5   # operating envelope: the knee's rate x this factor
  metrics:
    latency_p99_ms: {max_relative_change: 0.25}
    quality: {max_absolute_drop: 0.02}
```

A metric left out of `metrics` keeps its default (`DEFAULT_ALLOWANCES`); so does a
top-level key left out. Which way is worse comes from the metric itself
(`REGRESSION_METRICS`), never from the file: latency, compute time, RSS and initialisation
time regress upwards, capacity and quality downwards. Errors name the file, the metric and
the key, like the targets' (`RegressionConfigError` is a `TargetsError`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.metrics import Direction
from pipeline.targets import DEFAULT_TARGETS_FILE, TARGETS_FILE_ENV, TargetsError
from pipeline.targets import _display_path as display_path

__all__ = [
    "BLOCK_KEY",
    "DEFAULT_ALLOWANCES",
    "DEFAULT_BLOCK",
    "REGRESSION_METRICS",
    "Allowance",
    "RegressionConfig",
    "RegressionConfigError",
    "RegressionMetric",
    "default_regression_config",
    "load_regression_config",
    "parse_regression_block",
]

#: the top-level key of targets.yaml
BLOCK_KEY = "regression"

Kind = Literal["samples", "values", "quality"]


class RegressionConfigError(TargetsError):
    """The regression block is unusable; the message names the file, metric and key."""


@dataclass(frozen=True)
class RegressionMetric:
    """One compared metric: which way is worse, and what evidence it takes.

    `kind` picks the method (`stats.compare_samples` / `compare_values` /
    `compare_quality`); `statistic` is the sample statistic for "samples" metrics.
    """

    name: str
    direction: Direction
    kind: Kind
    statistic: str | None
    unit: str
    description: str


REGRESSION_METRICS: dict[str, RegressionMetric] = {
    m.name: m
    for m in (
        RegressionMetric(
            "latency_p50_ms", "max", "samples", "p50", "ms", "end-to-end request latency, p50"
        ),
        RegressionMetric(
            "latency_p95_ms", "max", "samples", "p95", "ms", "end-to-end request latency, p95"
        ),
        RegressionMetric(
            "latency_p99_ms", "max", "samples", "p99", "ms", "end-to-end request latency, p99"
        ),
        RegressionMetric(
            "compute_time_ms",
            "max",
            "samples",
            "p50",
            "ms",
            "the model's own inference time per batch, per batch size (median)",
        ),
        RegressionMetric(
            "capacity_rps", "min", "values", None, "req/s", "sustained rate of repeated trials"
        ),
        RegressionMetric(
            "peak_rss_mb", "max", "values", None, "MB", "peak RSS of the engine's process"
        ),
        RegressionMetric("init_time_s", "max", "values", None, "s", "model load and first answer"),
        RegressionMetric("quality", "min", "quality", None, "points", "the model's quality metric"),
    )
}

_DEFAULT_ALPHA = 0.01
_DEFAULT_RESAMPLES = 10_000
_DEFAULT_SAFETY_FACTOR = 0.5
#: metric -> (key, value): the allowance each metric has unless the file says otherwise
DEFAULT_ALLOWANCES: dict[str, tuple[str, float]] = {
    "latency_p50_ms": ("max_relative_change", 0.15),
    "latency_p95_ms": ("max_relative_change", 0.20),
    "latency_p99_ms": ("max_relative_change", 0.25),
    "compute_time_ms": ("max_relative_change", 0.10),
    "capacity_rps": ("max_relative_change", 0.15),
    "peak_rss_mb": ("max_relative_change", 0.20),
    "init_time_s": ("max_relative_change", 0.50),
    "quality": ("max_absolute_drop", 0.02),
}

#: the block as it stands at the end of include/targets.yaml (a test holds them together)
DEFAULT_BLOCK = """\
# Regression against the baseline: the last APPROVED run of the same DAG and model names
# (same profile) with an earlier snapshot date, or a pinned run (`relcert baseline pin`).
# A change is a regression when it exceeds its allowance below AND is significant: the
# whole (1 - alpha) confidence interval of candidate/baseline lies beyond the allowance.
# Directions come from the metric: latency, compute time, RSS and initialisation regress
# upwards (max_relative_change: +0.15 = 15% slower); capacity downwards (0.15 = 15% less);
# quality by a drop in absolute points of its metric (0.02 = 2 points of accuracy).
#   alpha                   1 - confidence of the intervals (0.01: 99%); per metric too
#   bootstrap_resamples     bootstrap replicates per comparison (>= 1000)
#   envelope_safety_factor  recommended operating rate = the knee's rate x this (0, 1]
regression:
  alpha: 0.01
  bootstrap_resamples: 10000
  envelope_safety_factor: 0.5
  metrics:
    latency_p50_ms: {max_relative_change: 0.15}
    latency_p95_ms: {max_relative_change: 0.20}
    latency_p99_ms: {max_relative_change: 0.25}
    compute_time_ms: {max_relative_change: 0.10}
    capacity_rps: {max_relative_change: 0.15}
    peak_rss_mb: {max_relative_change: 0.20}
    init_time_s: {max_relative_change: 0.50}
    quality: {max_absolute_drop: 0.02}
"""


@dataclass(frozen=True)
class Allowance:
    """How much one metric may change: `max_relative_change` (a ratio's distance from 1)
    or, for quality, `max_absolute_drop` (in the metric's units); with its `alpha`."""

    metric: RegressionMetric
    alpha: float
    max_relative_change: float | None = None
    max_absolute_drop: float | None = None

    @property
    def name(self) -> str:
        return self.metric.name

    @property
    def direction(self) -> Direction:
        return self.metric.direction

    def describe(self) -> str:
        """`latency_p99_ms: at most +25% (alpha 0.01)`."""
        if self.max_absolute_drop is not None:
            points = self.max_absolute_drop * 100
            return f"{self.name}: a drop of at most {self.max_absolute_drop:g} ({points:g} points)"
        sign = "+" if self.direction == "max" else "-"
        limit = f"at most {sign}{(self.max_relative_change or 0) * 100:g}%"
        return f"{self.name}: {limit} (alpha {self.alpha:g})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "direction": self.direction,
            "kind": self.metric.kind,
            "statistic": self.metric.statistic,
            "alpha": self.alpha,
            "max_relative_change": self.max_relative_change,
            "max_absolute_drop": self.max_absolute_drop,
        }


@dataclass(frozen=True)
class RegressionConfig(Mapping[str, Allowance]):
    """The allowances (a read-only mapping metric -> Allowance) and the shared settings."""

    allowances: tuple[Allowance, ...]
    alpha: float = _DEFAULT_ALPHA
    bootstrap_resamples: int = _DEFAULT_RESAMPLES
    envelope_safety_factor: float = _DEFAULT_SAFETY_FACTOR
    source: str = field(default="<defaults>", compare=False)

    def __getitem__(self, name: str) -> Allowance:
        for allowance in self.allowances:
            if allowance.name == name:
                return allowance
        raise KeyError(f"{self.source}: no regression metric {name!r}; known: {_known()}")

    def __iter__(self) -> Iterator[str]:
        return (a.name for a in self.allowances)

    def __len__(self) -> int:
        return len(self.allowances)

    def to_block(self) -> dict[str, Any]:
        """The `regression:` block of a targets file that reads back as this config."""
        metrics = {}
        for a in self.allowances:
            key = "max_absolute_drop" if a.max_absolute_drop is not None else "max_relative_change"
            metrics[a.name] = {key: getattr(a, key), "alpha": a.alpha}
        return {
            "alpha": self.alpha,
            "bootstrap_resamples": self.bootstrap_resamples,
            "envelope_safety_factor": self.envelope_safety_factor,
            "metrics": metrics,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "bootstrap_resamples": self.bootstrap_resamples,
            "envelope_safety_factor": self.envelope_safety_factor,
            "metrics": {a.name: a.to_dict() for a in self.allowances},
            "source": self.source,
        }


def _known() -> str:
    return ", ".join(REGRESSION_METRICS)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _alpha(value: Any, where: str) -> float:
    if not _is_number(value) or not 0 < value < 0.5:
        raise RegressionConfigError(f"{where}: alpha must be a number in (0, 0.5), got {value!r}")
    return float(value)


def _allowance(name: str, entry: Any, alpha: float, where: str) -> Allowance:
    metric = REGRESSION_METRICS[name]
    key, default = DEFAULT_ALLOWANCES[name]
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise RegressionConfigError(
            f"{where}: must be a mapping of {key} (and alpha), got {entry!r}"
        )
    allowed = (key, "alpha")
    unknown = sorted(set(entry) - set(allowed), key=str)
    if unknown:
        wrong = ""
        if "max_absolute_drop" in unknown:
            wrong = " (max_absolute_drop is for quality only)"
        elif "max_relative_change" in unknown:
            wrong = " (quality is compared in absolute points: max_absolute_drop)"
        raise RegressionConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}{wrong}"
        )
    value = entry.get(key, default)
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise RegressionConfigError(f"{where}: {key} must be a number >= 0, got {value!r}")
    if key == "max_relative_change" and metric.direction == "min" and value >= 1:
        raise RegressionConfigError(
            f"{where}: {key} must be < 1 for a metric that regresses downwards "
            f"(a drop of 100% or more never happens), got {value!r}"
        )
    alpha = _alpha(entry["alpha"], f"{where}.alpha") if "alpha" in entry else alpha
    return Allowance(metric=metric, alpha=alpha, **{key: float(value)})


def parse_regression_block(block: Any, source: str = "<memory>") -> RegressionConfig:
    """Validate the value of targets.yaml's `regression` key (None: every default)."""
    where = f"{source}: {BLOCK_KEY}"
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise RegressionConfigError(f"{where}: must be a mapping, got {type(block).__name__}")
    top = ("alpha", "bootstrap_resamples", "envelope_safety_factor", "metrics")
    unknown = sorted(set(block) - set(top), key=str)
    if unknown:
        raise RegressionConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(top)}"
        )
    alpha = _alpha(block.get("alpha", _DEFAULT_ALPHA), f"{where}.alpha")
    resamples = block.get("bootstrap_resamples", _DEFAULT_RESAMPLES)
    if (
        not isinstance(resamples, int)
        or isinstance(resamples, bool)
        or not (1000 <= resamples <= 1_000_000)
    ):
        raise RegressionConfigError(
            f"{where}.bootstrap_resamples: must be an integer in [1000, 1000000], got {resamples!r}"
        )
    factor = block.get("envelope_safety_factor", _DEFAULT_SAFETY_FACTOR)
    if not _is_number(factor) or not 0 < factor <= 1:
        raise RegressionConfigError(
            f"{where}.envelope_safety_factor: must be a number in (0, 1], got {factor!r}"
        )
    metrics = block.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise RegressionConfigError(
            f"{where}.metrics: must be a mapping metric -> allowance, got {metrics!r}"
        )
    for name in metrics:
        if name not in REGRESSION_METRICS:
            raise RegressionConfigError(
                f"{where}.metrics.{name}: unknown metric {name!r}; known: {_known()}"
            )
    allowances = tuple(
        _allowance(name, metrics.get(name), alpha, f"{where}.metrics.{name}")
        for name in REGRESSION_METRICS
    )
    return RegressionConfig(
        allowances=allowances,
        alpha=alpha,
        bootstrap_resamples=resamples,
        envelope_safety_factor=float(factor),
        source=source,
    )


def default_regression_config() -> RegressionConfig:
    """Every default (what a targets file without a `regression` block gets)."""
    return parse_regression_block(None, source="<defaults>")


def load_regression_config(path: str | os.PathLike[str] | None = None) -> RegressionConfig:
    """The regression block of a targets file (default $RELCERT_TARGETS_FILE, then
    include/targets.yaml); a file without the block gets every default."""
    if path is None:
        path = os.environ.get(TARGETS_FILE_ENV) or DEFAULT_TARGETS_FILE
    file = Path(path)
    shown = display_path(file)
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegressionConfigError(f"{shown}: targets file not found") from None
    except OSError as exc:
        raise RegressionConfigError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RegressionConfigError(f"{shown}: malformed YAML{line}") from None
    if not isinstance(document, dict):
        raise RegressionConfigError(f"{shown}: top level must be a mapping")
    return parse_regression_block(document.get(BLOCK_KEY), source=shown)
