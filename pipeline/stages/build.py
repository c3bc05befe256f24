"""Build stage: build (or import) the run's models into `<run>/models`, then record for each
model file whether its checksum verifies, its parity, and whether it serves finite outputs
(`stages/build/models.csv`, gated by the build suite)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline._io import sha256_file
from pipeline.stages.common import RunDir, host_facts, write_table

__all__ = ["record_build", "run_build"]

STAGE = "build"


def run_build(
    run_dir: str | Path,
    snapshot_date: dt.date | str | None = None,
    models_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the snapshot for `snapshot_date` into the run folder and record it."""
    from pipeline.build import build_models

    run = RunDir.of(run_dir)
    started = time.perf_counter()
    result = build_models(
        run.models, snapshot_date=snapshot_date, models_file=models_file, progress=progress
    )
    summary = record_build(run)
    summary["build_seconds"] = time.perf_counter() - started
    summary["snapshot_date"] = result.snapshot_date.isoformat()
    run.write_summary(STAGE, summary)
    return summary


def record_build(run_dir: str | Path | RunDir) -> dict[str, Any]:
    """Verify what is in `<run>/models` and write the build table (no rebuild)."""
    from pipeline.inference import ProductionModelManager

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.of(run_dir)
    info = run.model_info()
    manager = ProductionModelManager(run.models, strict=True)
    rows = []
    for name, entry in sorted(info.items()):
        parity = entry.get("parity") or {}
        worst = max(
            (float(v) for v in (parity.get("max_abs_diff") or {}).values()), default=float("nan")
        )
        for fmt, file in sorted((entry.get("files") or {}).items()):
            path = run.models / file["path"]
            verified = path.exists() and sha256_file(path) == file.get("sha256")
            key = f"{name}_{fmt}"
            loaded = manager.load_model(key)  # strict: verifies sha256, warms up, checks NaN
            rows.append(
                {
                    "model": name,
                    "format": fmt,
                    "version": entry.get("version"),
                    "sha256_verified": verified,
                    "parity_max_abs_diff": worst if parity.get("max_abs_diff") else 0.0,
                    "parity_passed": bool(parity.get("passed", "reference" in parity)),
                    "outputs_finite": loaded,
                    "detail": "loaded and warmed up"
                    if loaded
                    else manager.load_errors.get(key, ""),
                }
            )
            if loaded:
                manager.unload_model(key)
    write_table(rows, run.stage(STAGE) / "models.csv")
    return {
        "host": host_facts(),
        "models": {
            n: {
                "version": e.get("version"),
                "files": e.get("files"),
                "holdout_metrics": e.get("holdout_metrics"),
            }
            for n, e in info.items()
        },
        "rows": len(rows),
    }
