"""`ServeSettings`: the service's configuration, read from environment variables.

Every variable is validated when the settings are built, and an error names the variable,
the value found and what was expected, so a bad deployment fails at start-up, not at the
first request.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.inference.admission import AdmissionSettings
from pipeline.inference.settings import EngineSettings

__all__ = ["ADMISSION_ENV", "ENGINE_ENV", "FORMATS", "ServeSettings", "SettingsError"]

FORMATS = ("onnx", "torchscript")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class ServeSettings:
    """How one service process is configured (see the package docstring for each variable).

    The engine's knobs are one `EngineSettings` (`engine`), read from the same variables
    as before (``MAX_QUEUE`` is `engine.max_queue_size`, see `ENGINE_ENV`)."""

    model_dir: Path
    model_format: str = "onnx"
    engine: EngineSettings = field(default_factory=EngineSettings)
    max_body_bytes: int = 65_536
    #: most rows one /v2 inference request may carry (also bounded by MAX_QUEUE and, with
    #: admission control, ADMISSION_MAX_CONCURRENCY); the admission limit never falls below it
    max_request_rows: int = 256
    limit_concurrency: int = 2048
    timeout_keep_alive_s: float = 5.0
    max_header_bytes: int = 16_384
    body_read_timeout_s: float = 10.0
    validate_token: str = field(default="", repr=False)
    validate_max_requests: int = 2000
    validate_max_seconds: float = 10.0
    validate_max_concurrency: int = 8
    startup_delay_s: float = 0.0
    #: upper bounds (ms) of the latency histogram; None: the monitor's default ladder
    latency_buckets_ms: tuple[float, ...] | None = None
    #: admission control in front of the engine (ADMISSION_* variables, see ADMISSION_ENV)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)

    @property
    def validate_enabled(self) -> bool:
        """/api/v1/validate/performance exists only when a token is configured."""
        return bool(self.validate_token)

    @property
    def request_rows(self) -> int:
        """The most rows a request may carry: MAX_REQUEST_ROWS, within MAX_QUEUE and (with
        admission control) ADMISSION_MAX_CONCURRENCY, so a request that may be sent always
        fits in the engine's queue and under the admission limit."""
        most = min(self.max_request_rows, self.engine.max_queue_size)
        if self.admission.enabled:
            most = min(most, self.admission.max_concurrency)
        return most

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from `environ` (default `os.environ`); keyword overrides (by field name,
        e.g. ``model_dir=...`` or an engine field such as ``max_queue_size=...``, or a whole
        ``engine=EngineSettings(...)``) win over the environment and are validated the same
        way."""
        environ = os.environ if environ is None else environ
        own = {f.name for f in fields(cls)}
        engine_fields = set(ENGINE_ENV)
        unknown = sorted(set(overrides) - own - engine_fields)
        if unknown:
            known = sorted(own | engine_fields)
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        base_engine = overrides.get("engine")
        if base_engine is not None and not isinstance(base_engine, EngineSettings):
            raise SettingsError(f"engine: expected an EngineSettings, got {base_engine!r}")
        base_admission = overrides.get("admission")
        if base_admission is not None and not isinstance(base_admission, AdmissionSettings):
            raise SettingsError(f"admission: expected an AdmissionSettings, got {base_admission!r}")
        values: dict[str, Any] = {}
        for name, parse in _SPEC.items():
            raw = _raw(name.upper(), name, environ, overrides)
            if raw is not _MISSING:
                values[name] = parse(name.upper(), raw)
            elif name == "model_dir":
                raise SettingsError(
                    "MODEL_DIR: required (a models folder written by `relcert build`), "
                    "but it is not set"
                )
        engine_values: dict[str, Any] = {}
        for name, var in ENGINE_ENV.items():
            raw = _raw(var, name, environ, overrides)
            if raw is _MISSING:
                continue
            try:
                engine_values[name] = EngineSettings.parse(name, raw)
            except ValueError as exc:
                raise SettingsError(f"{var}: {exc}") from None
        engine = base_engine if base_engine is not None else EngineSettings()
        values["engine"] = engine.replace(**engine_values)
        values["admission"] = _admission(environ, base_admission or AdmissionSettings())
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for worker processes)."""
        env = {
            name.upper(): _env_text(getattr(self, name))
            for name in _SPEC
            if getattr(self, name) is not None
        }
        env.update({var: str(getattr(self.engine, name)) for name, var in ENGINE_ENV.items()})
        env.update({var: str(getattr(self.admission, name)) for name, var in ADMISSION_ENV.items()})
        return env


def _env_text(value: Any) -> str:
    if isinstance(value, tuple):  # LATENCY_BUCKETS_MS=1,2.5,5
        return ",".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in value)
    return str(value)


