"""Build stage: build (or import) the run's models into `<run>/models`, then record for each
model file whether its checksum verifies, its parity, whether the engine's model manager loads
it (and if not, its refusal, word for word) and whether it serves finite outputs
(`stages/build/models.csv`, gated by the build suite). A refusal for another reason than
NaN/Inf outputs is reported as what it is (`loaded` False, `load_refusal`), not as
`outputs_finite` False: the build's probes measured those finite."""

from __future__ import annotations

import time
from typing import Any

from pipeline._io import sha256_file
from pipeline.stages.common import RunDir
from pipeline.stages.context import StageContext

__all__ = ["record_build", "run"]


def run(ctx: StageContext) -> dict[str, Any]:
    """Build the snapshot for the context's date into the run folder and record it."""
    from pipeline.build import build_models

    started = time.perf_counter()
    result = build_models(
        ctx.run.models,
        snapshot_date=ctx.snapshot_date,
        models_file=ctx.models_file,
        progress=ctx.progress,
    )
    return record_build(
        ctx,
        snapshot_date=result.snapshot_date.isoformat(),
        build_seconds=time.perf_counter() - started,
    )


def record_build(ctx: StageContext | RunDir | Any, **extra: Any) -> dict[str, Any]:
    """Verify what is in `<run>/models` and write the build table and summary (no rebuild);
    `extra` keys go into the summary. Returns the summary."""
    from pipeline.inference import ProductionModelManager

    if not isinstance(ctx, StageContext):
        ctx = StageContext.open(ctx, "build")
    info = ctx.run.model_info()
    dates = sorted({str(e.get("snapshot_date")) for e in info.values() if e.get("snapshot_date")})
    manager = ProductionModelManager(ctx.run.models, strict=True)
    rows = []
    for name, entry in sorted(info.items()):
        parity = entry.get("parity") or {}
        recorded = [float(v) for v in (parity.get("max_abs_diff") or {}).values()]
        reference = parity.get("reference") or {}
        if recorded:
            worst, parity_status = max(recorded), "measured"
            parity_detail = "eager vs TorchScript vs ONNX"
        elif reference:
            worst, parity_status = float(reference["max_abs_diff"]), "measured"
            parity_detail = f"against the reference outputs {reference.get('outputs')}"
        else:  # an import without reference outputs has nothing to compare with
            worst, parity_status = float("nan"), "not_applicable"
            parity_detail = "parity not applicable: one format, no reference outputs"
        for fmt, file in sorted((entry.get("files") or {}).items()):
            path = ctx.run.models / file["path"]
            verified = path.exists() and sha256_file(path) == file.get("sha256")
            key = f"{name}_{fmt}"
            loaded = manager.load_model(key)  # strict: verifies sha256, warms up, checks NaN
            refusal = "" if loaded else manager.load_errors.get(key, "not loaded")
            non_finite = manager.load_error_types.get(key) == "NonFiniteWarmupError"
            rows.append(
                {
                    "model": name,
                    "format": fmt,
                    "version": entry.get("version"),
                    "sha256_verified": verified,
                    "parity_status": parity_status,
                    "parity_max_abs_diff": worst,
                    "parity_passed": parity_status == "measured" and bool(parity.get("passed")),
                    "loaded": loaded,
                    "load_refusal": refusal,
                    # the warm-up's outputs when it loaded; the build's probes otherwise
                    # (they were finite: the build refuses a model whose probes are not)
                    "outputs_finite": not non_finite,
                    "detail": ("loaded and warmed up" if loaded else f"refused: {refusal}")
                    + f"; {parity_detail}",
                }
            )
            if loaded:
                manager.unload_model(key)
    ctx.write_table("models", rows)
    summary = {
        "snapshot_date": ctx.snapshot_date or (dates[0] if len(dates) == 1 else ""),
        "models": {
            n: {
                "version": e.get("version"),
                "files": e.get("files"),
                "holdout_metrics": e.get("holdout_metrics"),
            }
            for n, e in info.items()
        },
        "rows": len(rows),
        **extra,
    }
    return ctx.write_summary(summary)
