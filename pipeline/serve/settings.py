"""`ServeSettings`: the service's configuration, read from environment variables.

Every variable is validated when the settings are built, and an error names the variable,
the value found and what was expected, so a bad deployment fails at start-up, not at the
first request.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "ServeSettings", "SettingsError"]

FORMATS = ("onnx", "torchscript")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class ServeSettings:
    """How one service process is configured (see the package docstring for each variable)."""

    model_dir: Path
    model_format: str = "onnx"
    max_batch_size: int = 32
    batch_timeout_ms: float = 0.0
    max_queue: int = 1024
    max_memory_mb: float = 500.0
    pool_mb: float = 400.0
    cache_entries: int = 10_000
    max_body_bytes: int = 65_536
    validate_max_requests: int = 2000
    validate_max_seconds: float = 10.0
    startup_delay_s: float = 0.0
    #: upper bounds (ms) of the latency histogram; None: the monitor's default ladder
    latency_buckets_ms: tuple[float, ...] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Settings from `environ` (default `os.environ`); keyword overrides (by field name,
        e.g. ``model_dir=...``) win over the environment and are validated the same way."""
        environ = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, (parse, default) in _SPEC.items():
            var = name.upper()
            if name in overrides and overrides[name] is not None:
                raw: Any = overrides[name]
            else:
                raw = environ.get(var)
                if raw is None or (isinstance(raw, str) and not raw.strip()):
                    if default is _REQUIRED:
                        raise SettingsError(
                            f"{var}: required (a models folder written by `relcert build`), "
                            "but it is not set"
                        )
                    values[name] = default
                    continue
            values[name] = parse(var, raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings (for worker processes)."""
        return {
            f.name.upper(): _env_text(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }


def _env_text(value: Any) -> str:
    if isinstance(value, tuple):  # LATENCY_BUCKETS_MS=1,2.5,5
        return ",".join(str(int(v)) if float(v).is_integer() else repr(float(v)) for v in value)
    return str(value)


_REQUIRED = object()


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


_SPEC: dict[str, tuple[Callable[[str, Any], Any], Any]] = {
    "model_dir": (_model_dir, _REQUIRED),
    "model_format": (_format, "onnx"),
    "max_batch_size": (_int(1), 32),
    "batch_timeout_ms": (_float(0.0, strict=False), 0.0),
    "max_queue": (_int(1), 1024),
    "max_memory_mb": (_float(0.0, strict=True), 500.0),
    "pool_mb": (_float(0.0, strict=False), 400.0),
    "cache_entries": (_int(0), 10_000),
    "max_body_bytes": (_int(64), 65_536),
    "validate_max_requests": (_int(1), 2000),
    "validate_max_seconds": (_float(0.0, strict=True), 10.0),
    "startup_delay_s": (_float(0.0, strict=False), 0.0),
    "latency_buckets_ms": (_buckets, None),
}
