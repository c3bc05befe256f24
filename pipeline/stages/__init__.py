"""The certification stages. Each is a plain function that reads the run folder and writes
its result tables there; `run_stage` runs one stage and then its gate.

    build        -> stages/build/models.csv           gate: build
    integration  -> stages/integration/checks.csv     gate: integration
    load         -> stages/load/scenarios.csv (+ more) gate: load
    stress       -> stages/stress/tests.csv           gate: stress
    infra        -> stages/infra/checks.csv           gate: infra
    certify      -> stages/certify/criteria.csv       gate: certification
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["STAGE_GATES", "STAGE_NAMES", "execute_stage", "run_stage"]

#: stage name -> the gate that validates its table
STAGE_GATES = {
    "build": "build",
    "integration": "integration",
    "load": "load",
    "stress": "stress",
    "infra": "infra",
    "certify": "certification",
}
STAGE_NAMES = tuple(STAGE_GATES)


def _check_name(name: str) -> None:
    if name not in STAGE_GATES:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")


def execute_stage(
    name: str,
    run_dir: str | Path,
    profile: str = "smoke",
    *,
    targets: Any = None,
    snapshot_date: dt.date | str | None = None,
    models_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run stage `name` on `run_dir` (no gate); returns the stage's summary."""
    from pipeline.profiles import load_profile

    _check_name(name)
    prof = load_profile(profile)
    say = progress or (lambda _: None)
    if name == "build":
        from pipeline.stages.build import run_build

        return run_build(run_dir, snapshot_date, models_file, progress=say)
    if name == "integration":
        from pipeline.stages.integration import run_integration

        return run_integration(run_dir, prof, progress=say)
    if name == "load":
        from pipeline.stages.load import run_load

        return run_load(run_dir, prof, progress=say)
    if name == "stress":
        from pipeline.stages.stress import run_stress

        return run_stress(run_dir, prof, progress=say)
    if name == "infra":
        from pipeline.stages.infra import run_infra

        return run_infra(run_dir, prof, targets, progress=say)
    from pipeline.stages.certify import run_certify

    return run_certify(run_dir, targets, progress=say)


def run_stage(
    name: str,
    run_dir: str | Path,
    profile: str = "smoke",
    *,
    targets: Any = None,
    snapshot_date: dt.date | str | None = None,
    models_file: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run stage `name` on `run_dir`, then its gate. Returns {stage, seconds, summary, gate}.

    The targets (and profile) are validated before the stage starts, so a malformed
    targets.yaml fails fast. A failed gate is reported in the result, not raised.
    """
    from pipeline.gates import run_gate
    from pipeline.targets import load_targets

    _check_name(name)
    targets = targets if targets is not None else load_targets()  # execute_stage checks the profile
    say = progress or (lambda _: None)
    started = time.perf_counter()
    summary = execute_stage(
        name,
        run_dir,
        profile,
        targets=targets,
        snapshot_date=snapshot_date,
        models_file=models_file,
        progress=say,
    )
    seconds = time.perf_counter() - started
    gate = run_gate(STAGE_GATES[name], run_dir, targets)
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
