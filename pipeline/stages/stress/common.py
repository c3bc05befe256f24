"""What every stress test shares: the hosted engine and its sampler (`StressContext`),
the request records and tallies, closed-loop users and bursts over loopback, and the
criteria helpers (`Check`, "within 2x"). Each test is a module of this package."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.settings import EngineSettings
from pipeline.loadgen import percentiles, run_users
from pipeline.profiles import Profile
from pipeline.stages.common import ModelDefect, RunDir, input_pool, serving_keys
from pipeline.stages.context import StageContext
from pipeline.stages.engine_host import EngineHost, HostConfig, HostResult, ResourceSampler
from pipeline.stages.inputs import output_size

__all__ = [
    "LEVEL_COLUMNS",
    "TEST_COLUMNS",
    "Check",
    "Outcome",
    "StressContext",
    "Tally",
    "TestResult",
    "stress_context",
    "tally",
]

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
    ok = percentiles([o.latency_ms for o in outcomes if o.ok])
    rejected = sum(o.rejected for o in outcomes)
    lost = sum(o.lost for o in outcomes)
    n = len(outcomes)
    return Tally(
        submitted=n,
        succeeded=ok.count,
        rejected=rejected,
        failed=n - ok.count - rejected - lost,
        lost=lost,
        success_rate=ok.count / n if n else float("nan"),
        p50_ms=ok.p50_ms,
        p95_ms=ok.p95_ms,
        mean_ms=ok.mean_ms,
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

    def __init__(self, rows: np.ndarray | list[dict[str, np.ndarray]]) -> None:
        self.rows = rows
        self.cursor = 0

    def next(self) -> Any:
        cycle, i = divmod(self.cursor, len(self.rows))
        self.cursor += 1
        row = self.rows[i]
        if cycle == 0:
            return row
        if isinstance(row, dict):  # named tensors: nudge the float inputs
            return {
                n: a + a.dtype.type(cycle * 1e-5) if a.dtype.kind == "f" else a
                for n, a in row.items()
            }
        return row + np.float32(cycle * 1e-5)


@dataclass
class StressContext:
    """What a stress test needs: the hosted engine, its sampler, inputs and the settings."""

    host: EngineHost
    sampler: ResourceSampler
    keys: list[str]  # engine keys, e.g. ["quality_predictor_onnx", "routing_classifier_onnx"]
    feeds: dict[str, _Feed]
    output_sizes: dict[str, int | None]  # values per answer (None: it depends on the input)
    p95_target_ms: float  # the run's p95 threshold (its effective targets)
    p95_target_source: str
    scale: float = 1.0
    progress: Callable[[str], None] = _quiet
    levels: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def rss_mb(self) -> float:
        """The engine process's resident memory now."""
        return self.sampler.process.memory_info().rss / _MB

    def next_input(self, key: str) -> Any:
        return self.feeds[key].next()

    def size_ok(self, key: str, size: int) -> bool:
        """Whether an answer of `size` values fits model `key` (any size > 0 when the model's
        output size depends on the request)."""
        expected = self.output_sizes[key]
        return size > 0 if expected is None else size == expected

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


@contextlib.asynccontextmanager
async def stress_context(
    stage: StageContext | str | Path | RunDir,
    profile: Profile | str = "smoke",
    *,
    progress: Callable[[str], None] | None = None,
    sample_interval_s: float = 0.2,
    **host_settings: Any,
) -> AsyncIterator[StressContext]:
    """Start the engine process (HostConfig defaults, max_queue_size=QUEUE_SIZE, overridable
    with `host_settings`) and its sampler for the run of `stage` (a StageContext, or a run
    folder with a profile); always stops both. The p95 bound is the run's own target."""
    if not isinstance(stage, StageContext):
        stage = StageContext.open(stage, "stress", profile, progress=progress)
    run = stage.run
    info = run.model_info()
    names = serving_keys(info)
    keys = [names[n] for n in sorted(names)]
    seed = stage.profile.seeds.stress
    feeds = {
        names[n]: _Feed(input_pool(run, info, n, INPUTS_PER_MODEL, seed=seed + i))
        for i, n in enumerate(sorted(names))
    }
    sizes = {names[n]: output_size(info[n]) for n in names}
    engine = EngineSettings(**{"max_queue_size": QUEUE_SIZE, **host_settings})
    config = HostConfig(models=tuple(keys), engine=engine)
    host = EngineHost(run.models, config)
    p95 = stage.targets["p95_latency_ms"]
    await host.start()
    sampler = None
    ctx = None
    try:
        if host.load_errors:
            raise ModelDefect(f"stress: models failed to load in the engine: {host.load_errors}")
        sampler = ResourceSampler(host.pid, interval_s=sample_interval_s)
        sampler.sample()
        sampler.start()
        ctx = StressContext(
            host=host,
            sampler=sampler,
            keys=keys,
            feeds=feeds,
            output_sizes=sizes,
            p95_target_ms=float(p95.threshold),
            p95_target_source=f"p95_latency_ms in {stage.targets.source}",
            scale=stage.profile.stress.scale,
            progress=progress or stage.progress,
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
    """Closed-loop users (pipeline.loadgen.run_users): each sends a request, waits for it
    (and `think_s`), repeats; `per_user` requests each, or until `stop` is set. Models
    alternate per request."""
    keys = list(keys or ctx.keys)
    phase_of = phase if callable(phase) else (lambda: phase)

    def send(user: int, i: int, _rng: np.random.Generator):
        return _request(ctx, keys[(user + i) % len(keys)], phase_of())

    turns = await run_users(send, users, requests_per_user=per_user, think_s=think_s, stop=stop)
    return [
        t.result if not t.lost else _lost(keys[(t.user + t.index) % len(keys)], phase_of(), 0)
        for t in turns
    ]


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


def _verdict(result: TestResult) -> str:
    return (
        f"{'survived' if result.survived else 'NOT survived'}, "
        f"{'recovered' if result.recovered else 'NOT recovered'}"
    )


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))
