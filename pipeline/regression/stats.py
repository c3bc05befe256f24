"""Noise-aware comparison of a candidate's measurements with its baseline's.

A change is a **regression** only when it is larger than the metric's allowance *and*
statistically significant: the whole confidence interval of the change lies beyond the
allowance, on the worse side. Three kinds of evidence, three methods:

`compare_samples`: many samples per side (per-request latency, per-batch compute time).
  The statistic (mean, p50, p95 or p99) of each side, and their ratio candidate/baseline.
  *Interval*: bootstrap percentile interval of the ratio at confidence 1 - alpha (99% for
  alpha 0.01): each side is resampled on its own, `n_boot` replicates, seeded. For a
  percentile the replicate is drawn exactly and in O(n_boot) work whatever the sample
  size: the k-th smallest of n values resampled from x is x_(ceil(n U)) with
  U ~ Beta(k, n - k + 1). Percentiles are the inverted-CDF kind (the ceil(q n)-th smallest
  sample) for the estimate and its replicates alike. A mean is resampled by index in
  chunks; past `MEAN_BOOTSTRAP_DRAWS` draws (4e6: 10,000 resamples of 400 values) the
  normal (CLT) law of the mean stands in, which a bootstrap of that many values matches.
  *Shift*: the two-sided Mann-Whitney U p-value is reported; for the centre statistics
  (mean, p50) it must also be below alpha (the asv rule: the ratio beyond its factor and a
  significant U test). Tail statistics do not need it: a tail that doubles while the body
  stays put is a real p99 regression that a rank test barely sees.
  *Enough samples*: a percentile needs ten observations beyond it on each side
  (`pipeline.loadgen.min_samples_for`: p50 20, p95 200, p99 1000), a mean 20. Fewer: the
  verdict is "insufficient", with the count it needed.

`compare_values`: a few repeated figures per side (the sustained rate of repeated
  capacity trials, peak RSS of repeated runs, initialisation times). The ratio of the
  geometric means with a Welch t interval on the logarithms (scale-free, right for
  positive figures whose noise is multiplicative; honest with 2-10 values: the interval
  widens with few degrees of freedom). At least 2 values per side.

`compare_quality`: a model's quality metric on the same evaluation set (accuracy,
  Pearson r). Evaluation is deterministic, so the difference in absolute points is exact;
  a drop larger than `max_absolute_drop` is a regression.

Verdicts: "regression", "improvement" (the interval wholly beyond the allowance on the
better side), "unchanged" (anything else: within the allowance, or a change not shown to
exceed it), "insufficient" (too little evidence: not applicable, with the reason).

What the false-alarm rate means: for independent samples, the chance that one comparison
flags a change that is exactly at its allowance is at most alpha / 2; for no change at
all it is far lower. Samples of one run are not independent (one stray pause slows many
consecutive requests) and two runs on different nights differ by more than their
within-run noise; the intervals see the within-run noise only, and the allowance is what
absorbs run-to-run drift. `bench/regression.py` measures both rates on synthetic data.

Measured there (lognormal latency with a 2% slow tail, 200 comparisons a cell, alpha
0.01, default allowances): no false alarm in A/A with the allowances (0.0-0.5% with no
allowance at all); slowdowns flagged in >= 95% of comparisons, on 1,200 / 8,000 requests
a side: p50 1.25x / 1.2x (allowance +15%), p95 1.5x / 1.3x (+20%), p99 beyond 3x / 2x
(+25%: ten or so observations past the p99 of a heavy tail say little). Capacity from 3
trials a side with 2% noise: a drop to 0.6x (allowance -15%); 5 trials: 0.75x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from pipeline.loadgen.summary import min_samples_for
from pipeline.metrics import Direction

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BOOTSTRAP_RESAMPLES",
    "MIN_MEAN_SAMPLES",
    "MIN_REPEATED_VALUES",
    "STATISTICS",
    "Comparison",
    "Statistic",
    "Verdict",
    "compare_quality",
    "compare_samples",
    "compare_values",
    "min_samples_for_statistic",
    "sample_statistic",
]

Statistic = Literal["mean", "p50", "p95", "p99"]
STATISTICS: tuple[str, ...] = ("mean", "p50", "p95", "p99")
_PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0}
#: statistics that also need a significant Mann-Whitney U shift to be a regression
_CENTRE = frozenset({"mean", "p50"})

DEFAULT_ALPHA = 0.01
DEFAULT_BOOTSTRAP_RESAMPLES = 10_000
MIN_MEAN_SAMPLES = 20
MIN_REPEATED_VALUES = 2
#: bootstrap draws for a mean (resamples x sample size) beyond which the normal law is used
MEAN_BOOTSTRAP_DRAWS = 4_000_000
_CHUNK_DRAWS = 1_000_000


class Verdict(StrEnum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    UNCHANGED = "unchanged"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class Comparison:
    """One comparison of a candidate with its baseline, and its verdict.

    `ratio` is candidate / baseline of the statistic; `ci_low`/`ci_high` its interval at
    `confidence` (NaN when no interval applies: quality, or too little evidence).
    `difference` is candidate - baseline (the measure of `compare_quality`). `allowance` is
    the relative change (`allowance_kind` "relative") or the absolute drop ("absolute")
    allowed before a change counts; `p_value` is the method's test (Mann-Whitney U for
    samples, Welch t for values; None for quality).
    """

    method: str
    statistic: str
    direction: Direction
    baseline_value: float
    candidate_value: float
    ratio: float
    ci_low: float
    ci_high: float
    difference: float
    confidence: float
    p_value: float | None
    alpha: float
    allowance: float
    allowance_kind: Literal["relative", "absolute"]
    verdict: Verdict
    reason: str
    baseline_n: int
    candidate_n: int
    min_n: int

    @property
    def regressed(self) -> bool:
        return self.verdict == Verdict.REGRESSION

    @property
    def applicable(self) -> bool:
        """False for "insufficient": the comparison neither passes nor fails."""
        return self.verdict != Verdict.INSUFFICIENT

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None; the verdict a plain string)."""
        out = asdict(self)
        out["verdict"] = str(self.verdict)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


