"""The certification stages. Each is a module here with one runner, `run(ctx)`, declared in
`pipeline.stages.registry` with the tables and summary it writes; `run_stage` runs one
stage and then its gate.

    build        -> stages/build/models.csv           gate: build
    integration  -> stages/integration/checks.csv     gate: integration
    load         -> stages/load/scenarios.csv (+ more) gate: load
    stress       -> stages/stress/tests.csv           gate: stress
    infra        -> stages/infra/checks.csv           gate: infra
    certify      -> stages/certify/criteria.csv       gate: certify
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.stages.registry import STAGE_NAMES, STAGES, Stage, stage

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "execute_stage", "run_stage", "stage"]


def execute_stage(
    name: str,
    run_dir: str | Path,
    profile: str = "smoke",
    *,
    targets: Any = None,
    attempt_id: str | None = None,
    snapshot_date: dt.date | str | None = None,
    models_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run stage `name` on `run_dir` (no gate); returns the stage's summary.

    `targets` default to the run's own targets.yaml (else the project's targets file);
    `attempt_id`, when given, must be the run's current attempt."""
    from pipeline.stages.common import StageError
    from pipeline.stages.context import StageContext

    ctx = StageContext.open(
        run_dir,
        name,
        profile,
        targets=targets,
        attempt_id=attempt_id,
        snapshot_date=snapshot_date,
        models_file=models_file,
        progress=progress,
    )
    ctx.run.clear_stage_error(name)
    try:
        return ctx.stage.load_runner()(ctx)
    except Exception as exc:
        message = str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}"
        ctx.run.record_stage_error(name, message, ctx.attempt_id)
        raise


def run_stage(
    name: str,
    run_dir: str | Path,
    profile: str = "smoke",
    *,
    targets: Any = None,
    attempt_id: str | None = None,
    snapshot_date: dt.date | str | None = None,
    models_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run stage `name` on `run_dir`, then its gate. Returns {stage, seconds, summary, gate}.

    The targets and profile are validated before the stage starts, so a malformed targets
    file fails fast. A failed gate is reported in the result, not raised.
    """
    from pipeline.gates import run_gate
    from pipeline.stages.common import RunDir
    from pipeline.stages.context import run_targets

    spec = stage(name)
    targets = targets if targets is not None else run_targets(RunDir.of(run_dir))
    say = progress or (lambda _: None)
    started = time.perf_counter()
    summary = execute_stage(
        name,
        run_dir,
        profile,
        targets=targets,
        attempt_id=attempt_id,
        snapshot_date=snapshot_date,
        models_file=models_file,
        progress=say,
    )
    seconds = time.perf_counter() - started
    gate = run_gate(spec.gate, run_dir, targets)
    verdict = "passed" if gate.success else "FAILED: " + "; ".join(gate.failed)
    say(f"gate {gate.stage}: {verdict} ({gate.path})")
    return {
        "stage": name,
        "seconds": seconds,
        "summary": summary,
        "gate": {
            "stage": gate.stage,
            "success": gate.success,
            "failed": list(gate.failed),
            "path": str(gate.path),
            "data_docs": str(gate.data_docs_index),
        },
    }
