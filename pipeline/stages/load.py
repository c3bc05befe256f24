"""Load stage: the plan's six closed-loop scenarios, capacity, peak, concurrency, cache.

Everything runs against the engine hosted in its own process (`EngineHost`); the stage's
process only generates load. Methodology (ARCHITECTURE.md section 6), one named step each:

- `calibrate`: the same harness against a null model gives its own latency floor;
- `scenarios`: closed-loop users (think time per pattern, ramp-up), latency from the time
  a user meant to send; the first `warmup_s` of each scenario is marked `warmup` in
  requests.csv and never certified; results are cut into windows and a scenario is valid
  only when consecutive windows agree, the generator kept up, and there are enough
  samples for every percentile the profile claims; a request still in flight when a
  scenario's time bound runs out is lost, and counts as an error;
- `capacity`: open-loop Poisson at doubling then bisected rates; the highest rate with p99
  within the p99 target, success >= 99% and a generator that kept up;
- `peak`: bursts of requests submitted at once; completed per second;
- `concurrency`: 1, 6, 11, ... users; the largest count with >= 95% success and p95
  within target;
- `cache`: a Zipf-distributed workload over a fixed set of inputs; the hit rate counts the
  engine cache's real hits over exactly those requests;
- `soak` (release profile): the mixed workload held open-loop for `soak_s`.

Outputs in `stages/load/`: requests.csv (per request), windows.csv, scenarios.csv (gated),
capacity.csv, concurrency.csv, resources.csv, summary.json.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.loadgen import (
    find_knee,
    min_samples_for,
    percentiles,
    run_open_loop,
    run_users,
    summarize,
)
from pipeline.profiles import Profile, Scenario
from pipeline.stages.common import ModelDefect, RunDir, input_pool, serving_keys
from pipeline.stages.context import StageContext
from pipeline.stages.engine_host import EngineHost, HostConfig, ResourceSampler
from pipeline.stages.inputs import scale_request, signature_of

__all__ = ["REQUEST_COLUMNS", "run"]

STAGE = "load"
POOL_SIZE = 4096
MAX_ISSUE_DELAY_MS = 10.0
#: the capacity search's and the soak's error allowance (success >= 99%)
MAX_ERROR_RATE = 0.01
#: the calibration's offered rate against the null models
CALIBRATION_RPS = 200.0
#: a scenario's users are stopped this long after its ramp-up + duration (then lost)
SCENARIO_GRACE_S = 30.0

REQUEST_COLUMNS = [
    "scenario",
    "user",
    "model",
    "scheduled_s",
    "warmup",
    "latency_ms",
    "issue_delay_ms",
    "success",
    "error",
    "batch_size",
    "cache_hit",
    "inference_ms",
    "batch_id",
]


class Workload:
    """Request inputs per model and the choice of model for a behaviour (share per model)."""

    def __init__(
        self,
        run: RunDir,
        info: dict,
        keys: dict[str, str],
        seed: int,
        pools: dict[str, Any] | None = None,
    ) -> None:
        self.run = run
        self.info = info
        self.keys = keys
        self.names = sorted(keys)
        self.pools = pools or {
            n: input_pool(run, info, n, POOL_SIZE, seed + i) for i, n in enumerate(self.names)
        }
        self.cursor = dict.fromkeys(self.names, 0)

    def with_keys(self, keys: dict[str, str]) -> Workload:
        """The same inputs sent to other engine keys (e.g. the null models)."""
        return Workload(self.run, self.info, keys, 0, pools=self.pools)

    def weights(self, behaviour: dict[str, float]) -> tuple[list[str], np.ndarray]:
        """Models and their shares; models the behaviour does not name share `other`, and
        a behaviour naming none of this run's models spreads evenly."""
        named = {n: w for n, w in behaviour.items() if n in self.keys}
        others = [n for n in self.names if n not in behaviour]
        if not named:
            named = dict.fromkeys(self.names, 1.0)
        elif others and behaviour.get("other"):
            for n in others:
                named[n] = behaviour["other"] / len(others)
        names = sorted(named)
        w = np.array([named[n] for n in names], dtype=float)
        return names, w / w.sum()

    def next_input(self, name: str) -> Any:
        """The model's next request input: a row, or a mapping input name -> array."""
        i = self.cursor[name]
        self.cursor[name] = i + 1
        return self.pools[name][i % POOL_SIZE]


