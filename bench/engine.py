"""Benchmark: the inference engine against a naive baseline and the harness's ceiling.

Everything below is measured in one run on this machine, each system in its own fresh
process, all driven by the same open-loop Poisson load generator (`pipeline.loadgen`;
latency from the scheduled send time, issue delay recorded) on the quality predictor:

- naive:        an eager PyTorch module called once per request (no batching);
- null:         the engine with a model that does no work (the harness's ceiling);
- torchscript:  the engine with the TorchScript backend;
- onnx:         the engine with the ONNX Runtime backend.

For each: the highest sustained rate with p99 <= 5 ms and no errors (doubling, then
bisection), and p50/p99 at a fixed 1,000 req/s. Then the peak RSS of a process hosting the
engine with both models loaded (torch + ONNX, and ONNX only), and the load + warm-up time
of both example models after imports. Ratios are printed on the last lines.

    .venv/bin/python bench/engine.py [--quick] [--model-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SNAPSHOT = "2026-01-15"
P99_BOUND_MS = 5.0
FIXED_RATE = 1000.0
SYSTEMS = ("naive", "null", "torchscript", "onnx")


# --------------------------------------------------------------------------- workers
class _NaiveResult:
    __slots__ = ("output",)
    success = True
    batch_size = 1
    cache_hit = False
    error = None

    def __init__(self, output: np.ndarray) -> None:
        self.output = output


class NaiveEagerServer:
    """The baseline: each request runs the eager module on its own, in arrival order."""

    def __init__(self, module) -> None:
        import torch

        self._torch = torch
        self._module = module.eval()

    def predict(self, _key: str, x: np.ndarray) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        loop.call_soon(self._serve, x, future)
        return future

    def serve_now(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            out = self._module(torch.from_numpy(x).unsqueeze(0))
        return out[0].numpy()

    def _serve(self, x: np.ndarray, future: asyncio.Future) -> None:
        future.set_result(_NaiveResult(self.serve_now(x)))


def _system(name: str, model_dir: Path):
    """(object with predict(key, x) -> future, key) for one system under test."""
    from pipeline.inference import MemoryPoolManager, ProductionInferenceEngine
    from pipeline.inference import ProductionModelManager as Manager

    if name == "naive":
        import torch

        from pipeline.build.examples import build_quality_predictor
        from pipeline.build.seeds import model_seed

        torch.set_num_threads(1)
        date = json.loads((model_dir / "model_info.json").read_text())["quality_predictor"][
            "snapshot_date"
        ]
        import datetime as dt

        day = dt.date.fromisoformat(date)
        built = build_quality_predictor(day, model_seed("quality_predictor", day))
        return NaiveEagerServer(built.module), "quality_predictor"
    manager = Manager(model_dir)
    if name == "null":
        key = manager.register_null_model("quality_predictor", (10,), (1,))
    else:
        key = f"quality_predictor_{name}"
        if not manager.load_model(key):
            raise SystemExit(f"cannot load {key}: {manager.load_errors.get(key)}")
    engine = ProductionInferenceEngine(
        manager, max_batch_size=64, memory_pool=MemoryPoolManager(64), max_queue_size=4096
    )
    return engine, key


def worker_capacity(name: str, model_dir: Path, quick: bool) -> dict:
    from pipeline.build.synthetic import sample_quality_inputs
    from pipeline.loadgen import find_max_sustained_rate, run_open_loop, summarize

    server, key = _system(name, model_dir)
    xs = sample_quality_inputs(np.random.default_rng(7), 4096).astype(np.float32)
    duration, warmup = (1.5, 0.3) if quick else (3.0, 0.5)
    gc.collect()
    gc.freeze()  # startup objects (torch, models) never need scanning again

    def send(i: int):
        return server.predict(key, xs[i & 4095])

    async def trial(rate: float):
        record = await run_open_loop(send, rate, duration, warmup_s=warmup, seed=int(rate))
        return summarize(record, percentile=99)

    async def main() -> dict:
        # untimed: the process's first second of traffic (lazy initialisation, caches) is
        # not what any trial measures
        await run_open_loop(send, FIXED_RATE, 1.0, seed=0)
        fixed = summarize(
            await run_open_loop(send, FIXED_RATE, 2 * duration, warmup_s=warmup, seed=1),
            percentile=99,
        )
        capacity = await find_max_sustained_rate(
            trial,
            p99_bound_ms=P99_BOUND_MS,
            start_rps=1000.0,
            max_rps=1_000_000.0,  # above any rate here: the null ceiling is measured, not capped
            refine_steps=3 if quick else 5,
            progress=lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True),
        )
        return {
            "system": name,
            "max_sustained_rps": capacity.max_sustained_rps,
            "compute_ceiling_rps": _compute_ceiling(server, key, xs) if name == "naive" else None,
            # every rate up to the search's cap was sustained: capacity is at least this
            "capped": capacity.capped,
            "best": capacity.best.to_dict() if capacity.best else None,
            "trials": capacity.trial_table(),
            "fixed_rate": fixed.to_dict(),
        }

    return asyncio.run(main())


def _compute_ceiling(server, key: str, xs: np.ndarray, calls: int = 5000) -> float:
    """The naive server's rate if it were busy 100% of the time with no harness at all:
    1 / (time per eager call, in a tight loop). A bound no open-loop trial can reach, so
    the ratios against it are conservative."""
    for i in range(500):
        server.serve_now(xs[i & 4095])
    started = time.perf_counter()
    for i in range(calls):
        server.serve_now(xs[i & 4095])
    return calls / (time.perf_counter() - started)


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that across exec from
    the parent's fork, so a child would report the orchestrator's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def worker_rss(model_dir: Path, onnx_only: bool) -> dict:
    from pipeline.inference import MemoryPoolManager, ProductionInferenceEngine
    from pipeline.inference import ProductionModelManager as Manager

    manager = Manager(model_dir)
    keys = [k for k in manager.available_models if k.endswith("_onnx") or not onnx_only]
    for key in keys:
        assert manager.load_model(key), manager.load_errors
    engine = ProductionInferenceEngine(manager, memory_pool=MemoryPoolManager(400))
    rng = np.random.default_rng(0)

    async def serve() -> None:
        for _ in range(50):
            futures = [
                engine.predict(k, rng.random(manager.get_model(k).feature_shape, np.float32))
                for k in keys
                for _ in range(16)
            ]
            await asyncio.gather(*futures)

    asyncio.run(serve())
    return {
        "models": keys,
        "torch_imported": "torch" in sys.modules,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_load(model_dir: Path) -> dict:
    import onnxruntime  # noqa: F401  (imports happen before the clock starts)
    import torch  # noqa: F401

    from pipeline.inference import ProductionModelManager as Manager

    started = time.perf_counter()
    manager = Manager(model_dir)
    for key in manager.available_models:
        assert manager.load_model(key), manager.load_errors
    return {
        "models": manager.available_models,
        "load_and_warmup_s": time.perf_counter() - started,
        "per_model_ms": {
            k: manager.model_info[k].load_time_ms + manager.model_info[k].warmup_time_ms
            for k in manager.available_models
        },
    }


# --------------------------------------------------------------------------- orchestration
def _spawn(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="models built by `relcert build`")
    parser.add_argument("--quick", action="store_true", help="shorter trials (less precise)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker.startswith("capacity:"):
            result = worker_capacity(args.worker.split(":", 1)[1], args.model_dir, args.quick)
        elif args.worker == "rss-torch":
            result = worker_rss(args.model_dir, onnx_only=False)
        elif args.worker == "rss-onnx":
            result = worker_rss(args.model_dir, onnx_only=True)
        else:
            result = worker_load(args.model_dir)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="relcert-bench-") as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from pipeline.build import build_models

            model_dir = Path(tmp) / "models"
            print(f"building the example models for {SNAPSHOT} ...", flush=True)
            build_models(model_dir, snapshot_date=SNAPSHOT)
        common = ["--model-dir", str(model_dir)] + (["--quick"] if args.quick else [])
        results: dict = {"capacity": {}}
        load = _spawn(["--worker", "load", *common])
        results["load"] = load
        print(f"load + warm-up of {len(load['models'])} models: {load['load_and_warmup_s']:.2f} s")
        for system in SYSTEMS:
            print(f"measuring {system} ...", flush=True)
            results["capacity"][system] = _spawn(["--worker", f"capacity:{system}", *common])
        results["rss_torch"] = _spawn(["--worker", "rss-torch", *common])
        results["rss_onnx"] = _spawn(["--worker", "rss-onnx", *common])

    cap = {s: results["capacity"][s]["max_sustained_rps"] for s in SYSTEMS}
    print()
    print(
        f"{'system':12s} {'max rps (p99<=5ms)':>19s} {'p50@1k ms':>10s} {'p99@1k ms':>10s}"
        f" {'batch@max':>10s} {'valid@1k':>9s}"
    )
    for system in SYSTEMS:
        r = results["capacity"][system]
        fixed, best = r["fixed_rate"], r["best"] or {}
        at_least = ">=" if r.get("capped") else ""
        print(
            f"{system:12s} {at_least:>2s}{cap[system]:17.0f} {fixed['p50_ms']:10.3f}"
            f" {fixed['p99_ms']:10.3f}"
            f" {best.get('mean_batch_size', 0):10.1f} {fixed['valid']!s:>9s}"
        )
    rss_t, rss_o = results["rss_torch"], results["rss_onnx"]
    print(f"peak RSS, engine + both models (torch and ONNX): {rss_t['peak_rss_mb']:.0f} MB")
    print(
        f"peak RSS, engine + both models (ONNX only, torch imported: "
        f"{rss_o['torch_imported']}): {rss_o['peak_rss_mb']:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    ts, ox = results["capacity"]["torchscript"], results["capacity"]["onnx"]
    print()
    capped = {s: bool(results["capacity"][s].get("capped")) for s in SYSTEMS}

    def ratio(a: str, b: str) -> str:
        # a capped numerator is only a lower bound (the ratio is at least this), a capped
        # denominator only an upper one (the ratio is at most this)
        mark = ">=" if capped[a] and not capped[b] else "<=" if capped[b] and not capped[a] else ""
        note = "" if not (capped[a] or capped[b]) else "  (a capped search: a bound)"
        return f"{mark}{cap[a] / cap[b]:.2f}{note}"

    print(f"RATIO engine_torchscript/naive = {ratio('torchscript', 'naive')}  (goal >= 8)")
    print(f"RATIO engine_onnx/naive        = {ratio('onnx', 'naive')}  (goal >= 8)")
    ceiling = results["capacity"]["naive"]["compute_ceiling_rps"]
    print(
        f"naive compute-bound ceiling (1 / eager call time, busy 100%, no harness): "
        f"{ceiling:.0f} req/s"
    )
    for system in ("torchscript", "onnx"):
        mark = ">=" if capped[system] else ""
        print(
            f"RATIO engine_{system}/naive_compute_ceiling = {mark}{cap[system] / ceiling:.2f}"
            "  (conservative: the naive server cannot reach its ceiling under load)"
        )
    print(f"RATIO engine_torchscript/null  = {ratio('torchscript', 'null')}  (goal >= 0.8)")
    print(f"RATIO engine_onnx/null         = {ratio('onnx', 'null')}  (goal >= 0.8)")
    print(
        f"AT 1000 req/s torchscript p50 {ts['fixed_rate']['p50_ms']:.3f} ms, p99 "
        f"{ts['fixed_rate']['p99_ms']:.3f} ms; onnx p50 {ox['fixed_rate']['p50_ms']:.3f} ms, "
        f"p99 {ox['fixed_rate']['p99_ms']:.3f} ms  (goal p50 <= 1, p99 <= 2)"
    )
    print(
        f"RSS torch+onnx {rss_t['peak_rss_mb']:.0f} MB (goal <= 500); onnx-only "
        f"{rss_o['peak_rss_mb']:.0f} MB; load+warm-up {load['load_and_warmup_s']:.2f} s "
        "(goal < 3)"
    )


if __name__ == "__main__":
    main()
