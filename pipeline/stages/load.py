"""Load stage: the plan's six closed-loop scenarios, capacity, peak, concurrency, cache.

Everything runs against the engine hosted in its own process (`EngineHost`); the stage's
process only generates load. Methodology (ARCHITECTURE.md section 6):

- *calibration*: the same harness against a null model gives its own latency floor;
- *scenarios*: closed-loop users (think time per pattern, ramp-up), latency from the time
  a user meant to send; the first `warmup_s` of each scenario is discarded; results are cut
  into windows and a scenario is valid only when consecutive windows agree, the generator
  kept up, and there are enough samples for every percentile the profile claims;
- *capacity*: open-loop Poisson at doubling then bisected rates; the highest rate with p99
  within the p99 target, success >= 99% and a generator that kept up;
- *peak*: bursts of requests submitted at once; completed per second;
- *concurrency*: 1, 6, 11, ... users; the largest count with >= 95% success and p95
  within target;
- *cache*: a Zipf-distributed workload over a fixed set of inputs; the hit rate counts the
  engine cache's real hits over exactly those requests.

Outputs in `stages/load/`: requests.csv (per request), windows.csv, scenarios.csv (gated),
capacity.csv, concurrency.csv, resources.csv, summary.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.loadgen import find_max_sustained_rate, min_samples_for, run_open_loop, summarize
from pipeline.profiles import Profile, Scenario, load_profile
from pipeline.stages.common import (
    RunDir,
    StageError,
    host_facts,
    input_pool,
    serving_keys,
    write_table,
)
from pipeline.stages.engine_host import EngineHost, HostConfig, ResourceSampler

__all__ = ["run_load", "run_scenario"]

STAGE = "load"
POOL_SIZE = 4096
MAX_ISSUE_DELAY_MS = 10.0


class _Workload:
    """Request inputs and model choice for a behaviour (share of requests per model)."""

    def __init__(
        self,
        run: RunDir,
        info: dict,
        keys: dict[str, str],
        seed: int,
        pools: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.run = run
        self.info = info
        self.keys = keys
        self.names = sorted(keys)
        self.pools = pools or {
            n: input_pool(run, info, n, POOL_SIZE, seed + i) for i, n in enumerate(self.names)
        }
        self.cursor = dict.fromkeys(self.names, 0)

    def with_keys(self, keys: dict[str, str]) -> _Workload:
        """The same inputs sent to other engine keys (e.g. the null models)."""
        return _Workload(self.run, self.info, keys, 0, pools=self.pools)

    def weights(self, behaviour: dict[str, float]) -> tuple[list[str], np.ndarray]:
        named = {n: w for n, w in behaviour.items() if n in self.keys}
        others = [n for n in self.names if n not in behaviour]
        if not named:  # a run without the example models: spread evenly
            named = dict.fromkeys(self.names, 1.0)
        elif others and behaviour.get("other"):
            for n in others:
                named[n] = behaviour["other"] / len(others)
        names = sorted(named)
        w = np.array([named[n] for n in names], dtype=float)
        return names, w / w.sum()

    def next_input(self, name: str) -> np.ndarray:
        i = self.cursor[name]
        self.cursor[name] = i + 1
        return self.pools[name][i % POOL_SIZE]


# --------------------------------------------------------------------------- closed loop
async def _user(
    host: EngineHost,
    work: _Workload,
    scenario: Scenario,
    names: list[str],
    weights: np.ndarray,
    user: int,
    t0: float,
    rows: list[tuple],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    start = t0 + scenario.ramp_up_s * user / max(scenario.users, 1)
    end = t0 + scenario.ramp_up_s + scenario.duration_s
    clock = time.perf_counter
    await asyncio.sleep(max(0.0, start - clock()))
    intended = max(start, clock())
    for _ in range(scenario.requests_per_user):
        if intended >= end:
            break
        name = names[int(rng.choice(len(names), p=weights))] if len(names) > 1 else names[0]
        sent = clock()
        result = await host.predict(work.keys[name], work.next_input(name))
        done = clock()
        rows.append(
            (
                scenario.name,
                user,
                name,
                intended - t0,
                (done - intended) * 1000.0,
                (sent - intended) * 1000.0,
                result.success,
                "" if result.success else result.error,
                result.batch_size,
                result.cache_hit,
            )
        )
        intended = done + scenario.think_time_s(rng)
        await asyncio.sleep(max(0.0, intended - clock()))


def _windows(frame, window_s: float, scenario: str) -> list[dict[str, Any]]:
    out = []
    if frame.empty:
        return out
    start = frame["scheduled_s"].min()
    index = ((frame["scheduled_s"] - start) // window_s).astype(int)
    for w, part in frame.groupby(index):
        lat = part["latency_ms"].to_numpy()
        out.append(
            {
                "scenario": scenario,
                "window": int(w),
                "start_s": float(start + w * window_s),
                "requests": len(part),
                "p50_ms": float(np.percentile(lat, 50)),
                "p95_ms": float(np.percentile(lat, 95)),
                "p99_ms": float(np.percentile(lat, 99)),
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


async def run_scenario(
    host: EngineHost,
    work: _Workload,
    scenario: Scenario,
    profile: Profile,
    sampler: ResourceSampler,
    seed: int,
) -> tuple[list[tuple], dict[str, Any], list[dict[str, Any]]]:
    """Run one closed-loop scenario: (request rows, summary row, window rows)."""
    import pandas as pd

    names, weights = work.weights(scenario.behaviour)
    rows: list[tuple] = []
    first_sample = len(sampler.samples)
    t0 = time.perf_counter()
    users = [
        _user(host, work, scenario, names, weights, u, t0, rows, seed * 1000 + u)
        for u in range(scenario.users)
    ]
    limit = scenario.ramp_up_s + scenario.duration_s + 30.0
    # bounded: whatever completed is measured; a shortfall shows in `requests`
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*users), limit)
    sampler.sample()
    frame = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    measured = frame[frame["scheduled_s"] >= float(profile["warmup_s"])]
    windows = _windows(measured, float(profile["window_s"]), scenario.name)
    reasons = []
    n = len(measured)
    claimed = profile.percentiles_claimed
    for q in claimed:
        if n < min_samples_for(q):
            reasons.append(f"only {n} samples; p{q:g} needs {min_samples_for(q)}")
    unstable = _stability(
        windows, float(profile["stability_tolerance"]), float(profile.get("stability_floor_ms", 0))
    )
    if unstable:
        reasons.append(unstable)
    delay_p99 = float(np.percentile(measured["issue_delay_ms"], 99)) if n else float("nan")
    if n and delay_p99 > MAX_ISSUE_DELAY_MS:
        reasons.append(f"generator fell behind: issue delay p99 {delay_p99:.1f} ms")
    lat = measured["latency_ms"].to_numpy()
    span = float(measured["scheduled_s"].max() - measured["scheduled_s"].min()) if n > 1 else 0.0
    resources = sampler.samples[first_sample:]

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if n else float("nan")

    summary = {
        "scenario": scenario.name,
        "users": scenario.users,
        "requests": n,
        "succeeded": int(measured["success"].sum()),
        "error_rate": float(1.0 - measured["success"].mean()) if n else 1.0,
        "mean_ms": float(lat.mean()) if n else float("nan"),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "p99_valid": n >= min_samples_for(99),
        "throughput_rps": n / span if span > 0 else 0.0,
        "issue_delay_p99_ms": delay_p99,
        "mean_batch_size": float(measured["batch_size"][measured["batch_size"] > 0].mean())
        if n and (measured["batch_size"] > 0).any()
        else 0.0,
        "valid": not reasons,
        "invalid_reason": "; ".join(reasons),
        "peak_rss_mb": max((r[1] for r in resources), default=sampler.peak_rss_mb()),
        "mean_cpu_percent": float(np.mean([r[2] for r in resources])) if resources else 0.0,
        "pattern": scenario.pattern,
        "warmup_discarded": len(frame) - n,
    }
    return rows, summary, windows


REQUEST_COLUMNS = [
    "scenario",
    "user",
    "model",
    "scheduled_s",
    "latency_ms",
    "issue_delay_ms",
    "success",
    "error",
    "batch_size",
    "cache_hit",
]


# --------------------------------------------------------------------------- open loop
async def _open_loop(host, work, names, weights, rate, duration, warmup, seed, percentile):
    rng = np.random.default_rng(seed)
    count = int(rate * (duration + warmup) * 1.5) + 64
    choice = rng.choice(len(names), size=count, p=weights)
    keys = [work.keys[n] for n in names]
    inputs = [work.pools[n] for n in names]

    def send(i: int):
        m = choice[i % count]
        return host.predict(keys[m], inputs[m][(i * 7 + m) % POOL_SIZE])

    record = await run_open_loop(send, rate, duration, warmup_s=warmup, seed=seed)
    return summarize(record, percentile=percentile, max_issue_delay_ms=MAX_ISSUE_DELAY_MS)


async def _burst(host, work, names, weights, count: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(names), size=count, p=weights)
    started = time.perf_counter()
    futures = [host.predict(work.keys[names[m]], work.next_input(names[m])) for m in picks]
    results = await asyncio.wait_for(asyncio.gather(*futures), 60)
    elapsed = time.perf_counter() - started
    ok = sum(r.success for r in results)
    return {
        "requests": count,
        "succeeded": ok,
        "elapsed_s": elapsed,
        "throughput_rps": ok / elapsed if elapsed > 0 else 0.0,
    }


async def _concurrency_level(host, work, users: int, per_user: int, think_ms: float, seed: int):
    names, weights = work.weights({"quality_predictor": 0.6, "routing_classifier": 0.4})
    scenario = Scenario(
        f"concurrency_{users}", users, per_user, 0.0, 60.0, "constant", {"think_ms": think_ms}, {}
    )
    rows: list[tuple] = []
    t0 = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _user(host, work, scenario, names, weights, u, t0, rows, seed + u)
                for u in range(users)
            )
        ),
        120,
    )
    lat = np.array([r[4] for r in rows])
    ok = np.array([r[6] for r in rows])
    total = users * per_user
    return {
        "users": users,
        "requests": total,
        "completed": len(rows),
        "success_rate": float(ok.sum()) / total if total else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
    }


async def _cache_workload(host, work, cfg: dict, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    name = "routing_classifier" if "routing_classifier" in work.keys else work.names[0]
    distinct = int(cfg["distinct_inputs"])
    catalog = input_pool(work.run, work.info, name, distinct, seed + 99)
    ranks = np.arange(1, distinct + 1)
    p = 1.0 / ranks ** float(cfg["zipf_a"])
    picks = rng.choice(distinct, size=int(cfg["requests"]), p=p / p.sum())
    queue = list(picks)
    hits = 0
    done = 0
    failed = 0

    async def client() -> None:
        nonlocal hits, done, failed
        while queue:
            item = queue.pop()
            result = await host.predict(work.keys[name], catalog[item])
            done += 1
            hits += bool(result.cache_hit)
            failed += not result.success

    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(int(cfg["concurrency"])))), 120)
    return {
        "model": name,
        "requests": done,
        "distinct_inputs": distinct,
        "zipf_a": float(cfg["zipf_a"]),
        "hits": hits,
        "failed": failed,
        "hit_rate": hits / done if done else 0.0,
        "unique_in_workload": len(np.unique(picks)),
        "best_possible_hit_rate": 1.0 - len(np.unique(picks)) / len(picks),
        "definition": "engine cache hits / requests of this Zipf workload (other stages' "
        "requests excluded)",
    }


# --------------------------------------------------------------------------- the stage
def run_load(
    run_dir: str | Path,
    profile: Profile | str = "smoke",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the load stage; returns its summary (also written to stages/load/summary.json)."""
    return asyncio.run(_run_load(RunDir.of(run_dir), profile, progress or (lambda _: None)))