@dataclass
class LoadRun:
    """What the steps share: the hosted engine, its sampler, the workload and the mix."""

    ctx: StageContext
    host: EngineHost
    sampler: ResourceSampler
    work: Workload
    null_keys: dict[str, str]
    names: list[str]  # models of the mix
    weights: np.ndarray  # their shares

    @property
    def profile(self) -> Profile:
        return self.ctx.profile


# --------------------------------------------------------------------------- closed loop
def _pick(rng: np.random.Generator, names: list[str], weights: np.ndarray) -> str:
    return names[int(rng.choice(len(names), p=weights))] if len(names) > 1 else names[0]


async def _closed_loop(
    lr: LoadRun,
    label: str,
    *,
    users: int,
    requests_per_user: int,
    behaviour: dict[str, float],
    think,
    ramp_up_s: float = 0.0,
    duration_s: float,
    seed: int,
) -> list[tuple]:
    """Closed-loop users against the engine; one request row per request (REQUEST_COLUMNS
    without `warmup`), lost requests included as failures."""
    names, weights = lr.work.weights(behaviour)
    chosen: dict[tuple[int, int], str] = {}

    def send(user: int, i: int, rng: np.random.Generator):
        name = _pick(rng, names, weights)
        chosen[(user, i)] = name
        return lr.host.predict(lr.work.keys[name], lr.work.next_input(name))

    turns = await run_users(
        send,
        users,
        requests_per_user=requests_per_user,
        think_s=think,
        ramp_up_s=ramp_up_s,
        duration_s=duration_s,
        seed=seed,
        timeout_s=ramp_up_s + duration_s + SCENARIO_GRACE_S,
    )
    rows = []
    for t in turns:
        r = t.result
        error = (
            "lost: no answer before the time bound" if t.lost else ("" if r.success else r.error)
        )
        rows.append(
            (
                label,
                t.user,
                chosen.get((t.user, t.index), ""),
                t.scheduled_s,
                t.latency_ms,
                t.issue_delay_ms,
                (not t.lost) and r.success,
                error,
                0 if t.lost else r.batch_size,
                (not t.lost) and r.cache_hit,
                0.0 if t.lost else r.inference_ms,
                0 if t.lost else r.batch_id,
            )
        )
    return rows


