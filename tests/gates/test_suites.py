"""suite_spec: what each gate checks, derived from the targets (pure Python, no GX)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.gates import STAGES, TABLES, ExpectationSpec, suite_name, suite_spec
from pipeline.gates.suites import row_condition_pairs
from pipeline.targets import Targets, load_targets

pytestmark = pytest.mark.unit


def by_meaning(specs: list[ExpectationSpec], text: str) -> ExpectationSpec:
    matches = [spec for spec in specs if text in spec.meaning]
    assert len(matches) == 1, [spec.meaning for spec in specs]
    return matches[0]


def test_every_stage_has_a_suite_with_unique_json_ready_expectations(targets: Targets) -> None:
    assert STAGES == ("build", "integration", "load", "stress", "infra", "certify", "regression")
    for stage in STAGES:
        specs = suite_spec(stage, targets)
        meanings = [spec.meaning for spec in specs]
        assert len(set(meanings)) == len(meanings), stage
        assert specs[0].type.startswith("expect_table_row_count")
        assert all(spec.type.startswith("expect_") for spec in specs)
        json.dumps([spec.kwargs for spec in specs], allow_nan=False)
        assert suite_name(stage) == f"relcert_{stage}"


def test_unknown_stage_lists_the_known_ones(targets: Targets) -> None:
    with pytest.raises(ValueError, match=r"unknown gate stage 'deploy'.*build, integration, load"):
        suite_spec("deploy", targets)


def test_load_suite_takes_thresholds_from_targets(targets: Targets) -> None:
    specs = suite_spec("load", targets)
    p99 = by_meaning(specs, "p99 latency of every scenario")
    assert p99 == ExpectationSpec(
        "expect_column_values_to_be_between",
        {"column": "p99_ms", "max_value": 360.0},
        "p99 latency of every scenario <= 360 ms (target 300 ms +20%)",
        target="p99_latency_ms",
    )
    assert by_meaning(specs, "error rate").kwargs == {"column": "error_rate", "max_value": 0.015}
    assert by_meaning(specs, "mean latency").kwargs["max_value"] == 33.0
    assert by_meaning(specs, "p95 latency").kwargs["max_value"] == 115.0
    assert by_meaning(specs, "peak RSS").kwargs == {"column": "peak_rss_mb", "max_value": 525.0}
    assert by_meaning(specs, "valid is True").kwargs == {"column": "valid", "value_set": [True]}


def test_bounds_apply_to_filtered_measured_rows(targets: Targets) -> None:
    specs = suite_spec("integration", targets)
    init = by_meaning(specs, "initialisation time")
    assert init.kwargs == {
        "column": "measured",
        "row_condition": {
            "type": "and",
            "conditions": [
                {
                    "type": "comparison",
                    "column": {"name": "check"},
                    "operator": "==",
                    "parameter": "initialization",
                },
                {
                    "type": "comparison",
                    "column": {"name": "status"},
                    "operator": "==",
                    "parameter": "measured",
                },
            ],
        },
        "max_value": 3.0,
    }
    assert init.meaning.endswith("<= 3 s (target 3 s, no tolerance)")


def test_the_certify_gate_expects_each_models_own_criteria(targets: Targets) -> None:
    info = {
        "fast": {"sla": {"metric": "accuracy", "threshold": 0.9}},
        "slow": {"targets": {}},
    }
    own = targets.with_model_overrides("fast", {"p99_latency_ms": 50})
    specs = suite_spec("certify", own, model_info=info)
    names = by_meaning(specs, "the criteria are exactly").kwargs["value_set"]
    assert "p99_latency_ms[fast]" in names and "p99_latency_ms[slow]" in names
    assert "model_quality[fast]" in names and "model_quality[slow]" in names
    fast = by_meaning(specs, "measured p99_latency_ms[fast]")
    assert fast.kwargs["max_value"] == 60.0  # the model's own 50 ms +20%
    assert by_meaning(specs, "measured p99_latency_ms[slow]").kwargs["max_value"] == 360.0
    quality = by_meaning(specs, "measured model_quality[fast]")
    assert quality.kwargs["min_value"] == 0.9
    # a model without an sla has no bound: its row is not applicable
    assert not [s for s in specs if s.meaning.startswith("measured model_quality[slow]")]


def test_build_parity_is_between_zero_and_its_threshold(targets: Targets) -> None:
    parity = by_meaning(suite_spec("build", targets), "parity max |diff|")
    assert parity.kwargs["min_value"] == 0.0 and parity.kwargs["max_value"] == 1e-5
    assert row_condition_pairs(parity.kwargs["row_condition"]) == [("parity_status", "measured")]


def test_certification_rechecks_every_target_on_its_own_row(targets: Targets) -> None:
    from pipeline.criteria import plan

    specs = suite_spec("certify", targets)
    run_level = [p.target for p in plan(targets, None)]  # no models: the run's own criteria
    assert specs[0].kwargs == {"value": len(run_level)}
    rechecks = [spec for spec in specs if spec.target is not None]
    assert [spec.target for spec in rechecks] == [t.name for t in run_level]
    for spec, target in zip(rechecks, run_level, strict=True):
        pairs = row_condition_pairs(spec.kwargs["row_condition"])
        assert pairs == [("name", target.name), ("status", "measured")]
        assert spec.target == target.name
        bound = "max_value" if target.direction == "max" else "min_value"
        assert spec.kwargs[bound] == target.threshold
    success = by_meaning(specs, "measured success_rate")
    assert success.meaning == "measured success_rate >= 0.9801 (target 0.99 -1%)"


def test_overrides_change_the_suite(targets: Targets) -> None:
    tightened = targets.with_overrides({"p99_latency_ms": 250})
    p99 = by_meaning(suite_spec("load", tightened), "p99 latency")
    assert p99.kwargs["max_value"] == 300.0
    assert p99.meaning == "p99 latency of every scenario <= 300 ms (target 250 ms +20%)"


def test_undeclared_targets_are_not_gated(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    entry = {
        "name": "p99_latency_ms",
        "category": "latency",
        "target": 200,
        "tolerance": 0.0,
        "direction": "max",
        "unit": "ms",
    }
    path.write_text(yaml.safe_dump({"version": 1, "targets": [entry]}))
    subset = load_targets(path)
    load = suite_spec("load", subset)
    assert [spec.target for spec in load if spec.target] == ["p99_latency_ms"]
    certification = suite_spec("certify", subset)
    assert certification[0].kwargs == {"value": 1}


def test_contract_paths_are_inside_the_run_folder() -> None:
    assert TABLES["certify"].path == "stages/certify/criteria.csv"
    for contract in TABLES.values():
        assert not Path(contract.path).is_absolute() and ".." not in contract.path


def test_importing_gates_loads_neither_gx_nor_airflow() -> None:
    code = (
        "import sys, pipeline.gates, pipeline.targets\n"
        "from pipeline.targets import load_targets\n"
        "pipeline.gates.suite_spec('load', load_targets())\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('great_expectations', 'airflow')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
