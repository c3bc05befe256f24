"""Integration stage: the original plan's end-to-end checks, on the real engine.

One row per check in `stages/integration/checks.csv` (check, model, status, passed,
measured, unit, limit, detail). Nothing is mocked: every step of the cross-model workflow
is a real inference, and the validation call measures the engine it validates. Each check
is a named step below, run in order by `run`.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.loadgen import percentiles, run_users
from pipeline.metrics import MODEL_QUALITY
from pipeline.samples import read_samples, sample_count
from pipeline.stages.common import check_row, input_pool
from pipeline.stages.context import StageContext
from pipeline.stages.inputs import row_shapes, signature_of

__all__ = ["run", "validate_performance"]

PARITY_PROBES = 256
#: requests per model for the end-to-end check, and per model for the batching check
END_TO_END_REQUESTS = 50
BATCH_PROBE = 8
#: the plan's memory-check bounds: pool size, RSS growth and buffer reuse
POOL_LIMIT_MB = 400.0
RSS_GROWTH_LIMIT_MB = 100.0
MIN_REUSE = 0.3


async def validate_performance(
    engine,
    keys: dict[str, str],
    inputs: dict[str, np.ndarray],
    requests: int = 50,
    max_seconds: float = 5.0,
) -> dict[str, Any]:
    """A bounded quick validation: `requests` mixed requests (at most `max_seconds`),
    returning measured latency and throughput, the engine's accounted memory (models +
    pool + cache entries) and, for information, this process's RSS. The process here may be
    an Airflow worker with much else loaded; the certified memory figure is the load
    stage's, measured on an engine in its own process."""
    import psutil

    names = sorted(keys)
    latencies, ok = [], 0
    started = time.perf_counter()
    for i in range(requests):
        if time.perf_counter() - started > max_seconds:
            break
        name = names[i % len(names)]
        t = time.perf_counter()
        result = await engine.predict(
            keys[name], inputs[name][i % len(inputs[name])], use_cache=False
        )
        latencies.append((time.perf_counter() - t) * 1000.0)
        ok += result.success
    elapsed = time.perf_counter() - started
    engine_mb = engine.model_manager.memory_usage_mb()
    if engine.memory_pool is not None:
        engine_mb += engine.memory_pool.get_memory_stats().current_pool_size_mb
    if engine.cache is not None:
        engine_mb += engine.cache.memory_bytes() / 2**20
    p = percentiles(latencies)
    return {
        "requests": len(latencies),
        "success_rate": ok / len(latencies) if latencies else 0.0,
        "mean_latency_ms": p.mean_ms,
        "p95_latency_ms": p.p95_ms,
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "memory_mb": engine_mb,
        "process_rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


@dataclass
class Bench:
    """What the checks share: the engine under test, its parts and the probe inputs."""

    ctx: StageContext
    info: dict[str, Any]
    manager: Any
    engine: Any
    pool: Any
    probes: dict[str, np.ndarray]

    @property
    def loaded(self) -> list[str]:
        return self.manager.loaded_models

    @property
    def serving(self) -> dict[str, str]:
        """model name -> the engine key its load/stress/infra traffic uses (ONNX when the
        model has it, else the format it has)."""
        keys: dict[str, str] = {}
        for key in self.loaded:
            name = self.manager.model_info[key].name
            if name not in keys or key.endswith("_onnx"):
                keys[name] = key
        return keys

    def name_of(self, key: str) -> str:
        return self.manager.model_info[key].name

    def format_of(self, key: str) -> str:
        return self.manager.model_info[key].format

    def fixed_batch(self, key: str) -> int | None:
        return self.manager.get_model(key).fixed_batch_size


# --------------------------------------------------------------------------- the checks
def initialisation(ctx: StageContext, manager) -> tuple[list[dict[str, Any]], float]:
    """Every model file loads, verifies and warms up; the whole initialisation's time."""
    import onnxruntime  # noqa: F401  (imports are not model initialisation)

    info = ctx.run.model_info()
    if any("torchscript" in (e.get("files") or {}) for e in info.values()):
        import torch  # noqa: F401

    rows = []
    started = time.perf_counter()
    for key in manager.available_models:
        loaded = manager.load_model(key)
        mi = manager.model_info[key]
        seconds = ((mi.load_time_ms or 0) + (mi.warmup_time_ms or 0)) / 1000.0
        detail = "loaded, sha256 verified, warmed up" if loaded else manager.load_errors.get(key)
        rows.append(
            check_row(
                "model_load",
                key,
                loaded and mi.warmup_complete,
                seconds,
                "s",
                detail=detail or "failed",
            )
        )
    init_s = time.perf_counter() - started
    target = ctx.targets["model_initialization_s"]
    all_loaded = all(manager.is_loaded(k) for k in manager.available_models)
    rows.append(
        check_row(
            "initialization",
            "all",
            all_loaded and target.passes(init_s),
            init_s,
            "s",
            target.threshold,
            f"{len(manager.available_models)} model files loaded and warmed up in "
            f"{init_s:.2f} s after imports",
        )
    )
    ctx.say(
        f"integration: initialization {init_s:.2f} s for {len(manager.available_models)} "
        f"model files ({'all loaded' if all_loaded else 'LOAD FAILURES'})"
    )
    return rows, init_s


def _expected_outputs(entry: dict[str, Any]) -> dict[str, tuple[int | None, ...]]:
    """Each output's row shape (None: a dynamic dim) of a model of named tensors; the one
    output's (as `output`) of a single-tensor model."""
    signature = signature_of(entry)
    if signature.classic:
        return {"output": row_shapes(entry)[1]}
    return {o.name: o.row for o in signature.outputs}


def _outputs_fit(result: Any, expected: dict[str, tuple[int | None, ...]]) -> bool:
    """Whether a successful result has every expected output, each of its row shape."""
    if not result.success:
        return False
    got = result.outputs if result.outputs is not None else {"output": result.output}
    if set(got) != set(expected):
        return False
    return all(
        len(got[n].shape) == len(row)
        and all(d is None or d == g for d, g in zip(row, got[n].shape, strict=True))
        for n, row in expected.items()
    )


def _shape_text(expected: dict[str, tuple[int | None, ...]]) -> str:
    def dims(row: tuple[int | None, ...]) -> str:
        return "[" + ", ".join("n" if d is None else str(d) for d in row) + "]"

    if list(expected) == ["output"]:
        return f"output shape {dims(expected['output'])}"
    return "output shapes " + ", ".join(f"{n} {dims(r)}" for n, r in expected.items())


async def end_to_end(b: Bench) -> list[dict[str, Any]]:
    """Per model file: requests one at a time; output shape(s), success and mean latency."""
    rows = []
    for key in b.loaded:
        name = b.name_of(key)
        expected = _expected_outputs(b.info[name])
        latencies, shapes_ok, ok = [], True, 0
        for x in b.probes[name][:END_TO_END_REQUESTS]:
            t = time.perf_counter()
            result = await b.engine.predict(key, x, use_cache=False)
            latencies.append((time.perf_counter() - t) * 1000.0)
            ok += result.success
            shapes_ok &= _outputs_fit(result, expected)
        p = percentiles(latencies)
        target = b.ctx.targets.for_model(name)["average_inference_latency_ms"]
        rows.append(
            check_row(
                "end_to_end",
                name,
                shapes_ok and ok == END_TO_END_REQUESTS and target.passes(p.mean_ms),
                p.mean_ms,
                "ms",
                target.threshold,
                f"{ok}/{END_TO_END_REQUESTS} succeeded, {_shape_text(expected)}: "
                f"{'all correct' if shapes_ok else 'WRONG or failed'}, p95 {p.p95_ms:.2f} ms",
                fmt=b.format_of(key),
                samples=len(latencies),
            )
        )
    return rows


async def batching(b: Bench) -> list[dict[str, Any]]:
    """Requests submitted together form batches larger than 1 (not applicable to a model
    whose batch dimension is fixed at 1: it is served one request at a time by design)."""
    rows = []
    for key in b.loaded:
        name = b.name_of(key)
        if b.fixed_batch(key) == 1:
            rows.append(
                check_row(
                    "batching",
                    name,
                    False,
                    detail="not applicable: the model's batch dimension is fixed at 1, so "
                    "each request runs alone by design",
                    status="not_applicable",
                    fmt=b.format_of(key),
                )
            )
            continue
        results = await asyncio.gather(
            *(b.engine.predict(key, x, use_cache=False) for x in b.probes[name][:BATCH_PROBE])
        )
        largest = max(r.batch_size for r in results)
        rows.append(
            check_row(
                "batching",
                name,
                largest > 1 and all(r.success for r in results),
                largest,
                "requests",
                1,
                f"{BATCH_PROBE} requests submitted together; largest batch",
                fmt=b.format_of(key),
                samples=len(results),
            )
        )
    return rows


async def memory_management(b: Bench) -> dict[str, Any]:
    """Requests alternating between the models: all succeed, the pool stays under its
    limit, buffers are reused and the process barely grows."""
    import psutil

    count = b.ctx.profile.integration.memory_requests
    serving = sorted(b.serving.values())
    rss_before = psutil.Process().memory_info().rss / 2**20
    before = b.pool.get_memory_stats()
    ok = 0
    for i in range(count):
        key = serving[i % len(serving)]
        x = b.probes[b.name_of(key)][i % PARITY_PROBES]
        ok += (await b.engine.predict(key, x, use_cache=False)).success
    stats = b.pool.get_memory_stats()
    growth = psutil.Process().memory_info().rss / 2**20 - rss_before
    new_allocs = stats.allocations - before.allocations
    reuse = (stats.cache_hits - before.cache_hits) / new_allocs if new_allocs else 0.0
    passed = (
        ok == count
        and stats.current_pool_size_mb <= POOL_LIMIT_MB
        and reuse > MIN_REUSE
        and growth < RSS_GROWTH_LIMIT_MB
    )
    return check_row(
        "memory_management",
        "all",
        passed,
        reuse,
        "reuse ratio",
        MIN_REUSE,
        f"{ok}/{count} succeeded alternating {', '.join(serving)}; pool "
        f"{stats.current_pool_size_mb:.3f} MB (limit {POOL_LIMIT_MB:g}); RSS growth "
        f"{growth:.1f} MB (limit {RSS_GROWTH_LIMIT_MB:g})",
        samples=count,
    )


async def concurrent_clients(b: Bench) -> dict[str, Any]:
    """Closed-loop clients with think time (the plan: 1/3 quality, 2/3 routing; other
    model sets spread evenly): success >= 95%, mean < 100 ms, p95 < 300 ms."""
    cfg = b.ctx.profile.integration
    serving = b.serving
    names = sorted(serving)
    if {"quality_predictor", "routing_classifier"} <= set(names):
        names, shares = ["quality_predictor", "routing_classifier"], [1 / 3, 2 / 3]
    else:
        shares = [1 / len(names)] * len(names)

    def send(client: int, i: int, rng: np.random.Generator):
        name = names[int(rng.choice(len(names), p=shares))]
        return b.engine.predict(serving[name], b.probes[name][(client * 31 + i) % PARITY_PROBES])

    started = time.perf_counter()
    turns = await run_users(
        send,
        cfg.concurrent_clients,
        requests_per_user=cfg.requests_per_client,
        think_s=cfg.think_ms / 1000.0,
        seed=b.ctx.profile.seeds.integration,
        timeout_s=120.0,
    )
    elapsed = time.perf_counter() - started
    total = cfg.concurrent_clients * cfg.requests_per_client
    successes = sum(1 for t in turns if not t.lost and t.result.success)
    p = percentiles([t.latency_ms for t in turns])
    rate = successes / total
    return check_row(
        "concurrent_load",
        "mixed",
        rate >= 0.95 and p.mean_ms < 100 and p.p95_ms < 300,
        rate,
        "success rate",
        0.95,
        f"{cfg.concurrent_clients} clients x {cfg.requests_per_client} requests, "
        f"{cfg.think_ms:g} ms think: mean {p.mean_ms:.2f} ms (limit 100), p95 "
        f"{p.p95_ms:.2f} ms (limit 300), {total / elapsed:.0f} req/s",
    )


async def workflow(b: Bench) -> dict[str, Any]:
    """features -> routing decision -> quality prediction -> conversion request -> validation."""
    names = b.serving
    if not {"routing_classifier", "quality_predictor"} <= set(names):
        return check_row(
            "cross_model_workflow",
            "all",
            False,
            detail="not applicable: the workflow needs the routing_classifier + "
            "quality_predictor pair of the original plan; this run has " + ", ".join(sorted(names)),
            status="not_applicable",
        )
    classes = b.info["routing_classifier"].get("class_names") or []
    started = time.perf_counter()
    problems, requests = [], []
    for i in range(10):
        routing = await b.engine.predict(
            names["routing_classifier"], b.probes["routing_classifier"][i]
        )
        if not routing.success:
            problems.append(f"routing failed: {routing.error}")
            continue
        probs = routing.output
        method = classes[int(np.argmax(probs))] if classes else str(int(np.argmax(probs)))
        if abs(float(probs.sum()) - 1.0) > 1e-4:
            problems.append(f"routing probabilities sum to {probs.sum():.4f}")
        params = b.probes["quality_predictor"][i]
        quality = await b.engine.predict(names["quality_predictor"], params)
        if not quality.success or not 0.0 <= float(quality.output[0]) <= 1.0:
            problems.append(f"quality prediction invalid: {quality.error or quality.output}")
            continue
        predicted = float(quality.output[0])
        requests.append(
            {
                "method": method,
                "confidence": float(probs.max()),
                "parameters": params.tolist(),
                "predicted_quality": predicted,
                "measured_ms": routing.total_time_ms + quality.total_time_ms,
            }
        )
    pair = {n: names[n] for n in ("routing_classifier", "quality_predictor")}
    validation = await validate_performance(b.engine, pair, b.probes)
    targets = b.ctx.targets
    checks = {
        "latency": targets["average_inference_latency_ms"].passes(validation["mean_latency_ms"]),
        "throughput": targets["sustained_throughput_rps"].passes(validation["throughput_rps"]),
        "memory": targets["memory_usage_mb"].passes(validation["memory_mb"]),
    }
    elapsed = time.perf_counter() - started
    passed = not problems and len(requests) == 10 and all(checks.values()) and elapsed < 10
    return check_row(
        "cross_model_workflow",
        "routing_classifier+quality_predictor",
        passed,
        elapsed,
        "s",
        10,
        f"{len(requests)}/10 conversion requests built from real routing and quality "
        f"predictions (relcert has no conversion service, so the plan's request status is not "
        f"modelled); validation: mean "
        f"{validation['mean_latency_ms']:.2f} ms, {validation['throughput_rps']:.0f} req/s, "
        f"engine memory {validation['memory_mb']:.2f} MB (process RSS "
        f"{validation['process_rss_mb']:.0f} MB) -> {checks}"
        + (f"; problems: {problems[:3]}" if problems else ""),
        samples=10,
    )


def compared_outputs(entry: dict[str, Any]) -> tuple[str, ...] | None:
    """The outputs parity compares: the one `reference.output` names, else every output
    (None: the one output of a single-tensor model)."""
    signature = signature_of(entry)
    if signature.classic:
        return None
    named = ((entry.get("parity") or {}).get("reference") or {}).get("output")
    return (named,) if named else signature.output_names


def _vector(result: Any, names: tuple[str, ...] | None) -> np.ndarray:
    """One result's compared outputs, flattened into one float64 vector."""
    if names is None:
        return np.asarray(result.output, dtype=np.float64).ravel()
    return np.concatenate([np.asarray(result.outputs[n], dtype=np.float64).ravel() for n in names])


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The largest |a_i - b_i| over requests (inf when a pair's sizes differ)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return float("inf")
        worst = max(worst, float(np.abs(x - y).max(initial=0.0)))
    return worst


async def _alone_batched_cached(b: Bench, key: str, tolerance: float) -> tuple[dict, Any]:
    """The same probes alone, batched and cached agree (every compared output)."""
    name, fmt = b.name_of(key), b.format_of(key)
    x = b.probes[name][:64]
    single = [await b.engine.predict(key, row, use_cache=False) for row in x]
    batched = await asyncio.gather(*(b.engine.predict(key, row) for row in x))
    cached = await asyncio.gather(*(b.engine.predict(key, row) for row in x))
    if not all(r.success for r in single + list(batched) + list(cached)):
        row = check_row(
            "parity_batched_single_cached", name, False, detail="some requests failed", fmt=fmt
        )
        return row, None
    names = compared_outputs(b.info[name])
    s = [_vector(r, names) for r in single]
    diff = max(
        _max_diff(s, [_vector(r, names) for r in batched]),
        _max_diff(s, [_vector(r, names) for r in cached]),
    )
    hits = sum(r.cache_hit for r in cached)
    row = check_row(
        "parity_batched_single_cached",
        name,
        diff <= tolerance and hits == len(x),
        diff,
        "max abs diff",
        tolerance,
        f"{len(x)} probes alone vs batched (largest batch "
        f"{max(r.batch_size for r in batched)}) vs cached ({hits} hits)"
        + (f"; outputs {', '.join(names)}" if names else ""),
        fmt=fmt,
        samples=len(x),
    )
    return row, s


async def parity(b: Bench) -> list[dict[str, Any]]:
    """Alone vs batched vs cached per model file; TorchScript vs ONNX where a model has
    both (not applicable to a single-format import); the build's recorded parity (eager vs
    exports, or the model's reference outputs)."""
    rows = []
    for name in sorted(b.info):
        tolerance = b.ctx.targets.for_model(name)["parity_max_abs_diff"].threshold
        outputs = {}
        for key in [k for k in b.loaded if b.name_of(k) == name]:
            row, alone = await _alone_batched_cached(b, key, tolerance)
            rows.append(row)
            if alone is not None:
                outputs[b.format_of(key)] = alone
        formats = sorted(b.info[name].get("files") or {})
        if len(outputs) == 2:
            diff = _max_diff(outputs["torchscript"], outputs["onnx"])
            rows.append(
                check_row(
                    "parity_torchscript_onnx",
                    name,
                    diff <= tolerance,
                    diff,
                    "max abs diff",
                    tolerance,
                    "64 probes through the engine",
                    samples=64,
                )
            )
        elif len(formats) < 2:
            rows.append(
                check_row(
                    "parity_torchscript_onnx",
                    name,
                    False,
                    detail=f"not applicable: the model comes in one format only "
                    f"({', '.join(formats) or 'none'})",
                    status="not_applicable",
                )
            )
        rows.append(_recorded_parity(b.info[name], name, tolerance))
    return rows


def _recorded_parity(entry: dict[str, Any], name: str, tolerance: float) -> dict[str, Any]:
    """The build's own parity record: eager vs TorchScript vs ONNX (built models), or the
    imported file against its reference outputs; not applicable when neither exists."""
    parity = entry.get("parity") or {}
    recorded = parity.get("max_abs_diff") or {}
    reference = parity.get("reference") or {}
    if recorded:
        worst = max(float(v) for v in recorded.values())
        what = f"recorded by the build (eager vs exports): {recorded}"
        samples = int(parity.get("probe_count") or 1)
    elif reference:
        worst = float(reference["max_abs_diff"])
        tolerance = max(tolerance, float(reference.get("atol") or 0.0))
        what = (
            f"the imported file against its reference outputs {reference.get('outputs')} "
            f"({reference.get('count')} inputs, atol {reference.get('atol')})"
        )
        samples = int(reference.get("count") or 1)
    else:
        return check_row(
            "parity_eager_build",
            name,
            False,
            detail="not applicable: an imported model without reference outputs has no "
            "eager or reference output to compare with",
            status="not_applicable",
        )
    return check_row(
        "parity_eager_build",
        name,
        worst <= tolerance,
        worst,
        "max abs diff",
        tolerance,
        what,
        samples=samples,
    )


async def model_quality(b: Bench) -> list[dict[str, Any]]:
    """Each model's quality SLA (its models-file entry: metric, threshold, evaluation set),
    scored through the engine; not applicable when the model declares none."""
    from pipeline.quality import SLA_METRICS, score

    rows = []
    for name, key in sorted(b.serving.items()):
        sla = b.info[name].get("sla")
        if not sla:
            rows.append(
                check_row(
                    MODEL_QUALITY,
                    name,
                    False,
                    detail="not applicable: no quality evidence given (the models file "
                    "declares no sla for this model)",
                    status="not_applicable",
                )
            )
            continue
        x, y = read_samples(b.ctx.run.models / sla["evaluation_file"])
        count = sample_count(x)
        requests = (
            [{n: a[i] for n, a in x.items()} for i in range(count)] if isinstance(x, dict) else x
        )
        results = []
        for start in range(0, count, 512):
            results += await asyncio.gather(
                *(
                    b.engine.predict(key, row, use_cache=False)
                    for row in requests[start : start + 512]
                )
            )
        metric = SLA_METRICS[sla["metric"]]
        rule = f"{metric.name} {'>=' if metric.direction == 'min' else '<='} {sla['threshold']:g}"
        failed = sum(not r.success for r in results)
        if failed:
            rows.append(
                check_row(
                    MODEL_QUALITY,
                    name,
                    False,
                    detail=f"{failed} of {count} evaluation requests failed ({rule})",
                    fmt=b.format_of(key),
                    samples=count,
                )
            )
            continue
        signature = signature_of(b.info[name])
        scored = None  # the one output of a single-tensor model
        if not signature.classic:  # the output the SLA names, else every output
            scored = (sla["output"],) if sla.get("output") else signature.output_names
        out = np.stack([_vector(r, scored) for r in results])
        measured = score(metric.name, out, y, int(sla.get("k") or 1))
        passed = (
            measured >= sla["threshold"]
            if metric.direction == "min"
            else measured <= sla["threshold"]
        )
        rows.append(
            check_row(
                MODEL_QUALITY,
                name,
                bool(passed),
                measured,
                metric.name,
                float(sla["threshold"]),
                f"{metric.name} on {count} rows of {sla['evaluation_file']} through the engine "
                f"(needs {rule}; version {b.info[name].get('version')})"
                + (f"; output {', '.join(scored)}" if scored else ""),
                fmt=b.format_of(key),
                samples=count,
            )
        )
    return rows


# --------------------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    """Run every integration check; write checks.csv and summary.json; return the summary."""
    return asyncio.run(_run(ctx))


async def _run(ctx: StageContext) -> dict:
    from pipeline.inference import (
        EngineSettings,
        MemoryPoolManager,
        ProductionInferenceEngine,
        ProductionModelManager,
        RealTimePerformanceMonitor,
    )

    settings = EngineSettings()
    info = ctx.run.model_info()
    manager = ProductionModelManager(ctx.run.models, max_memory_mb=settings.max_memory_mb)
    rows, init_s = initialisation(ctx, manager)
    if not manager.loaded_models:
        rows.append(check_row("serving", "all", False, detail="no model loaded: nothing to serve"))
        return _finish(ctx, rows, manager, None, init_s)
    pool = MemoryPoolManager(settings.pool_mb)
    engine = ProductionInferenceEngine(
        manager, settings=settings, memory_pool=pool, monitor=RealTimePerformanceMonitor()
    )
    seed = ctx.profile.seeds.integration
    probes = {name: input_pool(ctx.run, info, name, PARITY_PROBES, seed=seed) for name in info}
    bench = Bench(ctx, info, manager, engine, pool, probes)
    gc.collect()
    rows += await end_to_end(bench)
    rows += await batching(bench)
    rows.append(await memory_management(bench))
    rows.append(await concurrent_clients(bench))
    rows.append(await workflow(bench))
    rows += await parity(bench)
    rows += await model_quality(bench)
    return _finish(ctx, rows, manager, engine, init_s)


def _finish(ctx: StageContext, rows, manager, engine, init_s: float) -> dict[str, Any]:
    ctx.write_table("checks", rows)
    failed = [
        f"{r['check']}:{r['model']}"
        for r in rows
        if not r["passed"] and r["status"] != "not_applicable"
    ]
    summary = ctx.write_summary(
        {
            "checks": len(rows),
            "passed": len(rows) - len(failed),
            "failed": failed,
            "initialization_s": init_s,
            "engine_stats": engine.get_stats() if engine is not None else {},
            "models": {
                k: {
                    "version": manager.model_info[k].version,
                    "sha256": manager.model_info[k].sha256,
                }
                for k in manager.available_models
            },
        }
    )
    ctx.say(
        f"integration: {summary['passed']}/{len(rows)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return summary
