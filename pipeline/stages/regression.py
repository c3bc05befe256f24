"""Regression stage: this attempt against the baseline, the last approved release.

The absolute targets are a floor; release engineers gate on the change. For each model and
for the mix, this stage compares this run with its baseline (`pipeline.regression.baseline`:
the last APPROVED run of the DAG with the same models and profile and an earlier snapshot
date, or a pinned run) and judges each change with `pipeline.regression.stats`: a change is
a regression only when it is larger than its allowance in the targets file's `regression:`
block AND significant (the whole 99% interval of candidate/baseline beyond the allowance).

Compared (one row each of stages/regression/comparisons.csv):
- end-to-end latency p50, p95, p99: the load scenarios' requests after warm-up, per model and
  for the mix (bootstrap interval of the ratio; Mann-Whitney U for p50);
- the model's own compute time, per model: re-measured here, the baseline's model file and
  this run's loaded side by side and called alternately on the same batches (batch 1 and the
  size the load served most), so the machine's state cancels out; the verdict of the worse
  size, the engine's recorded per-batch times of both load stages quoted as context;
- capacity: the knee of each model's own capacity search and of the mix's; a regression when
  the knee fell by more than the allowance plus the search's own resolution (a rate the
  baseline sustained that this run failed);
- peak RSS of the engine process (one value per load scenario);
- initialisation time per model (every load of it: integration, load and stress engines);
- quality per model, in absolute points on the SAME evaluation set: this run's model is
  scored on the baseline's evaluation set and compared with the baseline's score on it.

Without a baseline, or against one that is not comparable (another profile, CPU count or CPU
model), every row is not applicable with the reason. A regression named in the run's
`waive_regression` (with its written justification) passes, and caps the decision at
CONDITIONAL_APPROVAL.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.criteria import criterion_name
from pipeline.names import Status
from pipeline.stages.context import StageContext

__all__ = ["run"]

LATENCY = (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99"))
#: batches of one size each run needs for a compute-time comparison
MIN_BATCHES = 20


# --------------------------------------------------------------------------- run readers
@dataclass
class RunFiles:
    """One run's files (this run's folder, or the baseline's in the artifact store), read
    for its current attempt only."""

    label: str
    read: Callable[[str], bytes | None]

    def json(self, relative: str) -> Any:
        raw = self.read(relative)
        return None if raw is None else json.loads(raw)

    @property
    def attempt(self) -> str | None:
        data = self.json("attempt.json") or {}
        return data.get("attempt_id")

    def table(self, relative: str):
        import pandas as pd

        raw = self.read(relative)
        if raw is None:
            return None
        frame = pd.read_csv(io.BytesIO(raw))
        if "attempt_id" in frame.columns and self.attempt:
            frame = frame[frame["attempt_id"] == self.attempt]
        return frame

    def requests(self):
        """Load-scenario requests after warm-up that succeeded."""
        frame = self.table("stages/load/requests.csv")
        if frame is None:
            return None
        return frame[~frame["warmup"].astype(bool) & frame["success"].astype(bool)]


def folder_files(root: Path, label: str) -> RunFiles:
    """The files of a run folder on this machine."""

    def read(relative: str) -> bytes | None:
        path = root / relative
        return path.read_bytes() if path.is_file() else None

    return RunFiles(label, read)


def _local(ctx: StageContext) -> RunFiles:
    return folder_files(ctx.run.root, "this run")


def _stored(store, location: str, label: str) -> RunFiles:
    def read(relative: str) -> bytes | None:
        try:
            return store.read_bytes(store.join(location, *relative.split("/")))
        except FileNotFoundError:
            return None

    return RunFiles(label, read)


def _seed(metric: str, model: str | None) -> int:
    """A bootstrap seed per comparison, the same in every process (unlike hash())."""
    import zlib

    return zlib.crc32(f"{metric}[{model}]".encode())


# --------------------------------------------------------------------------- rows
def _row(
    metric: str,
    model: str | None,
    allowance,
    *,
    comparison=None,
    status: Status | None = None,
    detail: str = "",
) -> dict[str, Any]:
    name = criterion_name(metric, model)
    if comparison is None:
        return {
            "name": name,
            "metric": metric,
            "model": model or "",
            "status": str(status or Status.NOT_APPLICABLE),
            "passed": False,
            "verdict": "",
            "baseline_value": math.nan,
            "candidate_value": math.nan,
            "ratio": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_value": math.nan,
            "allowance": allowance.max_relative_change or allowance.max_absolute_drop or 0.0,
            "samples": 0,
            "baseline_samples": 0,
            "method": "",
            "waived": False,
            "detail": detail,
        }
    applicable = comparison.applicable
    return {
        "name": name,
        "metric": metric,
        "model": model or "",
        "status": str(Status.MEASURED if applicable else Status.NOT_APPLICABLE),
        "passed": applicable and not comparison.regressed,
        "verdict": str(comparison.verdict),
        "baseline_value": comparison.baseline_value,
        "candidate_value": comparison.candidate_value,
        "ratio": comparison.ratio,
        "ci_low": comparison.ci_low,
        "ci_high": comparison.ci_high,
        "p_value": math.nan if comparison.p_value is None else comparison.p_value,
        "allowance": comparison.allowance,
        "samples": comparison.candidate_n,
        "baseline_samples": comparison.baseline_n,
        "method": comparison.method,
        "waived": False,
        "detail": (detail + "; " if detail else "") + comparison.reason,
    }


BASELINE_SUFFIX = "__baseline"


def _ab_models_dir(ctx: StageContext, base: RunFiles, models: list[str], folder) -> dict:
    """A models folder with this run's models and, beside each, the baseline's file of the
    same format as `<name>__baseline`; returns {model: (our key, the baseline's key)} for
    the models the baseline has a file of."""
    import shutil

    from pipeline.stages.common import serving_keys

    info = ctx.run.model_info()
    b_info = base.json("models/model_info.json") or {}
    for item in ctx.run.models.iterdir():
        if item.is_file():
            shutil.copy2(item, folder / item.name)
    keys = serving_keys(info)
    pairs = {}
    merged = dict(info)
    for model in models:
        fmt = keys[model][len(model) + 1 :]
        theirs = dict(b_info.get(model) or {})
        entry = ((theirs.get("files") or {}).get(fmt)) or None
        raw = base.read(f"models/{entry['path']}") if entry else None
        if raw is None:
            continue
        name = f"{model}{BASELINE_SUFFIX}"
        target = name + PurePosixPath(entry["path"]).suffix
        (folder / target).write_bytes(raw)
        theirs.update(name=name, files={fmt: {**entry, "path": target}})
        for key in ("evaluation_file", "reference_file", "sla"):
            theirs.pop(key, None)
        merged[name] = theirs
        pairs[model] = (keys[model], f"{name}_{fmt}")
    (folder / "model_info.json").write_text(json.dumps(merged))
    return pairs


async def _ab_blocks(ctx: StageContext, base: RunFiles, models: list[str]) -> dict:
    """Latency samples (ms) of this run's models and the baseline's, measured now in one
    engine process in alternating closed-loop blocks (ABBA ...): {subject: (ours, theirs)}
    for the mix and each model the baseline has."""
    import tempfile

    from pipeline.inference.settings import EngineSettings
    from pipeline.stages.engine_host import EngineHost, HostConfig
    from pipeline.stages.load import LoadRun, Workload, _closed_loop

    settings = ctx.profile.regression
    with tempfile.TemporaryDirectory(prefix="relcert-ab-") as tmp:
        folder = Path(tmp)
        pairs = _ab_models_dir(ctx, base, models, folder)
        if not pairs:
            return {}
        info = ctx.run.model_info()
        ours = {m: k for m, (k, _) in pairs.items()}
        theirs = {m: k for m, (_, k) in pairs.items()}
        # no result cache: every request computes (the pool of inputs repeats)
        host = EngineHost(
            folder,
            HostConfig(
                models=(*ours.values(), *theirs.values()), engine=EngineSettings(cache_entries=0)
            ),
        )
        await host.start()
        try:
            if host.load_errors:
                raise RuntimeError(f"the A/B engine could not load: {host.load_errors}")
            work = Workload(ctx.run, info, ours, seed=ctx.profile.seeds.workload)
            sides = (
                LoadRun(ctx, host, None, work, {}, [], np.ones(1)),
                LoadRun(ctx, host, None, work.with_keys(theirs), {}, [], np.ones(1)),
            )
            subjects = [("mix", ctx.profile.mix)] + [(m, {m: 1.0}) for m in sorted(pairs)]
            samples: dict[str, tuple[list, list, list, list]] = {}
            for s_i, (subject, behaviour) in enumerate(subjects):
                got: tuple[list, list] = ([], [])
                blk: tuple[list, list] = ([], [])
                for block in range(settings.blocks):
                    side = 0 if block % 4 in (0, 3) else 1  # A B B A A B B A
                    rows = await _closed_loop(
                        sides[side],
                        subject,
                        users=settings.users,
                        requests_per_user=100_000,
                        behaviour=behaviour,
                        think=settings.think_ms / 1000.0,
                        duration_s=settings.block_s,
                        seed=ctx.profile.seeds.regression + 100 * s_i + block,
                    )
                    # after the block's warm-up, and answered
                    kept = [r[4] for r in rows if r[3] >= settings.warmup_s and r[6]]
                    got[side].extend(kept)
                    blk[side].extend([block] * len(kept))
                samples[subject] = (got[0], blk[0], got[1], blk[1])
                ctx.say(
                    f"regression: A/B {subject}: {len(got[0])} requests of this run's, "
                    f"{len(got[1])} of the baseline's, {settings.blocks} blocks"
                )
            return samples
        finally:
            await host.stop()


def _stored_latency(cand: RunFiles, base: RunFiles, model: str | None, statistic: str) -> str:
    """The two load stages' own figures (context: different nights, different machines)."""
    from pipeline.regression.stats import sample_statistic

    c_req, b_req = cand.requests(), base.requests()
    if c_req is None or b_req is None:
        return ""
    c = c_req if model is None else c_req[c_req["model"] == model]
    b = b_req if model is None else b_req[b_req["model"] == model]
    if c.empty or b.empty:
        return ""
    cv = sample_statistic(c["latency_ms"].to_numpy(float), statistic)
    bv = sample_statistic(b["latency_ms"].to_numpy(float), statistic)
    return (
        f"; the two load stages' own {statistic}: {cv:.4g} ms vs {bv:.4g} ms "
        f"({cv / bv:.3g}x, measured at different times)"
    )


def _latency_rows(ctx, cand: RunFiles, base: RunFiles, models: list[str], cfg) -> list[dict]:
    """End-to-end latency p50/p95/p99 of the mix and each model, from the A/B blocks."""
    from pipeline.regression.stats import compare_samples

    samples = asyncio.run(_ab_blocks(ctx, base, models))
    settings = ctx.profile.regression
    rows = []
    for metric, statistic in LATENCY:
        allowance = cfg[metric]
        for model in [None, *models]:
            subject = model or "mix"
            if subject not in samples:
                rows.append(
                    _row(
                        metric,
                        model,
                        allowance,
                        detail="not applicable: the baseline has no file of this model's "
                        "serving format",
                    )
                )
                continue
            ours, ours_blocks, theirs, theirs_blocks = samples[subject]
            comparison = compare_samples(
                np.asarray(theirs, float),
                np.asarray(ours, float),
                baseline_groups=np.asarray(theirs_blocks),
                candidate_groups=np.asarray(ours_blocks),
                statistic=statistic,
                direction="max",
                max_relative_change=allowance.max_relative_change,
                alpha=allowance.alpha,
                n_boot=cfg.bootstrap_resamples,
                seed=_seed(metric, model),
            )
            rows.append(
                _row(
                    metric,
                    model,
                    allowance,
                    comparison=comparison,
                    detail=(
                        f"A/B in one engine now: {settings.blocks} alternating blocks of "
                        f"{settings.block_s:g} s, {settings.users} closed-loop users, interval "
                        "by a bootstrap over blocks" + _stored_latency(cand, base, model, statistic)
                    ),
                )
            )
    return rows


#: the interleaved re-measurement: calls per model and batch size, and its time budget
PAIRED_CALLS = 300
PAIRED_WARMUP = 20
PAIRED_SECONDS = 8.0
#: consecutive calls that form one block of the cluster bootstrap (drift within a block)
PAIRED_GROUP = 50


def _batches(requests, model: str):
    part = requests[(requests["model"] == model) & (requests["batch_size"] > 0)]
    return part.drop_duplicates("batch_id")[["batch_size", "inference_ms"]]


def _typical_batch(requests, model: str) -> int:
    """The batch size this run's load served most often for `model` (1 without data)."""
    if requests is None or "batch_id" not in requests.columns:
        return 1
    sizes = _batches(requests, model)["batch_size"]
    return int(sizes.mode().iloc[0]) if len(sizes) else 1


def _stored_ratio(cand: RunFiles, base: RunFiles, model: str, size: int) -> str:
    """The engine's own per-batch times of both load stages at `size` (context only: two
    runs on different nights differ by the machine's state as much as by the model)."""
    c_req, b_req = cand.requests(), base.requests()
    if c_req is None or b_req is None or "inference_ms" not in b_req.columns:
        return "the baseline's load stage recorded no per-batch time"
    c, b = _batches(c_req, model), _batches(b_req, model)
    c, b = c[c["batch_size"] == size]["inference_ms"], b[b["batch_size"] == size]["inference_ms"]
    if len(c) < MIN_BATCHES or len(b) < MIN_BATCHES:
        return f"fewer than {MIN_BATCHES} batches of {size} in a load stage"
    return (
        f"the load stages' recorded per-batch times at {size}: {c.median():.4g} ms vs "
        f"{b.median():.4g} ms ({c.median() / b.median():.3g}x, {len(c)}/{len(b)} batches)"
    )


def _time_pair(base_rt, cand_rt, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-call times (ms) of both runtimes on the same batch (an array; a list of arrays,
    one per input, for a model of named tensors), alternating A B B A so that neither always
    goes first; bounded by PAIRED_CALLS and PAIRED_SECONDS."""
    import time

    if isinstance(batch, list):
        base_run, cand_run = base_rt.run_many, cand_rt.run_many
    else:
        base_run, cand_run = base_rt.run, cand_rt.run
    for _ in range(PAIRED_WARMUP):
        base_run(batch)
        cand_run(batch)
    base_t, cand_t = [], []
    deadline = time.perf_counter() + PAIRED_SECONDS
    for i in range(PAIRED_CALLS):
        order = ((base_run, base_t), (cand_run, cand_t))
        for run, out in order if i % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            run(batch)
            out.append((time.perf_counter() - started) * 1000.0)
        if time.perf_counter() > deadline:
            break
    return np.asarray(base_t), np.asarray(cand_t)


def _compute_rows(ctx: StageContext, cand: RunFiles, base: RunFiles, models, cfg) -> list[dict]:
    """The model's own compute time, re-measured now: the baseline's model file and this
    run's, loaded side by side in this process and called alternately on the same batches
    (the batch size the load served most, and 1), so the machine's state cancels out. The
    engine's recorded per-batch times of both load stages are quoted as context."""
    from pipeline.inference import ProductionModelManager
    from pipeline.inference.model_manager import dummy_batch
    from pipeline.inference.runtimes import load_runtime
    from pipeline.regression.stats import compare_samples
    from pipeline.stages.common import serving_keys

    allowance = cfg["compute_time_ms"]
    c_info = cand.json("models/model_info.json") or {}
    b_info = base.json("models/model_info.json") or {}
    c_req = cand.requests()
    manager = ProductionModelManager(ctx.run.models, warmup_enabled=False)
    keys = serving_keys(c_info)
    rows = []
    for model in models:
        key = keys[model]
        fmt = key[len(model) + 1 :]
        theirs = ((b_info.get(model) or {}).get("files") or {}).get(fmt)
        raw = base.read(f"models/{theirs['path']}") if theirs else None
        if raw is None:
            rows.append(
                _row(
                    "compute_time_ms",
                    model,
                    allowance,
                    detail=f"not applicable: the baseline has no {fmt} file of {model}",
                )
            )
            continue
        if not manager.load_model(key):
            raise RuntimeError(f"{model}: {manager.load_errors.get(key, 'does not load')}")
        loaded = manager.get_model(key)
        base_rt = load_runtime(fmt, raw, num_threads=1, label=f"baseline {model}")
        ours_rt = load_runtime(
            fmt, (ctx.run.models / c_info[model]["files"][fmt]["path"]).read_bytes(), num_threads=1
        )
        fixed = loaded.fixed_batch_size
        sizes = sorted({fixed} if fixed else {1, min(64, _typical_batch(c_req, model))})
        if loaded.tensor_io:  # both runtimes take the model's inputs in its order
            for runtime in (base_rt, ours_rt):
                runtime.bind(loaded.signature.input_names, loaded.signature.output_names)
        found = []
        for size in sizes:
            if loaded.tensor_io:
                batch = loaded.signature.example_batch(size)
            else:
                batch = dummy_batch((size, *loaded.feature_shape), loaded.dtype)
            try:
                base_t, cand_t = _time_pair(base_rt, ours_rt, batch)
            except Exception as exc:  # the baseline's model no longer takes this run's input
                found = []
                why = f"the baseline's model does not run this run's batch: {exc}"
                break
            comparison = compare_samples(
                base_t,
                cand_t,
                baseline_groups=np.arange(base_t.size) // PAIRED_GROUP,
                candidate_groups=np.arange(cand_t.size) // PAIRED_GROUP,
                statistic="p50",
                direction="max",
                max_relative_change=allowance.max_relative_change,
                alpha=allowance.alpha,
                n_boot=cfg.bootstrap_resamples,
                seed=_seed("compute_time_ms", model) + size,
            )
            found.append((size, comparison))
        if not found:
            rows.append(_row("compute_time_ms", model, allowance, detail=f"not applicable: {why}"))
            continue
        # the verdict of the worst batch size (the highest lower bound of the ratio)
        size, worst = max(found, key=lambda pair: pair[1].ci_low)
        others = "; ".join(
            f"batch {s}: {c.ratio:.3g}x ({c.ci_low:.3g}-{c.ci_high:.3g}), {c.verdict}"
            for s, c in found
            if s != size
        )
        rows.append(
            _row(
                "compute_time_ms",
                model,
                allowance,
                comparison=worst,
                detail=(
                    f"median time of one runtime call at batch {size}, the baseline's model "
                    f"file and this run's called alternately here ({worst.candidate_n} calls "
                    "each)"
                    + (f"; {others}" if others else "")
                    + "; "
                    + _stored_ratio(cand, base, model, size)
                ),
            )
        )
    return rows


def _capacity(summary: dict, model: str | None) -> dict | None:
    cap = (summary or {}).get("capacity") or {}
    return cap if model is None else (cap.get("per_model") or {}).get(model)


def _capacity_rows(cand: RunFiles, base: RunFiles, models: list[str], cfg) -> list[dict]:
    """Capacity: the knee fell by more than the allowance plus both searches' resolution."""
    from pipeline.regression.stats import Comparison, Verdict

    allowance = cfg["capacity_rps"]
    c_sum = cand.json("stages/load/summary.json") or {}
    b_sum = base.json("stages/load/summary.json") or {}
    rows = []
    for model in [None, *models]:
        c, b = _capacity(c_sum, model), _capacity(b_sum, model)
        if not c or not b or not b.get("max_sustained_rps"):
            rows.append(
                _row(
                    "capacity_rps",
                    model,
                    allowance,
                    detail="not applicable: a run recorded no capacity",
                )
            )
            continue
        knee_c, knee_b = float(c["max_sustained_rps"]), float(b["max_sustained_rps"])
        slack = float(c.get("resolution_rps") or 0) + float(b.get("resolution_rps") or 0)
        floor = knee_b * (1 - allowance.max_relative_change) - slack
        ceiling = knee_b * (1 + allowance.max_relative_change) + slack
        if b.get("capped") and knee_c >= knee_b:
            verdict, why = Verdict.UNCHANGED, "the baseline's knee is a lower bound (at least)"
        elif knee_c < floor and not c.get("capped"):
            verdict, why = (
                Verdict.REGRESSION,
                (
                    f"the knee fell below {floor:,.0f} req/s (the baseline's {knee_b:,.0f} less "
                    f"{allowance.max_relative_change:.0%} and the searches' resolution "
                    f"{slack:,.0f})"
                ),
            )
        elif knee_c > ceiling and not b.get("capped"):
            verdict, why = Verdict.IMPROVEMENT, f"the knee rose above {ceiling:,.0f} req/s"
        else:
            verdict, why = Verdict.UNCHANGED, "within the allowance and the searches' resolution"
        comparison = Comparison(
            method="knee_with_resolution",
            statistic="knee",
            direction="min",
            baseline_value=knee_b,
            candidate_value=knee_c,
            ratio=knee_c / knee_b,
            ci_low=(knee_c - float(c.get("resolution_rps") or 0)) / knee_b,
            ci_high=(knee_c + float(c.get("resolution_rps") or 0)) / knee_b,
            difference=knee_c - knee_b,
            confidence=1.0,
            p_value=None,
            alpha=allowance.alpha,
            allowance=allowance.max_relative_change,
            allowance_kind="relative",
            verdict=verdict,
            reason=f"knee {c.get('describe') or knee_c} vs the baseline's "
            f"{b.get('describe') or knee_b}: {why}",
            baseline_n=int(b.get("trials") or 0),
            candidate_n=int(c.get("trials") or 0),
            min_n=1,
        )
        rows.append(_row("capacity_rps", model, allowance, comparison=comparison))
    return rows


def _rss_rows(cand: RunFiles, base: RunFiles, cfg) -> list[dict]:
    from pipeline.regression.stats import compare_values

    allowance = cfg["peak_rss_mb"]
    c, b = cand.table("stages/load/scenarios.csv"), base.table("stages/load/scenarios.csv")
    if c is None or b is None:
        return [
            _row("peak_rss_mb", None, allowance, detail="not applicable: a run has no scenarios")
        ]
    comparison = compare_values(
        b["peak_rss_mb"].to_numpy(float),
        c["peak_rss_mb"].to_numpy(float),
        direction="max",
        max_relative_change=allowance.max_relative_change,
        alpha=allowance.alpha,
    )
    return [
        _row(
            "peak_rss_mb",
            None,
            allowance,
            comparison=comparison,
            detail="peak RSS of the engine process per load scenario",
        )
    ]


def _init_values(files: RunFiles, model: str) -> list[float]:
    values = []
    checks = files.table("stages/integration/checks.csv")
    if checks is not None:
        rows = checks[(checks["check"] == "model_load") & (checks["model"] == model)]
        values += [float(v) for v in rows["measured"] if v == v]
    for stage in ("load", "stress"):
        summary = files.json(f"stages/{stage}/summary.json") or {}
        models = summary.get("models") or (summary.get("engine_stats") or {}).get("models") or {}
        for key, entry in models.items():
            if key.rsplit("_", 1)[0] == model and isinstance(entry, dict):
                load, warm = entry.get("load_time_ms"), entry.get("warmup_time_ms")
                if load is not None:
                    values.append((float(load) + float(warm or 0)) / 1000.0)
    return values


def _init_rows(cand: RunFiles, base: RunFiles, models: list[str], cfg) -> list[dict]:
    from pipeline.regression.stats import compare_values

    allowance = cfg["init_time_s"]
    rows = []
    for model in models:
        comparison = compare_values(
            _init_values(base, model),
            _init_values(cand, model),
            direction="max",
            max_relative_change=allowance.max_relative_change,
            alpha=allowance.alpha,
        )
        rows.append(
            _row(
                "init_time_s",
                model,
                allowance,
                comparison=comparison,
                detail="load + verify + warm-up of the model in each engine of the run",
            )
        )
    return rows


async def _score(ctx: StageContext, model: str, x: np.ndarray, y: np.ndarray, sla: dict) -> float:
    """This run's model scored on an evaluation set (through the engine)."""
    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager
    from pipeline.quality import score
    from pipeline.stages.common import serving_keys

    manager = ProductionModelManager(ctx.run.models)
    key = serving_keys(ctx.run.model_info())[model]
    if not manager.load_model(key):
        raise RuntimeError(manager.load_errors.get(key, "does not load"))
    engine = ProductionInferenceEngine(manager)
    results = []
    for start in range(0, len(x), 512):
        results += await asyncio.gather(
            *(engine.predict(key, row, use_cache=False) for row in x[start : start + 512])
        )
    if not all(r.success for r in results):
        raise RuntimeError(f"{sum(not r.success for r in results)} evaluation requests failed")
    return score(sla["metric"], np.stack([r.output for r in results]), y, int(sla.get("k") or 1))


def _quality_rows(ctx: StageContext, cand: RunFiles, base: RunFiles, models: list[str], cfg):
    from pipeline.quality import SLA_METRICS
    from pipeline.regression.stats import compare_quality

    allowance = cfg["quality"]
    c_info = cand.json("models/model_info.json") or {}
    b_info = base.json("models/model_info.json") or {}
    b_checks = base.table("stages/integration/checks.csv")
    rows = []
    for model in models:
        sla = (b_info.get(model) or {}).get("sla")
        if not sla or not (c_info.get(model) or {}).get("sla"):
            rows.append(
                _row(
                    "quality",
                    model,
                    allowance,
                    detail="not applicable: no quality SLA in both runs",
                )
            )
            continue
        if sla.get("metric") != c_info[model]["sla"].get("metric"):
            rows.append(
                _row("quality", model, allowance, detail="not applicable: the SLA metric changed")
            )
            continue
        raw = base.read(f"models/{sla['evaluation_file']}")
        measured = None
        if b_checks is not None:
            hit = b_checks[(b_checks["check"] == "model_quality") & (b_checks["model"] == model)]
            measured = float(hit["measured"].iloc[0]) if len(hit) else None
        if raw is None or measured is None:
            rows.append(
                _row(
                    "quality",
                    model,
                    allowance,
                    detail="not applicable: the baseline's evaluation set or score is missing",
                )
            )
            continue
        with np.load(io.BytesIO(raw)) as data:
            x, y = np.asarray(data["x"]), np.asarray(data["y"])
        candidate = asyncio.run(_score(ctx, model, x, y, sla))
        sign = 1.0 if SLA_METRICS[sla["metric"]].direction == "min" else -1.0  # error metrics
        comparison = compare_quality(
            sign * measured,
            sign * candidate,
            allowance.max_absolute_drop,
            metric=sla["metric"],
        )
        rows.append(
            _row(
                "quality",
                model,
                allowance,
                comparison=comparison,
                detail=f"{sla['metric']} of this run's model on the baseline's evaluation set "
                f"({sla['evaluation_file']}, {len(x)} rows): {candidate:.4f} vs the baseline's "
                f"{measured:.4f}" + (" (error metric: signs flipped)" if sign < 0 else ""),
            )
        )
    return rows


# --------------------------------------------------------------------------- evidence
#: quantiles kept of each latency distribution (the report's overlay; 0.5% steps)
_QUANTILES = np.round(np.linspace(0.0, 1.0, 201), 3)


def _evidence(ctx: StageContext, cand: RunFiles, base: RunFiles, models: list[str]) -> dict:
    """What the report draws against the baseline, kept with this run (the baseline's folder
    may be deleted later): latency quantiles of both runs per subject, both runs' capacity
    trials; returns the knees per subject."""
    import pandas as pd

    rows = []
    for side, files in (("candidate", cand), ("baseline", base)):
        requests = files.requests()
        if requests is None or requests.empty:
            continue
        for subject in ["mix", *models]:
            part = requests if subject == "mix" else requests[requests["model"] == subject]
            if part.empty:
                continue
            values = np.quantile(part["latency_ms"].to_numpy(float), _QUANTILES)
            rows += [
                {"side": side, "subject": subject, "q": q, "latency_ms": v, "samples": len(part)}
                for q, v in zip(_QUANTILES, values, strict=True)
            ]
    ctx.write_table("latency_quantiles", rows)
    trials = []
    for side, files in (("candidate", cand), ("baseline", base)):
        frame = files.table("stages/load/capacity.csv")
        if frame is not None:
            trials.append(frame.assign(side=side))
    if trials:
        ctx.write_table("capacity_trials", pd.concat(trials, ignore_index=True))
    c_sum = cand.json("stages/load/summary.json") or {}
    b_sum = base.json("stages/load/summary.json") or {}
    knees = {}
    for subject in ["mix", *models]:
        model = None if subject == "mix" else subject
        knees[subject] = {
            side: (_capacity(summary, model) or {}).get("max_sustained_rps")
            for side, summary in (("candidate", c_sum), ("baseline", b_sum))
        }
    return knees


# --------------------------------------------------------------------------- the stage
def _models(ctx: StageContext) -> list[str]:
    try:
        return sorted(ctx.run.model_info())
    except Exception:
        return []


def _snapshot(ctx: StageContext, info: dict) -> str | None:
    dates = sorted({str(e.get("snapshot_date")) for e in info.values() if e.get("snapshot_date")})
    return ctx.snapshot_date or (dates[-1] if dates else None)


def _conf(ctx: StageContext) -> dict:
    path = ctx.run.root / "conf.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _where(ctx: StageContext):
    """(store, dag_id, run_key) of this run: a DAG run's from its conf.json (the task works
    on a private copy of the run folder), else the folder's own place `<root>/<dag>/<run>`."""
    from pipeline.storage import ArtifactStore

    conf = _conf(ctx)
    if conf.get("dag_id") and conf.get("run_dir"):
        location = str(conf["run_dir"]).rstrip("/")
        return ArtifactStore.from_location(), str(conf["dag_id"]), location.rsplit("/", 1)[-1]
    root = ctx.run.root.resolve()
    return ArtifactStore.from_location(str(root.parent.parent)), root.parent.name, root.name


def _baseline(ctx: StageContext, models: list[str]):
    from pipeline.regression.baseline import HostIdentity, check_comparable, find_baseline
    from pipeline.stages.common import host_facts

    store, dag_id, run_key = _where(ctx)
    info = ctx.run.model_info()
    baseline = find_baseline(
        store,
        run_key,
        dag_id=dag_id,
        snapshot_date=_snapshot(ctx, info),
        model_names=models,
        profile=ctx.profile.name,
    )
    comparability = None
    if baseline.run is not None:
        facts = (ctx.summary_of("load") or {}).get("host") or host_facts()
        comparability = check_comparable(
            baseline.run, profile=ctx.profile.name, host=HostIdentity.from_facts(facts)
        )
    return store, baseline, comparability


def _waive(rows: list[dict], waiver: dict | None) -> list[dict]:
    if not waiver:
        return rows
    named = waiver.get("criterion")
    named = {named} if isinstance(named, str) else set(named or ())
    for row in rows:
        if (row["name"] in named or row["metric"] in named) and row["verdict"] == "regression":
            row["passed"] = True
            row["waived"] = True
            row["detail"] += (
                f"; WAIVED for this run by {waiver.get('by') or 'the trigger'}: "
                f"{waiver.get('justification')}"
            )
    return rows


def run(ctx: StageContext) -> dict[str, Any]:
    """Compare this attempt with its baseline; write comparisons.csv and summary.json."""
    cfg = ctx.targets.regression_config()
    models = _models(ctx)
    store, baseline, comparability = _baseline(ctx, models)
    cand = _local(ctx)
    base = None
    if baseline.run is None or not comparability.comparable:
        why = (
            baseline.reason
            if baseline.run is None
            else (
                f"not comparable with the baseline {baseline.run.run_key}: {comparability.reason}"
            )
        )
        rows = [
            _row(metric, model, cfg[metric], detail=f"not applicable: {why}")
            for metric, model in _planned(models)
        ]
    else:
        base = _stored(store, baseline.run.location, f"baseline {baseline.run.run_key}")
        rows = (
            _latency_rows(ctx, cand, base, models, cfg)
            + _compute_rows(ctx, cand, base, models, cfg)
            + _capacity_rows(cand, base, models, cfg)
            + _rss_rows(cand, base, cfg)
            + _init_rows(cand, base, models, cfg)
            + _quality_rows(ctx, cand, base, models, cfg)
        )
    knees = _evidence(ctx, cand, base, models) if base is not None else {}
    waiver = _waiver(ctx)
    rows = _waive(rows, waiver)
    ctx.write_table("comparisons", rows)
    regressions = [r["name"] for r in rows if r["verdict"] == "regression" and not r["waived"]]
    summary = ctx.write_summary(
        {
            "baseline": baseline.to_dict(),
            "comparable": bool(comparability and comparability.comparable),
            "comparability": comparability.to_dict() if comparability else None,
            "comparisons": len(rows),
            "regressions": regressions,
            "improvements": [r["name"] for r in rows if r["verdict"] == "improvement"],
            "waived": [r["name"] for r in rows if r["waived"]],
            "waiver": waiver,
            "allowances": cfg.to_block(),
            "knees": knees,
        }
    )
    who = baseline.run.run_key if baseline.run else "none"
    ctx.say(
        f"regression: baseline {who}; {len(regressions)} regression(s), "
        f"{len(summary['improvements'])} improvement(s), "
        f"{sum(r['status'] == 'not_applicable' for r in rows)} not applicable"
    )
    return summary


def _planned(models: list[str]) -> list[tuple[str, str | None]]:
    """Every comparison of a run (for the not-applicable rows when there is no baseline)."""
    planned: list[tuple[str, str | None]] = []
    for metric, _ in LATENCY:
        planned += [(metric, None)] + [(metric, m) for m in models]
    planned += [("compute_time_ms", m) for m in models]
    planned += [("capacity_rps", None)] + [("capacity_rps", m) for m in models]
    planned += [("peak_rss_mb", None)]
    planned += [("init_time_s", m) for m in models]
    planned += [("quality", m) for m in models]
    return planned


def _waiver(ctx: StageContext) -> dict | None:
    waiver = _conf(ctx).get("waive_regression") or None
    return dict(waiver) if isinstance(waiver, dict) and waiver.get("criterion") else None
