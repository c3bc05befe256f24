"""Certification stage: every target of the run's targets, measured from this attempt's
tables.

No criterion is a constant: each is a `Criterion` (pipeline.verdicts) whose measured value
comes from a table or summary a stage of this attempt wrote, with its sample count against
the minimum it needs; a stage that failed or did not run leaves its criteria NOT_RUN with
that stage's own message. The rule is the original plan's: a maximum passes at
<= target x (1 + tolerance), a minimum at >= target x (1 - tolerance).

Definitions (also in the README):
- latency (average, p95, p99): every request of the load scenarios after warm-up (requests
  marked `warmup` in requests.csv are excluded), measured from the time a user meant to
  send it to its response, through the engine process;
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
  integration stage's parity checks;
- interface (the infra stage, the service over HTTP on loopback): per endpoint, the worst p99
  under the open-loop load over the offered rates with >= 1,000 samples of that endpoint
  (the named routing and quality endpoints; each model's /v2 endpoint, per model); the
  validation endpoint's completion time; availability: health probes (every 100 ms) and load
  requests answered correctly over all of them, claimed on >= 100 probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.criteria import Planned, placeholder_target, plan
from pipeline.loadgen import min_samples_for
from pipeline.metrics import MODEL_QUALITY
from pipeline.names import Status
from pipeline.stages.common import StageError
from pipeline.stages.context import StageContext
from pipeline.stages.registry import summary_contract
from pipeline.stages.registry import table as table_contract
from pipeline.verdicts import Criterion, Measurement, NotApplicable, NotRun, judge

__all__ = ["MEASURES", "QUALITY_MEASURE", "measure_targets", "run"]

#: samples a mean latency or a success rate needs to be claimed
MIN_REQUESTS = 100

# what the measurements read (the evidence each criterion links to), from the stage registry
_REQUESTS = table_contract("load", "requests").path
_LOAD_SUMMARY = summary_contract("load").path
_INTEGRATION_CHECKS = table_contract("integration", "checks").path
_INFRA_CHECKS = table_contract("infra", "checks").path


class Evidence:
    """This attempt's tables and summaries, each read at most once per certification; a
    missing one raises NotRun with its stage's own error when it left one."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self._tables: dict[tuple[str, str], Any] = {}
        self._summaries: dict[str, dict[str, Any]] = {}

    def _not_run(self, stage: str, what: str) -> NotRun:
        error = self.ctx.run.stage_error(stage)
        if error:
            return NotRun(stage, f"not run: the {stage} stage failed: {error}")
        return NotRun(stage, f"not run: {what} is missing (the {stage} stage did not run)")

    def table(self, stage: str, name: str):
        key = (stage, name)
        if key not in self._tables:
            frame = self.ctx.table_of(stage, name)
            if frame is None:
                raise self._not_run(stage, f"stages/{stage}/{name}.csv")
            self._tables[key] = frame
        return self._tables[key]

    def summary(self, stage: str) -> dict[str, Any]:
        if stage not in self._summaries:
            found = self.ctx.summary_of(stage)
            if found is None:
                raise self._not_run(stage, f"stages/{stage}/summary.json")
            self._summaries[stage] = found
        return self._summaries[stage]

    def load_requests(self):
        """Load-scenario requests after each scenario's warm-up."""
        requests = self.table("load", "requests")
        return requests[~requests["warmup"].astype(bool)]


Measure = Callable[[Evidence, str | None], Measurement]


def _requests(ev: Evidence, model: str | None):
    requests = ev.load_requests()
    return requests if model is None else requests[requests["model"] == model]


def _who(model: str | None) -> str:
    return "load-scenario requests" if model is None else f"load-scenario requests of {model}"


