"""ServeSettings from the environment (errors name the variable) and the CLI wiring."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline.serve import ServeSettings, SettingsError
from pipeline.serve.cli import add_parser, run

pytestmark = pytest.mark.unit


def test_defaults_and_overrides(built_models: Path) -> None:
    settings = ServeSettings.from_env({"MODEL_DIR": str(built_models)})
    assert settings.model_dir == built_models.resolve()
    assert (settings.model_format, settings.engine.max_batch_size) == ("onnx", 32)
    assert settings.engine.max_queue_size == 1024
    assert settings.engine.batch_timeout_ms == 0.0 and settings.max_body_bytes == 65536
    assert (settings.validate_max_requests, settings.validate_max_seconds) == (2000, 10.0)
    # security-relevant defaults: validation off, bounded connections, headers and reads
    assert settings.validate_token == "" and not settings.validate_enabled
    assert settings.engine.default_deadline_ms == 10_000.0
    assert (settings.limit_concurrency, settings.max_header_bytes) == (2048, 16_384)
    assert (settings.timeout_keep_alive_s, settings.body_read_timeout_s) == (5.0, 10.0)
    token = "x" * 32
    assert token not in repr(
        ServeSettings.from_env({}, model_dir=built_models, validate_token=token)
    )
    env = {"MODEL_DIR": "/nowhere", "MAX_QUEUE": "7", "MODEL_FORMAT": "TorchScript"}
    settings = ServeSettings.from_env(env, model_dir=built_models, startup_delay_s=0.5)
    assert settings.engine.max_queue_size == 7 and settings.model_format == "torchscript"
    assert settings.startup_delay_s == 0.5
    with pytest.raises(AttributeError):
        settings.engine.max_queue_size = 8  # type: ignore[misc]
    assert ServeSettings.from_env(settings.to_env()) == settings
    assert settings.latency_buckets_ms is None  # the monitor's default ladder
    env["LATENCY_BUCKETS_MS"] = "5, 33,92.5"
    settings = ServeSettings.from_env(env, model_dir=built_models)
    assert settings.latency_buckets_ms == (5.0, 33.0, 92.5)
    assert settings.to_env()["LATENCY_BUCKETS_MS"] == "5,33,92.5"
    assert ServeSettings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("var", "value", "phrase"),
    [
        ("MAX_BATCH_SIZE", "0", "integer >= 1"),
        ("MAX_BATCH_SIZE", "many", "integer >= 1"),
        ("BATCH_TIMEOUT_MS", "-1", "number >= 0"),
        ("MAX_QUEUE", "1.5", "integer >= 1"),
        ("MAX_MEMORY_MB", "0", "> 0"),
        ("POOL_MB", "nan", "finite number >= 0"),
        ("CACHE_ENTRIES", "-1", "integer >= 0"),
        ("MAX_BODY_BYTES", "10", "integer >= 64"),
        ("VALIDATE_MAX_REQUESTS", "0", "integer >= 1"),
        ("VALIDATE_MAX_SECONDS", "inf", "finite number > 0"),
        ("MODEL_FORMAT", "pickle", "one of onnx, torchscript"),
        ("LATENCY_BUCKETS_MS", "50,10", "strictly increasing"),
        ("LATENCY_BUCKETS_MS", "5,fast", "expected numbers"),
        ("LATENCY_BUCKETS_MS", "0,5", "finite numbers > 0"),
        ("DEFAULT_DEADLINE_MS", "0", "> 0 or None"),
        ("LIMIT_CONCURRENCY", "0", "integer >= 1"),
        ("TIMEOUT_KEEP_ALIVE_S", "0", "> 0"),
        ("MAX_HEADER_BYTES", "100", "integer >= 1024"),
        ("BODY_READ_TIMEOUT_S", "-1", "> 0"),
        ("VALIDATE_TOKEN", "short", "at least 16 printable ASCII"),
        ("VALIDATE_MAX_CONCURRENCY", "0", "integer >= 1"),
    ],
)
def test_invalid_values_name_the_variable(
    built_models: Path, var: str, value: str, phrase: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^{var}: .*{phrase}"):
        ServeSettings.from_env({"MODEL_DIR": str(built_models), var: value})


def test_model_dir_is_required_and_must_hold_models(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^MODEL_DIR: required"):
        ServeSettings.from_env({})
    with pytest.raises(SettingsError, match=r"^MODEL_DIR: .* is not an existing folder"):
        ServeSettings.from_env({"MODEL_DIR": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match=r"^MODEL_DIR: .* has no model_info.json"):
        ServeSettings.from_env({"MODEL_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="unknown setting"):
        ServeSettings.from_env({}, model_dirr=tmp_path)


def test_cli_wiring_parses_and_refuses_a_bad_model_dir(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="relcert")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--model-dir", str(tmp_path), "--port", "0"])
    assert (args.command, args.host, args.port, args.workers) == ("serve", "127.0.0.1", 0, 1)
    assert run(args) == 2  # no uvicorn started: the settings error comes first
    assert "MODEL_DIR" in capsys.readouterr().err


def test_the_validation_token_may_come_on_stdin_with_one_worker(
    built_models: Path, capsys, monkeypatch
) -> None:
    import io

    parser = argparse.ArgumentParser(prog="relcert")
    add_parser(parser.add_subparsers(dest="command", required=True))
    base = ["serve", "--model-dir", str(built_models), "--port", "0", "--validate-token-stdin"]
    assert run(parser.parse_args([*base, "--workers", "2"])) == 2
    assert "--validate-token-stdin needs --workers 1" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run(parser.parse_args(base)) == 2
    assert "expected the token on the first line of stdin" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))  # validated like the variable
    assert run(parser.parse_args(base)) == 2
    assert "VALIDATE_TOKEN: expected at least 16" in capsys.readouterr().err
