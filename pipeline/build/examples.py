"""The two example models of the original plan, trained on :mod:`pipeline.build.synthetic`.

Both are builder callables for ``include/models.yaml`` (``builder: module:callable``): they
take ``(snapshot_date, seed)`` and return a :class:`~pipeline.build.types.BuiltModel`.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
from torch import nn

from pipeline.build import synthetic
from pipeline.build.seeds import STREAM_DATA, STREAM_INIT, stream_rng, sub_seed
from pipeline.build.train import deterministic_torch, init_module, train_module
from pipeline.build.types import BuiltModel

__all__ = [
    "N_HOLDOUT",
    "N_TRAIN",
    "build_quality_predictor",
    "build_routing_classifier",
    "classification_metrics",
    "regression_metrics",
]

N_TRAIN = 16_000
N_HOLDOUT = 4_000

_QUALITY_EPOCHS = 25
_ROUTING_EPOCHS = 25
_BATCH = 512
_LEARNING_RATE = 2e-2


def regression_metrics(outputs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """pearson_r, mse and mae of predictions ``outputs`` ([n] or [n, 1]) against ``y``."""
    pred = np.asarray(outputs, dtype=np.float64).reshape(-1)
    true = np.asarray(y, dtype=np.float64).reshape(-1)
    err = pred - true
    return {
        "pearson_r": round(float(np.corrcoef(pred, true)[0, 1]), 6),
        "mse": round(float(np.mean(err**2)), 8),
        "mae": round(float(np.mean(np.abs(err))), 8),
    }


def classification_metrics(
    outputs: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """accuracy, per-class accuracy (recall) and macro F1 of probabilities against labels."""
    pred = np.asarray(outputs).argmax(axis=1)
    true = np.asarray(y).astype(np.int64)
    per_class: dict[str, float | None] = {}
    f1s = []
    for k, name in enumerate(class_names):
        tp = int(np.sum((pred == k) & (true == k)))
        support = int(np.sum(true == k))
        predicted = int(np.sum(pred == k))
        per_class[name] = round(tp / support, 6) if support else None
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {
        "accuracy": round(float(np.mean(pred == true)), 6),
        "per_class_accuracy": per_class,
        "macro_f1": round(float(np.mean(f1s)), 6),
    }


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def build_quality_predictor(snapshot_date: _dt.date, seed: int) -> BuiltModel:
    """10 optimisation parameters -> predicted quality in [0, 1] (MLP 10-32-16-1, sigmoid)."""
    del snapshot_date  # the date enters through the seed
    x, y = synthetic.sample_quality(stream_rng(seed, STREAM_DATA), N_TRAIN + N_HOLDOUT)
    x_train, y_train, x_holdout, y_holdout = _split(x, y)
    init_seed = sub_seed(seed, STREAM_INIT)
    with deterministic_torch(seed=init_seed):
        module = nn.Sequential(
            nn.Linear(10, 32),
            nn.ReLU(),
            nn.Linear(32, 16),
            nn.ReLU(),
            nn.Linear(16, 1),
            nn.Sigmoid(),
        )
        init_module(module, init_seed)
        module.train()
        mse = nn.MSELoss()
        report = train_module(
            module,
            list(module.parameters()),
            x_train,
            y_train.reshape(-1, 1),
            mse,
            seed=init_seed,
            epochs=_QUALITY_EPOCHS,
            batch_size=_BATCH,
            learning_rate=_LEARNING_RATE,
        )
        module.eval()
    return BuiltModel(
        module=module,
        model_type="regression",
        input_name="features",
        output_name="quality",
        feature_names=synthetic.QUALITY_FEATURES,
        x_train=x_train,
        y_train=y_train,
        x_holdout=x_holdout,
        y_holdout=y_holdout,
        metrics=regression_metrics,
        sample_inputs=synthetic.sample_quality_inputs,
        generator=synthetic.GENERATOR_ID,
        training={**report.as_record(), "loss": "mse"},
        train_seconds=report.seconds,
    )


def build_routing_classifier(snapshot_date: _dt.date, seed: int) -> BuiltModel:
    """15 image features -> probabilities of 4 routing classes (MLP 15-64-32-4, softmax)."""
    del snapshot_date
    x, y = synthetic.sample_routing(stream_rng(seed, STREAM_DATA), N_TRAIN + N_HOLDOUT)
    x_train, y_train, x_holdout, y_holdout = _split(x, y)
    init_seed = sub_seed(seed, STREAM_INIT)
    classes = synthetic.ROUTING_CLASSES
    with deterministic_torch(seed=init_seed):
        module = nn.Sequential(
            nn.Linear(15, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, len(classes)),
            nn.Softmax(dim=-1),
        )
        init_module(module, init_seed)
        module.train()
        logits = module[:-1]  # train on logits; the exported module outputs probabilities
        report = train_module(
            logits,
            list(module.parameters()),
            x_train,
            y_train,
            nn.CrossEntropyLoss(),
            seed=init_seed,
            epochs=_ROUTING_EPOCHS,
            batch_size=_BATCH,
            learning_rate=_LEARNING_RATE,
        )
        module.eval()
    return BuiltModel(
        module=module,
        model_type="classification",
        input_name="features",
        output_name="probabilities",
        feature_names=synthetic.ROUTING_FEATURES,
        class_names=classes,
        x_train=x_train,
        y_train=y_train,
        x_holdout=x_holdout,
        y_holdout=y_holdout,
        metrics=lambda outputs, y_true: classification_metrics(outputs, y_true, classes),
        sample_inputs=synthetic.sample_routing_inputs,
        generator=synthetic.GENERATOR_ID,
        training={**report.as_record(), "loss": "cross_entropy"},
        train_seconds=report.seconds,
    )