def _latency(q: float | None) -> tuple[Measure, str]:
    def measure(ev: Evidence, model: str | None) -> Measurement:
        lat = _requests(ev, model)["latency_ms"].to_numpy(dtype=float)
        lat = lat[np.isfinite(lat)]
        need = min_samples_for(q) if q else MIN_REQUESTS
        if not len(lat):
            return Measurement(math.nan, 0, need, f"no {_who(model)} was answered")
        value = float(lat.mean()) if q is None else float(np.percentile(lat, q))
        what = "mean" if q is None else f"p{q:g}"
        warmup_s = ev.summary("load")["warmup_s"]
        return Measurement(
            value,
            len(lat),
            need,
            f"{what} over {len(lat)} {_who(model)} after a {warmup_s:g} s warm-up per "
            f"scenario (needs >= {need} samples)",
        )

    return measure, _REQUESTS


def _success(error: bool) -> tuple[Measure, str]:
    def measure(ev: Evidence, model: str | None) -> Measurement:
        requests = _requests(ev, model)
        injected = ev.table("load", "injection")
        if model is not None:
            injected = injected[injected["model"] == model]
        ok = int(requests["success"].astype(bool).sum()) + int(
            injected["success"].astype(bool).sum()
        )
        n = len(requests) + len(injected)
        rate = ok / n if n else math.nan
        extreme = int((injected["injected"] != "clean").sum())
        return Measurement(
            1.0 - rate if error else rate,
            n,
            MIN_REQUESTS,
            f"over {len(requests)} {_who(model)} after warm-up (lost requests count as "
            f"errors) and {len(injected)} requests of the error test ({extreme} with inputs "
            "scaled x1000 or x0.001; each counts as a success only when it ended as declared: "
            "served, or for x1000 refused with a clear error)",
        )

    return measure, _REQUESTS


def _sustained(ev: Evidence, model: str | None) -> Measurement:
    cap = ev.summary("load")["capacity"]
    if model is not None:
        per_model = cap.get("per_model") or {}
        if model not in per_model:
            raise NotRun("load", f"not run: the load stage searched no capacity for {model}")
        cap = per_model[model]
    who = "the mix" if model is None else f"{model} alone"
    search = cap.get("describe") or (
        "the search's cap: capacity is at least this" if cap["capped"] else ""
    )
    return Measurement(
        float(cap["max_sustained_rps"]),
        int(cap["best_samples"]) if cap["trials"] else 0,
        1,
        f"highest open-loop rate of {who} with p99 <= {cap['p99_bound_ms']:g} ms, success >= "
        f"99%, generator valid, over {cap['trials']} trials" + (f" ({search})" if search else ""),
    )


#: minimum evidence of the load stage's run-level figures
MIN_PEAK_REQUESTS = 300  # three bursts of at least 100 requests
MIN_RSS_SAMPLES = 10  # 5 s of sampling every 0.5 s
MIN_POOL_ALLOCATIONS = 100
MIN_CACHE_REQUESTS = 500
MIN_SOAK_WINDOW_REQUESTS = 100


def _peak(ev: Evidence, model: str | None) -> Measurement:
    peak = ev.summary("load")["peak"]
    samples = sum(int(b["requests"]) for b in peak["bursts"])
    return Measurement(
        float(peak["throughput_rps"]),
        samples,
        MIN_PEAK_REQUESTS,
        f"median completion rate of {len(peak['bursts'])} bursts of {peak['burst_requests']} "
        f"requests submitted at once ({samples} requests; needs >= {MIN_PEAK_REQUESTS})",
    )


def _memory(ev: Evidence, model: str | None) -> Measurement:
    memory = ev.summary("load")["memory"]
    samples = len(ev.table("load", "resources"))
    return Measurement(
        float(memory["peak_rss_mb"]),
        samples,
        MIN_RSS_SAMPLES,
        f"peak RSS of the engine process over the load stage ({samples} samples every 0.5 s "
        f"and after each scenario; needs >= {MIN_RSS_SAMPLES})",
    )


def _reuse(ev: Evidence, model: str | None) -> Measurement:
    memory = ev.summary("load")["memory"]
    value = memory.get("pool_reuse_ratio")
    allocations = int(memory.get("pool_allocations") or 0)
    return Measurement(
        math.nan if value is None else float(value),
        allocations,
        MIN_POOL_ALLOCATIONS,
        f"pool buffer hits / {allocations} batch-buffer allocations of the engine process "
        f"(needs >= {MIN_POOL_ALLOCATIONS})",
    )


