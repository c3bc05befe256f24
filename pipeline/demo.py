"""A short, honest demo of the inference engine on built models (the quickstart's job
until the DAG exists): single requests, a concurrent batch, and a few seconds of open-loop
load, with every figure measured here."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_demo"]


def run_demo(
    model_dir: str | Path,
    *,
    rate_rps: float = 1000.0,
    duration_s: float = 3.0,
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Load every model in `model_dir`, exercise the engine, print and return a summary."""
    from pipeline.inference import (
        MemoryPoolManager,
        ProductionInferenceEngine,
        ProductionModelManager,
        RealTimePerformanceMonitor,
        ResultCache,
    )
    from pipeline.loadgen import run_open_loop, summarize

    model_dir = Path(model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    manager = ProductionModelManager(model_dir, max_memory_mb=500)
    out(f"==> loading {len(manager.available_models)} models from {model_dir}")
    for key in manager.available_models:
        ok = manager.load_model(key)
        mi = manager.model_info[key]
        if ok:
            out(
                f"    {key:34s} v{mi.version}  load {mi.load_time_ms:6.1f} ms  warm-up "
                f"{mi.warmup_time_ms:6.1f} ms  sha256 {mi.sha256[:12]} verified"
            )
        else:
            out(f"    {key:34s} FAILED: {manager.load_errors[key]}")
    monitor = RealTimePerformanceMonitor(window_seconds=30)
    engine = ProductionInferenceEngine(
        manager,
        max_batch_size=32,
        memory_pool=MemoryPoolManager(400),
        cache=ResultCache(10_000),
        monitor=monitor,
    )
    rng = np.random.default_rng(0)
    summary: dict[str, Any] = {"models": {}}
    # Objects from start-up (torch, models) never need scanning again: without this a full
    # collection in a process that imported torch pauses everything for tens of ms.
    gc.collect()
    gc.freeze()

    async def scenario() -> None:
        for key in manager.loaded_models:
            model = manager.get_model(key)
            x = rng.random(model.feature_shape, dtype=np.float32)
            result = await engine.predict(key, x)
            meta = info.get(model.info.name, {})
            shown = np.array2string(result.output, precision=3, separator=", ")
            classes = meta.get("class_names")
            if classes and result.success:
                shown += f" -> {classes[int(np.argmax(result.output))]}"
            out(f"==> {key}: output {shown}  ({result.total_time_ms:.2f} ms)")
            summary["models"][key] = {"version": model.version, "success": result.success}
        routing = next((k for k in manager.loaded_models if "routing" in k), None)
        if routing:
            batch = rng.random((32, 15), dtype=np.float32)
            results = await engine.predict_batch(routing, batch)
            out(
                f"==> 32 routing requests submitted together: batch sizes "
                f"{sorted({r.batch_size for r in results})}, all succeeded: "
                f"{all(r.success for r in results)}"
            )
        for key in manager.loaded_models:
            if not key.endswith("_onnx"):
                continue
            model = manager.get_model(key)
            xs = rng.random((1024, *model.feature_shape), dtype=np.float32)
            record = await run_open_loop(
                lambda i, key=key, xs=xs: engine.predict(key, xs[i & 1023], use_cache=False),
                rate_rps,
                duration_s,
                warmup_s=0.5,
            )
            s = summarize(record)
            validity = "valid" if s.valid else "INVALID: " + "; ".join(s.invalid_reasons)
            out(
                f"==> {key}: open-loop Poisson {rate_rps:.0f} req/s for {duration_s:g} s: "
                f"p50 {s.p50_ms:.2f} ms, p99 {s.p99_ms:.2f} ms, errors {s.error_rate:.2%}, "
                f"mean batch {s.mean_batch_size:.1f} ({validity})"
            )
            summary["models"][key]["load"] = s.to_dict()

    asyncio.run(scenario())
    metrics = monitor.get_current_metrics()
    pool = engine.memory_pool.get_memory_stats()
    out(
        f"==> monitor: {metrics.requests_total} requests, error rate {metrics.error_rate:.2%}, "
        f"p99 {metrics.p99_latency_ms:.2f} ms, RSS {metrics.memory_usage_mb:.0f} MB; pool reuse "
        f"{pool.reuse_ratio:.1%} ({pool.current_pool_size_mb:.2f} MB)"
    )
    summary["metrics"] = metrics.to_dict()
    summary["engine"] = engine.get_stats()
    return summary
