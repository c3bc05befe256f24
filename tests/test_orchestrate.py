"""Run preparation: the profile a run certifies with, and what prepare records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.orchestrate import prepare_run, run_profile


@pytest.mark.parametrize(
    ("run_type", "conf", "params", "expected"),
    [
        ("scheduled", {}, {"profile": "smoke"}, "nightly"),  # the form's default is ignored
        ("backfill", {}, {"profile": "smoke"}, "nightly"),
        ("backfill", {"profile": "smoke"}, {"profile": "smoke"}, "smoke"),  # named: honoured
        ("manual", {}, {"profile": "smoke"}, "smoke"),
        ("manual", {"profile": "release"}, {"profile": "release"}, "release"),
        (None, {}, {}, "smoke"),
    ],
)
def test_scheduled_and_backfilled_runs_certify_with_nightly(run_type, conf, params, expected):
    assert run_profile(params, run_type, conf) == expected


def test_prepare_records_the_profiles_whole_definition_and_relaxed_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    params = {
        "profile": "smoke",
        "target_overrides": {"p99_latency_ms": 1e9},
        "allow_relaxed_targets": True,
        "reason": "load test of a slow canary",
    }
    ctx = prepare_run("dag", "scheduled__2026-01-15", None, params, run_type="scheduled")
    conf = json.loads((Path(ctx["run_dir"]) / "conf.json").read_text())
    assert conf["profile"] == "nightly"
    definition = conf["profile_definition"]
    assert definition["name"] == "nightly" and definition["capacity"]["trial_s"] == 5.0
    assert len(definition["scenarios"]) == 6
    assert conf["relaxed_targets"] == [
        {"metric": "p99_latency_ms", "model": None, "declared": 300.0, "effective": 1e9}
    ]
    targets = (Path(ctx["run_dir"]) / "targets.yaml").read_text()
    assert "relaxed:" in targets and "p99_latency_ms" in targets
