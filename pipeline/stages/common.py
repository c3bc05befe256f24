"""What every stage shares: the run folder's layout, atomic table writes, request inputs."""

from __future__ import annotations

import io
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import atomic_write_json, atomic_write_text

__all__ = [
    "RunDir",
    "StageError",
    "check_row",
    "input_pool",
    "model_names",
    "serving_keys",
    "write_table",
]

#: the model format the load, stress and infra stages exercise (integration checks both)
SERVING_FORMAT = "onnx"


class StageError(RuntimeError):
    """A stage could not run (missing inputs, a model that does not load, ...)."""


@dataclass(frozen=True)
class RunDir:
    """The artifact folder of one run (ARCHITECTURE.md section 4)."""

    root: Path

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        return cls(Path(path).resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    def stage(self, name: str) -> Path:
        folder = self.root / "stages" / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def model_info(self) -> dict[str, Any]:
        path = self.models / "model_info.json"
        if not path.exists():
            raise StageError(f"{path} is missing: run the build stage first")
        return json.loads(path.read_text())

    def write_summary(self, stage: str, summary: dict[str, Any]) -> Path:
        return atomic_write_json(self.stage(stage) / "summary.json", _jsonable(summary))


def host_facts() -> dict[str, Any]:
    """Which machine ran a stage (results say where they were measured)."""
    import os

    from pipeline.scaleout import worker_hostname

    return {
        "hostname": worker_hostname(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def check_row(
    check: str,
    model: str,
    passed: bool,
    measured: float = float("nan"),
    unit: str = "",
    limit: float = float("nan"),
    detail: str = "",
) -> dict[str, Any]:
    """One row of a checks table (integration, infra): the gates' contract columns."""
    return {
        "check": check,
        "model": model,
        "passed": bool(passed),
        "measured": float(measured),
        "unit": unit,
        "limit": float(limit),
        "detail": detail,
    }


def write_table(rows: list[dict[str, Any]] | Any, path: Path) -> Path:
    """Write rows (or a DataFrame) as CSV, atomically."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def model_names(info: dict[str, Any]) -> list[str]:
    return sorted(info)


def serving_keys(info: dict[str, Any], fmt: str = SERVING_FORMAT) -> dict[str, str]:
    """name -> engine key for the serving format (falls back to the format a model has)."""
    keys = {}
    for name, entry in sorted(info.items()):
        files = entry.get("files") or {}
        chosen = fmt if fmt in files else next(iter(sorted(files)), None)
        if chosen is None:
            raise StageError(f"model {name!r} has no model files in model_info.json")
        keys[name] = f"{name}_{chosen}"
    return keys


def input_pool(run: RunDir, info: dict[str, Any], name: str, count: int, seed: int) -> np.ndarray:
    """`count` realistic request inputs for model `name`: rows of its hold-out split when
    there is one (resampled with a little jitter, so they do not repeat), else uniform
    random values of its input shape."""
    entry = info[name]
    rng = np.random.default_rng(seed)
    feature_shape = [int(d) for d in entry["input_shape"][1:]]
    holdout = entry.get("holdout_file")
    if holdout and (run.models / holdout).exists():
        with np.load(run.models / holdout) as data:
            base = np.asarray(data["x"], dtype=np.float32)
        rows = base[rng.integers(0, len(base), size=count)]
        jitter = rng.normal(0, 1e-3, size=rows.shape).astype(np.float32)
        return np.ascontiguousarray(rows + jitter)
    return rng.random((count, *feature_shape), dtype=np.float32)