# --------------------------------------------------------------------------- helpers
def min_samples_for_statistic(statistic: str) -> int:
    """Samples each side needs for `statistic` (p99: 1000, ten beyond the percentile)."""
    if statistic == "mean":
        return MIN_MEAN_SAMPLES
    if statistic in _PERCENTILES:
        return min_samples_for(_PERCENTILES[statistic])
    raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")


def _rank(q: float, n: int) -> int:
    """1-based rank of the inverted-CDF q-quantile of n samples: ceil(q n), in [1, n]."""
    return min(n, max(1, math.ceil(q * n - 1e-9)))


def sample_statistic(values: Sequence[float] | np.ndarray, statistic: str) -> float:
    """The statistic as the comparison computes it (percentiles: the ceil(q n)-th smallest)."""
    x = np.asarray(values, dtype=float)
    if not x.size:
        return math.nan
    if statistic == "mean":
        return float(x.mean())
    min_samples_for_statistic(statistic)  # validates the name
    return float(np.sort(x)[_rank(_PERCENTILES[statistic] / 100.0, x.size) - 1])


def _replicates(
    sorted_x: np.ndarray, statistic: str, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """`n_boot` bootstrap replicates of the statistic of `sorted_x`."""
    n = sorted_x.size
    if statistic != "mean":
        k = _rank(_PERCENTILES[statistic] / 100.0, n)
        u = rng.beta(k, n - k + 1, size=n_boot)
        index = np.clip(np.ceil(u * n).astype(np.int64), 1, n) - 1
        return sorted_x[index]
    if n * n_boot > MEAN_BOOTSTRAP_DRAWS:  # the bootstrap law of a mean of n >> 1 values
        return rng.normal(sorted_x.mean(), sorted_x.std() / math.sqrt(n), size=n_boot)
    out = np.empty(n_boot)
    rows = max(1, _CHUNK_DRAWS // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        out[start:stop] = sorted_x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def _check_common(direction: str, allowance: float, alpha: float, name: str) -> None:
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
    if not (math.isfinite(allowance) and allowance >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {allowance!r}")
    if direction == "min" and name == "max_relative_change" and allowance >= 1:
        raise ValueError(f"max_relative_change must be < 1 for direction 'min', got {allowance}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")


def _allowed_phrase(direction: str, allowance: float) -> str:
    return f"{'+' if direction == 'max' else '-'}{allowance * 100:g}%"


def _judge_interval(
    *,
    what: str,
    direction: str,
    ratio: float,
    low: float,
    high: float,
    confidence: float,
    max_relative_change: float,
    shift_ok: bool = True,
    shift_note: str = "",
) -> tuple[Verdict, str]:
    """The verdict of a ratio and its interval against the allowance band [1-m, 1+m]."""
    upper, lower = 1.0 + max_relative_change, 1.0 - max_relative_change
    worse_beyond = low > upper if direction == "max" else high < lower
    better_beyond = high < lower if direction == "max" else low > upper
    allowed = _allowed_phrase(direction, max_relative_change)
    head = f"{what} is {ratio:.3g}x the baseline ({confidence:.0%} CI {low:.3g}-{high:.3g})"
    if worse_beyond and shift_ok:
        return Verdict.REGRESSION, f"{head}, wholly beyond the allowed {allowed}{shift_note}"
    if better_beyond and shift_ok:
        return Verdict.IMPROVEMENT, f"{head}, an improvement beyond {allowed}{shift_note}"
    if worse_beyond or better_beyond:  # the interval is beyond, the rank test disagrees
        return Verdict.UNCHANGED, f"{head}, but no significant shift{shift_note}"
    worse_point = ratio > upper if direction == "max" else ratio < lower
    if worse_point:
        return (
            Verdict.UNCHANGED,
            f"{head}: beyond the allowed {allowed} but the interval reaches inside it, "
            "so not a significant regression",
        )
    return Verdict.UNCHANGED, f"{head}: within the allowed {allowed}"


def _insufficient(
    *,
    method: str,
    statistic: str,
    direction: Direction,
    baseline_value: float,
    candidate_value: float,
    alpha: float,
    allowance: float,
    allowance_kind: Literal["relative", "absolute"],
    reason: str,
    baseline_n: int,
    candidate_n: int,
    min_n: int,
) -> Comparison:
    ratio = candidate_value / baseline_value if baseline_value > 0 else math.nan
    return Comparison(
        method=method,
        statistic=statistic,
        direction=direction,
        baseline_value=baseline_value,
        candidate_value=candidate_value,
        ratio=ratio,
        ci_low=math.nan,
        ci_high=math.nan,
        difference=candidate_value - baseline_value,
        confidence=1.0 - alpha,
        p_value=None,
        alpha=alpha,
        allowance=allowance,
        allowance_kind=allowance_kind,
        verdict=Verdict.INSUFFICIENT,
        reason=reason,
        baseline_n=baseline_n,
        candidate_n=candidate_n,
        min_n=min_n,
    )


#: replicates of a cluster bootstrap (each one re-assembles whole blocks: slower per draw)
CLUSTER_BOOTSTRAP_RESAMPLES = 2000


def _cluster_replicates(
    x: np.ndarray, groups: np.ndarray, statistic: str, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Replicates of the statistic when the samples come in blocks (runs of one
    measurement): each replicate draws as many blocks as there are, with replacement, and
    takes the statistic of their samples together. A hiccup that slowed one block then
    moves the interval as much as it can move the estimate."""
    blocks = [x[groups == g] for g in np.unique(groups)]
    out = np.empty(n_boot)
    for i in range(n_boot):
        chosen = rng.integers(0, len(blocks), size=len(blocks))
        out[i] = sample_statistic(np.concatenate([blocks[j] for j in chosen]), statistic)
    return out


def _clean(values: Sequence[float] | np.ndarray, side: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if np.any(np.isnan(x)) or np.any(np.isinf(x)):
        raise ValueError(f"{side} values must be finite numbers (drop failed requests first)")
    if np.any(x < 0):
        raise ValueError(f"{side} values must be >= 0, got {float(x.min())}")
    return x


# --------------------------------------------------------------------------- samples
def compare_samples(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    statistic: str = "p50",
    direction: Direction = "max",
    max_relative_change: float,
    alpha: float = DEFAULT_ALPHA,
    n_boot: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    baseline_groups: Sequence[int] | np.ndarray | None = None,
    candidate_groups: Sequence[int] | np.ndarray | None = None,
) -> Comparison:
    """Compare a statistic of two samples (e.g. p99 of per-request latency_ms).

    `direction` "max": lower is better (latency); "min": higher is better. Raises
    ValueError on unusable arguments or values (NaN, negative); too few samples is a
    verdict ("insufficient"), not an error. With `baseline_groups` and `candidate_groups`
    (a block id per sample, at least 3 blocks a side) the interval is a cluster bootstrap
    over the blocks (`CLUSTER_BOOTSTRAP_RESAMPLES` replicates): samples of one block are
    not independent, so blocks are what is resampled.
    """
    clustered = baseline_groups is not None and candidate_groups is not None
    _check_common(direction, max_relative_change, alpha, "max_relative_change")
    need = min_samples_for_statistic(statistic)
    if n_boot < 1000:
        raise ValueError(f"n_boot must be >= 1000 for a {1 - alpha:.0%} interval, got {n_boot}")
    base_raw, cand_raw = _clean(baseline, "baseline"), _clean(candidate, "candidate")
    if clustered:
        b_groups, c_groups = np.asarray(baseline_groups), np.asarray(candidate_groups)
        if b_groups.shape != base_raw.shape or c_groups.shape != cand_raw.shape:
            raise ValueError("baseline_groups / candidate_groups need one block id per sample")
    base, cand = np.sort(base_raw), np.sort(cand_raw)
    base_value, cand_value = sample_statistic(base, statistic), sample_statistic(cand, statistic)
    common = dict(
        method="cluster_bootstrap" if clustered else "bootstrap",
        statistic=statistic,
        direction=direction,
        baseline_value=base_value,
        candidate_value=cand_value,
        alpha=alpha,
        allowance=max_relative_change,
        allowance_kind="relative",
        baseline_n=int(base.size),
        candidate_n=int(cand.size),
        min_n=need,
    )
    if base.size < need or cand.size < need:
        beyond = "" if statistic == "mean" else " (ten beyond the percentile)"
        return _insufficient(
            **common,
            reason=f"{statistic} needs at least {need} samples per side{beyond}; "
            f"baseline has {base.size}, candidate {cand.size}",
        )
    if base_value <= 0:
        return _insufficient(
            **common, reason=f"baseline {statistic} is {base_value:g}: no ratio to a zero"
        )

    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(seed)
    if clustered:
        blocks = min(len(np.unique(b_groups)), len(np.unique(c_groups)))
        if blocks < 3:
            return _insufficient(
                **common, reason=f"a cluster bootstrap needs >= 3 blocks a side, got {blocks}"
            )
        reps = min(n_boot, CLUSTER_BOOTSTRAP_RESAMPLES)
        ratios = _cluster_replicates(cand_raw, c_groups, statistic, reps, rng) / np.maximum(
            _cluster_replicates(base_raw, b_groups, statistic, reps, rng), np.finfo(float).tiny
        )
    else:
        ratios = _replicates(cand, statistic, n_boot, rng) / np.maximum(
            _replicates(base, statistic, n_boot, rng), np.finfo(float).tiny
        )
    low, high = (float(v) for v in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    p_value = float(mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    ratio = cand_value / base_value
    needs_shift = statistic in _CENTRE
    verdict, reason = _judge_interval(
        what=statistic,
        direction=direction,
        ratio=ratio,
        low=low,
        high=high,
        confidence=1 - alpha,
        max_relative_change=max_relative_change,
        shift_ok=not needs_shift or p_value < alpha,
        shift_note=f" (Mann-Whitney p={p_value:.2g})" if needs_shift else "",
    )
    return Comparison(
        **common,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        difference=cand_value - base_value,
        confidence=1 - alpha,
        p_value=p_value,
        verdict=verdict,
        reason=reason,
    )


# --------------------------------------------------------------------------- values
def _geometric_mean(x: np.ndarray) -> float:
    return float(np.exp(np.log(x).mean())) if x.size and np.all(x > 0) else math.nan


def compare_values(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    *,
    direction: Direction,
    max_relative_change: float,
    alpha: float = DEFAULT_ALPHA,
    min_values: int = MIN_REPEATED_VALUES,
    statistic: str = "geometric_mean",
) -> Comparison:
    """Compare repeated figures (capacity trials, peak RSS, initialisation time).

    Ratio of geometric means with a Welch t interval on the logarithms; every value must
    be > 0. `statistic` only labels the result (e.g. "sustained_rps").
    """
    _check_common(direction, max_relative_change, alpha, "max_relative_change")
    if min_values < 2:
        raise ValueError(f"min_values must be >= 2 (a variance needs two), got {min_values}")
    base, cand = _clean(baseline, "baseline"), _clean(candidate, "candidate")
    common = dict(
        method="welch_log_t",
        statistic=statistic,
        direction=direction,
        baseline_value=_geometric_mean(base),
        candidate_value=_geometric_mean(cand),
        alpha=alpha,
        allowance=max_relative_change,
        allowance_kind="relative",
        baseline_n=int(base.size),
        candidate_n=int(cand.size),
        min_n=min_values,
    )
    if base.size < min_values or cand.size < min_values:
        return _insufficient(
            **common,
            reason=f"needs at least {min_values} repeated values per side; "
            f"baseline has {base.size}, candidate {cand.size}",
        )
    if np.any(base <= 0) or np.any(cand <= 0):
        return _insufficient(**common, reason="values must be > 0 to compare their ratio")

    from scipy.stats import t as student_t

    lb, lc = np.log(base), np.log(cand)
    diff = float(lc.mean() - lb.mean())
    vb, vc = float(lb.var(ddof=1)) / lb.size, float(lc.var(ddof=1)) / lc.size
    se = math.sqrt(vb + vc)
    if se == 0.0:  # identical repeats on both sides: the difference is exact
        low = high = diff
        p_value = 1.0 if diff == 0.0 else 0.0
    else:
        df = (vb + vc) ** 2 / (vb**2 / (lb.size - 1) + vc**2 / (lc.size - 1))
        half = float(student_t.ppf(1 - alpha / 2, df)) * se
        low, high = diff - half, diff + half
        p_value = float(2 * student_t.sf(abs(diff) / se, df))
    ratio, low, high = math.exp(diff), math.exp(low), math.exp(high)
    verdict, reason = _judge_interval(
        what=statistic,
        direction=direction,
        ratio=ratio,
        low=low,
        high=high,
        confidence=1 - alpha,
        max_relative_change=max_relative_change,
    )
    return Comparison(
        **common,
        ratio=ratio,
        ci_low=low,
        ci_high=high,
        difference=common["candidate_value"] - common["baseline_value"],
        confidence=1 - alpha,
        p_value=p_value,
        verdict=verdict,
        reason=reason,
    )


# --------------------------------------------------------------------------- quality
def compare_quality(
    baseline: float | None,
    candidate: float | None,
    max_absolute_drop: float,
    *,
    metric: str = "quality",
    baseline_set: str | None = None,
    candidate_set: str | None = None,
) -> Comparison:
    """Compare a model's quality metric (higher is better) in absolute points.

    `max_absolute_drop` is in the metric's own units (0.02 = 2 points of accuracy).
    `baseline_set` / `candidate_set` identify the evaluation sets (e.g. their sha256):
    when both are given and differ, the figures are not comparable ("insufficient").
    """
    _check_common("min", max_absolute_drop, DEFAULT_ALPHA, "max_absolute_drop")
    base = math.nan if baseline is None else float(baseline)
    cand = math.nan if candidate is None else float(candidate)
    common = dict(
        method="exact_difference",
        statistic=metric,
        direction="min",
        baseline_value=base,
        candidate_value=cand,
        alpha=0.0,
        allowance=max_absolute_drop,
        allowance_kind="absolute",
        baseline_n=int(math.isfinite(base)),
        candidate_n=int(math.isfinite(cand)),
        min_n=1,
    )
    reason = None
    if not (math.isfinite(base) and math.isfinite(cand)):
        sides = (("baseline", base), ("candidate", cand))
        missing = [side for side, value in sides if not math.isfinite(value)]
        reason = f"no {metric} value for the {' and '.join(missing)}"
    elif baseline_set and candidate_set and baseline_set != candidate_set:
        reason = (
            f"{metric} was measured on different evaluation sets "
            f"({baseline_set} vs {candidate_set}): not comparable"
        )
    if reason is not None:
        return Comparison(
            **common,
            ratio=math.nan,
            ci_low=math.nan,
            ci_high=math.nan,
            difference=math.nan,
            confidence=1.0,
            p_value=None,
            verdict=Verdict.INSUFFICIENT,
            reason=reason,
        )
    difference = cand - base
    points = f"{difference * 100:+.2f} points ({base:.4g} -> {cand:.4g})"
    allowed = f"{max_absolute_drop * 100:g} points"
    if difference < -max_absolute_drop:
        verdict, reason = Verdict.REGRESSION, f"{metric} {points}: drops more than {allowed}"
    elif difference > max_absolute_drop:
        verdict, reason = Verdict.IMPROVEMENT, f"{metric} {points}: gains more than {allowed}"
    else:
        verdict, reason = Verdict.UNCHANGED, f"{metric} {points}: within {allowed}"
    return Comparison(
        **common,
        ratio=cand / base if base else math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        difference=difference,
        confidence=1.0,
        p_value=None,
        verdict=verdict,
        reason=reason,
    )
