"""Benchmark: the regression comparisons on the real engine — false alarms (A/A) and the
smallest slowdown they catch (sensitivity), measured in this run on this machine.

The regression stage measures two things now, with the baseline's model beside this run's:
the model's own compute time (both files called alternately in one process) and end-to-end
latency (both in one engine process, alternating closed-loop blocks). This bench runs
exactly those functions of `pipeline.stages.regression`:

- models: the two example models (built here) and an image-sized CNN (3x64x64 input,
  10 classes, exported to ONNX here);
- A/A: each model against an identical copy of itself, `--pairs` times: every comparison
  flagged is a false alarm;
- sensitivity: each model against a copy made slower per call by a known factor (1.5x,
  2x): the ONNX graph gets a chain of matrix products whose result is multiplied by zero
  and added to the output (the answers do not change; onnxruntime cannot drop it), the
  chain's length calibrated so one call at batch 1 takes `factor` times as long; the
  factor actually reached is measured and printed. Each factor is compared `--reps` times.

Prints, per model and comparison (compute time; end-to-end p50, p95, p99 per model), the
false-alarm count out of the pairs and the detection rate per factor; `--json` writes them.

    .venv/bin/python bench/regression_engine.py [--profile smoke|nightly] [--pairs 10]
        [--reps 3] [--factors 1.5 2.0] [--models quality_predictor image] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline._io import sha256_file  # noqa: E402
from pipeline.build.export import export_onnx  # noqa: E402
from pipeline.regression.config import default_regression_config  # noqa: E402
from pipeline.regression.stats import compare_samples  # noqa: E402

LATENCY = (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99"))
CHAIN_SIZES = (8, 16, 32, 64, 128)  # the slowdown chain's square matrices, smallest first


# --------------------------------------------------------------------------- models
def _image_model(folder: Path) -> None:
    """An image-sized classifier (3x64x64 -> 10), ONNX, dynamic batch, in `folder`."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(512, 10),
    ).eval()
    path = folder / "image.onnx"
    export_onnx(net, torch.rand(2, 3, 64, 64), path, "x", "y")
    info_path = folder / "model_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["image"] = {
        "name": "image",
        "model_type": "classification",
        "source": "imported",
        "version": "bench-1",
        "input_name": "x",
        "output_name": "y",
        "input_shape": [None, 3, 64, 64],
        "output_shape": [None, 10],
        "input_dtype": "float32",
        "output_dtype": "float32",
        "snapshot_date": "2026-01-01",
        "files": {"onnx": _file_entry(path)},
        "parity": {"reference": None},
    }
    info_path.write_text(json.dumps(info, indent=2))


