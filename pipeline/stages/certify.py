"""Certification stage: every target of `targets.yaml`, measured from this run's tables.

No criterion is a constant: each `measured` value is read from a table a stage of this run
wrote, with its sample count and validity; a stage that did not run leaves its criteria
unmet with the reason. The rule is the original plan's: a maximum passes at
<= target x (1 + tolerance), a minimum at >= target x (1 - tolerance).

Definitions (also in the README):
- latency (average, p95, p99): every request of the load scenarios after warm-up, measured
  from the time a user meant to send it to its response, through the engine process;
- sustained throughput: the capacity search's highest open-loop rate with p99 within the
  p99 target, success >= 99% and a generator that kept up (a search cap means "at least");
- peak throughput: the median of three bursts, completed requests per second;
- memory: the engine process's peak RSS during the load stage; memory efficiency: the
  memory pool's buffer reuse ratio (hits / allocations) in that process;
- success / error rate: over every load-scenario request after warm-up;
- concurrent users: the largest user count of the sweep with >= 95% success and p95 within
  target; cache hit rate: engine cache hits over the Zipf cache workload's requests;
- model quality: the hold-out SLAs recomputed through the engine (integration stage);
  initialisation: load + verify + warm-up of every model file; parity: the worst of the
  integration stage's parity checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.loadgen import min_samples_for
from pipeline.stages.common import RunDir, host_facts, write_table

__all__ = ["measure_targets", "run_certify"]

STAGE = "certify"


class _Missing(Exception):
    pass


class _Tables:
    """The run's tables and summaries, each read at most once per certification."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._csv: dict[str, Any] = {}
        self._summaries: dict[str, dict[str, Any]] = {}
        self._requests: Any = None

    def csv(self, relative: str):
        if relative not in self._csv:
            import pandas as pd

            path = self.run.root / relative
            if not path.exists():
                raise _Missing(f"{relative} is missing (its stage did not run)")
            self._csv[relative] = pd.read_csv(path, keep_default_na=True)
        return self._csv[relative]

    def summary(self, stage: str) -> dict[str, Any]:
        if stage not in self._summaries:
            path = self.run.root / "stages" / stage / "summary.json"
            if not path.exists():
                raise _Missing(
                    f"stages/{stage}/summary.json is missing (the {stage} stage did not run)"
                )
            self._summaries[stage] = json.loads(path.read_text())
        return self._summaries[stage]

    def load_requests(self):
        """Load-scenario requests after each scenario's warm-up."""
        if self._requests is None:
            requests = self.csv("stages/load/requests.csv")
            warmup = float(self.summary("load").get("warmup_s", 0.0) or 0.0)
            self._requests = requests[requests["scheduled_s"] >= warmup] if warmup else requests
        return self._requests


def _latency(q: float | None):
    def measure(tables: _Tables) -> tuple[float, int, bool, str]:
        requests = tables.load_requests()
        lat = requests["latency_ms"].to_numpy()
        if not len(lat):
            return math.nan, 0, False, "no load requests"
        value = float(lat.mean()) if q is None else float(np.percentile(lat, q))
        need = min_samples_for(q) if q else 20
        what = "mean" if q is None else f"p{q:g}"
        return (
            value,
            len(lat),
            len(lat) >= need,
            (f"{what} over {len(lat)} load-scenario requests (needs >= {need} samples)"),
        )

    return measure, "stages/load/requests.csv"


def _from_load(
    path: list[str],
    what: str,
    valid_if: Callable[[dict], bool] | None = None,
    samples_of: Callable[[dict], int] | None = None,
):
    def measure(tables: _Tables) -> tuple[float, int, bool, str]:
        summary = tables.summary("load")
        node: Any = summary
        for key in path:
            node = node[key]
        if samples_of is not None:
            samples = int(samples_of(summary))
        else:
            samples = int(summary.get("overall", {}).get("requests", 0))
        valid = valid_if(summary) if valid_if else True
        return float(node), samples, valid, what

    return measure, "stages/load/summary.json"


def _success(error: bool):
    def measure(tables: _Tables) -> tuple[float, int, bool, str]:
        requests = tables.load_requests()
        n = len(requests)
        rate = float(requests["success"].mean()) if n else math.nan
        value = 1.0 - rate if error else rate
        return value, n, n >= 100, f"over {n} load-scenario requests after warm-up"

    return measure, "stages/load/requests.csv"


