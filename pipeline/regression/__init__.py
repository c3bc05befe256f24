"""Regression against the last approved release: is this candidate worse than its baseline?

- `stats`: the noise-aware comparisons (bootstrap interval of a ratio, Mann-Whitney U,
  Welch t on logs, quality in absolute points) and their verdicts;
- `config`: the `regression:` block of targets.yaml (allowances per metric, alpha, the
  operating envelope's safety factor);
- `baseline`: which run is the baseline (last APPROVED with an earlier snapshot date, or a
  pinned run), pins in the artifact store, and whether two runs are comparable.
"""

from pipeline.regression.baseline import (
    Baseline,
    BaselineError,
    Comparability,
    HostIdentity,
    Pin,
    RunRecord,
    check_comparable,
    cpu_model,
    find_baseline,
    host_identity,
    list_runs,
    pin_baseline,
    read_pin,
    read_run,
    unpin_baseline,
)
from pipeline.regression.config import (
    REGRESSION_METRICS,
    Allowance,
    RegressionConfig,
    RegressionConfigError,
    RegressionMetric,
    default_regression_config,
    load_regression_config,
    parse_regression_block,
)
from pipeline.regression.stats import (
    Comparison,
    Verdict,
    compare_quality,
    compare_samples,
    compare_values,
    min_samples_for_statistic,
    sample_statistic,
)

__all__ = [
    "REGRESSION_METRICS",
    "Allowance",
    "Baseline",
    "BaselineError",
    "Comparability",
    "Comparison",
    "HostIdentity",
    "Pin",
    "RegressionConfig",
    "RegressionConfigError",
    "RegressionMetric",
    "RunRecord",
    "Verdict",
    "check_comparable",
    "compare_quality",
    "compare_samples",
    "compare_values",
    "cpu_model",
    "default_regression_config",
    "find_baseline",
    "host_identity",
    "list_runs",
    "load_regression_config",
    "min_samples_for_statistic",
    "parse_regression_block",
    "pin_baseline",
    "read_pin",
    "read_run",
    "sample_statistic",
    "unpin_baseline",
]
