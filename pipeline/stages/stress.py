"""Stress stage: the original plan's six stress tests against the engine in its own process.

Every test is bounded in request count and time, sends its traffic over loopback only, and
decides `survived` and `recovered` from its own measurements with the criterion written out
in the row's `detail` (never a constant). Recovery is measured (polled, bounded), not
assumed after a fixed pause.

1. memory_pressure: closed-loop users keep sending while the engine process holds growing
   ballast (+200 MB at smoke, +1 GB at scale 1, in steps), which is then freed; survived
   when >= 99% of the requests sent under pressure succeed (and the pressure was really
   applied: RSS grew by >= 90% of the ballast); recovered when the engine's RSS returns to
   within baseline + max(10% of the ballast, 50 MB).
2. cpu_saturation: 2 busy-loop processes per core (the plan said 4x cores; 2x already keeps
   every core busy and keeps a shared machine usable) while requests are sent with modest
   concurrency; survived when success >= 95% and p95 is within the p95 target; recovered
   when, after the busy processes are killed, a probe batch's p95 is back within 2x of the
   p95 before saturation (with 1 ms of slack for sub-millisecond timer noise).
3. queue_overflow: 1,000 requests sent in one burst at an engine with a bounded queue
   (max_queue_size 256), each with a 10 s bound; every request is accounted for as
   succeeded, rejected ("queue full") or failed, and lost = submitted - all three; survived
   when rejected > 0, lost == 0 and every accepted request succeeded; recovered when the
   queue drains and a follow-up batch of 50 requests all succeed.
4. rapid_scaling: closed-loop users at 1, 5, 15, 30, 50, 25, 10, 1; survived when success
   > 80% at every level (the plan's criterion); recovered when the last level-1 p95 is
   within 2x of the first level-1 p95 (1 ms slack; when it is not, the 1-user level is
   re-measured for a few seconds at most, and each extra round is a levels.csv row).
5. model_switching: 100+ sequential requests alternating between the models; survived when
   all succeed with mean latency < 100 ms (the plan's criterion); recovered when every
   response has its model's output size (quality 1, routing 4).
6. failure recovery, reported as two rows:
   pool_exhaustion: the engine's memory pool is exhausted from inside the engine process
   (1000x1000 float32 allocations until PoolExhaustedError, then the rest filled); survived
   when requests sent meanwhile all succeed on unpooled buffers (engine unpooled_batches
   grows); recovered when after the release a 1000x1000 pool allocation succeeds and
   requests are served from the pool again, all succeeding.
   reload_in_flight: the model is hot-reloaded with 25+ requests in flight and as many sent
   behind the reload (50+ in all); survived when none is lost and all succeed; recovered
   when the versions before, from the reload and after agree and the model serves again.

A row's counts (submitted, succeeded, rejected, lost, success_rate, p95_ms) are those of
the test's measured phase (named in `detail`); every phase is a row of levels.csv.

Outputs in `stages/stress/`: tests.csv, levels.csv, resources.csv (the engine process's
RSS and CPU over the whole stage) and summary.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.settings import EngineSettings
from pipeline.profiles import Profile, load_profile
from pipeline.stages.common import (
    RunDir,
    StageError,
    host_facts,
    input_pool,
    serving_keys,
    write_table,
)
from pipeline.stages.engine_host import EngineHost, HostConfig, HostResult, ResourceSampler

__all__ = [
    "LEVEL_COLUMNS",
    "TESTS",
    "TEST_COLUMNS",
    "StressContext",
    "TestResult",
    "cpu_saturation",
    "memory_pressure",
    "model_switching",
    "pool_exhaustion",
    "queue_overflow",
    "rapid_scaling",
    "reload_in_flight",
    "run_stress",
    "stress_context",
]

STAGE = "stress"
TEST_COLUMNS = (
    "test",
    "survived",
    "recovered",
    "submitted",
    "succeeded",
    "rejected",
    "lost",
    "success_rate",
    "p95_ms",
    "detail",
)
LEVEL_COLUMNS = (
    "test",
    "phase",
    "submitted",
    "succeeded",
    "rejected",
    "success_rate",
    "p50_ms",
    "p95_ms",
    "rss_mb",
)
REQUEST_TIMEOUT_S = 10.0
QUEUE_SIZE = 256  # the stress host's max_queue_size (queue_overflow relies on it)
FALLBACK_P95_MS = 115.0  # 100 ms + 15%, when pipeline.targets is unavailable
BUSY_PER_CORE = 2
SCALING_LEVELS = (1, 5, 15, 30, 50, 25, 10, 1)
POOL_ALLOC_SHAPE = (1000, 1000)  # the plan's pool-exhaustion allocation (float32)
INPUTS_PER_MODEL = 4096
SLACK_MS = 1.0  # absolute slack on "within 2x" latency criteria (sub-ms timer noise)
_MB = 2**20


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- records
@dataclass(slots=True)
class Outcome:
    """One request as the load generator saw it."""

    key: str
    phase: str
    ok: bool
    rejected: bool
    lost: bool
    error: str | None
    latency_ms: float
    output_size: int


@dataclass(frozen=True)
class Tally:
    submitted: int
    succeeded: int
    rejected: int
    failed: int  # failed other than rejected
    lost: int  # no answer within the bound
    success_rate: float
    p50_ms: float
    p95_ms: float
    mean_ms: float


def tally(outcomes: Iterable[Outcome]) -> Tally:
    outcomes = list(outcomes)
    ok = [o.latency_ms for o in outcomes if o.ok]
    succeeded = len(ok)
    rejected = sum(o.rejected for o in outcomes)
    lost = sum(o.lost for o in outcomes)
    n = len(outcomes)
    return Tally(
        submitted=n,
        succeeded=succeeded,
        rejected=rejected,
        failed=n - succeeded - rejected - lost,
        lost=lost,
        success_rate=succeeded / n if n else float("nan"),
        p50_ms=float(np.percentile(ok, 50)) if ok else float("nan"),
        p95_ms=float(np.percentile(ok, 95)) if ok else float("nan"),
        mean_ms=float(np.mean(ok)) if ok else float("nan"),
    )


@dataclass(frozen=True)
class Check:
    """One stated criterion and whether the measurement met it."""

    text: str
    ok: bool

    def __str__(self) -> str:
        return f"{self.text}: {'yes' if self.ok else 'NO'}"


@dataclass
class TestResult:
    """One stress test's verdict, the figures behind it and the criteria it used."""

    __test__ = False  # not a pytest class

    test: str
    survival: list[Check]
    recovery: list[Check]
    counts: Tally
    measured: str  # which phase the counts are from
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def survived(self) -> bool:
        return bool(self.survival) and all(c.ok for c in self.survival)

    @property
    def recovered(self) -> bool:
        return bool(self.recovery) and all(c.ok for c in self.recovery)

    @property
    def detail(self) -> str:
        return (
            f"counts: {self.measured}. survived: {'; '.join(map(str, self.survival))}. "
            f"recovered: {'; '.join(map(str, self.recovery))}"
        )

    def row(self) -> dict[str, Any]:
        c = self.counts
        return {
            "test": self.test,
            "survived": self.survived,
            "recovered": self.recovered,
            "submitted": int(c.submitted),
            "succeeded": int(c.succeeded),
            "rejected": int(c.rejected),
            "lost": int(c.lost),
            "success_rate": float(c.success_rate),
            "p95_ms": float(c.p95_ms),
            "detail": self.detail,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.row(),
            "failed": self.counts.failed,
            "p50_ms": self.counts.p50_ms,
            "mean_ms": self.counts.mean_ms,
            "measured": self.measured,
            "survival_criteria": [{"criterion": c.text, "met": c.ok} for c in self.survival],
            "recovery_criteria": [{"criterion": c.text, "met": c.ok} for c in self.recovery],
            "metrics": self.metrics,
        }