def _concurrency(ev: Evidence, model: str | None) -> Measurement:
    from pipeline.stages.load import MIN_CONCURRENCY_LEVELS, MIN_REQUESTS_PER_LEVEL

    conc = ev.summary("load")["concurrency"]
    levels = conc["levels_tested"]
    enough = int(conc.get("min_requests_per_level") or 0) >= MIN_REQUESTS_PER_LEVEL
    ceiling = (
        "the ceiling was found"
        if conc.get("ceiling_found")
        else f"the ceiling was not found: at least {conc['supported_users']} users"
    )
    return Measurement(
        float(conc["supported_users"]),
        len(levels) if enough else 0,
        MIN_CONCURRENCY_LEVELS,
        f"largest user count such that it and every lower level of {levels} passed "
        f"({conc.get('criterion')}); {ceiling}; needs >= {MIN_CONCURRENCY_LEVELS} levels of "
        f">= {MIN_REQUESTS_PER_LEVEL} requests (fewest: {conc.get('min_requests_per_level')})",
    )


def _cache(ev: Evidence, model: str | None) -> Measurement:
    cache = ev.summary("load")["cache"]
    best = int(cache["best_possible_hits"])
    return Measurement(
        float(cache["hits"]) / best if best else math.nan,
        int(cache["requests"]),
        MIN_CACHE_REQUESTS,
        f"{cache['hits']} engine cache hits of the {best} achievable (every repeated input) "
        f"over {cache['requests']} requests of a Zipf(a={cache['zipf_a']}) workload over "
        f"{cache['distinct_inputs']} inputs, {cache.get('concurrency')} clients (raw hit rate "
        f"{cache['hit_rate']:.3f}, best possible {cache['best_possible_hit_rate']:.3f}; needs "
        f">= {MIN_CACHE_REQUESTS} requests)",
    )


def _soak(key: str) -> Measure:
    def measure(ev: Evidence, model: str | None) -> Measurement:
        soak = ev.summary("load").get("soak")
        if not soak:
            raise NotApplicable(
                f"not applicable: the {ev.ctx.profile.name} profile runs no soak (soak_s 0; the "
                "release profile does)"
            )
        windows = soak["windows"]
        fewest = min(int(w["requests"]) for w in windows)
        what = {
            "p99_drift_ratio": "p99 of the last soak window / p99 of the first",
            "rss_growth_mb": "engine RSS in the last soak window minus the first",
            "error_rate": "failed share of the soak's requests",
        }[key]
        value = soak[key]
        return Measurement(
            math.nan if value is None else float(value),
            fewest,
            MIN_SOAK_WINDOW_REQUESTS,
            f"{what}: {soak['duration_s']:g} s open-loop at {soak['rate_rps']:g} req/s, "
            f"{len(windows)} windows (fewest {fewest} requests; needs >= "
            f"{MIN_SOAK_WINDOW_REQUESTS}), {soak['scheduled']} requests",
        )

    return measure


def _checks(ev: Evidence, check: str, model: str | None):
    """The integration rows of `check` (a prefix) for `model` (None: every model) that
    apply (not applicable rows are left out); NotApplicable when none does."""
    checks = ev.table("integration", "checks")
    rows = checks[checks["check"].astype(str).str.startswith(check)]
    if model is not None:
        rows = rows[rows["model"] == model]
    applicable = rows[rows["status"] != str(Status.NOT_APPLICABLE)]
    if applicable.empty:
        why = "; ".join(sorted(set(rows["detail"].dropna().astype(str)))) or "no check applies"
        raise NotApplicable(f"not applicable: {why}")
    return applicable


def _initialisation(ev: Evidence, model: str | None) -> Measurement:
    rows = _checks(ev, "initialization", None)
    value = float(rows["measured"].iloc[0])
    return Measurement(value, 1, 1, str(rows["detail"].iloc[0]))