def _windows(frame, window_s: float, scenario: str) -> list[dict[str, Any]]:
    out = []
    if frame.empty:
        return out
    start = frame["scheduled_s"].min()
    index = ((frame["scheduled_s"] - start) // window_s).astype(int)
    for w, part in frame.groupby(index):
        p = percentiles(part["latency_ms"].to_numpy())
        out.append(
            {
                "scenario": scenario,
                "window": int(w),
                "start_s": float(start + w * window_s),
                "requests": len(part),
                "p50_ms": p.p50_ms,
                "p95_ms": p.p95_ms,
                "p99_ms": p.p99_ms,
                "throughput_rps": len(part) / window_s,
                "error_rate": float(1.0 - part["success"].mean()),
            }
        )
    return out


def _stability(windows: list[dict[str, Any]], tolerance: float, floor_ms: float) -> str | None:
    """None when consecutive windows (with >= 10 samples) agree on p50: within a factor of
    1 + tolerance, or within `floor_ms` (jitter of a millisecond is not instability)."""
    usable = [w for w in windows if w["requests"] >= 10]
    if len(usable) < 2:
        return None if usable else "no window with at least 10 samples"
    for a, b in itertools.pairwise(usable):
        lo, hi = sorted((a["p50_ms"], b["p50_ms"]))
        if lo > 0 and hi / lo > 1.0 + tolerance and hi - lo > floor_ms:
            return (
                f"unstable: window {a['window']} p50 {a['p50_ms']:.2f} ms vs window "
                f"{b['window']} p50 {b['p50_ms']:.2f} ms (more than {1 + tolerance:g}x apart)"
            )
    return None


def _validity(measured, windows: list[dict[str, Any]], profile: Profile) -> list[str]:
    """Why a scenario's measurement is not valid (empty: valid)."""
    reasons = []
    n = len(measured)
    for q in profile.percentiles_claimed:
        if n < min_samples_for(q):
            reasons.append(f"only {n} samples; p{q:g} needs {min_samples_for(q)}")
    unstable = _stability(windows, profile.stability_tolerance, profile.stability_floor_ms)
    if unstable:
        reasons.append(unstable)
    delay_p99 = float(np.percentile(measured["issue_delay_ms"], 99)) if n else float("nan")
    if n and delay_p99 > MAX_ISSUE_DELAY_MS:
        reasons.append(f"generator fell behind: issue delay p99 {delay_p99:.1f} ms")
    return reasons


async def run_scenario(
    lr: LoadRun, scenario: Scenario, seed: int
) -> tuple[list[tuple], dict[str, Any], list[dict[str, Any]]]:
    """Run one closed-loop scenario: (request rows, scenario row, window rows)."""
    import pandas as pd

    profile = lr.profile
    first_sample = len(lr.sampler.samples)
    rows = await _closed_loop(
        lr,
        scenario.name,
        users=scenario.users,
        requests_per_user=scenario.requests_per_user,
        behaviour=scenario.behaviour,
        think=scenario.think_time_s,
        ramp_up_s=scenario.ramp_up_s,
        duration_s=scenario.duration_s,
        seed=seed,
    )
    lr.sampler.sample()
    rows = [(*r[:4], r[3] < profile.warmup_s, *r[4:]) for r in rows]
    frame = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    measured = frame[~frame["warmup"]]
    windows = _windows(measured, profile.window_s, scenario.name)
    reasons = _validity(measured, windows, profile)
    n = len(measured)
    p = percentiles(measured["latency_ms"].to_numpy())
    lost = int((measured["error"].astype(str).str.startswith("lost")).sum())
    span = float(measured["scheduled_s"].max() - measured["scheduled_s"].min()) if n > 1 else 0.0
    resources = lr.sampler.samples[first_sample:]
    batches = measured["batch_size"][measured["batch_size"] > 0]
    summary = {
        "scenario": scenario.name,
        "users": scenario.users,
        "requests": n,
        "succeeded": int(measured["success"].sum()),
        "lost": lost,
        "error_rate": float(1.0 - measured["success"].mean()) if n else 1.0,
        "mean_ms": p.mean_ms,
        "p50_ms": p.p50_ms,
        "p95_ms": p.p95_ms,
        "p99_ms": p.p99_ms,
        "p99_valid": n >= min_samples_for(99),
        "throughput_rps": n / span if span > 0 else 0.0,
        "issue_delay_p99_ms": float(np.percentile(measured["issue_delay_ms"], 99))
        if n
        else float("nan"),
        "mean_batch_size": float(batches.mean()) if len(batches) else 0.0,
        "valid": not reasons,
        "invalid_reason": "; ".join(reasons),
        "peak_rss_mb": max((r[1] for r in resources), default=lr.sampler.peak_rss_mb()),
        "mean_cpu_percent": float(np.mean([r[2] for r in resources])) if resources else 0.0,
        "pattern": scenario.pattern,
        "warmup_discarded": len(frame) - n,
    }
    return rows, summary, windows


# --------------------------------------------------------------------------- open loop
async def _open_loop(
    lr: LoadRun,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    seed: int,
    percentile: float,
    null: bool = False,
    only: str | None = None,
):
    """Open-loop Poisson traffic over the mix (or one model: `only`) at `rate`; its
    summary (loadgen.summarize)."""
    names, weights = ([only], np.ones(1)) if only else (lr.names, lr.weights)
    rng = np.random.default_rng(seed)
    count = int(rate * (duration_s + warmup_s) * 1.5) + 64
    choice = rng.choice(len(names), size=count, p=weights)
    keys = [(lr.null_keys if null else lr.work.keys)[n] for n in names]
    inputs = [lr.work.pools[n] for n in names]

    def send(i: int):
        m = choice[i % count]
        return lr.host.predict(keys[m], inputs[m][(i * 7 + m) % POOL_SIZE])

    record = await run_open_loop(send, rate, duration_s, warmup_s=warmup_s, seed=seed)
    return summarize(record, percentile=percentile, max_issue_delay_ms=MAX_ISSUE_DELAY_MS)


# --------------------------------------------------------------------------- the steps
async def calibrate(lr: LoadRun) -> dict[str, Any]:
    """The harness against null models: its own latency floor at a modest rate."""
    calib = await _open_loop(
        lr,
        rate=CALIBRATION_RPS,
        duration_s=lr.profile.calibration_s,
        warmup_s=0.2,
        seed=lr.profile.seeds.calibration,
        percentile=50,
        null=True,
    )
    lr.ctx.say(
        f"load: calibration (null model, {CALIBRATION_RPS:g} req/s): p50 {calib.p50_ms:.2f} "
        f"ms, p99 {calib.p99_ms:.2f} ms"
    )
    return {
        "rate_rps": CALIBRATION_RPS,
        "p50_ms": calib.p50_ms,
        "p99_ms": calib.p99_ms,
        "samples": calib.scheduled,
        "valid": calib.valid,
    }


async def scenarios(lr: LoadRun) -> tuple[list[tuple], list[dict], list[dict]]:
    """The profile's closed-loop scenarios, one after the other."""
    request_rows: list[tuple] = []
    scenario_rows: list[dict] = []
    window_rows: list[dict] = []
    for i, scenario in enumerate(lr.profile.scenarios):
        rows, row, windows = await run_scenario(lr, scenario, lr.profile.seeds.scenarios + i)
        request_rows += rows
        scenario_rows.append(row)
        window_rows += windows
        verdict = "valid" if row["valid"] else "INVALID: " + row["invalid_reason"]
        lr.ctx.say(
            f"load: {scenario.name}: {row['requests']} requests, {scenario.users} users, "
            f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, errors "
            f"{row['error_rate']:.2%} -> {verdict}"
        )
    return request_rows, scenario_rows, window_rows


async def capacity(lr: LoadRun, p99_bound_ms: float, only: str | None = None):
    """The knee of the mix (or of one model alone: `only`, against its own p99 bound): the
    offered rate doubles until p99 passes its bound, errors appear or the generator cannot
    keep up, then bisects to the profile's resolution (pipeline.loadgen.find_knee)."""
    cfg = lr.profile.capacity
    who = f" {only}" if only else ""

    async def trial(rate: float):
        return await _open_loop(
            lr,
            rate=rate,
            duration_s=cfg.trial_s,
            warmup_s=cfg.warmup_s,
            seed=lr.profile.seeds.capacity + int(rate),
            percentile=50,
            only=only,
        )

    return await find_knee(
        trial,
        p99_bound_ms=p99_bound_ms,
        start_rps=cfg.start_rps,
        safety_cap_rps=cfg.max_rps,
        resolution=cfg.resolution,
        max_error_rate=MAX_ERROR_RATE,
        max_issue_delay_ms=MAX_ISSUE_DELAY_MS,
        max_seconds=cfg.max_seconds,
        progress=lambda line: lr.ctx.say(f"load: capacity{who} {line.strip()}"),
    )


def _capacity_summary(knee, p99_bound_ms: float) -> dict[str, Any]:
    """The envelope of one subject: the highest valid rate, its latency and batch size, and
    what stopped the search."""
    best = knee.best
    return {
        "max_sustained_rps": knee.knee_rps,
        "capped": knee.at_least,
        "stopped_by": knee.stopped_by,
        "limit_rps": knee.limit_rps,
        "resolution_rps": knee.resolution_rps,
        "p99_bound_ms": p99_bound_ms,
        "max_error_rate": MAX_ERROR_RATE,
        "best_p50_ms": best.p50_ms if best else None,
        "best_p99_ms": best.p99_ms if best else None,
        "best_mean_batch_size": best.mean_batch_size if best else None,
        "best_samples": best.scheduled if best else 0,
        "trials": len(knee.trials),
        "search_s": knee.seconds,
        "describe": knee.describe(),
    }


async def capacities(lr: LoadRun, p99_bound_ms: float) -> tuple[dict[str, Any], list[dict]]:
    """Capacity of the mix, then of each model alone (a slow model must not hide behind a
    fast one); (summary with `per_model`, the trial table)."""
    search = await capacity(lr, p99_bound_ms)
    summary = _capacity_summary(search, p99_bound_ms)
    table = [{"subject": "mix", **row} for row in search.trial_table()]
    summary["per_model"] = {}
    for name in lr.work.names:
        bound = lr.ctx.targets.for_model(name)["p99_latency_ms"].threshold
        own = await capacity(lr, bound, only=name)
        summary["per_model"][name] = _capacity_summary(own, bound)
        table += [{"subject": name, **row} for row in own.trial_table()]
    return summary, table


async def _burst(lr: LoadRun, count: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(lr.names), size=count, p=lr.weights)
    started = time.perf_counter()
    futures = [
        lr.host.predict(lr.work.keys[lr.names[m]], lr.work.next_input(lr.names[m])) for m in picks
    ]
    results = await asyncio.wait_for(asyncio.gather(*futures), 60)
    elapsed = time.perf_counter() - started
    ok = sum(r.success for r in results)
    return {
        "requests": count,
        "succeeded": ok,
        "elapsed_s": elapsed,
        "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
    }


async def peak(lr: LoadRun) -> dict[str, Any]:
    """Three bursts of `burst_requests` submitted at once; the median completion rate."""
    count = lr.profile.burst_requests
    bursts = [await _burst(lr, count, lr.profile.seeds.burst + s) for s in range(3)]
    return {
        "throughput_rps": sorted(b["throughput_rps"] for b in bursts)[1],
        "bursts": bursts,
        "burst_requests": count,
    }


#: the concurrency sweep's minimum evidence: levels, and requests at every level
MIN_CONCURRENCY_LEVELS = 3
MIN_REQUESTS_PER_LEVEL = 20
#: when every level of the sweep passed, it goes on (same step) until one fails, at most
#: this many extra levels: the ceiling is found, or "at least" is said
MAX_EXTRA_LEVELS = 6


async def _concurrency_level(lr: LoadRun, users: int, p95_bound_ms: float) -> dict[str, Any]:
    cfg = lr.profile.concurrency
    per_user = max(cfg.requests_per_user, -(-MIN_REQUESTS_PER_LEVEL // users))
    rows = await _closed_loop(
        lr,
        f"concurrency_{users}",
        users=users,
        requests_per_user=per_user,
        behaviour=lr.profile.mix,
        think=cfg.think_ms / 1000.0,
        duration_s=60.0,
        seed=lr.profile.seeds.concurrency + users,
    )
    total = users * per_user
    ok = sum(bool(r[6]) for r in rows)
    p = percentiles([r[4] for r in rows if r[6]])
    level = {
        "users": users,
        "requests": total,
        "completed": len(rows),
        "success_rate": ok / total if total else 0.0,
        "p50_ms": p.p50_ms,
        "p95_ms": p.p95_ms,
    }
    level["passed"] = level["success_rate"] >= 0.95 and level["p95_ms"] <= p95_bound_ms
    return level


async def concurrency(lr: LoadRun, p95_bound_ms: float) -> tuple[dict[str, Any], list[dict]]:
    """Closed-loop users at each level of the sweep. Supported: the largest level such that
    it and every lower level passed. When the largest level tried passed, the ceiling was
    not found: the sweep goes on with the same step until a level fails (bounded)."""
    levels = [await _concurrency_level(lr, u, p95_bound_ms) for u in lr.profile.concurrency.users]
    users = [lv["users"] for lv in levels]
    step = (users[-1] - users[-2]) if len(users) > 1 else max(users[-1], 1)
    extra = 0
    while levels[-1]["passed"] and extra < MAX_EXTRA_LEVELS:
        extra += 1
        levels.append(await _concurrency_level(lr, levels[-1]["users"] + step, p95_bound_ms))
    supported = 0
    for level in levels:
        if not level["passed"]:
            break
        supported = level["users"]
    summary = {
        "supported_users": supported,
        "levels_tested": [lv["users"] for lv in levels],
        "failed_levels": [lv["users"] for lv in levels if not lv["passed"]],
        "ceiling_found": not levels[-1]["passed"],
        "extra_levels": extra,
        "min_requests_per_level": min(lv["requests"] for lv in levels),
        "criterion": f"success >= 95% and p95 <= {p95_bound_ms:g} ms, at that level and "
        "every lower one",
    }
    lr.ctx.say(
        f"load: concurrency: supported {supported} users (levels {summary['levels_tested']}"
        f"{'' if summary['ceiling_found'] else '; ceiling not found'})"
    )
    return summary, levels


async def cache(lr: LoadRun) -> dict[str, Any]:
    """A Zipf workload over a fixed catalogue of inputs; real engine cache hits over it."""
    cfg = lr.profile.cache
    seed = lr.profile.seeds.cache
    rng = np.random.default_rng(seed)
    work = lr.work
    name = "routing_classifier" if "routing_classifier" in work.keys else work.names[0]
    catalog = input_pool(work.run, work.info, name, cfg.distinct_inputs, seed + 99)
    ranks = np.arange(1, cfg.distinct_inputs + 1)
    p = 1.0 / ranks**cfg.zipf_a
    picks = rng.choice(cfg.distinct_inputs, size=cfg.requests, p=p / p.sum())
    queue = list(picks)
    counts = {"hits": 0, "done": 0, "failed": 0}

    async def client() -> None:
        while queue:
            item = queue.pop()
            result = await lr.host.predict(work.keys[name], catalog[item])
            counts["done"] += 1
            counts["hits"] += bool(result.cache_hit)
            counts["failed"] += not result.success

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(cfg.concurrency))), 120)
    done = counts["done"]
    unique = len(np.unique(picks))
    best_hits = len(picks) - unique  # every repeat a hit: what an unbounded cache achieves
    result = {
        "model": name,
        "requests": done,
        "distinct_inputs": cfg.distinct_inputs,
        "zipf_a": cfg.zipf_a,
        "concurrency": cfg.concurrency,
        "hits": counts["hits"],
        "failed": counts["failed"],
        "hit_rate": counts["hits"] / done if done else 0.0,
        "unique_in_workload": unique,
        "best_possible_hits": best_hits,
        "best_possible_hit_rate": best_hits / len(picks),
        "efficiency": counts["hits"] / best_hits if best_hits else float("nan"),
        "definition": "engine cache hits over this declared Zipf workload's requests, against "
        "the best achievable (every repeated input a hit); other stages' requests excluded",
    }
    lr.ctx.say(
        f"load: cache: {counts['hits']} hits of {best_hits} achievable "
        f"({result['efficiency']:.1%}) over {done} Zipf requests (hit rate "
        f"{result['hit_rate']:.1%}, best {result['best_possible_hit_rate']:.1%})"
    )
    return result


