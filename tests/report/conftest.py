"""Run folders for the report tests, produced by the real stages and gates.

One healthy run is measured once per session (build record, integration, load, stress,
infra, certify, each with its gate) with the `report` profile below: small enough to take about
25 s, yet with enough samples that every criterion is validly measured (the stage tests'
`mini` profile is too small for p99 and the success rate), at a rate a busy 2-core machine
can generate without the generator falling behind. The other outcomes are derived
from copies of it by changing one artifact honestly: re-certifying against a tightened
target, or removing the load stage's output and re-certifying.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPORT_PROFILE = """
version: 1
scenarios:
  baseline_performance:
    {users: 3, requests_per_user: 20, ramp_up_s: 0.2, duration_s: 2, pattern: constant,
     behaviour: mixed}
  quality_focused:
    {users: 4, requests_per_user: 20, ramp_up_s: 0.2, duration_s: 2, pattern: constant,
     behaviour: quality_only}
  routing_focused:
    {users: 4, requests_per_user: 20, ramp_up_s: 0.2, duration_s: 2, pattern: constant,
     behaviour: routing_only}
patterns:
  constant: {think_ms: 10}
behaviours:
  mixed: {quality_predictor: 0.5, routing_classifier: 0.5}
  quality_only: {quality_predictor: 1.0}
  routing_only: {routing_classifier: 1.0}
profiles:
  report:
    scenario_time_scale: 1.0
    think_time_scale: 1.0
    min_requests_per_scenario: 1050  # a p99 per model needs 1,000 of its own requests
    max_requests_per_user: 300
    warmup_s: 0.2
    window_s: 0.5
    stability_tolerance: 1.0
    stability_floor_ms: 5.0
    percentiles_claimed: [50, 95]
    capacity: {trial_s: 0.6, warmup_s: 0.1, start_rps: 60, max_rps: 120,
               resolution: 0.5, max_seconds: 20}
    burst_requests: 100
    concurrency: {users: [1, 11, 21], requests_per_user: 20, think_ms: 10}
    cache: {distinct_inputs: 50, requests: 500, zipf_a: 1.3, concurrency: 4}
    calibration_s: 0.3
    integration: {concurrent_clients: 15, requests_per_client: 10, think_ms: 20,
                  memory_requests: 100}
    stress: {scale: 0.1}
    infra: {rates: [1000], duration_s: 5.0, warmup_s: 0.2}
"""

#: every stage before the regression stage (infra: the service's interface SLAs and
#: availability are criteria too)
STAGES_RUN = ("build", "integration", "load", "stress", "infra", "certify")


def _copy(run: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    target = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(run, target)
    for stale in ("report.json", "report.html"):
        (target / stale).unlink(missing_ok=True)
    return target


@pytest.fixture(scope="session")
def measured_run(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A healthy run folder: every stage ran and every gate passed (read-only)."""
    from pipeline.gates import run_gate
    from pipeline.stages import run_stage
    from pipeline.stages.build import record_build
    from pipeline.stages.context import StageContext

    folder = tmp_path_factory.mktemp("report-run")
    profiles = folder / "profiles.yaml"
    profiles.write_text(REPORT_PROFILE)
    run = folder / "run"
    shutil.copytree(built_models, run / "models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELCERT_PROFILES_FILE", str(profiles))
        record_build(StageContext.open(run, "build", "report"))
        assert run_gate("build", run).success
        for stage in STAGES_RUN[1:]:
            gate = run_stage(stage, run, "report")["gate"]
            if not gate["success"] and stage in ("load", "stress", "infra"):
                # a measurement disturbed by a busy shared machine (e.g. the load generator
                # fell behind) is invalid, not wrong: measure once more before giving up
                gate = run_stage(stage, run, "report")["gate"]
            assert gate["success"], (stage, gate["failed"])
    return run


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
