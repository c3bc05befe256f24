"""Benchmark: how often the regression comparisons cry wolf, and how small a slowdown they
catch, on synthetic samples shaped like real latency.

Everything is measured in this run (seeded, so the same on every machine):

- latency samples: a lognormal body (median 2 ms, sigma 0.35) with a 2% slow tail (x4
  median, sigma 0.5), the shape of the load stage's per-request latency_ms; a slowdown
  multiplies every sample by the factor;
- false-alarm rate (A/A): both sides drawn from the same distribution, `--reps` times per
  statistic, judged with the default allowances of targets.yaml and with no allowance at
  all (significance alone), at alpha 0.01;
- sensitivity: for each slowdown factor, the share of `--reps` comparisons flagged as a
  regression; the smallest factor flagged in >= 95% of them is the "reliable" one, shown
  beside the allowance (the rule can never flag a change smaller than its allowance);
- the same two figures for repeated single figures (`compare_values`: e.g. 3 or 5
  capacity trials a side with 5% trial-to-trial noise).

Sample sizes: 1,200 requests a side (one nightly scenario's minimum) and 8,000 (about a
nightly run's mix). Within-run samples here are independent; real runs also differ from
night to night by more than their within-run noise (that is what the allowance absorbs),
so real-engine A/A runs are the next measurement.

    .venv/bin/python bench/regression.py [--quick] [--reps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from pipeline.regression.config import default_regression_config
from pipeline.regression.stats import (
    Verdict,
    compare_samples,
    compare_values,
    min_samples_for_statistic,
)

LATENCY_METRICS = {"p50": "latency_p50_ms", "p95": "latency_p95_ms", "p99": "latency_p99_ms"}
FACTORS = (1.05, 1.1, 1.15, 1.2, 1.25, 1.3, 1.35, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0, 2.5, 3.0)
RELIABLE = 0.95


def latency_ms(rng: np.random.Generator, n: int, factor: float = 1.0) -> np.ndarray:
    body = rng.lognormal(math.log(2.0), 0.35, n)
    tail = rng.random(n) < 0.02
    body[tail] *= rng.lognormal(math.log(4.0), 0.5, int(tail.sum()))
    return body * factor


def upper_95(count: int, reps: int) -> float:
    """One-sided 95% upper bound of a rate seen `count` times in `reps` (Clopper-Pearson)."""
    from scipy.stats import beta

    return 1.0 if count >= reps else float(beta.ppf(0.95, count + 1, reps - count))


def flagged(statistic: str, n: int, factor: float, allowance: float, alpha: float, reps: int):
    """Share of `reps` comparisons with verdict regression, and the median ratio seen."""
    hits, ratios = 0, []
    for rep in range(reps):
        rng = np.random.default_rng([rep, n, int(factor * 1000), int(allowance * 1000)])
        result = compare_samples(
            latency_ms(rng, n),
            latency_ms(rng, n, factor),
            statistic=statistic,
            max_relative_change=allowance,
            alpha=alpha,
            n_boot=4000,
            seed=rep,
        )
        hits += result.verdict == Verdict.REGRESSION
        ratios.append(result.ratio)
    return hits / reps, float(np.median(ratios))


def smallest_reliable(statistic: str, n: int, allowance: float, alpha: float, reps: int):
    """The smallest factor of FACTORS flagged in >= 95% of comparisons (None if none)."""
    curve = {}
    for factor in FACTORS:
        if factor <= 1 + allowance:
            continue
        share, _ = flagged(statistic, n, factor, allowance, alpha, reps)
        curve[factor] = share
        if share >= RELIABLE:
            return factor, curve
    return None, curve


def values_rates(repeats: int, noise: float, allowance: float, alpha: float, reps: int):
    """compare_values on `repeats` figures a side with lognormal noise `noise` (CV)."""

    def draw(rng, factor):
        return 1000.0 * factor * rng.lognormal(0.0, noise, repeats)

    alarms = 0
    for rep in range(reps):
        rng = np.random.default_rng([rep, repeats, 7])
        result = compare_values(
            draw(rng, 1.0),
            draw(rng, 1.0),
            direction="min",
            max_relative_change=allowance,
            alpha=alpha,
        )
        alarms += result.verdict == Verdict.REGRESSION
    reliable = None
    for drop in (0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3):
        if drop >= 1 - allowance:
            continue
        hits = 0
        for rep in range(reps):
            rng = np.random.default_rng([rep, repeats, int(drop * 100)])
            result = compare_values(
                draw(rng, 1.0),
                draw(rng, drop),
                direction="min",
                max_relative_change=allowance,
                alpha=alpha,
            )
            hits += result.verdict == Verdict.REGRESSION
        if hits / reps >= RELIABLE:
            reliable = drop
            break
    return alarms, reliable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke)")
    parser.add_argument("--reps", type=int, default=None, help="comparisons per cell")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    reps = args.reps or (40 if args.quick else 200)
    config = default_regression_config()
    alpha = config.alpha
    started = time.perf_counter()
    figures: dict = {"reps": reps, "alpha": alpha, "latency": [], "values": []}

    print(f"==> A/A false alarms and sensitivity, {reps} comparisons per cell, alpha {alpha}")
    print(
        f"{'stat':5s} {'n':>6s} {'allow':>6s} {'A/A alarms':>11s} {'(95% upper)':>11s} "
        f"{'no allowance':>13s} {'reliable at':>12s} {'/ allowance':>11s}"
    )
    for n in (1200, 8000):
        for statistic, metric in LATENCY_METRICS.items():
            if n < min_samples_for_statistic(statistic):
                print(
                    f"{statistic:5s} {n:6d}  insufficient: needs {statistic} "
                    f"{min_samples_for_statistic(statistic)} samples a side"
                )
                continue
            allowance = config[metric].max_relative_change or 0.0
            alarms, _ = flagged(statistic, n, 1.0, allowance, alpha, reps)
            bare, _ = flagged(statistic, n, 1.0, 0.0, alpha, reps)
            reliable, curve = smallest_reliable(statistic, n, allowance, alpha, reps)
            shown = f"{reliable:.2f}x" if reliable else f"> {FACTORS[-1]}x"
            over = f"{reliable / (1 + allowance):.2f}" if reliable else "-"
            print(
                f"{statistic:5s} {n:6d} {allowance:+6.0%} {alarms:11.1%} "
                f"{upper_95(round(alarms * reps), reps):11.1%} {bare:13.1%} {shown:>12s} "
                f"{over:>11s}"
            )
            figures["latency"].append(
                {
                    "statistic": statistic,
                    "n": n,
                    "allowance": allowance,
                    "false_alarm_rate": alarms,
                    "false_alarm_rate_without_allowance": bare,
                    "reliable_factor": reliable,
                    "curve": {str(k): v for k, v in curve.items()},
                }
            )

    capacity = config["capacity_rps"].max_relative_change or 0.0
    print(f"\n==> repeated figures (compare_values), capacity allowance -{capacity:.0%}")
    for repeats in (3, 5):
        for noise in (0.02, 0.05):
            alarms, reliable = values_rates(repeats, noise, capacity, alpha, reps)
            shown = f"{reliable:.2f}x" if reliable else "< 0.3x"
            print(
                f"  {repeats} trials a side, {noise:.0%} noise: A/A alarms {alarms / reps:.1%}; "
                f"a drop to {shown} flagged in >= {RELIABLE:.0%}"
            )
            figures["values"].append(
                {
                    "repeats": repeats,
                    "noise": noise,
                    "false_alarm_rate": alarms / reps,
                    "reliable_drop": reliable,
                }
            )

    seconds = time.perf_counter() - started
    print(f"\n(measured in {seconds:.0f} s; ratios are candidate / baseline)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