#: what each kind of request of the error test may end with ("served": answered with a
#: finite output; "refused": a clear per-request error naming the input). Anything else (a
#: runtime fault, a timeout, a lost request) is an error of the service.
EXPECTED_OUTCOMES: dict[str, tuple[str, ...]] = {
    "clean": ("served",),
    "x0.001": ("served",),
    "x1000": ("served", "refused"),
}
#: the engine's clear per-request refusals (a bad input, an input the model answers NaN for)
REFUSALS = ("InvalidInputError", "NonFiniteOutputError")


def _injected(i: int, cfg) -> tuple[str, float]:
    if i % cfg.scale_up_every == 0:
        return "x1000", 1000.0
    if i % cfg.scale_down_every == 0:
        return "x0.001", 0.001
    return "clean", 1.0


def _outcome(result: Any, lost: bool) -> str:
    if lost:
        return "lost"
    if result.success:
        return "served"
    return "refused" if result.error_type in REFUSALS else "failed"


async def error_injection(lr: LoadRun) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan's error test: requests over the mix, some with extreme inputs (x1000,
    x0.001), each judged against its declared expected outcome (EXPECTED_OUTCOMES)."""
    cfg = lr.profile.error_injection
    sent: dict[tuple[int, int], tuple[str, str, float]] = {}
    counter = iter(range(cfg.requests))

    def send(user: int, i: int, rng: np.random.Generator):
        n = next(counter, cfg.requests)
        name = _pick(rng, lr.names, lr.weights)
        kind, factor = _injected(n, cfg)
        x = lr.work.next_input(name)
        x = scale_request(x, factor, signature_of(lr.work.info[name])) if factor != 1.0 else x
        sent[(user, i)] = (name, kind, factor)
        return lr.host.predict(lr.work.keys[name], x)

    per_user = -(-cfg.requests // cfg.users)
    turns = await run_users(
        send, cfg.users, requests_per_user=per_user, seed=lr.profile.seeds.workload, timeout_s=120
    )
    rows = []
    for t in turns[: cfg.requests]:
        name, kind, _ = sent[(t.user, t.index)]
        outcome = _outcome(t.result, t.lost)
        error = (
            ""
            if t.lost is False and t.result.success
            else ("lost: no answer in time" if t.lost else str(t.result.error))
        )
        rows.append(
            {
                "model": name,
                "injected": kind,
                "expected": " or ".join(EXPECTED_OUTCOMES[kind]),
                "outcome": outcome,
                "success": outcome in EXPECTED_OUTCOMES[kind],
                "error": error[:200],
                "latency_ms": t.latency_ms,
            }
        )
    summary = {
        "requests": len(rows),
        "as_expected": sum(r["success"] for r in rows),
        "by_kind": {
            kind: {
                "requests": sum(r["injected"] == kind for r in rows),
                "as_expected": sum(r["success"] for r in rows if r["injected"] == kind),
                "outcomes": sorted({r["outcome"] for r in rows if r["injected"] == kind}),
            }
            for kind in EXPECTED_OUTCOMES
        },
        "expected": {k: list(v) for k, v in EXPECTED_OUTCOMES.items()},
    }
    kinds = ", ".join(
        f"{kind}: {v['as_expected']}/{v['requests']}" for kind, v in summary["by_kind"].items()
    )
    lr.ctx.say(
        f"load: error test: {summary['as_expected']}/{len(rows)} requests ended as declared "
        f"({kinds})"
    )
    return summary, rows


#: the soak is cut into this many windows to measure drift (first vs last)
SOAK_WINDOWS = 6


async def soak(lr: LoadRun, sustained_rps: float) -> dict[str, Any]:
    """The mix held open-loop at half the sustained rate (50..500 req/s) for `soak_s`:
    p99 and the engine's RSS per window, their drift (last window against the first) and
    the errors."""
    rate = max(50.0, min(500.0, sustained_rps / 2))
    first = len(lr.sampler.samples)
    started = lr.sampler.now_s()
    rng = np.random.default_rng(lr.profile.seeds.soak)
    count = int(rate * (lr.profile.soak_s + 1.0) * 1.5) + 64
    choice = rng.choice(len(lr.names), size=count, p=lr.weights)
    keys = [lr.work.keys[n] for n in lr.names]

    def send(i: int):
        m = choice[i % count]
        return lr.host.predict(keys[m], lr.work.pools[lr.names[m]][(i * 7 + m) % POOL_SIZE])

    record = await run_open_loop(
        send, rate, lr.profile.soak_s, warmup_s=1.0, seed=lr.profile.seeds.soak
    )
    summary = summarize(record, percentile=99, max_issue_delay_ms=MAX_ISSUE_DELAY_MS)
    keep = record.scheduled >= record.warmup_s
    edges = np.linspace(record.warmup_s, record.warmup_s + record.duration_s, SOAK_WINDOWS + 1)
    latency = (record.completed - record.scheduled) * 1000.0
    windows = []
    samples = lr.sampler.samples[first:]
    for w in range(SOAK_WINDOWS):
        inside = keep & (record.scheduled >= edges[w]) & (record.scheduled < edges[w + 1])
        lat = latency[inside]
        t0, t1 = started + edges[w], started + edges[w + 1]
        rss = [r for t, r, _ in samples if t0 <= t < t1]
        windows.append(
            {
                "window": w,
                "requests": int(inside.sum()),
                "p99_ms": percentiles(lat).p99_ms,
                "errors": int(inside.sum() - np.sum(record.success & inside)),
                "rss_mb": float(np.mean(rss)) if rss else float("nan"),
            }
        )
    first_w, last_w = windows[0], windows[-1]
    return {
        **summary.to_dict(),
        "rate_rps": rate,
        "windows": windows,
        "p99_drift_ratio": last_w["p99_ms"] / first_w["p99_ms"] if first_w["p99_ms"] else None,
        "rss_growth_mb": last_w["rss_mb"] - first_w["rss_mb"],
        "min_window_requests": min(w["requests"] for w in windows),
    }


async def memory(lr: LoadRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine process's peak RSS and pool reuse; (memory summary, engine stats)."""
    stats = await lr.host.stats()
    lr.sampler.sample()
    pool = stats["engine"].get("memory_pool", {})
    return {
        "peak_rss_mb": lr.sampler.peak_rss_mb(),
        "pool_reuse_ratio": pool.get("reuse_ratio"),
        "pool_allocations": pool.get("allocations"),
        "definition": "peak RSS of the engine process (sampled every 0.5 s and after "
        "each scenario); reuse = pool buffer hits / allocations",
    }, stats


