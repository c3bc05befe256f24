"""Run preparation: the profile a run certifies with, and what prepare records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.orchestrate import prepare_run, run_profile

pytestmark = pytest.mark.unit


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


@pytest.mark.parametrize(
    ("waiver", "message"),
    [
        ("compute_time_ms", "must be an object {criterion, justification}"),
        ({"criterion": "speed", "justification": "x" * 30}, "must name regression comparisons"),
        ({"criterion": "compute_time_ms[", "justification": "x" * 30}, "METRIC[model]"),
        ({"criterion": "compute_time_ms[m]", "justification": "ok"}, "at least 20 characters"),
        ({"criterion": "compute_time_ms", "justification": "x" * 30, "by": "me"}, "unknown keys"),
    ],
)
def test_a_malformed_regression_waiver_is_refused_naming_what_was_expected(waiver, message):
    from pipeline.orchestrate import ConfError, validate_waiver

    with pytest.raises(ConfError, match=message.replace("[", r"\[")):
        validate_waiver(waiver)


def test_a_waiver_is_recorded_with_who_triggered_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    waiver = {
        "criterion": ["compute_time_ms[quality_predictor]", "latency_p50_ms"],
        "justification": "the new feature costs 2 ms, agreed with the service owners",
    }
    ctx = prepare_run("dag", "manual__1", None, {"waive_regression": waiver}, triggered_by="alice")
    conf = json.loads((Path(ctx["run_dir"]) / "conf.json").read_text())
    assert conf["waive_regression"] == {**waiver, "by": "alice"}
    assert conf["triggered_by"] == "alice"