def _parity(ev: Evidence, model: str | None) -> Measurement:
    rows = _checks(ev, "parity_", model)
    values = rows["measured"].astype(float)
    if values.isna().any():
        return Measurement(math.nan, len(rows), len(rows), "a parity check could not measure")
    checks = ", ".join(sorted(set(rows["check"].astype(str))))
    return Measurement(float(values.max()), len(rows), 1, f"worst of {len(rows)} checks ({checks})")


def _quality(ev: Evidence, model: str | None) -> Measurement:
    rows = _checks(ev, MODEL_QUALITY, model)
    row = rows.iloc[0]
    return Measurement(
        float(row["measured"]), int(row.get("samples", 1) or 1), 1, str(row["detail"])
    )


def _infra_row(ev: Evidence, check: str, model: str):
    """The infra stage's row of `check` for `model` ("all": the service as a whole);
    NotApplicable with its reason when the row is not applicable."""
    checks = ev.table("infra", "checks")
    rows = checks[(checks["check"] == check) & (checks["model"] == model)]
    if rows.empty:
        summary = ev.summary("infra")
        if not any(str(f).startswith("readiness") for f in summary.get("failed") or []):
            return None
        raise NotRun("infra", "not run: the service never became ready in the infra stage")
    row = rows.iloc[0]
    if row["status"] == str(Status.NOT_APPLICABLE):
        raise NotApplicable(str(row["detail"]))
    return row


def _endpoint_p99(named: str | None) -> Measure:
    """p99 of one endpoint over HTTP under the infra stage's open-loop load: a named
    endpoint of an example model (`named`), or each model's own /v2 endpoint (None)."""
    from pipeline.stages.interface import ENDPOINTS, INTERFACE_PERCENTILE, NAMED_SLAS, V2_SLA

    def measure(ev: Evidence, model: str | None) -> Measurement:
        check = V2_SLA if named is None else NAMED_SLAS[named]
        who = model if named is None else named
        row = _infra_row(ev, check, who)
        if row is None:
            if named is not None and who not in ev.ctx.run.model_info():
                raise NotApplicable(
                    f"not applicable: no {who} in this run ({ENDPOINTS[who]} serves only it)"
                )
            raise NotRun("infra", f"not run: the infra stage measured no {check} for {who}")
        return Measurement(
            float(row["measured"]),
            int(row["samples"]),
            min_samples_for(INTERFACE_PERCENTILE),
            f"{row['detail']} (the infra stage's open-loop HTTP load on loopback; a p99 needs "
            f">= {min_samples_for(INTERFACE_PERCENTILE)} samples)",
        )

    return measure


def _validation(ev: Evidence, model: str | None) -> Measurement:
    from pipeline.stages.interface import VALIDATION_SLA

    row = _infra_row(ev, VALIDATION_SLA, "all")
    if row is None:
        raise NotRun("infra", "not run: the infra stage did not call the validation endpoint")
    return Measurement(float(row["measured"]), int(row["samples"]), 1, str(row["detail"]))


def _availability(ev: Evidence, model: str | None) -> Measurement:
    from pipeline.stages.availability import MIN_AVAILABILITY_PROBES

    row = _infra_row(ev, "availability", "all")
    if row is None:
        raise NotRun("infra", "not run: the infra stage probed no health endpoint")
    detail = str(row["detail"]).split(" (INVALID:")[0]
    return Measurement(
        float(row["measured"]),
        int(row["samples"]),
        MIN_AVAILABILITY_PROBES,
        f"{detail} (needs >= {MIN_AVAILABILITY_PROBES} probes)",
    )