# --------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    """Run the load stage; returns its summary (also written to stages/load/summary.json)."""
    return asyncio.run(_run(ctx))


async def _start(ctx: StageContext) -> LoadRun:
    info = ctx.run.model_info()
    keys = serving_keys(info)
    work = Workload(ctx.run, info, keys, seed=ctx.profile.seeds.workload)
    null_keys = {n: f"{n}_null" for n in keys}
    host = EngineHost(ctx.run.models, HostConfig(models=(*keys.values(), *null_keys.values())))
    await host.start()
    ctx.say(f"load: engine process {host.pid} serving {', '.join(keys.values())}")
    if host.load_errors:
        await host.stop()
        raise ModelDefect(f"load: models failed to load in the engine process: {host.load_errors}")
    sampler = ResourceSampler(host.pid, interval_s=0.5)
    sampler.start()
    names, weights = work.weights(ctx.profile.mix)
    return LoadRun(ctx, host, sampler, work, null_keys, names, weights)


async def _run(ctx: StageContext) -> dict:
    import pandas as pd

    p95_bound = ctx.targets["p95_latency_ms"].threshold
    p99_bound = ctx.targets["p99_latency_ms"].threshold
    lr = await _start(ctx)
    config = lr.host.config
    summary: dict[str, Any] = {
        "engine_config": config.to_dict(),
        "targets": {"p95_bound_ms": p95_bound, "p99_bound_ms": p99_bound},
        "warmup_s": ctx.profile.warmup_s,
    }
    gc.collect()
    gc.freeze()
    try:
        summary["calibration"] = await calibrate(lr)
        request_rows, scenario_rows, window_rows = await scenarios(lr)
        summary["capacity"], capacity_rows = await capacities(lr, p99_bound)
        sustained = summary["capacity"]["max_sustained_rps"]
        summary["peak"] = await peak(lr)
        ctx.say(
            f"load: capacity {sustained:.0f} req/s"
            f"{' (search cap reached)' if summary['capacity']['capped'] else ''}; peak burst "
            f"{summary['peak']['throughput_rps']:.0f} req/s"
        )
        summary["concurrency"], levels = await concurrency(lr, p95_bound)
        summary["cache"] = await cache(lr)
        summary["error_injection"], injection_rows = await error_injection(lr)
        if ctx.profile.soak_s:
            summary["soak"] = await soak(lr, sustained)
        summary["memory"], stats = await memory(lr)
        summary["engine_stats"] = stats["engine"]
        summary["models"] = stats["models"]
        summary["engine_init_s"] = stats["init_s"]
    finally:
        await lr.sampler.stop()
        await lr.host.stop()
        gc.unfreeze()

    requests = pd.DataFrame(request_rows, columns=REQUEST_COLUMNS)
    ctx.write_table("requests", requests)
    ctx.write_table("windows", window_rows)
    ctx.write_table("scenarios", scenario_rows)
    ctx.write_table("capacity", capacity_rows)
    ctx.write_table("concurrency", levels)
    ctx.write_table("injection", injection_rows)
    ctx.write_table(
        "resources",
        [{"t_s": t, "rss_mb": r, "cpu_percent": c} for t, r, c in lr.sampler.samples],
    )
    measured = requests[~requests["warmup"]]
    p = percentiles(measured["latency_ms"].to_numpy())
    summary["overall"] = {
        "requests": len(measured),
        "success_rate": float(measured["success"].mean()) if len(measured) else 0.0,
        "mean_ms": p.mean_ms,
        "p95_ms": p.p95_ms,
        "p99_ms": p.p99_ms,
    }
    written = ctx.write_summary(summary)
    ctx.say(f"load: done in {written['seconds']:.1f} s")
    return written
