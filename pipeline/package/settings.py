"""The service settings a package deploys: the engine configuration the run certified.

The load stage records the engine configuration it measured under
(`stages/load/summary.json` "engine_config"); the package deploys exactly that, so the
certified figures hold for what runs in the cluster. Without a load summary the engine's
defaults are used (`EngineSettings()`: the defaults the load stage certifies with).

MODEL_FORMAT is the preferred model file: a model without it is served from the file it has
(a TorchScript-only import from its `.pt`), as the run certified it. MAX_BODY_BYTES is the
service's default, raised (as the infra stage raises it) until one JSON inference request of
every model fits, unless set explicitly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.inference.settings import EngineSettings
from pipeline.package.errors import PackageError
from pipeline.serve.settings import ENGINE_ENV, FORMATS, ServeSettings

__all__ = [
    "MODEL_FORMATS",
    "DeploymentSettings",
    "EngineSettings",
    "certified_capacity_for_run",
    "engine_settings_for_run",
]

MODEL_FORMATS = FORMATS
#: the service's own defaults for the two service settings a package fixes
_SERVICE_DEFAULTS = {f.name: f.default for f in fields(ServeSettings)}
_FORMAT_DEFAULT: str = _SERVICE_DEFAULTS["model_format"]
_BODY_DEFAULT: int = _SERVICE_DEFAULTS["max_body_bytes"]


@dataclass(frozen=True)
class DeploymentSettings:
    """What the package deploys: the engine settings the run certified, plus the two
    service settings that go with them (the preferred model file, the body limit)."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    max_body_bytes: int = _BODY_DEFAULT
    model_format: str = _FORMAT_DEFAULT

    def __post_init__(self) -> None:
        body = self.max_body_bytes
        if isinstance(body, bool) or not isinstance(body, int) or body < 64:
            raise PackageError(
                f"engine setting max_body_bytes must be an integer >= 64, got {body!r}"
            )
        if self.model_format not in MODEL_FORMATS:
            raise PackageError(
                f"engine setting model_format must be one of {', '.join(MODEL_FORMATS)}, "
                f"got {self.model_format!r}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeploymentSettings:
        """From flat keys: EngineSettings fields plus max_body_bytes and model_format."""
        own = {"max_body_bytes", "model_format"}
        known = own | {f.name for f in fields(EngineSettings)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PackageError(
                f"unknown engine setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        engine_values = {k: v for k, v in values.items() if k not in own}
        try:
            engine = EngineSettings.from_dict(engine_values)
        except ValueError as exc:
            raise PackageError(str(exc)) from None
        body = values.get("max_body_bytes", _BODY_DEFAULT)
        if isinstance(body, float) and body.is_integer():
            body = int(body)
        return cls(engine, body, values.get("model_format", _FORMAT_DEFAULT))

    def to_dict(self) -> dict[str, Any]:
        """Flat: every engine field, max_body_bytes and model_format (the docs read these)."""
        return {
            **self.engine.to_dict(),
            "max_body_bytes": self.max_body_bytes,
            "model_format": self.model_format,
        }

    def env(self, model_dir: str = "/models") -> dict[str, str]:
        """The service's environment configuration (what the ConfigMap holds)."""
        env = {"MODEL_DIR": model_dir, "MODEL_FORMAT": self.model_format}
        for name, var in ENGINE_ENV.items():
            env[var] = _text(getattr(self.engine, name))
        env["MAX_BODY_BYTES"] = _text(self.max_body_bytes)
        return env


def _text(value: float | None) -> str:
    """32 -> "32", 400.0 -> "400", 2.5 -> "2.5", None -> "none" (no float noise in env)."""
    if value is None:
        return "none"
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _format_of_models(models: Any) -> str | None:
    """'onnx' from engine keys like ["quality_predictor_onnx", "x_null"], if they agree."""
    formats = set()
    for key in models or ():
        for fmt in MODEL_FORMATS:
            if str(key).endswith(f"_{fmt}"):
                formats.add(fmt)
    return formats.pop() if len(formats) == 1 else None


def _load_summary(run_dir: Path) -> dict[str, Any] | None:
    """The load stage's summary.json of the run's current attempt, or None when it has
    none; a summary of another attempt or one breaking its contract is an error."""
    from pipeline.stages.common import RunDir, StageError

    path = run_dir / "stages" / "load" / "summary.json"
    if not path.exists():
        return None
    run = RunDir(Path(run_dir))
    if run.attempt_id(create=False) is None:  # a folder made by hand: no attempts to check
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PackageError(f"{path}: not a readable JSON file: {exc}") from None
        return summary if isinstance(summary, dict) else {}
    try:
        return run.read_summary("load")
    except StageError as exc:
        raise PackageError(str(exc)) from None


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
) -> tuple[DeploymentSettings, str]:
    """The settings to deploy and where they came from (for the docs).

    Order: `overrides` > the load stage's engine_config > the report's model formats (for
    the model format) > defaults.
    """
    known = {"max_body_bytes", "model_format"} | {f.name for f in fields(EngineSettings)}
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
        values.update(overrides)
        sources.append("explicit engine_settings")
    if not sources:
        sources.append("engine defaults (no load-stage summary in the run)")
    if "max_body_bytes" not in values:
        body = _body_limit(run_dir)
        if body != _BODY_DEFAULT:
            values["max_body_bytes"] = body
            sources.append(f"MAX_BODY_BYTES={body} so one JSON request of every model fits")
    return DeploymentSettings.from_dict(values), " + ".join(sources)


def _body_limit(run_dir: Path) -> int:
    """The service's default body limit, raised until a JSON inference request of one row
    of every model of the run fits (the limit the infra stage validated with)."""
    from pipeline.serve.tensors import body_limit_for

    try:
        info = json.loads((run_dir / "models" / "model_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _BODY_DEFAULT
    if not isinstance(info, dict):
        return _BODY_DEFAULT
    return body_limit_for({k: v for k, v in info.items() if isinstance(v, dict)}, _BODY_DEFAULT)