def _integration(check: str, reduce: str = "single"):
    def measure(tables: _Tables) -> tuple[float, int, bool, str]:
        checks = tables.csv("stages/integration/checks.csv")
        rows = checks[checks["check"].astype(str).str.startswith(check)]
        if rows.empty:
            raise _Missing(f"no '{check}' rows in stages/integration/checks.csv")
        values = rows["measured"].astype(float)
        if values.isna().any():
            return math.nan, len(rows), False, f"{check}: a check could not measure"
        if reduce == "max":
            return float(values.max()), len(rows), True, f"worst of {len(rows)} {check} checks"
        if reduce == "min":
            return float(values.min()), len(rows), True, f"worst of {len(rows)} {check} checks"
        return float(values.iloc[0]), 1, True, str(rows["detail"].iloc[0])

    return measure, "stages/integration/checks.csv"


def _capacity_valid(summary: dict) -> bool:
    return summary.get("capacity", {}).get("trials", 0) > 0


#: target name -> (measure(tables) -> (value, samples, valid, detail), source table)
MEASURES: dict[str, tuple[Callable[[_Tables], tuple[float, int, bool, str]], str]] = {
    "average_inference_latency_ms": _latency(None),
    "p95_latency_ms": _latency(95),
    "p99_latency_ms": _latency(99),
    "sustained_throughput_rps": _from_load(
        ["capacity", "max_sustained_rps"],
        "highest open-loop rate with p99 within target, success >= 99%, generator valid",
        _capacity_valid,
        lambda s: s["capacity"].get("best_samples", 0),
    ),
    "peak_throughput_rps": _from_load(
        ["peak", "throughput_rps"],
        "median of three bursts",
        samples_of=lambda s: sum(b["requests"] for b in s["peak"]["bursts"]),
    ),
    "memory_usage_mb": _from_load(["memory", "peak_rss_mb"], "peak RSS of the engine process"),
    "memory_efficiency": _from_load(["memory", "pool_reuse_ratio"], "pool buffer reuse ratio"),
    "success_rate": _success(error=False),
    "error_rate": _success(error=True),
    "concurrent_users_supported": _from_load(
        ["concurrency", "supported_users"],
        "largest user count with >= 95% success, p95 ok",
        samples_of=lambda s: len(s["concurrency"]["levels_tested"]),
    ),
    "cache_hit_rate": _from_load(
        ["cache", "hit_rate"],
        "engine cache hits / Zipf requests",
        samples_of=lambda s: s["cache"]["requests"],
    ),
    "routing_accuracy": _integration("model_sla_routing_accuracy", "min"),
    "quality_correlation": _integration("model_sla_quality_correlation", "min"),
    "model_initialization_s": _integration("initialization"),
    "parity_max_abs_diff": _integration("parity_", "max"),
}


def measure_targets(run_dir: str | Path | RunDir, targets=None) -> list[dict[str, Any]]:
    """One criterion row per target, measured from the run's tables."""
    from pipeline.targets import load_targets

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.of(run_dir)
    tables = _Tables(run)
    targets = targets or load_targets()
    rows = []
    for target in targets.values():
        measure, source = MEASURES.get(target.name, (None, ""))
        try:
            if measure is None:
                raise _Missing(f"relcert has no measurement for target {target.name!r}")
            value, samples, valid, detail = measure(tables)
        except _Missing as exc:
            value, samples, valid, detail = math.nan, 0, False, str(exc)
        except (KeyError, TypeError, ValueError) as exc:
            value, samples, valid, detail = math.nan, 0, False, f"could not measure: {exc!r}"
        met = bool(valid and target.passes(value))
        rows.append(
            {
                "name": target.name,
                "category": target.category,
                "target": target.target,
                "tolerance": target.tolerance,
                "direction": target.direction,
                "threshold": target.threshold,
                "measured": value,
                "met": met,
                "valid": bool(valid),
                "samples": int(samples),
                "source": source,
                "detail": detail,
                "unit": target.unit,
            }
        )
    return rows


def run_certify(
    run_dir: str | Path,
    targets=None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every target, write stages/certify/criteria.csv and summary.json."""
    run = RunDir.of(run_dir)
    say = progress or (lambda _: None)
    rows = measure_targets(run, targets)
    write_table(rows, run.stage(STAGE) / "criteria.csv")
    unmet = [r["name"] for r in rows if not r["met"]]
    for r in rows:
        mark = "met" if r["met"] else ("INVALID" if not r["valid"] else "NOT MET")
        say(
            f"certify: {r['name']:30s} {r['measured']:>12.4g} {r['unit']:8s} "
            f"({r['direction']} {r['threshold']:.4g}) {mark}"
        )
    summary = {
        "host": host_facts(),
        "criteria": len(rows),
        "met": len(rows) - len(unmet),
        "unmet": unmet,
        "certification_passed": not unmet,
        "by_category": {},
    }
    for r in rows:
        cat = summary["by_category"].setdefault(r["category"], {"met": 0, "total": 0})
        cat["total"] += 1
        cat["met"] += r["met"]
    run.write_summary(STAGE, summary)
    return summary
