"""``model_info.json``: the contract between the build and everything that loads its models.

The file is a JSON object keyed by model name. Each entry holds ``name``, ``model_type``,
``source`` (``built`` / ``imported``), ``version``, ``snapshot_date``, ``input_name``,
``output_name``, ``input_shape`` / ``output_shape`` (``null`` for a dynamic dim),
``input_dtype`` / ``output_dtype``, ``feature_names`` and ``class_names`` (when known),
``files`` (format -> ``{path, sha256, bytes}``, paths relative to the models folder),
``training_data``, ``training``, ``holdout_metrics``, ``holdout_file`` (``null`` for imported
models), ``parity`` and ``build`` (library versions, opset). A model of named tensors (several
inputs or outputs, dynamic non-batch dims, declared value ranges) also has ``inputs``,
``outputs`` and ``dims`` (see `pipeline.inference.signature`); its ``input_*`` keys are
written only when it has one input, its ``output_*`` keys describe its first output. It
never holds wall-clock values, so two builds of the same snapshot date write the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_json
from pipeline.build.errors import BuildError

__all__ = ["MODEL_INFO_FILE", "read_model_info", "write_model_info"]

MODEL_INFO_FILE = "model_info.json"


def write_model_info(
    models_dir: str | os.PathLike[str], info: Mapping[str, Mapping[str, Any]]
) -> Path:
    """Atomically write ``models_dir/model_info.json`` (sorted keys, no NaN)."""
    for name, entry in info.items():
        if not isinstance(entry, Mapping) or entry.get("name", name) != name:
            raise BuildError(f"model_info entry {name!r} must be a mapping with name {name!r}")
    try:
        return atomic_write_json(Path(models_dir) / MODEL_INFO_FILE, dict(info))
    except ValueError as exc:  # NaN / Inf in a metric
        raise BuildError(f"model_info.json cannot hold a non-finite number: {exc}") from None


def read_model_info(models_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read ``model_info.json`` from a models folder (or the path of the file itself)."""
    path = Path(models_dir)
    if path.is_dir():
        path = path / MODEL_INFO_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path}: model_info.json not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BuildError(f"{path}: expected a JSON object keyed by model name")
    return data
