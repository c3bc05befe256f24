"""include/targets.yaml and pipeline.targets: the single source of certification targets."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.targets import (
    DEFAULT_TARGETS_FILE,
    KNOWN_METRICS,
    TARGETS_FILE_ENV,
    Target,
    Targets,
    TargetsError,
    load_targets,
)

pytestmark = pytest.mark.unit

P99 = {
    "name": "p99_latency_ms",
    "category": "latency",
    "target": 300,
    "tolerance": 0.2,
    "direction": "max",
    "unit": "ms",
}
SUCCESS = {
    "name": "success_rate",
    "category": "reliability",
    "target": 0.99,
    "tolerance": 0.01,
    "direction": "min",
    "unit": "ratio",
}


def write_targets(tmp_path: Path, *entries: dict, **top: object) -> Path:
    path = tmp_path / "targets.yaml"
    document = {"version": 1, "targets": list(entries), **top}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def with_(entry: dict, **changes: object) -> dict:
    return {**entry, **changes}


# --- the shipped file --------------------------------------------------------------------


def test_shipped_file_declares_every_known_metric_in_order() -> None:
    targets = load_targets()
    assert tuple(targets) == KNOWN_METRICS
    assert len(targets) == 21
    assert targets["p99_latency_ms"].target == 300
    # no description claims a measurement: the measuring code says what it measured
    assert all(not t.description for t in targets.values())


@pytest.mark.parametrize(
    ("name", "threshold"),
    [
        ("average_inference_latency_ms", 33.0),
        ("p95_latency_ms", 115.0),
        ("p99_latency_ms", 360.0),
        ("sustained_throughput_rps", 45.0),
        ("peak_throughput_rps", 68.0),
        ("memory_usage_mb", 525.0),
        ("memory_efficiency", 0.72),
        ("success_rate", 0.9801),
        ("error_rate", 0.015),
        ("concurrent_users_supported", 18.0),
        ("cache_hit_rate", 0.595),
        ("soak_p99_drift_ratio", 1.5),
        ("soak_rss_growth_mb", 50.0),
        ("soak_error_rate", 0.01),
        ("model_initialization_s", 3.0),
        # the plan's interface SLAs and uptime, no tolerance
        ("routing_endpoint_p99_ms", 25.0),
        ("quality_endpoint_p99_ms", 30.0),
        ("endpoint_p99_latency_ms", 30.0),
        ("validation_endpoint_s", 60.0),
        ("availability", 0.99),
        ("parity_max_abs_diff", 1e-5),
    ],
)
def test_threshold_follows_the_plans_rule(name: str, threshold: float) -> None:
    # max: target x (1 + tolerance); min: target x (1 - tolerance), without float noise.
    assert load_targets()[name].threshold == threshold


def test_default_path_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DEFAULT_TARGETS_FILE.name == "targets.yaml"
    assert DEFAULT_TARGETS_FILE.parent.name == "include"
    monkeypatch.setenv(TARGETS_FILE_ENV, str(write_targets(tmp_path, P99)))
    assert tuple(load_targets()) == ("p99_latency_ms",)


# --- Target ------------------------------------------------------------------------------


def test_passes_at_the_threshold_and_never_on_missing_values() -> None:
    p99 = Target("p99_latency_ms", "latency", 300.0, 0.2, "max", "ms", "")
    success = Target("success_rate", "reliability", 0.99, 0.01, "min", "ratio", "")
    assert p99.passes(360.0) and p99.passes(10)
    assert not p99.passes(360.1)
    assert success.passes(0.9801) and success.passes(1.0)
    assert not success.passes(0.98)
    for target in (p99, success):
        assert not target.passes(math.nan)
        assert not target.passes(None)


def test_margin_is_signed_relative_headroom() -> None:
    p99 = Target("p99_latency_ms", "latency", 300.0, 0.2, "max", "ms", "")
    success = Target("success_rate", "reliability", 0.99, 0.01, "min", "ratio", "")
    assert p99.margin(324.0) == pytest.approx(0.1)  # 10% below 360
    assert p99.margin(396.0) == pytest.approx(-0.1)
    assert success.margin(0.9801) == pytest.approx(0.0)
    assert success.margin(0.9) < 0
    assert math.isnan(p99.margin(math.nan))


def test_targets_mapping_helpers() -> None:
    targets = load_targets()
    assert targets.get("nope") is None
    with pytest.raises(KeyError, match="no target named 'nope'"):
        targets["nope"]
    groups = targets.by_category()
    assert [t.name for t in groups["latency"]] == [
        "average_inference_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
    ]
    as_dict = targets.to_dict()
    assert list(as_dict) == list(KNOWN_METRICS)
    assert as_dict["p99_latency_ms"]["threshold"] == 360.0
    assert yaml.safe_load(yaml.safe_dump(as_dict)) == as_dict  # plain data
    assert targets == load_targets()


# --- overrides ---------------------------------------------------------------------------


def test_override_may_tighten() -> None:
    targets = load_targets()
    tightened = targets.with_overrides({"p99_latency_ms": 250, "success_rate": 0.995})
    assert tightened["p99_latency_ms"].threshold == 300.0
    assert tightened["success_rate"].target == 0.995
    assert tightened["p95_latency_ms"] == targets["p95_latency_ms"]
    assert tuple(tightened) == tuple(targets)
    assert targets["p99_latency_ms"].target == 300  # the original is unchanged


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"p99_latency_ms": 400}, r"p99_latency_ms.*relaxes.*300 ms.*allow_relaxed"),
        ({"success_rate": 0.9}, r"success_rate.*relaxes.*higher value tightens"),
    ],
)
def test_override_refuses_relaxing_unless_allowed(overrides: dict, why: str) -> None:
    targets = load_targets()
    with pytest.raises(TargetsError, match=why):
        targets.with_overrides(overrides)
    relaxed = targets.with_overrides(overrides, allow_relaxed=True)
    name, value = next(iter(overrides.items()))
    assert relaxed[name].target == value


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"p99_latency": 250}, r"'p99_latency': unknown metric"),
        ({"p99_latency_ms": "fast"}, r"'p99_latency_ms': value must be a finite number"),
        ({"p99_latency_ms": math.inf}, r"'p99_latency_ms': value must be a finite number"),
    ],
)
def test_override_refuses_unknown_metrics_and_bad_values(overrides: dict, why: str) -> None:
    with pytest.raises(TargetsError, match=why):
        load_targets().with_overrides(overrides)


def test_override_of_an_undeclared_metric_is_refused(tmp_path: Path) -> None:
    targets = load_targets(write_targets(tmp_path, P99))
    with pytest.raises(TargetsError, match="'success_rate': metric is not declared"):
        targets.with_overrides({"success_rate": 0.999})


# --- file errors -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TargetsError, match=r"nowhere\.yaml: targets file not found"):
        load_targets(tmp_path / "nowhere.yaml")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("version: 1\ntargets:\n  - name: p99_latency_ms\n    target: [300\n")
    with pytest.raises(TargetsError, match=r"targets\.yaml: malformed YAML at line \d+"):
        load_targets(path)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("- just\n- a list\n", "top level must be a mapping"),
        ("", "top level must be a mapping"),
        ("version: 1\n", "'targets' must be a non-empty list"),
        ("version: 1\ntargets: {}\n", "'targets' must be a non-empty list"),
        ("version: 1\ntargets: []\n", "'targets' must be a non-empty list"),
        ("version: 2\ntargets: []\n", "version must be 1, got 2"),
        ("version: 1\ntarget: []\n", "unknown top-level key"),
    ],
)
def test_document_shape_errors(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(TargetsError, match=why):
        load_targets(path)


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        (
            [P99, with_(SUCCESS, name="p99_latency")],
            r"targets\[1\] \(p99_latency\): unknown metric 'p99_latency'",
        ),
        (
            [P99, with_(P99, target=250)],
            r"targets\[1\] \(p99_latency_ms\): duplicate metric",
        ),
        (
            [{k: v for k, v in P99.items() if k != "unit"}],
            r"targets\[0\] \(p99_latency_ms\): missing key\(s\) 'unit'",
        ),
        ([with_(P99, target="fast")], r"\(p99_latency_ms\): target must be a number, got 'fast'"),
        ([with_(P99, target=True)], r"\(p99_latency_ms\): target must be a number, got True"),
        (
            [with_(P99, tolerance=-0.2)],
            r"targets\[0\] \(p99_latency_ms\): tolerance must be a number >= 0, got -0.2",
        ),
        (
            [with_(SUCCESS, tolerance=1.0)],
            r"\(success_rate\): tolerance must be < 1 for a min target",
        ),
        (
            [with_(P99, direction="lower")],
            r"\(p99_latency_ms\): direction must be 'max' or 'min', got 'lower'",
        ),
        (
            [with_(P99, direction="min")],
            r"\(p99_latency_ms\): direction must be 'max' for this metric",
        ),
        ([with_(P99, target=math.inf)], r"\(p99_latency_ms\): target must be a finite number"),
        ([with_(P99, target=math.nan)], r"\(p99_latency_ms\): target must be a finite number"),
        ([with_(P99, tolerance=math.nan)], r"\(p99_latency_ms\): tolerance must be a number >= 0"),
        ([with_(P99, target=-1)], r"\(p99_latency_ms\): target must be a finite number >= 0"),
        ([with_(P99, threshold=360)], r"\(p99_latency_ms\): unknown key\(s\) 'threshold'"),
        ([with_(P99, unit=5)], r"\(p99_latency_ms\): unit must be a non-empty string"),
        (["p99_latency_ms"], r"targets\[0\]: must be a mapping"),
        ([with_(P99, name=None)], r"targets\[0\]: name must be a non-empty string"),
    ],
)
def test_entry_errors_name_the_file_and_entry(tmp_path: Path, entries: list, why: str) -> None:
    path = write_targets(tmp_path, *entries)
    with pytest.raises(TargetsError, match=why) as caught:
        load_targets(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_error_names_the_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "include").mkdir()
    path = write_targets(tmp_path / "include", with_(P99, tolerance=-0.2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetsError) as caught:
        load_targets(path)
    assert str(caught.value) == (
        "include/targets.yaml: targets[0] (p99_latency_ms): "
        "tolerance must be a number >= 0, got -0.2"
    )


def test_a_subset_of_known_metrics_is_allowed(tmp_path: Path) -> None:
    targets = load_targets(write_targets(tmp_path, SUCCESS, P99))
    assert isinstance(targets, Targets)
    assert tuple(targets) == ("success_rate", "p99_latency_ms")
    assert targets["success_rate"].threshold == pytest.approx(0.9801)
    assert targets["success_rate"].description == ""


def test_a_runs_targets_file_reads_back_whole(tmp_path: Path) -> None:
    """The run's copy (overrides, each model's own values, relaxations, the regression
    allowances) reads back as the same targets: stages judge by exactly what was decided."""
    run = (
        load_targets()
        .with_overrides({"p99_latency_ms": 250, "error_rate": 0.5}, allow_relaxed=True)
        .with_model_overrides("slow", {"p95_latency_ms": 90})
    )
    copy = tmp_path / "targets.yaml"
    copy.write_text(run.to_yaml())
    back = load_targets(copy)
    assert [t.to_dict() for t in back.values()] == [t.to_dict() for t in run.values()]
    assert back.for_model("slow")["p95_latency_ms"].target == 90
    assert back.for_model("other")["p95_latency_ms"].target == 100
    assert [r.to_dict() for r in back.relaxed] == [r.to_dict() for r in run.relaxed]
    assert back.regression_config().to_block() == run.regression_config().to_block()