def _file_entry(path: Path) -> dict:
    return {"path": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def slowed_onnx(data: bytes, steps: int, size: int = 128) -> bytes:
    """The model with `steps` extra size x size matrix products whose result, times zero,
    is added to the output: the same answers, more compute per call."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    x, y = graph.input[0].name, graph.output[0].name
    renamed = f"{y}__orig"
    for node in graph.node:
        node.output[:] = [renamed if o == y else o for o in node.output]
    rng = np.random.default_rng(0)
    w = (rng.random((size, size)) / size).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(w, "slow__w"),
            numpy_helper.from_array(np.zeros((), np.float32), "slow__zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceSum", [x], ["slow__sx"], keepdims=0),
        helper.make_node("Mul", ["slow__sx", "slow__zero"], ["slow__z"]),
        helper.make_node("Add", ["slow__w", "slow__z"], ["slow__m0"]),
    ]
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [f"slow__m{i}", "slow__w"], [f"slow__m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"slow__m{steps}"], ["slow__mean"], keepdims=0),
        helper.make_node("Mul", ["slow__mean", "slow__zero"], ["slow__nothing"]),
        helper.make_node("Add", [renamed, "slow__nothing"], [y]),
    ]
    graph.node.extend(nodes)
    return model.SerializeToString()


def _call_ms(data: bytes, batch: np.ndarray, calls: int = 200) -> float:
    from pipeline.inference.runtimes import load_runtime

    runtime = load_runtime("onnx", data, num_threads=1)
    for _ in range(20):
        runtime.run(batch)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.run(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000.0


def calibrate(data: bytes, batch: np.ndarray, factor: float) -> tuple[bytes, str, float]:
    """A slowed copy whose call at `batch` takes about `factor` x as long: the largest chain
    matrix that still needs >= 8 steps (fine-grained), its steps fitted from a probe;
    (model bytes, how, the factor reached, measured)."""
    base = _call_ms(data, batch)
    wanted = (factor - 1.0) * base
    size, steps = CHAIN_SIZES[0], 1
    for candidate in CHAIN_SIZES:
        probe = 32
        per_step = max((_call_ms(slowed_onnx(data, probe, candidate), batch) - base) / probe, 1e-5)
        if wanted / per_step < 8 and candidate != CHAIN_SIZES[0]:
            break
        size, steps = candidate, max(1, round(wanted / per_step))
    slowed = slowed_onnx(data, steps, size)
    reached = _call_ms(slowed, batch) / base
    if reached > 1.0 and abs(reached - factor) > 0.05 * factor:  # one correction
        steps = max(1, round(steps * (factor - 1.0) / (reached - 1.0)))
        slowed = slowed_onnx(data, steps, size)
        reached = _call_ms(slowed, batch) / base
    return slowed, f"{steps} x {size}x{size} matmuls", reached


# --------------------------------------------------------------------------- runs
def _copy_run(src: Path, dst: Path, model: str, replace: bytes | None = None) -> Path:
    """A run folder at `dst` with the models of `src` (model `model`'s ONNX file replaced
    by `replace`)."""
    shutil.copytree(src / "models", dst / "models")
    if replace is not None:
        info_path = dst / "models" / "model_info.json"
        info = json.loads(info_path.read_text())
        path = dst / "models" / info[model]["files"]["onnx"]["path"]
        path.write_bytes(replace)
        info[model]["files"]["onnx"] = _file_entry(path)
        info_path.write_text(json.dumps(info, indent=2))
    return dst


def _compare(run: Path, base: Path, model: str, profile: str) -> dict[str, str]:
    """Verdict per comparison for `model`: compute time (batch 1 and 32, worse decides) and
    end-to-end p50/p95/p99 A/B, exactly as the regression stage measures them."""
    from pipeline.inference import ProductionModelManager
    from pipeline.inference.model_manager import dummy_batch
    from pipeline.inference.runtimes import load_runtime
    from pipeline.stages import regression as stage
    from pipeline.stages.context import StageContext

    cfg = default_regression_config()
    ctx = StageContext.open(run, "regression", profile)
    base_files = stage.folder_files(base, "baseline")
    out: dict[str, str] = {}
    info = ctx.run.model_info()
    manager = ProductionModelManager(ctx.run.models, warmup_enabled=False)
    key = f"{model}_onnx"
    manager.load_model(key)
    loaded = manager.get_model(key)
    ours = load_runtime(
        "onnx", (run / "models" / info[model]["files"]["onnx"]["path"]).read_bytes()
    )
    b_info = json.loads((base / "models" / "model_info.json").read_text())
    theirs = load_runtime(
        "onnx", (base / "models" / b_info[model]["files"]["onnx"]["path"]).read_bytes()
    )
    worst = None
    for size in (1, 32):
        batch = dummy_batch((size, *loaded.feature_shape), loaded.dtype)
        b_t, c_t = stage._time_pair(theirs, ours, batch)
        comparison = compare_samples(
            b_t,
            c_t,
            statistic="p50",
            max_relative_change=cfg["compute_time_ms"].max_relative_change,
            alpha=cfg["compute_time_ms"].alpha,
            baseline_groups=np.arange(b_t.size) // stage.PAIRED_GROUP,
            candidate_groups=np.arange(c_t.size) // stage.PAIRED_GROUP,
        )
        if worst is None or comparison.ci_low > worst.ci_low:
            worst = comparison
    out["compute_time"] = f"{worst.verdict}:{worst.ratio:.3f}"
    samples = asyncio.run(stage._ab_blocks(ctx, base_files, [model]))
    mine, mine_b, theirs_s, theirs_b = samples[model]
    for metric, statistic in LATENCY:
        comparison = compare_samples(
            np.asarray(theirs_s, float),
            np.asarray(mine, float),
            statistic=statistic,
            max_relative_change=cfg[metric].max_relative_change,
            alpha=cfg[metric].alpha,
            n_boot=cfg.bootstrap_resamples,
            baseline_groups=np.asarray(theirs_b),
            candidate_groups=np.asarray(mine_b),
        )
        out[f"e2e_{statistic}"] = f"{comparison.verdict}:{comparison.ratio:.3f}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--pairs", type=int, default=10, help="A/A comparisons per model")
    parser.add_argument("--reps", type=int, default=3, help="comparisons per slowdown factor")
    parser.add_argument("--factors", type=float, nargs="*", default=[1.5, 2.0])
    parser.add_argument("--models", nargs="*", default=["quality_predictor", "image"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pipeline.build import build_models

    results: dict = {"profile": args.profile, "pairs": args.pairs, "models": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="relcert-bench-regr-") as tmp:
        root = Path(tmp)
        origin = root / "origin"
        build_models(origin / "models", "2026-01-01", progress=lambda _: None)
        _image_model(origin / "models")
        for model in args.models:
            info = json.loads((origin / "models" / "model_info.json").read_text())
            data = (origin / "models" / info[model]["files"]["onnx"]["path"]).read_bytes()
            base = _copy_run(origin, root / f"{model}-base", model)
            entry = results["models"].setdefault(model, {"aa": [], "factors": {}})
            for i in range(args.pairs):
                run = _copy_run(origin, root / f"{model}-aa{i}", model)
                verdicts = _compare(run, base, model, args.profile)
                entry["aa"].append(verdicts)
                print(f"{model} A/A {i + 1}/{args.pairs}: {verdicts}", flush=True)
            from pipeline.inference.model_manager import dummy_batch

            shape = tuple(info[model]["input_shape"][1:])
            for factor in args.factors:
                slowed, steps, reached = calibrate(
                    data, dummy_batch((1, *shape), np.float32), factor
                )
                got = []
                for i in range(args.reps):
                    run = _copy_run(origin, root / f"{model}-x{factor}-{i}", model, slowed)
                    verdicts = _compare(run, base, model, args.profile)
                    got.append(verdicts)
                    print(f"{model} x{factor} (reached {reached:.2f}x): {verdicts}", flush=True)
                entry["factors"][str(factor)] = {"reached": reached, "steps": steps, "runs": got}
    print()
    print(f"profile {args.profile}; {time.perf_counter() - started:.0f} s")
    for model, entry in results["models"].items():
        names = list(entry["aa"][0]) if entry["aa"] else []
        for name in names:
            alarms = sum(v[name].startswith("regression") for v in entry["aa"])
            line = f"{model:18s} {name:13s} A/A false alarms {alarms}/{len(entry['aa'])}"
            for factor, data in entry["factors"].items():
                hits = sum(v[name].startswith("regression") for v in data["runs"])
                line += f"; x{factor} (reached {data['reached']:.2f}) {hits}/{len(data['runs'])}"
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
