"""The service settings a package deploys: the engine configuration the run certified.

The load stage records the engine configuration it measured under
(`stages/load/summary.json` "engine_config"); the package deploys exactly that, so the
certified figures hold for what runs in the cluster. Without a load summary the engine's
defaults are used (they are the defaults the load stage certifies with).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from pipeline.package.errors import PackageError
from pipeline.stages.common import SERVING_FORMAT
from pipeline.stages.engine_host import HostConfig

__all__ = [
    "MODEL_FORMATS",
    "EngineSettings",
    "certified_capacity_for_run",
    "engine_settings_for_run",
]

MODEL_FORMATS = ("onnx", "torchscript")
#: the engine configuration the load stage certifies with when nothing else is recorded
_CERTIFIED = HostConfig(models=())
_INT_FIELDS = {"max_batch_size": 1, "max_queue_size": 1, "cache_entries": 0, "max_body_bytes": 1}
_FLOAT_FIELDS = {"batch_timeout_ms": 0.0, "pool_mb": 0.0, "max_memory_mb": 1.0}


@dataclass(frozen=True)
class EngineSettings:
    """Batching, memory and cache settings of the served engine (one meaning per knob)."""

    max_batch_size: int = _CERTIFIED.max_batch_size
    batch_timeout_ms: float = _CERTIFIED.batch_timeout_ms
    max_queue_size: int = _CERTIFIED.max_queue_size
    pool_mb: float = _CERTIFIED.pool_mb
    cache_entries: int = _CERTIFIED.cache_entries
    max_memory_mb: float = _CERTIFIED.max_memory_mb
    max_body_bytes: int = 65_536
    model_format: str = SERVING_FORMAT

    def __post_init__(self) -> None:
        for name, low in {**_INT_FIELDS, **_FLOAT_FIELDS}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PackageError(f"engine setting {name} must be a number, got {value!r}")
            if name in _INT_FIELDS and float(value) != int(value):
                raise PackageError(f"engine setting {name} must be an integer, got {value!r}")
            if not math.isfinite(value) or value < low:
                raise PackageError(f"engine setting {name} must be >= {low}, got {value!r}")
        if self.model_format not in MODEL_FORMATS:
            raise PackageError(
                f"engine setting model_format must be one of {', '.join(MODEL_FORMATS)}, "
                f"got {self.model_format!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def env(self, model_dir: str = "/models") -> dict[str, str]:
        """The service's environment configuration (what the ConfigMap holds)."""
        return {
            "MODEL_DIR": model_dir,
            "MODEL_FORMAT": self.model_format,
            "MAX_BATCH_SIZE": _text(self.max_batch_size),
            "BATCH_TIMEOUT_MS": _text(self.batch_timeout_ms),
            "MAX_QUEUE": _text(self.max_queue_size),
            "MAX_MEMORY_MB": _text(self.max_memory_mb),
            "POOL_MB": _text(self.pool_mb),
            "CACHE_ENTRIES": _text(self.cache_entries),
            "MAX_BODY_BYTES": _text(self.max_body_bytes),
        }


def _text(value: float) -> str:
    """32 -> "32", 400.0 -> "400", 2.5 -> "2.5" (no float noise in env values)."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _normalised(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in _INT_FIELDS and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[key] = value
    return out


def _format_of_models(models: Any) -> str | None:
    """'onnx' from engine keys like ["quality_predictor_onnx", "x_null"], if they agree."""
    formats = set()
    for key in models or ():
        for fmt in MODEL_FORMATS:
            if str(key).endswith(f"_{fmt}"):
                formats.add(fmt)
    return formats.pop() if len(formats) == 1 else None


def _load_summary(run_dir: Path) -> dict[str, Any] | None:
    """The load stage's summary.json, or None when the run has none."""
    path = run_dir / "stages" / "load" / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not a readable JSON file: {exc}") from None
    return summary if isinstance(summary, dict) else {}


def certified_capacity_for_run(run_dir: Path) -> float | None:
    """The load stage's capacity.max_sustained_rps (req/s per replica), when it recorded a
    finite rate > 0; None otherwise."""
    summary = _load_summary(run_dir) or {}
    capacity = summary.get("capacity")
    rate = capacity.get("max_sustained_rps") if isinstance(capacity, dict) else None
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        return None
    return float(rate) if math.isfinite(rate) and rate > 0 else None


def engine_settings_for_run(
    run_dir: Path, overrides: Mapping[str, Any] | None = None, report: Mapping | None = None
) -> tuple[EngineSettings, str]:
    """The settings to deploy and where they came from (for the docs).

    Order: `overrides` > the load stage's engine_config > the report's model formats (for
    the model format) > defaults.
    """
    known = {f.name for f in fields(EngineSettings)}
    values: dict[str, Any] = {}
    sources = []
    summary = _load_summary(run_dir)
    if summary is not None:
        config = summary.get("engine_config")
        if isinstance(config, dict):
            values.update({k: v for k, v in config.items() if k in known})
            fmt = _format_of_models(config.get("models"))
            if fmt:
                values["model_format"] = fmt
            sources.append("the load stage's engine_config (stages/load/summary.json)")
    if "model_format" not in values and report is not None:
        formats = {
            str(m.get("format"))
            for m in report.get("models") or ()
            if isinstance(m, Mapping) and m.get("format") in MODEL_FORMATS
        }
        if len(formats) == 1:
            values["model_format"] = formats.pop()
    if overrides:
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise PackageError(
                f"unknown engine setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values.update(overrides)
        sources.append("explicit engine_settings")
    if not sources:
        sources.append("engine defaults (no load-stage summary in the run)")
    settings = replace(EngineSettings(), **_normalised(values))
    return settings, " + ".join(sources)
