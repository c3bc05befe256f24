"""Certification: every target measured from this run's tables, gated independently."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.criteria import plan
from pipeline.stages import run_stage
from pipeline.stages.certify import measure_targets
from pipeline.targets import load_targets

pytestmark = pytest.mark.e2e


@pytest.fixture
def measured_run(staged_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's certified run (every stage, quick profile: the
    smallest whose samples support every certified figure)."""
    run = tmp_path / "run"
    shutil.copytree(staged_run, run)
    return run


def test_too_small_a_sample_is_invalid_not_a_pass(
    built_models: Path, tmp_path: Path, mini_profile
) -> None:
    run = tmp_path / "mini-run"
    shutil.copytree(built_models, run / "models")
    run_stage("load", run, "mini")
    rows = {c.name: c.row() for c in measure_targets(run, profile="mini")}
    p99 = rows["p99_latency_ms"]
    assert not p99["valid"] and not p99["met"] and "needs >= 1000 samples" in p99["detail"]
    assert not math.isnan(p99["measured"])  # measured, but not claimed


def test_every_target_is_measured_from_the_run(measured_run: Path) -> None:
    result = run_stage("certify", measured_run)
    criteria = pd.read_csv(measured_run / "stages/certify/criteria.csv")
    info = json.loads((measured_run / "models/model_info.json").read_text())
    assert list(criteria["name"]) == [p.name for p in plan(load_targets(), info)]
    per_model = criteria[criteria["model"].notna()]
    assert set(per_model["model"]) == {"quality_predictor", "routing_classifier"}
    assert "p99_latency_ms[routing_classifier]" in set(criteria["name"])
    applies = criteria[criteria["status"] != "not_applicable"]
    assert set(criteria["name"]) - set(applies["name"]) == {
        "soak_p99_drift_ratio",
        "soak_rss_growth_mb",
        "soak_error_rate",
    }  # the quick profile runs no soak: not applicable, with the reason
    assert (
        criteria.set_index("name")
        .loc["soak_error_rate", "detail"]
        .startswith("not applicable: the smoke profile runs no soak")
    )
    assert applies["measured"].notna().all()
    assert applies["met"].all(), applies[~applies["met"]].to_dict("records")
    assert result["gate"]["success"], result["gate"]["failed"]
    assert set(criteria["category"]) >= {
        "latency",
        "throughput",
        "memory",
        "reliability",
        "concurrency",
        "cache",
        "model_quality",
        "interface",
    }
    # figures trace back to this run's tables
    requests = pd.read_csv(measured_run / "stages/load/requests.csv")
    p95 = criteria.set_index("name").loc["p95_latency_ms"]
    assert p95["source"] == "stages/load/requests.csv" and p95["samples"] <= len(requests)
    checks = pd.read_csv(measured_run / "stages/integration/checks.csv")
    quality = checks[checks["check"] == "model_quality"].set_index("model")
    accuracy = quality.loc["routing_classifier", "measured"]
    row = criteria.set_index("name").loc["model_quality[routing_classifier]"]
    assert row["measured"] == pytest.approx(accuracy) and row["unit"] == "accuracy"
    assert row["threshold"] == 0.95  # the model's own SLA, from its models-file entry


def test_an_impossible_target_fails_the_certification_gate(measured_run: Path) -> None:
    strict = load_targets().with_overrides({"p99_latency_ms": 0.001})
    result = run_stage("certify", measured_run, targets=strict)
    assert not result["gate"]["success"]
    assert any("p99_latency_ms" in failed for failed in result["gate"]["failed"])
    criteria = pd.read_csv(measured_run / "stages/certify/criteria.csv").set_index("name")
    p99 = [n for n in criteria.index if n.startswith("p99_latency_ms")]
    assert len(p99) == 3  # the mix and each model, all held to the run's p99
    assert not criteria.loc[p99, "met"].any()
    others = criteria.drop(index=p99)
    assert (others["met"] | (others["status"] == "not_applicable")).all()


def test_a_stage_that_did_not_run_leaves_its_criteria_unmet(run_dir: Path) -> None:
    rows = {c.name: c.row() for c in measure_targets(run_dir)}
    for name in (
        "p99_latency_ms",
        "sustained_throughput_rps[quality_predictor]",
        "model_quality[routing_classifier]",
    ):
        assert not rows[name]["met"] and not rows[name]["valid"]
        assert rows[name]["status"] == "not_run"
        assert math.isnan(rows[name]["measured"])
        assert "did not run" in rows[name]["detail"]


def test_the_interface_slas_pass_and_a_tightened_one_fails_naming_its_endpoint(
    measured_run: Path,
) -> None:
    """The plan's interface SLAs hold over HTTP (each endpoint's p99 under the infra stage's
    load, the validation endpoint's completion, availability); a tightened routing target
    fails the infra and certification gates naming /api/v1/predict/routing, and a model's
    own /v2 endpoint target fails that model's criterion only."""
    from pipeline.gates import run_gate

    declared = load_targets()
    criteria = {c.name: c for c in measure_targets(measured_run, declared)}
    for name, endpoint in (
        ("routing_endpoint_p99_ms", "/api/v1/predict/routing"),
        ("quality_endpoint_p99_ms", "/api/v1/predict/quality"),
        ("endpoint_p99_latency_ms[routing_classifier]", "/v2/models/routing_classifier/infer"),
        ("validation_endpoint_s", "/api/v1/validate/performance"),
    ):
        c = criteria[name]
        assert c.status == "measured" and c.met, (name, c.detail)
        assert endpoint in c.detail and c.category == "interface"
    routing = criteria["routing_endpoint_p99_ms"]
    assert routing.samples >= routing.min_samples == 1000 and routing.threshold == 25
    availability = criteria["availability"]
    assert availability.status == "measured" and availability.met
    assert availability.samples >= availability.min_samples == 100
    assert "/health/live" in availability.detail and "/health/ready" in availability.detail

    # tightened below what was measured: the routing endpoint's SLA fails, nothing else
    strict = declared.with_overrides({"routing_endpoint_p99_ms": routing.measured / 2})
    gate = run_gate("infra", measured_run, strict)
    assert not gate.success
    assert [f for f in gate.failed if "POST /api/v1/predict/routing" in f] == list(gate.failed)
    result = run_stage("certify", measured_run, targets=strict)
    assert not result["gate"]["success"]
    rows = pd.read_csv(measured_run / "stages/certify/criteria.csv").set_index("name")
    assert not rows.loc["routing_endpoint_p99_ms", "met"]
    assert "POST /api/v1/predict/routing" in rows.loc["routing_endpoint_p99_ms", "detail"]
    others = rows.drop(index="routing_endpoint_p99_ms")
    assert (others["met"] | (others["status"] == "not_applicable")).all()

    # a model's own target for its /v2 endpoint (as its models-file `targets:` sets it)
    quality = criteria["endpoint_p99_latency_ms[quality_predictor]"]
    own = declared.with_model_overrides(
        "quality_predictor", {"endpoint_p99_latency_ms": quality.measured / 2}
    )
    mine = {c.name: c for c in measure_targets(measured_run, own)}
    failed = mine["endpoint_p99_latency_ms[quality_predictor]"]
    assert not failed.met and failed.threshold == pytest.approx(quality.measured / 2)
    assert "/v2/models/quality_predictor/infer" in failed.detail
    assert mine["endpoint_p99_latency_ms[routing_classifier]"].met
    assert not run_gate("infra", measured_run, own).success
    assert run_gate("infra", measured_run, declared).success  # the declared SLAs hold
