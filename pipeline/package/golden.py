"""Golden requests: fixed inputs and the answers the packaged models give them.

At package time the packaged model files (alone, in a scratch folder, exactly as they will
sit on the models volume) are loaded by the in-process engine (`pipeline.inference`) and
asked a fixed set of questions: rows of each model's hold-out split, or seeded random inputs
for models without one. The deployed service must give the same answers (within 1e-4) with
the same model_version; `validation/smoke_test.py` checks that over HTTP.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.package.errors import PackageError

__all__ = ["ENDPOINTS", "GOLDEN_SEED", "ROWS_PER_MODEL", "TOLERANCE", "golden_requests"]

ROWS_PER_MODEL = 5
GOLDEN_SEED = 20_260_115
TOLERANCE = 1e-4
#: the service's endpoint for each kind of answer
ENDPOINTS = {"quality": "/api/v1/predict/quality", "routing": "/api/v1/predict/routing"}
_KIND_BY_NAME = {"quality_predictor": "quality", "routing_classifier": "routing"}
_KIND_BY_TYPE = {"regression": "quality", "classification": "routing"}


def endpoint_kinds(info: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """model name -> "quality" / "routing": by name, else by model_type when unambiguous."""
    kinds = {name: _KIND_BY_NAME[name] for name in info if name in _KIND_BY_NAME}
    for name, entry in sorted(info.items()):
        kind = _KIND_BY_TYPE.get(str(entry.get("model_type")))
        if name not in kinds and kind and kind not in kinds.values():
            kinds[name] = kind
    return kinds


def _inputs(models_dir: Path, entry: Mapping[str, Any], seed: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    feature_shape = [int(d) for d in (entry.get("input_shape") or [None])[1:]]
    holdout = entry.get("holdout_file")
    if holdout and (models_dir / holdout).is_file():
        with np.load(models_dir / holdout) as data:
            rows = np.asarray(data["x"], dtype=np.float32)
        picked = np.sort(rng.choice(len(rows), size=min(ROWS_PER_MODEL, len(rows)), replace=False))
        return np.ascontiguousarray(rows[picked]), f"{holdout} rows {picked.tolist()}"
    if not feature_shape:
        raise PackageError(f"model {entry.get('name')!r}: model_info.json has no input_shape")
    values = rng.random((ROWS_PER_MODEL, *feature_shape), dtype=np.float32)
    return values, f"uniform random [0, 1) inputs, seed {seed}"


def _expected(kind: str, output: np.ndarray, version: str, classes: list[str]) -> dict[str, Any]:
    values = [float(v) for v in np.asarray(output, dtype=np.float64).ravel()]
    if kind == "quality":
        return {"quality": values[0], "model_version": version}
    best = int(np.argmax(values))
    return {
        "method": classes[best] if best < len(classes) else str(best),
        "confidence": values[best],
        "probabilities": values,
        "model_version": version,
    }


async def _run(manager: Any, settings: Any, jobs: list[tuple[str, str, np.ndarray]]) -> list:
    from pipeline.inference import ProductionInferenceEngine

    engine = ProductionInferenceEngine(
        manager,
        max_batch_size=settings.engine.max_batch_size,
        batch_timeout_ms=0.0,
        max_queue_size=max(settings.engine.max_queue_size, 64),
    )
    results = []
    for name, key, rows in jobs:
        results.append((name, await engine.predict_batch(key, list(rows))))
    await engine.stop()
    return results


def golden_requests(
    models_dir: Path,
    packaged: Mapping[str, bytes],
    info: Mapping[str, Mapping[str, Any]],
    settings: Any,
    seed: int = GOLDEN_SEED,
) -> dict[str, Any]:
    """The golden.json document for the packaged models.

    `models_dir` is the run's models folder (for the hold-out splits); `packaged` maps the
    packaged models/ file names to their bytes (model files and model_info.json).
    """
    from pipeline.inference import ProductionModelManager

    fmt = settings.model_format
    kinds = endpoint_kinds(info)
    jobs, sources, skipped = [], {}, []
    for i, name in enumerate(sorted(info)):
        if name not in kinds:
            skipped.append(name)
            continue
        rows, source = _inputs(models_dir, info[name], seed + i)
        jobs.append((name, f"{name}_{fmt}", rows))
        sources[name] = (rows, source)
    scratch = Path(tempfile.mkdtemp(prefix="relcert-golden-"))
    try:
        for file_name, data in packaged.items():
            (scratch / file_name).write_bytes(data)
        manager = ProductionModelManager(
            scratch, max_memory_mb=settings.engine.max_memory_mb, warmup_enabled=False, strict=True
        )
        for _, key, _ in jobs:
            if not manager.load_model(key):
                raise PackageError(
                    f"golden requests: packaged model {key!r} does not load: "
                    f"{manager.load_errors.get(key, 'unknown error')}"
                )
        results = asyncio.run(_run(manager, settings, jobs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    cases = []
    models: dict[str, Any] = {}
    for name, answers in results:
        entry = info[name]
        kind = kinds[name]
        classes = [str(c) for c in entry.get("class_names") or []]
        rows, source = sources[name]
        models[name] = {
            "endpoint": ENDPOINTS[kind],
            "engine_key": f"{name}_{fmt}",
            "version": str(entry.get("version", "unknown")),
            "inputs": source,
            "feature_names": list(entry.get("feature_names") or []),
            "class_names": classes,
        }
        for j, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            if not answer.success or answer.output is None:
                raise PackageError(
                    f"golden requests: {name} failed on input {j} in the engine: {answer.error}"
                )
            cases.append(
                {
                    "id": f"{name}-{j}",
                    "model": name,
                    "endpoint": ENDPOINTS[kind],
                    "request": {"features": [float(v) for v in np.ravel(row)]},
                    "expected": _expected(kind, answer.output, answer.model_version, classes),
                }
            )
    return {
        "format": 1,
        "tolerance": TOLERANCE,
        "model_format": fmt,
        "produced_by": "pipeline.inference.ProductionInferenceEngine on the packaged models",
        "models": models,
        "skipped_models": {name: "no HTTP endpoint serves this model" for name in skipped},
        "cases": cases,
    }
