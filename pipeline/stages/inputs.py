"""Request inputs for the stages, made from each model's own spec.

A model of one input and one output gets an array of rows: rows of its hold-out split,
evaluation set or reference inputs when it has one (resampled, with a little jitter for float
inputs so they do not repeat), else random values of its input shape (uniform [0, 1) floats;
0/1 for integer inputs).

A model of named tensors (`pipeline.inference.signature`) gets a list of requests, each a
mapping of input name -> one sample. Each request first fixes the size of every dynamic
dimension: a size drawn from the dimension's declared list (``dims: {seq: [16, 32, 64]}``),
else the size of the recorded sample the request is built around (``dims: {seq:
evaluation}``, or undeclared with samples recorded), else one of DEFAULT_DIM_SIZES. An input
none of whose dynamic dimensions was drawn from a declared list takes the recorded sample's
values (the same sample for every input of the request: an attention mask stays with its
ids); any other input gets random values in its declared range (0/1 for integers and [0, 1)
for floats without one).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.signature import DEFAULT_DIM_SIZES, Signature
from pipeline.samples import Arrays, read_samples

__all__ = [
    "model_requests",
    "output_size",
    "recorded_samples",
    "row_shapes",
    "scale_request",
    "signature_of",
]


def signature_of(entry: Mapping[str, Any]) -> Signature:
    """A model_info.json entry's signature (either form)."""
    return Signature.from_entry(entry)


def named(entry: Mapping[str, Any]) -> bool:
    """Whether a model_info.json entry is a model of named tensors (its requests are
    mappings of input name -> array)."""
    return not signature_of(entry).classic


def row_shapes(entry: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(one request's input shape, one answer's output shape) of a single-tensor model's
    model_info entry. An entry written the original plan's way (no `files`) gives feature
    dimensions only."""
    legacy = not entry.get("files")
    shapes = []
    for key in ("input_shape", "output_shape"):
        shape = list(entry.get(key) or [])
        if not (legacy and len(shape) == 1):
            shape = shape[1:]
        shapes.append(tuple(int(d) for d in shape if d is not None))
    return shapes[0], shapes[1]


def output_size(entry: dict[str, Any]) -> int | None:
    """The values of one answer: its output's (a model of named tensors: all its outputs');
    None when a dynamic dimension makes it depend on the request."""
    signature = signature_of(entry)
    if signature.classic:
        return int(np.prod(row_shapes(entry)[1]))
    rows = [o.row for o in signature.outputs]
    if any(d is None for row in rows for d in row):
        return None
    return sum(int(np.prod(row)) for row in rows)


def recorded_samples(models: Path, entry: Mapping[str, Any]) -> tuple[Arrays, str] | None:
    """Realistic inputs recorded with the model: its hold-out split, its evaluation set or
    its reference inputs (the first that exists), and the file they came from."""
    sla = entry.get("sla") or {}
    reference = (entry.get("parity") or {}).get("reference") or {}
    for rel in (entry.get("holdout_file"), sla.get("evaluation_file"), reference.get("file")):
        if rel and (models / rel).is_file():
            return read_samples(models / rel)[0], str(rel)
    return None


def model_requests(
    models: Path, entry: Mapping[str, Any], count: int, seed: int
) -> np.ndarray | list[dict[str, np.ndarray]]:
    """`count` request inputs for the model of `entry` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    signature = signature_of(entry)
    recorded = recorded_samples(models, entry)
    base = recorded[0] if recorded is not None else None
    if signature.classic:
        return _rows(entry, base, count, rng)
    return _requests(signature, base, count, rng)


def _rows(entry: Mapping[str, Any], base: Arrays | None, count: int, rng) -> np.ndarray:
    dtype = np.dtype(entry.get("input_dtype") or "float32")
    feature_shape, _ = row_shapes(dict(entry))
    if isinstance(base, np.ndarray) and tuple(base.shape[1:]) == feature_shape:
        rows = base[rng.integers(0, len(base), size=count)].astype(dtype)
        if dtype.kind == "f":
            rows = rows + rng.normal(0, 1e-3, size=rows.shape).astype(dtype)
        return np.ascontiguousarray(rows)
    if dtype.kind == "f":
        return rng.random((count, *feature_shape)).astype(dtype)
    return rng.integers(0, 2, size=(count, *feature_shape)).astype(dtype)


def _fitting(signature: Signature, base: Arrays | None) -> dict[str, np.ndarray]:
    """The recorded arrays that fit the signature's inputs (by name; a lone array is the
    only input's)."""
    if base is None:
        return {}
    arrays = base if isinstance(base, Mapping) else {signature.inputs[0].name: base}
    out = {}
    for spec in signature.inputs:
        a = arrays.get(spec.name)
        fits = a is not None and a.ndim == len(spec.shape) and len(a) > 0
        if fits and all(d is None or d == n for d, n in zip(spec.row, a.shape[1:], strict=True)):
            out[spec.name] = a
    return out


def _requests(
    signature: Signature, base: Arrays | None, count: int, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    samples = _fitting(signature, base)
    rows = len(next(iter(samples.values()))) if samples else 0
    declared = {name: signature.declared(name) for name in signature.dim_names()}
    listed = {name for name, sizes in declared.items() if isinstance(sizes, tuple)}
    sample_sizes = {
        name: samples[spec.name].shape[axis + 1]
        for spec in signature.inputs
        if spec.name in samples
        for axis, name in spec.row_dims()
    }
    picks = rng.integers(0, rows, size=count) if rows else np.zeros(count, dtype=int)
    requests = []
    for i in range(count):
        sizes = {}
        for name in signature.dim_names():
            if name in listed:
                sizes[name] = int(rng.choice(declared[name]))
            elif name in sample_sizes:
                sizes[name] = int(sample_sizes[name])
            else:
                sizes[name] = int(rng.choice(DEFAULT_DIM_SIZES))
        shapes = signature.example_rows(None, sizes)
        request = {}
        for spec in signature.inputs:
            from_sample = spec.name in samples and not any(
                name in listed for _, name in spec.row_dims()
            )
            if from_sample:
                value = np.array(samples[spec.name][picks[i]], dtype=spec.dtype)
                if value.dtype.kind == "f":
                    value = value + rng.normal(0, 1e-3, size=value.shape).astype(value.dtype)
            else:
                value = spec.random(rng, shapes[spec.name])
            request[spec.name] = np.ascontiguousarray(value)
        requests.append(request)
    return requests


def scale_request(request: Any, factor: float, signature: Signature | None = None) -> Any:
    """A request with every value multiplied by `factor` (the error test's extreme inputs),
    in its own dtype. Integer inputs of a model of named tensors scaled down are clipped to
    their declared range's low end (their smallest valid value: an extreme but valid input);
    scaled up, they are left out of range (the engine must refuse them)."""
    if not isinstance(request, Mapping):
        return (request * factor).astype(request.dtype)
    out = {}
    for name, value in request.items():
        scaled = (value * factor).astype(value.dtype)
        spec = signature.input(name) if signature is not None else None
        if factor < 1 and spec is not None and spec.range is not None and value.dtype.kind in "iu":
            scaled = np.maximum(scaled, int(spec.range[0])).astype(value.dtype)
        out[name] = scaled
    return out