#: metric name -> (measure(evidence, model or None) -> Measurement, what it reads)
MEASURES: dict[str, tuple[Measure, str]] = {
    "average_inference_latency_ms": _latency(None),
    "p95_latency_ms": _latency(95),
    "p99_latency_ms": _latency(99),
    "sustained_throughput_rps": (_sustained, _LOAD_SUMMARY),
    "peak_throughput_rps": (_peak, _LOAD_SUMMARY),
    "memory_usage_mb": (_memory, _LOAD_SUMMARY),
    "memory_efficiency": (_reuse, _LOAD_SUMMARY),
    "success_rate": _success(error=False),
    "error_rate": _success(error=True),
    "concurrent_users_supported": (_concurrency, _LOAD_SUMMARY),
    "cache_hit_rate": (_cache, _LOAD_SUMMARY),
    "soak_p99_drift_ratio": (_soak("p99_drift_ratio"), _LOAD_SUMMARY),
    "soak_rss_growth_mb": (_soak("rss_growth_mb"), _LOAD_SUMMARY),
    "soak_error_rate": (_soak("error_rate"), _LOAD_SUMMARY),
    "model_initialization_s": (_initialisation, _INTEGRATION_CHECKS),
    "routing_endpoint_p99_ms": (_endpoint_p99("routing_classifier"), _INFRA_CHECKS),
    "quality_endpoint_p99_ms": (_endpoint_p99("quality_predictor"), _INFRA_CHECKS),
    "endpoint_p99_latency_ms": (_endpoint_p99(None), _INFRA_CHECKS),
    "validation_endpoint_s": (_validation, _INFRA_CHECKS),
    "availability": (_availability, _INFRA_CHECKS),
    "parity_max_abs_diff": (_parity, _INTEGRATION_CHECKS),
}
#: each model's quality SLA (model_quality[<model>]), measured by the integration stage
QUALITY_MEASURE: tuple[Measure, str] = (_quality, _INTEGRATION_CHECKS)


def _criterion(evidence: Evidence, planned: Planned) -> Criterion:
    measure, source = (
        QUALITY_MEASURE if planned.metric == MODEL_QUALITY else MEASURES[planned.metric]
    )
    who = {"metric": planned.metric, "model": planned.model}
    if planned.target is None:
        return judge(
            placeholder_target(planned),
            source,
            status=Status.NOT_APPLICABLE,
            detail=f"not applicable: {planned.reason}",
            **who,
        )
    try:
        return judge(planned.target, source, measure(evidence, planned.model), **who)
    except NotRun as exc:
        return judge(planned.target, source, status=Status.NOT_RUN, detail=str(exc), **who)
    except NotApplicable as exc:
        return judge(planned.target, source, status=Status.NOT_APPLICABLE, detail=str(exc), **who)


def measure_targets(
    ctx: StageContext | str | Path, targets=None, profile: str = "smoke"
) -> list[Criterion]:
    """One criterion per planned criterion of the run (pipeline.criteria.plan: each target
    for the mix and per model, each model's quality SLA), measured from this attempt."""
    if not isinstance(ctx, StageContext):
        ctx = StageContext.open(ctx, "certify", profile, targets=targets)
    evidence = Evidence(ctx)
    try:
        info = ctx.run.model_info()
    except StageError:
        info = {}
    return [_criterion(evidence, p) for p in plan(targets or ctx.targets, info)]


def run(ctx: StageContext) -> dict[str, Any]:
    """Measure every target, write stages/certify/criteria.csv and summary.json."""
    criteria = measure_targets(ctx)
    ctx.write_table("criteria", [c.row() for c in criteria])
    for c in criteria:
        mark = (
            "met" if c.met else str(c.status).upper() if c.status != Status.MEASURED else "NOT MET"
        )
        ctx.say(
            f"certify: {c.name:30s} {c.measured:>12.4g} {c.unit:8s} "
            f"({c.direction} {c.threshold:.4g}) {mark}"
        )
    unmet = [c.name for c in criteria if c.blocks_approval]
    by_category: dict[str, dict[str, int]] = {}
    by_status: dict[str, int] = {}
    for c in criteria:
        cat = by_category.setdefault(c.category, {"met": 0, "total": 0})
        cat["total"] += 1
        cat["met"] += c.met
        by_status[str(c.status)] = by_status.get(str(c.status), 0) + 1
    return ctx.write_summary(
        {
            "criteria": len(criteria),
            "met": sum(c.met for c in criteria),
            "unmet": unmet,
            "certification_passed": not unmet,
            "by_category": by_category,
            "by_status": by_status,
        }
    )
