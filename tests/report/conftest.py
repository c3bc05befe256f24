"""Run folders for the report tests, produced by the real stages and gates.

The healthy run is the session's one certified run (`staged_run` in tests/conftest.py:
every stage and gate, quick profile, enough samples for every criterion). The other
outcomes are derived from copies of it by changing one artifact honestly: re-certifying
against a tightened target, or removing the load stage's output and re-certifying.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.stages.registry import STAGE_NAMES

#: every stage the DAG runs (the regression stage included: without a baseline its
#: comparisons are not applicable)
STAGES_RUN = STAGE_NAMES


def _copy(run: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    target = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(run, target)
    for stale in ("report.json", "report.html"):
        (target / stale).unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def measured_run(staged_run: Path) -> Path:
    """A healthy run folder: every stage ran and every gate passed (read-only)."""
    return staged_run


@pytest.fixture
def good_run(measured_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the healthy run (no report yet)."""
    return _copy(measured_run, tmp_path_factory, "good")


@pytest.fixture(scope="session")
def approved_report(measured_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The report of (a copy of) the healthy run, expecting the stages that ran."""
    from pipeline.report import write_report

    run = _copy(measured_run, tmp_path_factory, "approved")
    return write_report(
        run,
        stages_expected=STAGES_RUN,
        run_id="nightly-1",
        conf={"reason": "manual"},
        generated_at="2026-01-16",
    )


@pytest.fixture(scope="session")
def strict_targets():
    """The declared targets with an impossible p99 latency (1 microsecond)."""
    from pipeline.targets import load_targets

    return load_targets().with_overrides({"p99_latency_ms": 0.001})


@pytest.fixture(scope="session")
def failed_certification_report(
    measured_run: Path, tmp_path_factory: pytest.TempPathFactory, strict_targets
) -> Path:
    """The report of the healthy run re-certified against the impossible p99 target: the
    certification gate fails, every other gate still passes."""
    from pipeline.report import write_report
    from pipeline.stages import run_stage

    run = _copy(measured_run, tmp_path_factory, "strict")
    gate = run_stage("certify", run, targets=strict_targets)["gate"]
    assert not gate["success"]
    return write_report(run, targets=strict_targets, stages_expected=STAGES_RUN)


@pytest.fixture(scope="session")
def no_load_report(measured_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The report of the healthy run as if the load stage had not run: its folder and gate
    result removed, then certified again (its criteria are unmet: their tables are missing)."""
    from pipeline.report import write_report
    from pipeline.stages import run_stage

    run = _copy(measured_run, tmp_path_factory, "no-load")
    shutil.rmtree(run / "stages/load")
    (run / "gates/load.json").unlink()
    gate = run_stage("certify", run)["gate"]
    assert not gate["success"]
    return write_report(run, stages_expected=STAGES_RUN)
