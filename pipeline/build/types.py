"""Value types of :mod:`pipeline.build`: what a builder returns and what a build returns.

This module imports neither torch nor onnx, so ``import pipeline.build`` stays cheap.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["MODEL_TYPES", "BuildResult", "BuiltModel"]

MODEL_TYPES = ("regression", "classification", "imported")


@dataclass(frozen=True)
class BuiltModel:
    """What a builder callable ``(snapshot_date, seed) -> BuiltModel`` returns.

    Attributes:
        module: the trained eager module (put in eval mode by the build). Its ``forward`` takes
            one float32 tensor ``[batch, n_features]`` and returns one tensor
            ``[batch, *output_shape]`` (for a classifier: probabilities, not logits).
        model_type: ``"regression"`` or ``"classification"``.
        input_name, output_name: the names of the ONNX graph's input and output.
        feature_names: the names of the input columns, in order.
        x_train, y_train, x_holdout, y_holdout: the data the module was trained on and the
            split held out from training (``x`` float32 ``[n, n_features]``).
        metrics: ``metrics(outputs, y_holdout) -> {name: value}``; called by the build with the
            eager module's outputs on ``x_holdout``. Values must be JSON-serialisable.
        sample_inputs: ``sample_inputs(rng, n) -> float32 [n, n_features]``: draws inputs from
            the same generator as the data; the build uses it for the parity probe set.
        class_names: class names in output order (classification only).
        generator: identifier of the data generator (recorded in ``model_info.json``).
        training: deterministic training facts (epochs, optimiser, ...), recorded as is.
        train_seconds: wall-clock training time, reported but never written to disk.
    """

    module: torch.nn.Module
    model_type: str
    input_name: str
    output_name: str
    feature_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_holdout: np.ndarray
    y_holdout: np.ndarray
    metrics: Callable[[np.ndarray, np.ndarray], Mapping[str, Any]]
    sample_inputs: Callable[[np.random.Generator, int], np.ndarray]
    class_names: tuple[str, ...] | None = None
    generator: str = "custom"
    training: Mapping[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0


@dataclass(frozen=True)
class BuildResult:
    """The outcome of :func:`pipeline.build.build_models`.

    ``models`` maps each model name to its ``model_info.json`` entry; ``seconds`` is the
    wall-clock time of the whole build (it is written nowhere in ``out_dir``, so two builds of
    the same snapshot date produce byte-identical folders).
    """

    out_dir: Path
    snapshot_date: _dt.date
    models: dict[str, dict[str, Any]]
    seconds: float
    model_seconds: dict[str, float] = field(default_factory=dict)
