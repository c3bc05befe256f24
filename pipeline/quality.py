"""Model quality SLAs: the metrics a model's evaluation set is scored with.

A model declares its quality evidence in its models-file entry (`sla:`): a metric, a
threshold and an evaluation set (inputs and labels or targets). The same scoring serves the
build (which checks the evaluation set fits the model) and the integration stage (which
scores the model through the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["SLA_METRICS", "QualityMetric", "score"]


@dataclass(frozen=True)
class QualityMetric:
    """A way to score outputs against the evaluation set's labels or targets."""

    name: str
    direction: Literal["min", "max"]  # min: higher is better (accuracy); max: lower (error)
    needs: Literal["labels", "targets"]  # class labels (ints) or regression targets
    description: str


SLA_METRICS: dict[str, QualityMetric] = {
    m.name: m
    for m in (
        QualityMetric("accuracy", "min", "labels", "share of rows whose argmax is the label"),
        QualityMetric(
            "top_k_accuracy", "min", "labels", "share of rows whose label is in the top k"
        ),
        QualityMetric("pearson_r", "min", "targets", "Pearson r of outputs and targets"),
        QualityMetric("mae", "max", "targets", "mean absolute error against the targets"),
        QualityMetric("rmse", "max", "targets", "root mean squared error against the targets"),
    )
}


def score(metric: str, outputs: np.ndarray, truth: np.ndarray, k: int = 1) -> float:
    """`metric` of `outputs` (one row per evaluation row) against `truth`."""
    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if metric in ("accuracy", "top_k_accuracy"):
        labels = np.asarray(truth).reshape(-1).astype(np.int64)
        if metric == "accuracy" or k == 1:
            return float(np.mean(np.argmax(out, axis=1) == labels))
        top = np.argsort(-out, axis=1)[:, :k]
        return float(np.mean((top == labels[:, None]).any(axis=1)))
    values = out.reshape(-1)
    target = np.asarray(truth, dtype=np.float64).reshape(-1)
    if values.shape != target.shape:
        raise ValueError(
            f"{metric}: {values.size} output values for {target.size} targets (one each needed)"
        )
    if metric == "pearson_r":
        return float(np.corrcoef(values, target)[0, 1])
    if metric == "mae":
        return float(np.mean(np.abs(values - target)))
    if metric == "rmse":
        return float(np.sqrt(np.mean((values - target) ** 2)))
    raise ValueError(f"unknown SLA metric {metric!r}; expected one of {', '.join(SLA_METRICS)}")
