"""Golden requests: fixed inputs and the answers the packaged models give them.

At package time the packaged model files (alone, in a scratch folder, exactly as they will
sit on the models volume) are loaded by the in-process engine (`pipeline.inference`) and
asked a fixed set of questions: rows of each model's hold-out split, evaluation set or
reference inputs, or seeded random inputs (in the model's input dtype) for models without
one. The deployed service must give the same answers (within 1e-4) with the same
model_version; `validation/smoke_test.py` checks that over HTTP, for every model through
the Open Inference Protocol (``POST /v2/models/{name}/infer``, one row per request, and its
version through ``GET /v2/models/{name}``), and for the example models also on their named
endpoints.
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
#: the service's named endpoint of each kind of answer
ENDPOINTS = {"quality": "/api/v1/predict/quality", "routing": "/api/v1/predict/routing"}
#: the models with named endpoints (every model has /v2/models/{name}/infer)
_KIND_BY_NAME = {"quality_predictor": "quality", "routing_classifier": "routing"}


def endpoint_kinds(info: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """model name -> "quality" / "routing" for the models the service has named endpoints
    for (the example models, by name)."""
    return {name: _KIND_BY_NAME[name] for name in info if name in _KIND_BY_NAME}


def _recorded_rows(models_dir: Path, entry: Mapping[str, Any]) -> tuple[np.ndarray, str] | None:
    """Realistic inputs kept with the model: its hold-out split, evaluation set or
    reference inputs (the first that exists), and which file they came from."""
    sla = entry.get("sla") or {}
    reference = (entry.get("parity") or {}).get("reference") or {}
    for relative in (entry.get("holdout_file"), sla.get("evaluation_file"), reference.get("file")):
        if relative and (models_dir / relative).is_file():
            with np.load(models_dir / relative) as data:
                return np.asarray(data["x"]), str(relative)
    return None


def _inputs(models_dir: Path, entry: Mapping[str, Any], seed: int) -> tuple[Any, str]:
    from pipeline.stages.inputs import model_requests, recorded_samples, signature_of

    if not signature_of(entry).classic:  # named tensors: requests made from its spec
        recorded = recorded_samples(models_dir, entry)
        source = f"from {recorded[1]} and" if recorded else "from"
        requests = model_requests(models_dir, entry, ROWS_PER_MODEL, seed)
        return requests, f"requests made {source} its declared tensors, seed {seed}"
    rng = np.random.default_rng(seed)
    dtype = np.dtype(entry.get("input_dtype") or "float32")
    shape = list(entry.get("input_shape") or [None])
    legacy = not entry.get("files") and len(shape) == 1
    row_shape = [int(d) for d in (shape if legacy else shape[1:]) if d is not None]
    recorded = _recorded_rows(models_dir, entry)
    if recorded is not None and list(recorded[0].shape[1:]) == row_shape:
        rows, source = recorded
        picked = np.sort(rng.choice(len(rows), size=min(ROWS_PER_MODEL, len(rows)), replace=False))
        return np.ascontiguousarray(rows[picked].astype(dtype)), f"{source} rows {picked.tolist()}"
    if not row_shape:
        raise PackageError(f"model {entry.get('name')!r}: model_info.json has no input_shape")
    if dtype.kind == "f":
        values = rng.random((ROWS_PER_MODEL, *row_shape)).astype(dtype)
        return values, f"uniform random [0, 1) {dtype} inputs, seed {seed}"
    values = rng.integers(0, 2, size=(ROWS_PER_MODEL, *row_shape)).astype(dtype)
    return values, f"random 0/1 {dtype} inputs, seed {seed}"


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


def _tensor_json(name: str, datatype: str, value: np.ndarray) -> dict[str, Any]:
    """One sample as a tensor of one row."""
    value = np.asarray(value)
    return {
        "name": name,
        "shape": [1, *value.shape],
        "datatype": datatype,
        "data": value.ravel().tolist(),
    }


def _v2_case(name: str, j: int, signature: Any, row: Any, answer: Any) -> dict[str, Any]:
    """One row (one sample) as an Open Inference Protocol request (JSON tensor data) and its
    answer (every input and output of a model of named tensors)."""
    from pipeline.serve.tensors import datatype_of

    if isinstance(row, Mapping):
        case_id = f"{name}-v2-{j}"
        inputs = [_tensor_json(t.name, t.datatype, row[t.name]) for t in signature.inputs]
        outputs = []
        for t in signature.outputs:
            value = np.asarray(answer.outputs[t.name])
            outputs.append(_tensor_json(t.name, datatype_of(value.dtype), value))
        return {
            "id": case_id,
            "model": name,
            "protocol": "v2",
            "endpoint": f"/v2/models/{name}/infer",
            "request": {"id": case_id, "inputs": inputs},
            "expected": {
                "model_name": name,
                "model_version": answer.model_version,
                "id": case_id,
                "outputs": outputs,
            },
        }
    output = np.asarray(answer.output)[None]
    return {
        "id": f"{name}-v2-{j}",
        "model": name,
        "protocol": "v2",
        "endpoint": f"/v2/models/{name}/infer",
        "request": {
            "id": f"{name}-v2-{j}",
            "inputs": [
                {
                    "name": signature.input.name,
                    "shape": [1, *row.shape],
                    "datatype": signature.input.datatype,
                    "data": row.ravel().tolist(),
                }
            ],
        },
        "expected": {
            "model_name": name,
            "model_version": answer.model_version,
            "id": f"{name}-v2-{j}",
            "outputs": [
                {
                    "name": signature.output.name,
                    "datatype": datatype_of(output.dtype),
                    "shape": list(output.shape),
                    "data": output.ravel().tolist(),
                }
            ],
        },
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


def _answers(
    packaged: Mapping[str, bytes], settings: Any, jobs: list[tuple[str, str, np.ndarray]]
) -> tuple[list, dict[str, Any]]:
    """The engine's answers on the packaged files, and its record of each model (format,
    version, settled shapes)."""
    from pipeline.inference import ProductionModelManager

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
        return results, {key: manager.model_info[key] for _, key, _ in jobs}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def golden_requests(
    models_dir: Path,
    packaged: Mapping[str, bytes],
    info: Mapping[str, Mapping[str, Any]],
    settings: Any,
    formats: Mapping[str, str] | None = None,
    seed: int = GOLDEN_SEED,
) -> dict[str, Any]:
    """The golden.json document for the packaged models.

    `models_dir` is the run's models folder (for the recorded inputs); `packaged` maps the
    packaged models/ file names to their bytes (model files and model_info.json);
    `formats` gives the format each model is packaged (and served) in (default: the
    settings' model_format for every model).
    """
    from pipeline.serve.tensors import ModelSignature

    formats = dict(formats or dict.fromkeys(info, settings.model_format))
    kinds = endpoint_kinds(info)
    jobs, sources = [], {}
    for i, name in enumerate(sorted(info)):
        rows, source = _inputs(models_dir, info[name], seed + i)
        jobs.append((name, f"{name}_{formats[name]}", rows))
        sources[name] = (rows, source)
    results, records = _answers(packaged, settings, jobs)

    cases: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for name, answers in results:
        entry, key = info[name], f"{name}_{formats[name]}"
        signature = ModelSignature.of(name, entry, records[key])
        kind = kinds.get(name)
        classes = [str(c) for c in entry.get("class_names") or []]
        rows, source = sources[name]
        models[name] = {
            "endpoint": ENDPOINTS[kind] if kind else None,
            "format": formats[name],
            "engine_key": key,
            "version": str(entry.get("version", "unknown")),
            "inputs": source,
            "input": signature.input.to_json(),
            "output": signature.output.to_json(),
            "feature_names": list(entry.get("feature_names") or []),
            "class_names": classes,
        }
        for j, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            if not answer.success or answer.output is None:
                raise PackageError(
                    f"golden requests: {name} failed on input {j} in the engine: {answer.error}"
                )
            cases.append(_v2_case(name, j, signature, row, answer))
            if kind:
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
        "format": 2,
        "tolerance": TOLERANCE,
        "model_format": settings.model_format,
        "produced_by": "pipeline.inference.ProductionInferenceEngine on the packaged models",
        "models": models,
        "cases": cases,
    }
