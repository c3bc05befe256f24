"""Stress stage on the real models: honest verdicts, exact accounting, nothing left running."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipeline.stages import execute_stage, stress
from pipeline.stages.stress.cpu_saturation import BUSY_PER_CORE, _cores

pytestmark = pytest.mark.stage

EXPECTED_TESTS = {
    "memory_pressure",
    "cpu_saturation",
    "queue_overflow",
    "rapid_scaling",
    "model_switching",
    "pool_exhaustion",
    "reload_in_flight",
}


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _copy_run(built_models: Path, root: Path) -> Path:
    run = root / "run"
    shutil.copytree(built_models, run / "models")
    return run


def _run(coro, timeout_s: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def smoke(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """The smoke stress stage, run once for this module."""
    run = _copy_run(built_models, tmp_path_factory.mktemp("stress"))
    before = _children()
    lines: list[str] = []
    summary = execute_stage("stress", run, "smoke", progress=lines.append)
    return run, summary, lines, before


def test_smoke_stage_survives_and_recovers_on_healthy_models(smoke) -> None:
    run, summary, lines, _ = smoke
    folder = run / "stages" / "stress"
    tests = pd.read_csv(folder / "tests.csv")
    assert list(tests.columns) == [*stress.TEST_COLUMNS, "attempt_id"]
    assert set(tests["test"]) == EXPECTED_TESTS and len(tests) == len(EXPECTED_TESTS)
    failing = tests[~(tests["survived"] & tests["recovered"])]
    assert failing.empty, failing[["test", "detail"]].to_dict("records")
    assert (tests["lost"] == 0).all()
    assert (tests["submitted"] > 0).all()
    assert (tests["succeeded"] + tests["rejected"] <= tests["submitted"]).all()
    # every verdict states its criteria
    for detail in tests["detail"]:
        assert "criterion" in detail and "survived:" in detail and "recovered:" in detail

    levels = pd.read_csv(folder / "levels.csv")
    assert list(levels.columns) == [*stress.LEVEL_COLUMNS, "attempt_id"]
    assert set(levels["test"]) >= EXPECTED_TESTS
    scaling = levels[levels["test"] == "rapid_scaling"]
    steps = scaling[scaling["phase"].str.startswith("step ")]
    assert len(steps) == len(stress.SCALING_LEVELS) and (steps["success_rate"] > 0.8).all()
    memory = levels[levels["test"] == "memory_pressure"].set_index("phase")["rss_mb"]
    assert memory.max() - memory["baseline"] >= 180  # the ballast really was resident
    assert memory["freed"] <= memory["baseline"] + 50

    resources = pd.read_csv(folder / "resources.csv")
    assert list(resources.columns) == ["t_s", "rss_mb", "cpu_percent", "attempt_id"]
    assert len(resources) >= 5 and resources["rss_mb"].max() > 200

    written = json.loads((folder / "summary.json").read_text())
    assert written["profile"] == summary["profile"] == "smoke"
    assert written["host"]["cpu_count"] >= 1
    assert written["all_survived"] and written["all_recovered"] and written["lost"] == 0
    assert set(written["tests"]) == EXPECTED_TESTS
    assert written["engine_exit_code"] == 0
    assert len(lines) == len(EXPECTED_TESTS) + 2
    assert summary["wall_s"] < 60


def test_smoke_stage_leaves_no_busy_or_engine_processes(smoke) -> None:
    _, summary, _, before = smoke
    leftover = _children() - before
    assert not leftover, [psutil.Process(p).cmdline() for p in leftover if psutil.pid_exists(p)]
    assert not psutil.pid_exists(summary["engine_pid"]) or (
        psutil.Process(summary["engine_pid"]).status() == psutil.STATUS_ZOMBIE
    )


def test_rapid_scaling_certifies_the_admission_limit_following_the_load(smoke) -> None:
    _, summary, _, _ = smoke
    figures = summary["tests"]["rapid_scaling"]
    assert figures["survived"] and figures["recovered"], figures["detail"]
    detail = figures["detail"]
    assert "through admission control" in detail
    assert "it rose with the load" in detail and "it fell with the load" in detail
    metrics = figures["metrics"]
    peaks, ends = metrics["admission_peak_limit_by_level"], metrics["admission_limit_by_level"]
    levels = list(stress.SCALING_LEVELS)
    assert len(peaks) == len(ends) == len(levels)
    peak_level = levels.index(max(levels))
    assert peaks[peak_level] >= 2 * ends[0] and ends[-1] <= 4  # measured up, then down
    stats = metrics["admission_stats"]
    assert stats["scale_ups"] > 0 and stats["scale_downs"] > 0
    assert stats["admitted"] == figures["submitted"] and stats["rejected"] == 0
    assert metrics["admission_settings"]["target_p95_ms"] == summary["p95_target_ms"]


def test_admission_control_in_the_engine_host_refuses_past_its_limit(
    built_models: Path, tmp_path: Path
) -> None:
    run = _copy_run(built_models, tmp_path)

    async def go():
        async with stress.stress_context(run, "smoke") as ctx:
            on = await ctx.host.admission(
                {"max_concurrency": 1, "min_concurrency": 1, "max_waiting": 0}
            )
            key = ctx.keys[0]
            burst = ctx.host.predict_many([(key, ctx.next_input(key)) for _ in range(6)])
            refused = [r for r in await asyncio.gather(*burst) if not r.success]
            stats = (await ctx.host.stats())["admission"]
            off = await ctx.host.admission(None)
            after = await asyncio.gather(
                *ctx.host.predict_many([(key, ctx.next_input(key)) for _ in range(6)])
            )
            bad = await ctx.host.admission({"max_concurrency": 0})
        return on, refused, stats, off, after, bad

    on, refused, stats, off, after, bad = _run(go())
    assert on["enabled"] and on["stats"]["limit"] == 1
    assert refused and all(r.error.startswith("admission rejected") for r in refused)
    assert stats["stats"]["rejected"] == len(refused) and stats["stats"]["admitted"] >= 1
    assert off == {"enabled": False, "stats": None}
    assert all(r.success for r in after)  # the other stress tests run without it
    assert "max_concurrency" in bad["error"]


def test_queue_overflow_accounts_for_every_request(smoke) -> None:
    run, summary, _, _ = smoke
    row = pd.read_csv(run / "stages/stress/tests.csv").set_index("test").loc["queue_overflow"]
    figures = summary["tests"]["queue_overflow"]
    assert row["submitted"] == figures["submitted"] == 1000
    assert figures["succeeded"] + figures["rejected"] + figures["failed"] == 1000
    assert figures["lost"] == 0 and row["lost"] == 0
    assert 0 < row["rejected"] < 1000
    # every accepted request succeeded, and the engine's own count agrees with the client's
    assert figures["metrics"]["accepted"] == row["succeeded"] == 1000 - row["rejected"]
    assert figures["metrics"]["engine_rejected"] == row["rejected"]
    assert figures["metrics"]["max_queue_size"] == stress.QUEUE_SIZE


def test_unbounded_queue_fails_queue_overflow_honestly(built_models: Path, tmp_path: Path) -> None:
    run = _copy_run(built_models, tmp_path)
    before = _children()

    async def go():
        async with stress.stress_context(run, "smoke", max_queue_size=2000) as ctx:
            result = await stress.queue_overflow(ctx)
        return result, ctx

    result, ctx = _run(go())
    assert result.counts.submitted == 1000 and result.counts.rejected == 0
    assert result.counts.succeeded == 1000 and result.counts.lost == 0
    assert not result.survived
    assert result.recovered  # the engine itself is fine afterwards
    row = result.row()
    assert row["survived"] is False
    assert "0 of 1000 rejected" in row["detail"] and "max_queue_size 2000" in row["detail"]
    assert "(criterion > 0: the queue is bounded): NO" in row["detail"]
    assert ctx.exit_code == 0 and not (_children() - before)


def test_unmeetable_latency_target_fails_cpu_saturation_and_kills_busy_processes(
    built_models: Path, tmp_path: Path
) -> None:
    run = _copy_run(built_models, tmp_path)
    before = _children()

    async def go():
        async with stress.stress_context(run, "smoke") as ctx:
            ctx.p95_target_ms = 1e-6  # no engine answers in a nanosecond
            return await stress.cpu_saturation(ctx)

    result = _run(go())
    assert not result.survived
    assert result.counts.succeeded == result.counts.submitted > 0
    assert "p95 under saturation" in result.detail and ": NO" in result.detail
    assert result.metrics["busy_processes"] == _cores() * BUSY_PER_CORE
    assert not (_children() - before)


def test_scaling_levels_without_a_final_single_user_are_not_called_recovered(
    built_models: Path, tmp_path: Path
) -> None:
    run = _copy_run(built_models, tmp_path)

    async def go():
        async with stress.stress_context(run, "smoke") as ctx:
            return await stress.rapid_scaling(ctx, levels=(2, 4))

    result = _run(go())
    assert result.survived and not result.recovered
    assert "not measured" in result.detail
