"""One EngineSettings: validated once, and the same defaults in every place that runs an engine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.inference import EngineSettings, ProductionInferenceEngine, ProductionModelManager

pytestmark = pytest.mark.unit


def test_defaults_agree_everywhere(built_models: Path, tmp_path: Path) -> None:
    """Service, engine, package and engine host start from the same engine defaults."""
    from pipeline.package.settings import engine_settings_for_run
    from pipeline.serve.settings import ServeSettings
    from pipeline.stages.engine_host import HostConfig

    defaults = EngineSettings()
    service = ServeSettings.from_env({"MODEL_DIR": str(built_models)}).engine
    host = HostConfig(models=("quality_predictor_onnx",)).engine
    package, source = engine_settings_for_run(tmp_path)  # a run without a load summary
    assert "defaults" in source
    assert service == defaults
    assert host == defaults
    assert package.engine == defaults
    # what the package writes into the ConfigMap, read back by the service, is the same
    deployed = ServeSettings.from_env(package.env(str(built_models)))
    assert deployed.engine == defaults
    assert deployed.model_format == package.model_format
    # the engine's own keyword defaults (the original API) are the same knobs
    manager = ProductionModelManager(built_models)
    engine = ProductionInferenceEngine(manager)
    assert engine.settings == dataclasses.replace(defaults, pool_mb=0.0, cache_entries=0)
    built = ProductionInferenceEngine(manager, settings=defaults)
    assert built.settings == defaults
    assert built.memory_pool.max_pool_size_mb == defaults.pool_mb
    assert built.cache.max_entries == defaults.cache_entries


def test_keyword_arguments_still_configure_the_engine(built_models: Path) -> None:
    manager = ProductionModelManager(built_models)
    engine = ProductionInferenceEngine(
        manager, max_batch_size=8, batch_timeout_ms=2.0, max_queue_size=16, default_deadline_ms=None
    )
    assert (engine.max_batch_size, engine.batch_timeout_ms, engine.max_queue_size) == (8, 2.0, 16)
    assert engine.default_deadline_ms is None
    assert engine.settings.max_batch_size == 8
    overridden = ProductionInferenceEngine(
        manager, settings=EngineSettings(max_batch_size=4, max_queue_size=9), max_queue_size=12
    )
    assert (overridden.max_batch_size, overridden.max_queue_size) == (4, 12)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_batch_size", 0, "max_batch_size must be an integer >= 1, got 0"),
        ("max_batch_size", 2.5, "max_batch_size must be an integer >= 1, got 2.5"),
        ("max_batch_size", True, "max_batch_size must be an integer >= 1, got True"),
        ("batch_timeout_ms", -1.0, "batch_timeout_ms must be a finite number >= 0"),
        ("max_queue_size", 0, "max_queue_size must be an integer >= 1"),
        ("default_deadline_ms", 0, "default_deadline_ms must be a finite number > 0 or None"),
        ("pool_mb", float("nan"), "pool_mb must be a finite number >= 0"),
        ("cache_entries", -1, "cache_entries must be an integer >= 0"),
        ("max_memory_mb", 0, "max_memory_mb must be a finite number > 0"),
        ("recovery_failure_threshold", 0, "recovery_failure_threshold must be an integer >= 1"),
        ("intra_op_threads", "2", "intra_op_threads must be an integer >= 1, got '2'"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValueError, match="^engine setting " + expected.replace("(", r"\(")):
        EngineSettings(**{field: value})


def test_engine_keyword_errors_name_the_field(built_models: Path) -> None:
    manager = ProductionModelManager(built_models)
    with pytest.raises(ValueError, match="max_queue_size must be an integer >= 1, got 0"):
        ProductionInferenceEngine(manager, max_queue_size=0)


def test_host_config_json_round_trip_and_recorded_format() -> None:
    from pipeline.stages.engine_host import HostConfig

    config = HostConfig(
        models=("a_onnx", "b_onnx"),
        engine=EngineSettings(max_batch_size=16, pool_mb=0.0, default_deadline_ms=None),
    )
    assert HostConfig.from_json(config.to_json()) == config
    flat = json.loads(config.to_json())
    # the load stage's engine_config stays flat (models + engine fields), as the package reads
    assert flat["models"] == ["a_onnx", "b_onnx"] and flat["max_batch_size"] == 16
    assert flat["default_deadline_ms"] is None
    # an engine_config recorded before EngineSettings existed is still readable
    old = {"models": ["a_onnx"], "max_batch_size": 16.0, "pool_mb": 300.0, "cache_entries": 5}
    assert HostConfig.from_dict(old).engine == EngineSettings(
        max_batch_size=16, pool_mb=300.0, cache_entries=5
    )
    with pytest.raises(ValueError, match="unknown engine setting"):
        HostConfig.from_dict({"models": [], "max_batch": 3})


def test_service_reads_engine_variables_into_engine_settings(built_models: Path) -> None:
    from pipeline.serve.settings import ServeSettings, SettingsError

    settings = ServeSettings.from_env(
        {
            "MODEL_DIR": str(built_models),
            "MAX_QUEUE": "7",
            "DEFAULT_DEADLINE_MS": "none",
            "RECOVERY_FAILURE_THRESHOLD": "3",
        }
    )
    assert settings.engine == EngineSettings(
        max_queue_size=7, default_deadline_ms=None, recovery_failure_threshold=3
    )
    assert ServeSettings.from_env(settings.to_env()) == settings
    with pytest.raises(SettingsError, match=r"^DEFAULT_DEADLINE_MS: .*> 0 or None"):
        ServeSettings.from_env({"MODEL_DIR": str(built_models), "DEFAULT_DEADLINE_MS": "-5"})
