"""Integration stage: the original plan's end-to-end checks, on the real engine.

One row per check in `stages/integration/checks.csv` (check, model, passed, measured, unit,
limit, detail). Nothing is mocked: every step of the cross-model workflow is a real
inference, and the validation call measures the engine it validates.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.profiles import Profile, load_profile
from pipeline.stages.common import RunDir, check_row, host_facts, input_pool, write_table

__all__ = ["run_integration", "validate_performance"]

STAGE = "integration"
PARITY_PROBES = 256


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


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
    return {
        "requests": len(latencies),
        "success_rate": ok / len(latencies) if latencies else 0.0,
        "mean_latency_ms": float(np.mean(latencies)) if latencies else float("nan"),
        "p95_latency_ms": _pct(latencies, 95),
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "memory_mb": engine_mb,
        "process_rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def run_integration(
    run_dir: str | Path,
    profile: Profile | str = "smoke",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every integration check; write checks.csv and summary.json; return the summary."""
    return asyncio.run(_run(RunDir.of(run_dir), profile, progress or (lambda _: None)))


async def _run(run: RunDir, profile: Profile | str, say: Callable[[str], None]) -> dict:
    import psutil

    from pipeline.inference import (
        EngineSettings,
        MemoryPoolManager,
        ProductionInferenceEngine,
        ProductionModelManager,
        RealTimePerformanceMonitor,
    )
    from pipeline.targets import load_targets

    profile = load_profile(profile) if isinstance(profile, str) else profile
    cfg = profile["integration"]
    targets = load_targets()
    info = run.model_info()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    # ---- initialisation: every model in every format loads, verifies and warms up
    import onnxruntime  # noqa: F401  (imports are not model initialisation)

    if any("torchscript" in (e.get("files") or {}) for e in info.values()):
        import torch  # noqa: F401

    manager = ProductionModelManager(run.models, max_memory_mb=EngineSettings().max_memory_mb)
    init_started = time.perf_counter()
    for key in manager.available_models:
        loaded = manager.load_model(key)
        mi = manager.model_info[key]
        seconds = ((mi.load_time_ms or 0) + (mi.warmup_time_ms or 0)) / 1000.0
        rows.append(
            check_row(
                "model_load",
                key,
                loaded and mi.warmup_complete,
                seconds,
                "s",
                detail=(
                    "loaded, sha256 verified, warmed up"
                    if loaded
                    else manager.load_errors.get(key, "failed")
                ),
            )
        )
    init_s = time.perf_counter() - init_started
    init_target = targets["model_initialization_s"]
    all_loaded = all(manager.is_loaded(k) for k in manager.available_models)
    rows.append(
        check_row(
            "initialization",
            "all",
            all_loaded and init_target.passes(init_s),
            init_s,
            "s",
            init_target.threshold,
            f"{len(manager.available_models)} model files loaded and warmed up in "
            f"{init_s:.2f} s after imports",
        )
    )
    say(
        f"integration: initialization {init_s:.2f} s for {len(manager.available_models)} "
        f"model files ({'all loaded' if all_loaded else 'LOAD FAILURES'})"
    )

    if not manager.loaded_models:
        rows.append(check_row("serving", "all", False, detail="no model loaded: nothing to serve"))
        return _finish(run, profile, rows, manager, None, init_s, started, say)
    pool = MemoryPoolManager(EngineSettings().pool_mb)
    monitor = RealTimePerformanceMonitor()
    engine = ProductionInferenceEngine(
        manager, settings=EngineSettings(), memory_pool=pool, monitor=monitor
    )
    loaded_keys = manager.loaded_models
    probes = {name: input_pool(run, info, name, PARITY_PROBES, seed=21) for name in info}
    gc.collect()

    # ---- end to end per model: shapes, finiteness, per-request latency
    avg_target = targets["average_inference_latency_ms"]
    for key in loaded_keys:
        name = manager.model_info[key].name
        expected = tuple(int(d) for d in (info[name].get("output_shape") or [None, 1])[1:])
        latencies, shapes_ok, ok = [], True, 0
        for x in probes[name][:50]:
            t = time.perf_counter()
            result = await engine.predict(key, x, use_cache=False)
            latencies.append((time.perf_counter() - t) * 1000.0)
            ok += result.success
            shapes_ok &= result.success and tuple(result.output.shape) == expected
        mean = float(np.mean(latencies))
        rows.append(
            check_row(
                "end_to_end",
                key,
                shapes_ok and ok == 50 and avg_target.passes(mean),
                mean,
                "ms",
                avg_target.threshold,
                f"{ok}/50 succeeded, output shape {list(expected)}: "
                f"{'all correct' if shapes_ok else 'WRONG or failed'}, "
                f"p95 {_pct(latencies, 95):.2f} ms",
            )
        )

    # ---- batching: requests submitted together form batches larger than 1
    for key in loaded_keys:
        name = manager.model_info[key].name
        results = await asyncio.gather(
            *(engine.predict(key, x, use_cache=False) for x in probes[name][:8])
        )
        largest = max(r.batch_size for r in results)
        rows.append(
            check_row(
                "batching",
                key,
                largest > 1 and all(r.success for r in results),
                largest,
                "requests",
                1,
                "8 requests submitted together; largest batch",
            )
        )

    # ---- memory: 100 requests alternating between the models
    rss_before = psutil.Process().memory_info().rss / 2**20
    before = pool.get_memory_stats()
    serving = [k for k in loaded_keys if k.endswith("_onnx")] or loaded_keys
    ok = 0
    for i in range(int(cfg["memory_requests"])):
        key = serving[i % len(serving)]
        name = manager.model_info[key].name
        ok += (await engine.predict(key, probes[name][i % PARITY_PROBES], use_cache=False)).success
    stats = pool.get_memory_stats()
    growth = psutil.Process().memory_info().rss / 2**20 - rss_before
    new_allocs = stats.allocations - before.allocations
    reuse = (stats.cache_hits - before.cache_hits) / new_allocs if new_allocs else 0.0
    mem_ok = (
        ok == int(cfg["memory_requests"])
        and stats.current_pool_size_mb <= 400
        and reuse > 0.3
        and growth < 100
    )
    rows.append(
        check_row(
            "memory_management",
            "+".join(serving),
            mem_ok,
            reuse,
            "reuse ratio",
            0.3,
            f"{ok}/{cfg['memory_requests']} succeeded; pool {stats.current_pool_size_mb:.3f}"
            f" MB (limit 400); RSS growth {growth:.1f} MB (limit 100)",
        )
    )

    # ---- concurrent load: clients x requests with think time, 1/3 quality 2/3 routing
    lat: list[float] = []
    successes = 0
    names = sorted(info)

    async def client(c: int) -> None:
        nonlocal successes
        rng = np.random.default_rng(c)
        for r in range(int(cfg["requests_per_client"])):
            if len(names) > 1 and "quality_predictor" in names and "routing_classifier" in names:
                name = "quality_predictor" if rng.random() < 1 / 3 else "routing_classifier"
            else:
                name = names[(c + r) % len(names)]
            key = next(k for k in serving if manager.model_info[k].name == name)
            t = time.perf_counter()
            result = await engine.predict(key, probes[name][(c * 31 + r) % PARITY_PROBES])
            lat.append((time.perf_counter() - t) * 1000.0)
            successes += result.success
            await asyncio.sleep(float(cfg["think_ms"]) / 1000.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(int(cfg["concurrent_clients"]))))
    elapsed = time.perf_counter() - t0
    total = int(cfg["concurrent_clients"]) * int(cfg["requests_per_client"])
    rate = successes / total
    conc_ok = rate >= 0.95 and np.mean(lat) < 100 and _pct(lat, 95) < 300
    rows.append(
        check_row(
            "concurrent_load",
            "mixed",
            conc_ok,
            rate,
            "success rate",
            0.95,
            f"{cfg['concurrent_clients']} clients x {cfg['requests_per_client']} requests,"
            f" {cfg['think_ms']} ms think: mean {np.mean(lat):.2f} ms (limit 100), p95 "
            f"{_pct(lat, 95):.2f} ms (limit 300), {total / elapsed:.0f} req/s",
        )
    )

    # ---- the cross-model workflow: routing -> quality -> conversion request -> validation
    rows.append(await _workflow(engine, manager, info, probes, serving, targets))

    # ---- parity: TorchScript vs ONNX, batched vs single vs cached, and eager (from build)
    rows += await _parity(engine, manager, info, probes, targets)

    # ---- model SLAs on the held-out split, recomputed through the engine
    rows += await _slas(run, engine, manager, info, serving, targets)

    return _finish(run, profile, rows, manager, engine, init_s, started, say)