def _not_run(test: str, reason: str) -> TestResult:
    return TestResult(
        test,
        [Check(reason, False)],
        [Check("not measured", False)],
        tally([]),
        "none (the test did not complete)",
    )


# --------------------------------------------------------------------------- context
class _Feed:
    """Request inputs for one model; never repeats an input (no accidental cache hits)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.cursor = 0

    def next(self) -> np.ndarray:
        cycle, i = divmod(self.cursor, len(self.rows))
        self.cursor += 1
        row = self.rows[i]
        return row if cycle == 0 else row + np.float32(cycle * 1e-5)


@dataclass
class StressContext:
    """What a stress test needs: the hosted engine, its sampler, inputs and the settings."""

    host: EngineHost
    sampler: ResourceSampler
    keys: list[str]  # engine keys, e.g. ["quality_predictor_onnx", "routing_classifier_onnx"]
    feeds: dict[str, _Feed]
    output_sizes: dict[str, int]
    scale: float = 1.0
    p95_target_ms: float = FALLBACK_P95_MS
    p95_target_source: str = "fallback: 100 ms +15%"
    progress: Callable[[str], None] = _quiet
    levels: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def rss_mb(self) -> float:
        """The engine process's resident memory now."""
        return self.sampler.process.memory_info().rss / _MB

    def next_input(self, key: str) -> np.ndarray:
        return self.feeds[key].next()

    def say(self, line: str) -> None:
        self.progress(line)

    def level(self, test: str, phase: str, outcomes: Iterable[Outcome], rss_mb=None) -> Tally:
        """Tally one phase and add it to levels.csv."""
        t = tally(outcomes)
        self.levels.append(
            {
                "test": test,
                "phase": phase,
                "submitted": t.submitted,
                "succeeded": t.succeeded,
                "rejected": t.rejected,
                "success_rate": t.success_rate,
                "p50_ms": t.p50_ms,
                "p95_ms": t.p95_ms,
                "rss_mb": self.rss_mb() if rss_mb is None else rss_mb,
            }
        )
        return t

    def scaled(self, base: float, minimum: float) -> int:
        return int(max(minimum, round(base * self.scale)))


def _p95_target() -> tuple[float, str]:
    try:
        from pipeline.targets import load_targets

        targets = load_targets()
        target = targets["p95_latency_ms"]
        return float(target.threshold), f"p95_latency_ms in {targets.source}"
    except Exception as exc:  # module missing or unusable targets file
        return FALLBACK_P95_MS, f"fallback 100 ms +15% ({type(exc).__name__})"