#: EngineSettings field -> the environment variable that sets it (documented, deployed names)
ENGINE_ENV: dict[str, str] = {
    "max_batch_size": "MAX_BATCH_SIZE",
    "batch_timeout_ms": "BATCH_TIMEOUT_MS",
    "max_queue_size": "MAX_QUEUE",
    "default_deadline_ms": "DEFAULT_DEADLINE_MS",
    "pool_mb": "POOL_MB",
    "cache_entries": "CACHE_ENTRIES",
    "max_memory_mb": "MAX_MEMORY_MB",
    "recovery_failure_threshold": "RECOVERY_FAILURE_THRESHOLD",
    "recovery_cooldown_s": "RECOVERY_COOLDOWN_S",
    "memory_check_interval_s": "MEMORY_CHECK_INTERVAL_S",
    "intra_op_threads": "INTRA_OP_THREADS",
}
#: AdmissionSettings field -> the environment variable that sets it
ADMISSION_ENV: dict[str, str] = {
    "enabled": "ADMISSION_CONTROL",
    "max_concurrency": "ADMISSION_MAX_CONCURRENCY",
    "min_concurrency": "ADMISSION_MIN_CONCURRENCY",
    "target_p95_ms": "ADMISSION_TARGET_P95_MS",
    "adjust_every": "ADMISSION_ADJUST_EVERY",
    "max_waiting": "ADMISSION_MAX_WAITING",
    "queue_timeout_ms": "ADMISSION_QUEUE_TIMEOUT_MS",
}
_MISSING = object()


def _admission(environ: Mapping[str, str], base: AdmissionSettings) -> AdmissionSettings:
    """`base` with the ADMISSION_* variables that are set (each validated, named)."""
    values = base.to_dict()
    for name, var in ADMISSION_ENV.items():
        raw = _raw(var, name, environ, {})
        if raw is _MISSING:
            continue
        try:
            values[name] = AdmissionSettings.parse(name, raw)
        except ValueError as exc:
            raise SettingsError(f"{var}: {exc}") from None
    try:
        return AdmissionSettings(**values)
    except ValueError as exc:
        raise SettingsError(
            f"ADMISSION_MIN_CONCURRENCY / ADMISSION_MAX_CONCURRENCY: {exc}"
        ) from None


def _raw(var: str, name: str, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> Any:
    """An override (by field name) or the environment variable; _MISSING when neither."""
    if name in overrides and overrides[name] is not None:
        return overrides[name]
    raw = environ.get(var)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return _MISSING
    return raw


def _model_dir(var: str, raw: Any) -> Path:
    path = Path(str(raw)).expanduser()
    if not path.is_dir():
        raise SettingsError(f"{var}: {str(raw)!r} is not an existing folder")
    if not (path / "model_info.json").is_file():
        raise SettingsError(
            f"{var}: {str(raw)!r} has no model_info.json (expected a folder written by "
            "`relcert build`)"
        )
    return path.resolve()


def _format(var: str, raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in FORMATS:
        raise SettingsError(f"{var}: expected one of {', '.join(FORMATS)}, got {str(raw)!r}")
    return value


def _token(var: str, raw: Any) -> str:
    value = str(raw).strip()
    if value and (len(value) < 16 or not all(33 <= ord(c) < 127 for c in value)):
        raise SettingsError(
            f"{var}: expected at least 16 printable ASCII characters without spaces (or unset "
            f"to keep the endpoint off), got a value of {len(value)} characters"
        )
    return value


def _int(minimum: int) -> Callable[[str, Any], int]:
    def parse(var: str, raw: Any) -> int:
        if isinstance(raw, bool):
            raise SettingsError(f"{var}: expected an integer >= {minimum}, got {raw!r}")
        try:
            value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
        except ValueError:
            raise SettingsError(f"{var}: expected an integer >= {minimum}, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{var}: expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _float(minimum: float, *, strict: bool) -> Callable[[str, Any], float]:
    bound = f"{'>' if strict else '>='} {minimum:g}"

    def parse(var: str, raw: Any) -> float:
        if isinstance(raw, bool):
            raise SettingsError(f"{var}: expected a number {bound}, got {raw!r}")
        try:
            value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
        except ValueError:
            raise SettingsError(f"{var}: expected a number {bound}, got {raw!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise SettingsError(f"{var}: expected a finite number {bound}, got {value:g}")
        return value

    return parse


def _buckets(var: str, raw: Any) -> tuple[float, ...]:
    from pipeline.inference.monitor import check_latency_buckets

    parts = raw.split(",") if isinstance(raw, str) else raw
    try:
        return check_latency_buckets([p.strip() if isinstance(p, str) else p for p in parts], var)
    except ValueError as exc:
        raise SettingsError(
            f"{exc}; expected comma-separated upper bounds in ms, e.g. 5,10,25,50"
        ) from None


#: ServeSettings field (its variable is the name in capitals) -> its parser (defaults are the
#: dataclass's); the engine's variables are ENGINE_ENV, parsed and validated by EngineSettings.
_SPEC: dict[str, Callable[[str, Any], Any]] = {
    "model_dir": _model_dir,
    "model_format": _format,
    "max_body_bytes": _int(64),
    "max_request_rows": _int(1),
    "limit_concurrency": _int(1),
    "timeout_keep_alive_s": _float(0.0, strict=True),
    "max_header_bytes": _int(1024),
    "body_read_timeout_s": _float(0.0, strict=True),
    "validate_token": _token,
    "validate_max_requests": _int(1),
    "validate_max_seconds": _float(0.0, strict=True),
    "validate_max_concurrency": _int(1),
    "startup_delay_s": _float(0.0, strict=False),
    "latency_buckets_ms": _buckets,
}