def _finish(run, profile, rows, manager, engine, init_s, started, say) -> dict[str, Any]:
    folder = run.stage(STAGE)
    write_table(rows, folder / "checks.csv")
    failed = [f"{r['check']}:{r['model']}" for r in rows if not r["passed"]]
    summary = {
        "profile": profile.name,
        "host": host_facts(),
        "checks": len(rows),
        "passed": len(rows) - len(failed),
        "failed": failed,
        "initialization_s": init_s,
        "engine_stats": engine.get_stats() if engine is not None else {},
        "seconds": time.perf_counter() - started,
        "models": {
            k: {"version": manager.model_info[k].version, "sha256": manager.model_info[k].sha256}
            for k in manager.available_models
        },
    }
    run.write_summary(STAGE, summary)
    say(
        f"integration: {summary['passed']}/{len(rows)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return summary


async def _workflow(engine, manager, info, probes, serving, targets) -> dict[str, Any]:
    """features -> routing decision -> quality prediction -> conversion request -> validation."""
    names = {manager.model_info[k].name: k for k in serving}
    if not {"routing_classifier", "quality_predictor"} <= set(names):
        return check_row(
            "cross_model_workflow",
            "n/a",
            True,
            detail="skipped: the run has no routing_classifier + quality_predictor pair",
        )
    classes = info["routing_classifier"].get("class_names") or []
    started = time.perf_counter()
    problems, requests = [], []
    for i in range(10):
        features = probes["routing_classifier"][i]
        routing = await engine.predict(names["routing_classifier"], features)
        if not routing.success:
            problems.append(f"routing failed: {routing.error}")
            continue
        probs = routing.output
        method = classes[int(np.argmax(probs))] if classes else str(int(np.argmax(probs)))
        if abs(float(probs.sum()) - 1.0) > 1e-4:
            problems.append(f"routing probabilities sum to {probs.sum():.4f}")
        params = probes["quality_predictor"][i]
        quality = await engine.predict(names["quality_predictor"], params)
        if not quality.success or not 0.0 <= float(quality.output[0]) <= 1.0:
            problems.append(f"quality prediction invalid: {quality.error or quality.output}")
            continue
        predicted = float(quality.output[0])
        latency = routing.total_time_ms + quality.total_time_ms
        requests.append(
            {
                "method": method,
                "confidence": float(probs.max()),
                "parameters": params.tolist(),
                "predicted_quality": predicted,
                "status": "accepted" if predicted >= 0.5 else "queued",
                "estimated_completion_ms": latency,
            }
        )
    validation = await validate_performance(
        engine, {n: names[n] for n in ("routing_classifier", "quality_predictor")}, probes
    )
    checks = {
        "latency": targets["average_inference_latency_ms"].passes(validation["mean_latency_ms"]),
        "throughput": targets["sustained_throughput_rps"].passes(validation["throughput_rps"]),
        "memory": targets["memory_usage_mb"].passes(validation["memory_mb"]),
    }
    elapsed = time.perf_counter() - started
    passed = not problems and len(requests) == 10 and all(checks.values()) and elapsed < 10
    statuses = sorted({r["status"] for r in requests})
    return check_row(
        "cross_model_workflow",
        "routing_classifier+quality_predictor",
        passed,
        elapsed,
        "s",
        10,
        f"{len(requests)}/10 conversion requests built (status {statuses}); validation: mean "
        f"{validation['mean_latency_ms']:.2f} ms, {validation['throughput_rps']:.0f} req/s, "
        f"engine memory {validation['memory_mb']:.2f} MB (process RSS "
        f"{validation['process_rss_mb']:.0f} MB) -> {checks}"
        + (f"; problems: {problems[:3]}" if problems else ""),
    )


async def _parity(engine, manager, info, probes, targets) -> list[dict[str, Any]]:
    rows = []
    tolerance = targets["parity_max_abs_diff"].threshold
    for name in sorted(info):
        keys = [k for k in manager.loaded_models if manager.model_info[k].name == name]
        outputs = {}
        for key in keys:
            x = probes[name][:64]
            single = [await engine.predict(key, row, use_cache=False) for row in x]
            batched = await asyncio.gather(*(engine.predict(key, row) for row in x))
            cached = await asyncio.gather(*(engine.predict(key, row) for row in x))
            if not all(r.success for r in single + list(batched) + list(cached)):
                rows.append(
                    check_row(
                        "parity_batched_single_cached", key, False, detail="some requests failed"
                    )
                )
                continue
            s = np.stack([r.output for r in single])
            b = np.stack([r.output for r in batched])
            c = np.stack([r.output for r in cached])
            diff = float(max(np.abs(s - b).max(), np.abs(s - c).max()))
            hits = sum(r.cache_hit for r in cached)
            rows.append(
                check_row(
                    "parity_batched_single_cached",
                    key,
                    diff <= tolerance and hits == len(x),
                    diff,
                    "max abs diff",
                    tolerance,
                    f"64 probes alone vs batched (largest batch "
                    f"{max(r.batch_size for r in batched)}) vs cached ({hits} hits)",
                )
            )
            outputs[manager.model_info[key].format] = s
        if len(outputs) == 2:
            diff = float(np.abs(outputs["torchscript"] - outputs["onnx"]).max())
            rows.append(
                check_row(
                    "parity_torchscript_onnx",
                    name,
                    diff <= tolerance,
                    diff,
                    "max abs diff",
                    tolerance,
                    "64 probes through the engine",
                )
            )
        recorded = (info[name].get("parity") or {}).get("max_abs_diff") or {}
        if recorded:
            worst = max(float(v) for v in recorded.values())
            rows.append(
                check_row(
                    "parity_eager_build",
                    name,
                    worst <= tolerance,
                    worst,
                    "max abs diff",
                    tolerance,
                    f"recorded by the build: {recorded}",
                )
            )
    return rows


async def _slas(run, engine, manager, info, serving, targets) -> list[dict[str, Any]]:
    rows = []
    for key in serving:
        name = manager.model_info[key].name
        entry = info[name]
        holdout = entry.get("holdout_file")
        if not holdout or not (run.models / holdout).exists():
            continue
        with np.load(run.models / holdout) as data:
            x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"])
        results = []
        for start in range(0, len(x), 512):
            results += await asyncio.gather(
                *(engine.predict(key, row, use_cache=False) for row in x[start : start + 512])
            )
        if not all(r.success for r in results):
            failed = sum(not r.success for r in results)
            rows.append(
                check_row(
                    f"model_sla_{name}", key, False, detail=f"{failed} hold-out requests failed"
                )
            )
            continue
        out = np.stack([r.output for r in results])
        if entry.get("model_type") == "classification":
            target = targets["routing_accuracy"]
            measured = float(np.mean(np.argmax(out, axis=1) == y.astype(int)))
            check, unit = "model_sla_routing_accuracy", "accuracy"
        else:
            target = targets["quality_correlation"]
            measured = float(np.corrcoef(out.reshape(-1), y.reshape(-1).astype(float))[0, 1])
            check, unit = "model_sla_quality_correlation", "pearson r"
        rows.append(
            check_row(
                check,
                key,
                target.passes(measured),
                measured,
                unit,
                target.threshold,
                f"{len(x)} hold-out rows through the engine ({entry.get('version')})",
            )
        )
    return rows