async def _run_load(run: RunDir, profile: Profile | str, say: Callable[[str], None]) -> dict:
    import pandas as pd

    from pipeline.targets import load_targets

    profile = load_profile(profile) if isinstance(profile, str) else profile
    targets = load_targets()
    p95_bound = targets["p95_latency_ms"].threshold
    p99_bound = targets["p99_latency_ms"].threshold
    info = run.model_info()
    keys = serving_keys(info)
    work = _Workload(run, info, keys, seed=11)
    null_keys = {n: f"{n}_null" for n in keys}
    config = HostConfig(models=(*keys.values(), *null_keys.values()))
    folder = run.stage(STAGE)
    started = time.perf_counter()
    host = EngineHost(run.models, config)
    await host.start()
    say(f"load: engine process {host.pid} serving {', '.join(keys.values())}")
    if host.load_errors:
        await host.stop()
        raise StageError(f"load: models failed to load in the engine process: {host.load_errors}")
    sampler = ResourceSampler(host.pid, interval_s=0.5)
    sampler.start()
    gc.collect()
    gc.freeze()
    summary: dict[str, Any] = {
        "profile": profile.name,
        "host": host_facts(),
        "engine_config": config.to_dict(),
        "targets": {"p95_bound_ms": p95_bound, "p99_bound_ms": p99_bound},
    }
    try:
        # calibration: the harness against null models
        null_work = work.with_keys(null_keys)
        names, weights = work.weights({"quality_predictor": 0.6, "routing_classifier": 0.4})
        calib = await _open_loop(
            host, null_work, names, weights, 200.0, float(profile["calibration_s"]), 0.2, 3, 50
        )
        summary["calibration"] = {
            "rate_rps": 200.0,
            "p50_ms": calib.p50_ms,
            "p99_ms": calib.p99_ms,
            "samples": calib.scheduled,
            "valid": calib.valid,
        }
        say(
            f"load: calibration (null model, 200 req/s): p50 {calib.p50_ms:.2f} ms, "
            f"p99 {calib.p99_ms:.2f} ms"
        )

        request_rows: list[tuple] = []
        scenario_rows, window_rows = [], []
        for i, scenario in enumerate(profile.scenarios):
            rows, row, windows = await run_scenario(host, work, scenario, profile, sampler, i)
            request_rows += rows
            scenario_rows.append(row)
            window_rows += windows
            verdict = "valid" if row["valid"] else "INVALID: " + row["invalid_reason"]
            say(
                f"load: {scenario.name}: {row['requests']} requests, {scenario.users} users, "
                f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, errors "
                f"{row['error_rate']:.2%} -> {verdict}"
            )

        cap_cfg = profile["capacity"]

        async def trial(rate: float):
            return await _open_loop(
                host,
                work,
                names,
                weights,
                rate,
                float(cap_cfg["trial_s"]),
                float(cap_cfg["warmup_s"]),
                int(rate),
                50,
            )

        capacity = await find_max_sustained_rate(
            trial,
            p99_bound_ms=p99_bound,
            start_rps=float(cap_cfg["start_rps"]),
            max_rps=float(cap_cfg["max_rps"]),
            refine_steps=int(cap_cfg["refine_steps"]),
            max_error_rate=0.01,
            require_valid=True,
            progress=lambda line: say(f"load: capacity {line.strip()}"),
        )
        best = capacity.best
        summary["capacity"] = {
            "max_sustained_rps": capacity.max_sustained_rps,
            "capped": capacity.capped,
            "p99_bound_ms": p99_bound,
            "max_error_rate": 0.01,
            "best_p99_ms": best.p99_ms if best else None,
            "best_samples": best.scheduled if best else 0,
            "trials": len(capacity.trials),
        }
        bursts = [
            await _burst(host, work, names, weights, int(profile["burst_requests"]), s)
            for s in range(3)
        ]
        peak = sorted(b["throughput_rps"] for b in bursts)[1]
        summary["peak"] = {
            "throughput_rps": peak,
            "bursts": bursts,
            "burst_requests": int(profile["burst_requests"]),
        }
        say(
            f"load: capacity {capacity.max_sustained_rps:.0f} req/s"
            f"{' (search cap reached)' if capacity.capped else ''}; peak burst {peak:.0f} req/s"
        )

        conc_cfg = profile["concurrency"]
        levels = []
        for users in conc_cfg["users"]:
            level = await _concurrency_level(
                host,
                work,
                int(users),
                int(conc_cfg["requests_per_user"]),
                float(conc_cfg["think_ms"]),
                100 + int(users),
            )
            level["passed"] = level["success_rate"] >= 0.95 and level["p95_ms"] <= p95_bound
            levels.append(level)
        passing = [lv["users"] for lv in levels if lv["passed"]]
        supported = max(passing, default=0)
        summary["concurrency"] = {
            "supported_users": supported,
            "levels_tested": [lv["users"] for lv in levels],
            "failed_levels": [lv["users"] for lv in levels if not lv["passed"]],
            "criterion": f"success >= 95% and p95 <= {p95_bound:g} ms",
        }
        say(
            f"load: concurrency: supported {supported} users "
            f"(levels {summary['concurrency']['levels_tested']})"
        )

        summary["cache"] = await _cache_workload(host, work, profile["cache"], 77)
        say(
            f"load: cache: hit rate {summary['cache']['hit_rate']:.1%} over "
            f"{summary['cache']['requests']} Zipf requests"
        )

        if profile.get("soak_s"):
            soak = await _open_loop(
                host,
                work,
                names,
                weights,
                max(50.0, min(500.0, capacity.max_sustained_rps / 2)),
                float(profile["soak_s"]),
                1.0,
                99,
                99,
            )
            summary["soak"] = soak.to_dict()

        stats = await host.stats()
        sampler.sample()
        pool = stats["engine"].get("memory_pool", {})
        summary["memory"] = {
            "peak_rss_mb": sampler.peak_rss_mb(),
            "pool_reuse_ratio": pool.get("reuse_ratio"),
            "pool_allocations": pool.get("allocations"),
            "definition": "peak RSS of the engine process (sampled every 0.5 s and after "
            "each scenario); reuse = pool buffer hits / allocations",
        }
        summary["engine_stats"] = stats["engine"]
        summary["models"] = stats["models"]
        summary["engine_init_s"] = stats["init_s"]
    finally:
        await sampler.stop()
        await host.stop()
        gc.unfreeze()

    requests = pd.DataFrame(request_rows, columns=REQUEST_COLUMNS)
    write_table(requests, folder / "requests.csv")
    write_table(window_rows, folder / "windows.csv")
    write_table(scenario_rows, folder / "scenarios.csv")
    write_table(capacity.trial_table(), folder / "capacity.csv")
    write_table(levels, folder / "concurrency.csv")
    write_table(
        [{"t_s": t, "rss_mb": r, "cpu_percent": c} for t, r, c in sampler.samples],
        folder / "resources.csv",
    )
    measured = requests[requests["scheduled_s"] >= float(profile["warmup_s"])]
    summary["overall"] = {
        "requests": len(measured),
        "success_rate": float(measured["success"].mean()) if len(measured) else 0.0,
        "mean_ms": float(measured["latency_ms"].mean()) if len(measured) else float("nan"),
        "p95_ms": float(np.percentile(measured["latency_ms"], 95)) if len(measured) else None,
        "p99_ms": float(np.percentile(measured["latency_ms"], 99)) if len(measured) else None,
    }
    summary["seconds"] = time.perf_counter() - started
    run.write_summary(STAGE, summary)
    say(f"load: done in {summary['seconds']:.1f} s")
    return summary