@contextlib.asynccontextmanager
async def stress_context(
    run_dir: str | Path | RunDir,
    profile: Profile | str = "smoke",
    *,
    progress: Callable[[str], None] | None = None,
    sample_interval_s: float = 0.2,
    **host_settings: Any,
) -> AsyncIterator[StressContext]:
    """Start the engine process (HostConfig defaults, max_queue_size=QUEUE_SIZE, overridable
    with `host_settings`) and its sampler; always stops both."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.of(run_dir)
    profile = load_profile(profile) if isinstance(profile, str) else profile
    scale = float((profile.get("stress") or {}).get("scale", 1.0))
    info = run.model_info()
    names = serving_keys(info)
    keys = [names[n] for n in sorted(names)]
    feeds = {
        names[n]: _Feed(input_pool(run, info, n, INPUTS_PER_MODEL, seed=101 + i))
        for i, n in enumerate(sorted(names))
    }
    sizes = {names[n]: int(np.prod([int(d) for d in info[n]["output_shape"][1:]])) for n in names}
    engine = EngineSettings(**{"max_queue_size": QUEUE_SIZE, **host_settings})
    config = HostConfig(models=tuple(keys), engine=engine)
    host = EngineHost(run.models, config)
    target, source = _p95_target()
    await host.start()
    sampler = None
    ctx = None
    try:
        if host.load_errors:
            raise StageError(f"stress: models failed to load in the engine: {host.load_errors}")
        sampler = ResourceSampler(host.pid, interval_s=sample_interval_s)
        sampler.sample()
        sampler.start()
        ctx = StressContext(
            host=host,
            sampler=sampler,
            keys=keys,
            feeds=feeds,
            output_sizes=sizes,
            scale=scale,
            p95_target_ms=target,
            p95_target_source=source,
            progress=progress or _quiet,
        )
        yield ctx
    finally:
        if sampler is not None:
            await sampler.stop()
        code = await host.stop()
        if ctx is not None:
            ctx.exit_code = code


# --------------------------------------------------------------------------- traffic
def _outcome(key: str, phase: str, result: HostResult, latency_ms: float) -> Outcome:
    if result.success:
        size = 0 if result.output is None else int(result.output.size)
        return Outcome(key, phase, True, False, False, None, latency_ms, size)
    error = result.error or "failed"
    return Outcome(key, phase, False, error.startswith("queue full"), False, error, latency_ms, 0)


def _lost(key: str, phase: str, timeout_s: float) -> Outcome:
    return Outcome(
        key, phase, False, False, True, f"no answer within {timeout_s:g} s", float("nan"), 0
    )


async def _request(
    ctx: StressContext, key: str, phase: str, timeout_s: float = REQUEST_TIMEOUT_S
) -> Outcome:
    x = ctx.next_input(key)
    started = time.perf_counter()
    future = ctx.host.predict(key, x)
    try:
        result = await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        return _lost(key, phase, timeout_s)
    return _outcome(key, phase, result, (time.perf_counter() - started) * 1000.0)


async def _users(
    ctx: StressContext,
    users: int,
    per_user: int | None,
    phase: str | Callable[[], str],
    *,
    think_s: float = 0.0,
    stop: asyncio.Event | None = None,
    keys: Sequence[str] | None = None,
) -> list[Outcome]:
    """Closed-loop users: each sends a request, waits for it (and `think_s`), repeats;
    `per_user` requests each, or until `stop` is set. Models alternate per request."""
    keys = list(keys or ctx.keys)
    outcomes: list[Outcome] = []
    phase_of = phase if callable(phase) else (lambda: phase)

    async def user(u: int) -> None:
        i = 0
        while (per_user is None or i < per_user) and not (stop is not None and stop.is_set()):
            outcomes.append(await _request(ctx, keys[(u + i) % len(keys)], phase_of()))
            i += 1
            if think_s:
                await asyncio.sleep(think_s)

    await asyncio.gather(*(user(u) for u in range(users)))
    return outcomes


def _send_burst(
    ctx: StressContext, keys: Sequence[str]
) -> tuple[list[asyncio.Future], list[float], float]:
    """Send one request per key in a single write; returns futures, end times, start."""
    items = [(k, ctx.next_input(k)) for k in keys]
    ends = [float("nan")] * len(items)
    started = time.perf_counter()
    futures = ctx.host.predict_many(items)
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _f, i=i: ends.__setitem__(i, time.perf_counter()))
    return futures, ends, started


async def _collect(
    keys: Sequence[str],
    futures: list[asyncio.Future],
    ends: list[float],
    started: float,
    phase: str,
    deadline: float,
) -> list[Outcome]:
    """Wait (until `deadline`, perf_counter time) for a burst; unanswered requests are lost."""
    timeout = max(0.0, deadline - time.perf_counter())
    _, pending = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
    for future in pending:
        future.cancel()
    outcomes = []
    for key, future, end in zip(keys, futures, ends, strict=True):
        if future in pending or future.cancelled():
            outcomes.append(_lost(key, phase, deadline - started))
        else:
            outcomes.append(_outcome(key, phase, future.result(), (end - started) * 1000.0))
    return outcomes


async def _burst(
    ctx: StressContext, keys: Sequence[str], phase: str, timeout_s: float = REQUEST_TIMEOUT_S
) -> list[Outcome]:
    futures, ends, started = _send_burst(ctx, keys)
    return await _collect(keys, futures, ends, started, phase, started + timeout_s)


def _alternating(ctx: StressContext, n: int) -> list[str]:
    return [ctx.keys[i % len(ctx.keys)] for i in range(n)]


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.1%}"


def _ms(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f} ms"


def _within_2x(value: float, reference: float) -> tuple[bool, float]:
    bound = max(2.0 * reference, reference + SLACK_MS)
    return bool(math.isfinite(value) and math.isfinite(bound) and value <= bound), bound


def _lost_check(outcomes: Sequence[Outcome], where: str = "any phase") -> Check:
    lost = sum(o.lost for o in outcomes)
    return Check(f"lost {lost} requests in {where} (criterion 0)", lost == 0)


# --------------------------------------------------------------------------- the tests
async def memory_pressure(ctx: StressContext) -> TestResult:
    """Grow ballast in the engine process while closed-loop users keep sending; free it."""
    name = "memory_pressure"
    bound_mb = ctx.scaled(1000, 200)
    steps = max(2, min(5, bound_mb // 50))  # steps of >= 40 MB: mmapped, returned on free
    sizes = [round(bound_mb * (i + 1) / steps) for i in range(steps)]
    hold_s = max(0.5, 1.5 * ctx.scale)
    allowance = max(0.1 * bound_mb, 50.0)
    users, think_s = 3, 0.005
    state = {"phase": "baseline"}
    stop = asyncio.Event()
    traffic = asyncio.ensure_future(
        _users(ctx, users, None, lambda: state["phase"], think_s=think_s, stop=stop)
    )
    rss: dict[str, float] = {}
    try:
        await asyncio.sleep(hold_s)
        baseline = rss["baseline"] = ctx.rss_mb()
        ballast_held = 0.0
        for mb in sizes:
            state["phase"] = f"ballast {mb} MB"
            ballast_held = (await ctx.host.ballast(mb))["ballast_mb"]
            await asyncio.sleep(hold_s)
            rss[state["phase"]] = ctx.rss_mb()
        peak = max(rss.values())
        state["phase"] = "freed"
        await ctx.host.ballast(0)
        freed_at = time.perf_counter()
        after = ctx.rss_mb()
        limit = baseline + allowance
        deadline = freed_at + max(5.0, 10.0 * ctx.scale)
        while after > limit and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            after = ctx.rss_mb()
        recovery_s = time.perf_counter() - freed_at
        await asyncio.sleep(min(hold_s, 0.5))  # traffic after the release too
        rss["freed"] = ctx.rss_mb()
    finally:
        stop.set()
        outcomes = await asyncio.wait_for(traffic, REQUEST_TIMEOUT_S + 5)
        with contextlib.suppress(Exception):
            await ctx.host.ballast(0)
    phases = ["baseline", *(f"ballast {mb} MB" for mb in sizes), "freed"]
    for phase in phases:
        ctx.level(name, phase, [o for o in outcomes if o.phase == phase], rss.get(phase))
    pressure = [o for o in outcomes if o.phase.startswith("ballast")]
    under = tally(pressure)
    freed = tally([o for o in outcomes if o.phase == "freed"])
    grew = peak - baseline
    survival = [
        Check(
            f"{under.succeeded}/{under.submitted} requests under pressure succeeded "
            f"({_pct(under.success_rate)}; criterion >= 99%)",
            under.submitted > 0 and under.success_rate >= 0.99,
        ),
        Check(
            f"pressure applied: engine RSS grew {grew:.0f} MB with {ballast_held:.0f} MB "
            f"ballast (criterion >= 90% of {bound_mb} MB)",
            grew >= 0.9 * bound_mb,
        ),
        _lost_check(outcomes),
    ]
    recovery = [
        Check(
            f"engine RSS {after:.1f} MB {recovery_s:.2f} s after freeing (criterion <= "
            f"{limit:.1f} MB = baseline {baseline:.1f} + max(10% of ballast, 50 MB))",
            after <= limit,
        ),
        Check(
            f"{freed.succeeded}/{freed.submitted} requests after freeing succeeded (criterion all)",
            freed.submitted > 0 and freed.succeeded == freed.submitted,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        under,
        f"requests sent while the ballast was held ({users} closed-loop users)",
        {
            "ballast_mb": bound_mb,
            "steps_mb": sizes,
            "hold_s": hold_s,
            "baseline_rss_mb": baseline,
            "peak_rss_mb": peak,
            "rss_after_free_mb": after,
            "recovery_s": recovery_s,
            "rss_limit_mb": limit,
        },
    )
    ctx.say(
        f"stress: {name}: +{bound_mb} MB in {steps} steps, RSS {baseline:.0f} -> "
        f"{peak:.0f} -> {after:.0f} MB, success {_pct(under.success_rate)} -> "
        f"{_verdict(result)}"
    )
    return result


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _start_busy(count: int, bound_s: float) -> list[subprocess.Popen]:
    """Busy-loop processes that also end by themselves after `bound_s` (no orphans)."""
    code = (
        f"import time\nend = time.monotonic() + {bound_s:.1f}\nwhile time.monotonic() < end:\n pass"
    )
    procs = []
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", code],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    except BaseException:
        _stop_busy(procs)
        raise
    return procs


def _stop_busy(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _cpu_seconds(procs: Sequence[subprocess.Popen]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
    return total


async def cpu_saturation(ctx: StressContext) -> TestResult:
    """Requests while busy-loop processes saturate every core; recovery after they stop."""
    name = "cpu_saturation"
    cores = _cores()
    n_busy = cores * BUSY_PER_CORE
    n = ctx.scaled(200, 100)
    n_probe = ctx.scaled(100, 60)
    users = 4
    before = await _users(ctx, users, math.ceil(n_probe / users), "before")
    pre = ctx.level(name, "before", before)
    bound_s = 60.0 + 120.0 * ctx.scale
    busy = _start_busy(n_busy, bound_s)
    try:
        # wait (bounded) until every busy process is running its loop
        started = time.perf_counter()
        while time.perf_counter() - started < 5.0 and _cpu_seconds(busy) < 0.05 * n_busy:
            await asyncio.sleep(0.05)
        cpu0, t0 = _cpu_seconds(busy), time.perf_counter()
        under_load = await _users(ctx, users, math.ceil(n / users), "saturated")
        busy_cores = (_cpu_seconds(busy) - cpu0) / max(time.perf_counter() - t0, 1e-9)
        alive = sum(p.poll() is None for p in busy)
        sat = ctx.level(name, "saturated", under_load)
    finally:
        _stop_busy(busy)
    leftover = sum(p.poll() is None for p in busy)
    # recovery: probe batches until p95 is back within 2x of before (bounded)
    ok, bound = False, float("nan")
    rounds, after_outcomes = 0, []
    stopped_at = time.perf_counter()
    deadline = stopped_at + max(5.0, 10.0 * ctx.scale)
    post = tally([])
    while True:
        rounds += 1
        batch = await _users(ctx, users, math.ceil(n_probe / users), "after")
        after_outcomes += batch
        post = tally(batch)
        ok, bound = _within_2x(post.p95_ms, pre.p95_ms)
        ok = ok and post.succeeded == post.submitted
        if ok or time.perf_counter() >= deadline:
            break
    recovery_s = time.perf_counter() - stopped_at
    ctx.level(name, "after", after_outcomes[-len(batch) :])
    survival = [
        Check(
            f"{sat.succeeded}/{sat.submitted} requests under {n_busy} busy processes "
            f"succeeded ({_pct(sat.success_rate)}; criterion >= 95%)",
            sat.submitted > 0 and sat.success_rate >= 0.95,
        ),
        Check(
            f"p95 under saturation {_ms(sat.p95_ms)} (criterion <= p95 target "
            f"{ctx.p95_target_ms:g} ms, {ctx.p95_target_source})",
            math.isfinite(sat.p95_ms) and sat.p95_ms <= ctx.p95_target_ms,
        ),
        Check(
            f"saturation held: {alive}/{n_busy} busy processes ({BUSY_PER_CORE} per core on "
            f"{cores} cores) ran throughout, using {busy_cores:.2f} cores",
            alive == n_busy,
        ),
        _lost_check([*before, *under_load, *after_outcomes]),
    ]
    recovery = [
        Check(
            f"busy processes stopped ({leftover} left running; criterion 0)",
            leftover == 0,
        ),
        Check(
            f"probe p95 {_ms(post.p95_ms)} after {rounds} round(s), {recovery_s:.2f} s "
            f"(criterion <= {_ms(bound)} = max(2x, +{SLACK_MS:g} ms) of p95 before "
            f"{_ms(pre.p95_ms)}, all {post.submitted} succeeded)",
            ok,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        sat,
        f"{sat.submitted} requests ({users} closed-loop users) under {n_busy} busy processes",
        {
            "cores": cores,
            "busy_processes": n_busy,
            "busy_cores_used": busy_cores,
            "p95_before_ms": pre.p95_ms,
            "p95_saturated_ms": sat.p95_ms,
            "p95_after_ms": post.p95_ms,
            "recovery_rounds": rounds,
            "recovery_s": recovery_s,
            "p95_target_ms": ctx.p95_target_ms,
        },
    )
    ctx.say(
        f"stress: {name}: {sat.submitted} requests under {n_busy} busy processes: success "
        f"{_pct(sat.success_rate)}, p95 {_ms(sat.p95_ms)} (before {_ms(pre.p95_ms)}, after "
        f"{_ms(post.p95_ms)}) -> {_verdict(result)}"
    )
    return result


async def _queue_depth(ctx: StressContext) -> int:
    return int((await ctx.host.stats())["engine"]["queue_depth"])


async def queue_overflow(
    ctx: StressContext,
    requests: int = 1000,
    timeout_s: float = REQUEST_TIMEOUT_S,
    followup: int = 50,
) -> TestResult:
    """`requests` requests in one burst at the bounded queue; every one accounted for."""
    name = "queue_overflow"
    stats0 = (await ctx.host.stats())["engine"]
    max_queue = int(stats0["max_queue_size"])
    keys = _alternating(ctx, requests)
    outcomes = await _burst(ctx, keys, "burst", timeout_s)
    burst = ctx.level(name, "burst", outcomes)
    stats1 = (await ctx.host.stats())["engine"]
    engine_rejected = int(stats1["rejected"]) - int(stats0["rejected"])
    accepted = burst.submitted - burst.rejected - burst.lost
    # recovery: the queue drains (bounded poll), then a follow-up batch all succeeds
    drained_at = time.perf_counter()
    depth = await _queue_depth(ctx)
    while depth > 0 and time.perf_counter() - drained_at < 5.0:
        await asyncio.sleep(0.05)
        depth = await _queue_depth(ctx)
    follow = await _burst(ctx, _alternating(ctx, followup), "follow-up", timeout_s)
    after = ctx.level(name, "follow-up", follow)
    accounted = burst.succeeded + burst.rejected + burst.failed
    survival = [
        Check(
            f"{burst.rejected} of {requests} rejected with 'queue full' at max_queue_size "
            f"{max_queue} (criterion > 0: the queue is bounded)",
            burst.rejected > 0,
        ),
        Check(
            f"accounting: succeeded {burst.succeeded} + rejected {burst.rejected} + failed "
            f"{burst.failed} = {accounted}, submitted {burst.submitted}, lost "
            f"{burst.lost} within {timeout_s:g} s (criterion lost 0)",
            burst.lost == 0 and accounted == burst.submitted,
        ),
        Check(
            f"{burst.succeeded}/{accepted} accepted requests succeeded (criterion all)",
            burst.failed == 0 and burst.succeeded == accepted,
        ),
        Check(
            f"engine counted {engine_rejected} rejections (criterion = client count "
            f"{burst.rejected})",
            engine_rejected == burst.rejected,
        ),
    ]
    recovery = [
        Check(f"engine queue depth {depth} after the burst (criterion 0)", depth == 0),
        Check(
            f"{after.succeeded}/{after.submitted} follow-up requests succeeded (criterion all)",
            after.submitted == followup and after.succeeded == followup,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        burst,
        f"{requests} requests sent in one burst, {timeout_s:g} s bound each",
        {
            "max_queue_size": max_queue,
            "accepted": accepted,
            "failed_other": burst.failed,
            "engine_rejected": engine_rejected,
            "followup": followup,
            "errors": sorted({o.error for o in outcomes if o.error and not o.rejected})[:5],
        },
    )
    ctx.say(
        f"stress: {name}: {requests} at once, queue {max_queue}: {burst.succeeded} succeeded, "
        f"{burst.rejected} rejected, {burst.failed} failed, {burst.lost} lost; follow-up "
        f"{after.succeeded}/{after.submitted} -> {_verdict(result)}"
    )
    return result


async def rapid_scaling(ctx: StressContext, levels: Sequence[int] = SCALING_LEVELS) -> TestResult:
    """Closed-loop users stepping through `levels`; success and p95 per level."""
    name = "rapid_scaling"
    per_user = ctx.scaled(10, 3)
    min_per_level = 20  # so a level-1 p95 has some samples
    all_outcomes: list[Outcome] = []
    per_level: list[tuple[str, Tally]] = []
    for i, users in enumerate(levels):
        count = max(per_user, math.ceil(min_per_level / users))
        phase = f"step {i + 1}: {users} users"
        outcomes = await _users(ctx, users, count, phase)
        all_outcomes += outcomes
        per_level.append((phase, ctx.level(name, phase, outcomes)))
    whole = tally(all_outcomes)
    worst_phase, worst = min(per_level, key=lambda p: p[1].success_rate)
    ones = [t for (phase, t), users in zip(per_level, levels, strict=True) if users == 1]
    extra_outcomes: list[Outcome] = []
    first, last = (ones[0], ones[-1]) if len(ones) >= 2 else (None, None)
    survival = [
        Check(
            f"lowest success {_pct(worst.success_rate)} at {worst_phase} (criterion > 80% at "
            "every level)",
            all(t.submitted > 0 and t.success_rate > 0.8 for _, t in per_level),
        ),
        _lost_check(all_outcomes),
    ]
    rounds = 0
    if first is not None:
        # recovery is measured: the 1-user level is repeated (bounded) until it meets the bar
        ok, bound = _within_2x(last.p95_ms, first.p95_ms)
        final, settled_at = last, time.perf_counter()
        deadline = settled_at + max(3.0, 5.0 * ctx.scale)
        while not ok and time.perf_counter() < deadline:
            rounds += 1
            count = max(per_user, min_per_level)
            again = await _users(ctx, 1, count, f"1 user again ({rounds})")
            extra_outcomes += again
            final = ctx.level(name, f"1 user again ({rounds})", again)
            ok, bound = _within_2x(final.p95_ms, first.p95_ms)
        recovery = [
            Check(
                f"final 1-user p95 {_ms(final.p95_ms)} after {rounds} extra round(s) "
                f"(criterion <= {_ms(bound)} = max(2x, +{SLACK_MS:g} ms) of the first 1-user "
                f"p95 {_ms(first.p95_ms)}, re-measured for at most "
                f"{max(3.0, 5.0 * ctx.scale):g} s)",
                ok,
            ),
            _lost_check(extra_outcomes, "the extra rounds"),
        ]
    else:
        recovery = [Check("levels do not start and end at 1 user: not measured", False)]
    p95s = ", ".join(f"{u}: {_ms(t.p95_ms)}" for u, (_, t) in zip(levels, per_level, strict=True))
    result = TestResult(
        name,
        survival,
        recovery,
        whole,
        f"all levels {list(levels)} users x >= {per_user} requests each (p95 per level: {p95s})",
        {
            "levels": list(levels),
            "requests_per_user": per_user,
            "success_by_level": [t.success_rate for _, t in per_level],
            "p95_by_level_ms": [t.p95_ms for _, t in per_level],
            "extra_single_user_rounds": rounds,
        },
    )
    ctx.say(
        f"stress: {name}: {whole.submitted} requests over levels {list(levels)}: lowest "
        f"success {_pct(worst.success_rate)}, p95 per level {p95s} -> {_verdict(result)}"
    )
    return result


async def model_switching(ctx: StressContext) -> TestResult:
    """Sequential requests alternating between the models."""
    name = "model_switching"
    n = ctx.scaled(100, 100)
    outcomes = []
    for key in _alternating(ctx, n):
        outcomes.append(await _request(ctx, key, "alternating"))
    t = ctx.level(name, "alternating", outcomes)
    wrong = [o for o in outcomes if o.ok and o.output_size != ctx.output_sizes[o.key]]
    sizes = ", ".join(f"{k} [{v}]" for k, v in ctx.output_sizes.items())
    survival = [
        Check(
            f"{t.succeeded}/{t.submitted} succeeded (criterion all)",
            t.submitted == n and t.succeeded == n,
        ),
        Check(f"mean latency {_ms(t.mean_ms)} (criterion < 100 ms)", t.mean_ms < 100.0),
        _lost_check(outcomes),
    ]
    recovery = [
        Check(
            f"{t.succeeded - len(wrong)}/{t.succeeded} responses had their model's output "
            f"size ({sizes}; criterion all, and every request answered)",
            not wrong and t.succeeded == n,
        )
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t,
        f"{n} sequential requests alternating between {len(ctx.keys)} models",
        {"requests": n, "wrong_model_outputs": len(wrong), "mean_ms": t.mean_ms},
    )
    ctx.say(
        f"stress: {name}: {n} alternating requests: {t.succeeded} succeeded, mean "
        f"{_ms(t.mean_ms)}, {len(wrong)} wrong outputs -> {_verdict(result)}"
    )
    return result


async def pool_exhaustion(ctx: StressContext) -> TestResult:
    """Exhaust the engine's memory pool from inside the engine process, serve, release."""
    name = "pool_exhaustion"
    n = ctx.scaled(100, 50)
    users = 5
    alloc_mb = POOL_ALLOC_SHAPE[0] * POOL_ALLOC_SHAPE[1] * 4 / _MB
    attempts = max(100, math.ceil(ctx.host.config.engine.pool_mb / alloc_mb) + 5)
    stats0 = (await ctx.host.stats())["engine"]
    held: dict[str, Any] = {}
    released: dict[str, Any] = {}
    try:
        held = await ctx.host.pool(
            "exhaust", shape=list(POOL_ALLOC_SHAPE), count=attempts, fill=True
        )
        during = await _users(ctx, users, math.ceil(n / users), "exhausted")
        stats1 = (await ctx.host.stats())["engine"]
    finally:
        released = await ctx.host.pool("release")
    probe = await ctx.host.pool("probe", shape=list(POOL_ALLOC_SHAPE))
    after = await _users(ctx, users, math.ceil(n / users), "released")
    stats2 = (await ctx.host.stats())["engine"]
    t_during = ctx.level(name, "exhausted", during)
    t_after = ctx.level(name, "released", after)
    unpooled_during = int(stats1["unpooled_batches"]) - int(stats0["unpooled_batches"])
    unpooled_after = int(stats2["unpooled_batches"]) - int(stats1["unpooled_batches"])
    pooled_after = int(stats2["memory_pool"]["allocations"]) - int(
        stats1["memory_pool"]["allocations"]
    )
    allocated, failed = int(held.get("allocated", 0)), int(held.get("failed", 0))
    survival = [
        Check(
            f"pool exhausted: {allocated} of {attempts} allocations of "
            f"{POOL_ALLOC_SHAPE[0]}x{POOL_ALLOC_SHAPE[1]} float32 succeeded, {failed} raised "
            f"PoolExhaustedError, {held.get('filled_bytes', 0)} bytes left filled "
            "(criterion >= 1 failure)",
            failed > 0,
        ),
        Check(
            f"{t_during.succeeded}/{t_during.submitted} requests during exhaustion succeeded "
            "(criterion all)",
            t_during.submitted > 0 and t_during.succeeded == t_during.submitted,
        ),
        Check(
            f"engine served them from unpooled buffers: unpooled_batches +{unpooled_during} "
            "(criterion > 0)",
            unpooled_during > 0,
        ),
        _lost_check([*during, *after]),
    ]
    recovery = [
        Check(
            f"released {released.get('released', 0)} held buffers (criterion all "
            f"{int(held.get('held', 0))})",
            int(released.get("released", -1)) == int(held.get("held", 0))
            and released.get("held") == 0,
        ),
        Check(
            f"a {POOL_ALLOC_SHAPE[0]}x{POOL_ALLOC_SHAPE[1]} pool allocation after release "
            f"{'succeeded' if probe.get('ok') else 'failed: ' + str(probe.get('error'))}",
            bool(probe.get("ok")),
        ),
        Check(
            f"{t_after.succeeded}/{t_after.submitted} requests after release succeeded from "
            f"the pool (unpooled_batches +{unpooled_after}, pool allocations +{pooled_after}; "
            "criterion all succeed, no unpooled batch)",
            t_after.submitted > 0
            and t_after.succeeded == t_after.submitted
            and unpooled_after == 0
            and pooled_after > 0,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t_during,
        f"{t_during.submitted} requests ({users} closed-loop users) while the pool was exhausted",
        {
            "pool_mb": ctx.host.config.engine.pool_mb,
            "allocation_attempts": attempts,
            "allocated": allocated,
            "allocation_failures": failed,
            "filled_bytes": held.get("filled_bytes", 0),
            "unpooled_batches_during": unpooled_during,
            "unpooled_batches_after": unpooled_after,
            "probe_after_release_ok": bool(probe.get("ok")),
        },
    )
    ctx.say(
        f"stress: {name}: {allocated} allocations then {failed} failures; "
        f"{t_during.succeeded}/{t_during.submitted} requests served unpooled "
        f"(+{unpooled_during} batches); after release probe "
        f"{'ok' if probe.get('ok') else 'FAILED'}, {t_after.succeeded}/{t_after.submitted} "
        f"-> {_verdict(result)}"
    )
    return result


async def reload_in_flight(ctx: StressContext, key: str | None = None) -> TestResult:
    """Hot-reload a model while requests for it are in flight."""
    name = "reload_in_flight"
    key = key or ctx.keys[0]
    n = ctx.scaled(100, 50)
    models0 = (await ctx.host.stats())["models"][key]
    first = [key] * (n // 2)
    second = [key] * (n - n // 2)
    f1, e1, s1 = _send_burst(ctx, first)
    reload_started = time.perf_counter()
    reload_task = asyncio.ensure_future(ctx.host.reload(key))
    await asyncio.sleep(0)  # the reload request goes out now, behind the first half
    in_flight = sum(not f.done() for f in f1)
    f2, e2, s2 = _send_burst(ctx, second)  # sent while the reload runs
    reply: dict[str, Any] = {}
    try:
        reply = await asyncio.wait_for(reload_task, 60)
    finally:
        reload_s = time.perf_counter() - reload_started
        deadline = time.perf_counter() + REQUEST_TIMEOUT_S
        outcomes = await _collect(first, f1, e1, s1, "around reload", deadline)
        outcomes += await _collect(second, f2, e2, s2, "around reload", deadline)
    t = ctx.level(name, "around reload", outcomes)
    models1 = (await ctx.host.stats())["models"][key]
    post = await _users(ctx, 2, 10, "after reload", keys=[key])
    t_post = ctx.level(name, "after reload", post)
    versions = [models0.get("version"), reply.get("version"), models1.get("version")]
    survival = [
        Check(
            f"reload {'succeeded' if reply.get('ok') else 'failed'} in {reload_s:.3f} s "
            f"({reply.get('error') or 'no error'})",
            bool(reply.get("ok")),
        ),
        Check(
            f"{in_flight} requests in flight when the reload was sent, {len(second)} more sent "
            "behind it (criterion >= 10 in flight)",
            in_flight >= 10,
        ),
        Check(
            f"{t.succeeded}/{t.submitted} succeeded, {t.lost} lost (criterion all succeed, "
            "none lost)",
            t.submitted == n and t.succeeded == n and t.lost == 0,
        ),
        Check(
            f"{sum(o.ok and o.output_size == ctx.output_sizes[key] for o in outcomes)}/"
            f"{t.succeeded} outputs of size {ctx.output_sizes[key]} (criterion all)",
            all(o.output_size == ctx.output_sizes[key] for o in outcomes if o.ok),
        ),
    ]
    recovery = [
        Check(
            f"versions before/reload/after {versions} (criterion all equal)",
            None not in versions and len(set(versions)) == 1,
        ),
        Check(
            f"model loaded after reload ({models1.get('loaded')}) and "
            f"{t_post.succeeded}/{t_post.submitted} requests after it succeeded "
            "(criterion all)",
            bool(models1.get("loaded"))
            and t_post.submitted > 0
            and t_post.succeeded == t_post.submitted,
        ),
    ]
    result = TestResult(
        name,
        survival,
        recovery,
        t,
        f"{n} requests for {key} sent around a hot reload",
        {
            "model": key,
            "in_flight_at_reload": in_flight,
            "reload_s": reload_s,
            "versions": versions,
            "sha256_before": models0.get("sha256"),
            "sha256_after": models1.get("sha256"),
        },
    )
    ctx.say(
        f"stress: {name}: reload of {key} with {in_flight} in flight: {t.succeeded}/"
        f"{t.submitted} succeeded, {t.lost} lost, versions {versions} -> {_verdict(result)}"
    )
    return result


def _verdict(result: TestResult) -> str:
    return (
        f"{'survived' if result.survived else 'NOT survived'}, "
        f"{'recovered' if result.recovered else 'NOT recovered'}"
    )


TESTS: tuple[tuple[str, Callable[[StressContext], Awaitable[TestResult]]], ...] = (
    ("memory_pressure", memory_pressure),
    ("cpu_saturation", cpu_saturation),
    ("queue_overflow", queue_overflow),
    ("rapid_scaling", rapid_scaling),
    ("model_switching", model_switching),
    ("pool_exhaustion", pool_exhaustion),
    ("reload_in_flight", reload_in_flight),
)


# --------------------------------------------------------------------------- the stage
def run_stress(
    run_dir: str | Path,
    profile: Profile | str = "smoke",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the stress stage; returns its summary (also written to stages/stress/summary.json)."""
    return asyncio.run(_run_stress(RunDir.of(run_dir), profile, progress or _quiet))


async def _run_stress(run: RunDir, profile: Profile | str, say: Callable[[str], None]) -> dict:
    profile = load_profile(profile) if isinstance(profile, str) else profile
    folder = run.stage(STAGE)
    started = time.perf_counter()
    results: list[TestResult] = []
    engine_stats: dict[str, Any] = {}
    async with stress_context(run, profile, progress=say) as ctx:
        say(
            f"stress: engine process {ctx.host.pid} serving {', '.join(ctx.keys)} "
            f"(scale {ctx.scale:g}, max_queue_size {ctx.host.config.engine.max_queue_size})"
        )
        bound_s = 60.0 + 120.0 * ctx.scale
        for name, test in TESTS:
            code = ctx.host.process.poll()
            if code is not None:
                result = _not_run(name, f"not run: the engine process exited (code {code})")
            else:
                try:
                    result = await asyncio.wait_for(test(ctx), bound_s)
                except TimeoutError:
                    result = _not_run(name, f"did not finish within {bound_s:g} s")
                except Exception as exc:
                    result = _not_run(name, f"error: {type(exc).__name__}: {exc}")
                if result.measured.startswith("none"):
                    say(f"stress: {name}: {result.detail}")
            results.append(result)
        with contextlib.suppress(Exception):
            engine_stats = (await asyncio.wait_for(ctx.host.stats(), 10))["engine"]
        samples = list(ctx.sampler.samples)
        pid = ctx.host.pid
        config = ctx.host.config
        scale, target, source = ctx.scale, ctx.p95_target_ms, ctx.p95_target_source
        levels = list(ctx.levels)
        sampler = ctx.sampler
    wall_s = time.perf_counter() - started

    rows = [r.row() for r in results]
    write_table(_frame(rows, TEST_COLUMNS), folder / "tests.csv")
    write_table(_frame(levels, LEVEL_COLUMNS), folder / "levels.csv")
    write_table(
        _frame(
            [{"t": t, "rss_mb": m, "cpu_percent": c} for t, m, c in samples],
            ("t", "rss_mb", "cpu_percent"),
        ),
        folder / "resources.csv",
    )
    summary: dict[str, Any] = {
        "stage": STAGE,
        "profile": profile.name,
        "scale": scale,
        "host": host_facts(),
        "engine_config": config.to_dict(),
        "engine_pid": pid,
        "engine_exit_code": ctx.exit_code,
        "engine_peak_rss_mb": sampler.peak_rss_mb(),
        "engine_mean_cpu_percent": sampler.mean_cpu_percent(),
        "engine_stats": {k: v for k, v in engine_stats.items() if not isinstance(v, dict)},
        "p95_target_ms": target,
        "p95_target_source": source,
        "tests": {r.test: r.to_dict() for r in results},
        "survived": sum(r.survived for r in results),
        "recovered": sum(r.recovered for r in results),
        "total": len(results),
        "all_survived": all(r.survived for r in results),
        "all_recovered": all(r.recovered for r in results),
        "lost": sum(r.counts.lost for r in results),
        "wall_s": wall_s,
        "tables": {
            "tests": "stages/stress/tests.csv",
            "levels": "stages/stress/levels.csv",
            "resources": "stages/stress/resources.csv",
        },
    }
    run.write_summary(STAGE, summary)
    say(
        f"stress: {summary['survived']}/{len(results)} survived, {summary['recovered']}/"
        f"{len(results)} recovered in {wall_s:.1f} s"
    )
    return summary


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))
