"""pipeline.regression.config: the regression block of targets.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.regression.config import (
    DEFAULT_BLOCK,
    REGRESSION_METRICS,
    RegressionConfigError,
    default_regression_config,
    load_regression_config,
    parse_regression_block,
)
from pipeline.targets import DEFAULT_TARGETS_FILE, TargetsError

pytestmark = pytest.mark.unit

TARGETS_TEXT = "version: 1\ntargets: []\n"


def _file(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(TARGETS_TEXT + block, encoding="utf-8")
    return path


def test_the_default_block_gives_the_documented_defaults() -> None:
    parsed = parse_regression_block(yaml.safe_load(DEFAULT_BLOCK)["regression"], "x")
    assert parsed == default_regression_config()
    assert set(parsed) == set(REGRESSION_METRICS)
    assert parsed.alpha == 0.01 and parsed.envelope_safety_factor == 0.5
    assert parsed["latency_p50_ms"].max_relative_change == 0.15
    assert parsed["latency_p95_ms"].max_relative_change == 0.20
    assert parsed["latency_p99_ms"].max_relative_change == 0.25
    assert parsed["compute_time_ms"].max_relative_change == 0.10
    assert parsed["capacity_rps"].max_relative_change == 0.15
    assert parsed["peak_rss_mb"].max_relative_change == 0.20
    assert parsed["init_time_s"].max_relative_change == 0.50
    assert parsed["quality"].max_absolute_drop == 0.02
    assert parsed["quality"].max_relative_change is None


def test_directions_come_from_the_metric() -> None:
    config = default_regression_config()
    worse_up = {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "compute_time_ms"}
    worse_up |= {"peak_rss_mb", "init_time_s"}
    for name, allowance in config.items():
        assert allowance.direction == ("max" if name in worse_up else "min"), name


def test_the_shipped_targets_file_carries_the_default_block() -> None:
    """include/targets.yaml ends with DEFAULT_BLOCK (commented out until pipeline/targets.py
    accepts the key, or live): the two never drift apart."""
    text = DEFAULT_TARGETS_FILE.read_text(encoding="utf-8")
    start = text.index(DEFAULT_BLOCK.splitlines()[0])
    live = []
    yaml_part = False
    for line in text[start:].splitlines():
        if line in ("# regression:", "regression:"):
            yaml_part = True
        live.append(line.removeprefix("# ") if yaml_part and line.startswith("# ") else line)
    assert "\n".join(live) + "\n" == DEFAULT_BLOCK
    assert load_regression_config(DEFAULT_TARGETS_FILE) == default_regression_config()


def test_a_file_without_the_block_gets_the_defaults(tmp_path: Path) -> None:
    config = load_regression_config(_file(tmp_path, ""))
    assert config == default_regression_config()
    assert config.source.endswith("targets.yaml")


def test_a_partial_block_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "regression:\n  alpha: 0.05\n  metrics:\n"
        "    latency_p99_ms: {max_relative_change: 0.4, alpha: 0.001}\n"
        "    quality: {max_absolute_drop: 0.01}\n",
    )
    config = load_regression_config(path)
    assert config.alpha == 0.05
    assert config["latency_p99_ms"].max_relative_change == 0.4
    assert config["latency_p99_ms"].alpha == 0.001
    assert config["latency_p50_ms"].alpha == 0.05  # the block's alpha
    assert config["latency_p50_ms"].max_relative_change == 0.15
    assert config["quality"].max_absolute_drop == 0.01
    assert config["latency_p99_ms"].describe() == "latency_p99_ms: at most +40% (alpha 0.001)"
    assert config["capacity_rps"].describe() == "capacity_rps: at most -15% (alpha 0.05)"


def test_the_environment_names_the_targets_file(tmp_path, monkeypatch) -> None:
    path = _file(tmp_path, "regression:\n  envelope_safety_factor: 0.7\n")
    monkeypatch.setenv("RELCERT_TARGETS_FILE", str(path))
    assert load_regression_config().envelope_safety_factor == 0.7


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("regression: [1]\n", "regression: must be a mapping"),
        ("regression:\n  alpah: 0.1\n", "unknown key(s) 'alpah'"),
        ("regression:\n  alpha: 0.7\n", "regression.alpha: alpha must be a number in (0, 0.5)"),
        ("regression:\n  bootstrap_resamples: 50\n", "bootstrap_resamples: must be an integer"),
        ("regression:\n  envelope_safety_factor: 1.5\n", "envelope_safety_factor: must be"),
        (
            "regression:\n  metrics:\n    latency_p999_ms: {max_relative_change: 0.1}\n",
            "regression.metrics.latency_p999_ms: unknown metric",
        ),
        (
            "regression:\n  metrics:\n    latency_p50_ms: {max_relative_change: -0.1}\n",
            "regression.metrics.latency_p50_ms: max_relative_change must be a number >= 0",
        ),
        (
            "regression:\n  metrics:\n    capacity_rps: {max_relative_change: 1.0}\n",
            "regression.metrics.capacity_rps: max_relative_change must be < 1",
        ),
        (
            "regression:\n  metrics:\n    quality: {max_relative_change: 0.1}\n",
            "quality is compared in absolute points",
        ),
        (
            "regression:\n  metrics:\n    peak_rss_mb: {max_absolute_drop: 5}\n",
            "max_absolute_drop is for quality only",
        ),
        (
            "regression:\n  metrics:\n    init_time_s: {alpha: 0}\n",
            "regression.metrics.init_time_s.alpha: alpha must be",
        ),
        ("regression:\n  metrics:\n    init_time_s: 0.5\n", "init_time_s: must be a mapping"),
    ],
)
def test_errors_name_the_file_the_metric_and_the_key(tmp_path, block, message) -> None:
    path = _file(tmp_path, block)
    with pytest.raises(RegressionConfigError) as caught:
        load_regression_config(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(path)) or "targets.yaml" in str(caught.value)
    assert isinstance(caught.value, TargetsError)  # callers catching TargetsError see it


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RegressionConfigError, match="targets file not found"):
        load_regression_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("regression: [\n", encoding="utf-8")
    with pytest.raises(RegressionConfigError, match="malformed YAML at line"):
        load_regression_config(bad)
