"""Open Inference Protocol requests and responses for models of named tensors: several input
tensors in, several output tensors out (`pipeline.serve.tensors` has the single-tensor case
and the shared pieces: datatypes, JSON and binary tensor data).

A request gives every input of the model once (any order), each ``[N, ...]`` with the same N:
row i of every input is one sample (one engine request). A dynamic dimension (-1 in the
metadata) may take any size >= 1, the same in every input that shares it (e.g. ``seq`` in
``input_ids`` and ``attention_mask``). Binary inputs follow the JSON object in the order the
inputs are listed. ``outputs`` may ask for some of the model's outputs (default: all), each as
JSON or binary data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.serve.features import describe_value
from pipeline.serve.tensors import (
    ModelSignature,
    TensorMeta,
    _body,
    _check_values,
    _error,
    _flag,
    _header_length,
    _json_rows,
    _load_object,
    _object,
    _tensor,
    numpy_dtype,
)

__all__ = [
    "NamedRequest",
    "decode_named_request",
    "encode_named_request",
    "encode_named_response",
]


@dataclass(frozen=True)
class NamedRequest:
    """A decoded request to a model of named tensors."""

    tensors: dict[str, np.ndarray]  # input name -> (N, *row) in its dtype
    count: int  # N: the samples (engine requests) it holds
    request_id: str | None
    outputs: tuple[str, ...]  # the outputs to answer with, in order
    binary: dict[str, bool]  # output name -> answered as binary data

    def row(self, i: int) -> dict[str, np.ndarray]:
        """Sample i: one array per input (one engine request)."""
        return {name: a[i] for name, a in self.tensors.items()}


def decode_named_request(
    body: bytes, header_length: bytes | str | None, signature: ModelSignature
) -> NamedRequest:
    """Decode a request for `signature`'s model (400 naming what was wrong and what was
    expected otherwise)."""
    split = _header_length(header_length, len(body))
    doc = _load_object(body[:split] if split is not None else body, "body")
    binary = memoryview(body)[split:] if split is not None else memoryview(b"")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _error(f"id: expected a string, got {describe_value(request_id)}")
    params = _object(doc, "parameters", "")
    default_binary = _flag(params, "binary_data_output", "")
    outputs, flags = _requested(doc.get("outputs"), signature, default_binary)
    inputs = doc.get("inputs")
    wanted = ", ".join(f"{t.name!r}" for t in signature.inputs)
    if type(inputs) is not list or not inputs or any(type(t) is not dict for t in inputs):
        raise _error(
            f"inputs: expected a list of the input tensors {wanted} (each {{name, datatype, "
            f"shape, data}}), got {describe_value(inputs)}"
        )
    names = [t.get("name") for t in inputs]
    known = {t.name: i for i, t in enumerate(signature.inputs)}
    for i, name in enumerate(names):
        if name not in known:
            raise _error(
                f"inputs[{i}].name: model {signature.name!r} has inputs {wanted}; got "
                f"{describe_value(name)}"
            )
        if names.index(name) != i:
            raise _error(f"inputs[{i}].name: input {name!r} is given twice")
    missing = [t.name for t in signature.inputs if t.name not in names]
    if missing:
        raise _error(f"inputs: missing {', '.join(map(repr, missing))} (every input is needed)")
    shapes = _checked_shapes(inputs, signature, known)
    tensors, offset = {}, 0
    for i, tensor in enumerate(inputs):
        meta = signature.inputs[known[tensor["name"]]]
        rows, offset = _input(tensor, meta, shapes[i], binary, offset, split is not None, i)
        _check_values(rows, _plain(signature, meta), f"inputs[{i}].")
        tensors[meta.name] = rows
    if offset != len(binary):
        raise _error(
            f"body: {len(binary)} bytes of binary data follow the JSON object; the inputs "
            f"declare {offset}"
        )
    ordered = {t.name: tensors[t.name] for t in signature.inputs}
    return NamedRequest(ordered, shapes[0][0], request_id, outputs, flags)


def _plain(signature: ModelSignature, meta: TensorMeta) -> ModelSignature:
    """A single-tensor view of one input (for the shared value checks: finite numbers)."""
    return ModelSignature(signature.name, signature.version, signature.platform, (meta,), ())


def _requested(
    outputs: Any, signature: ModelSignature, default_binary: bool
) -> tuple[tuple[str, ...], dict[str, bool]]:
    names = tuple(t.name for t in signature.outputs)
    if outputs is None or outputs == []:
        return names, dict.fromkeys(names, default_binary)
    if type(outputs) is not list:
        raise _error(
            f"outputs: expected a list of requested outputs, got {describe_value(outputs)}"
        )
    chosen: list[str] = []
    flags: dict[str, bool] = {}
    for i, wanted in enumerate(outputs):
        where = f"outputs[{i}]."
        name = wanted.get("name") if type(wanted) is dict else wanted
        if type(wanted) is not dict or name not in names:
            raise _error(
                f"{where}name: model {signature.name!r} has outputs "
                f"{', '.join(map(repr, names))}; got {describe_value(name)}"
            )
        if name in chosen:
            raise _error(f"{where}name: output {name!r} is requested twice")
        params = _object(wanted, "parameters", where)
        if params.get("classification") or "shared_memory_region" in params:
            raise _error(
                f"{where}parameters: the classification and shared memory extensions are not "
                "supported; request the output tensor itself"
            )
        chosen.append(name)
        flags[name] = (
            _flag(params, "binary_data", where) if "binary_data" in params else (default_binary)
        )
    return tuple(chosen), flags


def _checked_shapes(
    inputs: list[dict[str, Any]], signature: ModelSignature, known: dict[str, int]
) -> list[tuple[int, ...]]:
    """Each input's shape: [N, ...] with the same N everywhere, fixed dims as declared,
    dynamic dims >= 1 and the same size in every input sharing them."""
    shapes: list[tuple[int, ...]] = []
    sizes: dict[str, tuple[int, str]] = {}
    for i, tensor in enumerate(inputs):
        index = known[tensor["name"]]
        meta, names = signature.inputs[index], signature.dim_names[index]
        shape = tensor.get("shape")
        expected = "[" + ", ".join(_dim(meta, names, j) for j in range(len(meta.shape))) + "]"
        ok = (
            type(shape) is list
            and len(shape) == len(meta.shape)
            and all(type(d) is int and d >= 1 for d in shape)
            and all(d < 0 or d == n for d, n in zip(meta.shape[1:], shape[1:], strict=True))
        )
        fixed = meta.shape[0] if meta.shape[0] > 0 else None
        if ok and fixed is not None and shape[0] != fixed:
            raise _error(
                f"inputs[{i}].shape: model {signature.name!r} takes a fixed batch of {fixed}: "
                f"expected {expected.replace('N', str(fixed), 1)}, got {shape}"
            )
        if not ok:
            raise _error(
                f"inputs[{i}].shape: expected {expected} for input {meta.name!r} (N >= 1 rows; "
                f"a named dimension any size >= 1), got "
                f"{shape if type(shape) is list else describe_value(shape)}"
            )
        if shapes and shape[0] != shapes[0][0]:
            raise _error(
                f"inputs[{i}].shape: {shape[0]} rows, but inputs[0] has {shapes[0][0]} (every "
                "input holds the same samples)"
            )
        for j, name in enumerate(names):
            if name is None:
                continue
            size, where = sizes.setdefault(name, (shape[j + 1], meta.name))
            if size != shape[j + 1]:
                raise _error(
                    f"inputs[{i}].shape: dimension {name!r} is {shape[j + 1]} in {meta.name!r} "
                    f"but {size} in {where!r} (inputs sharing a dimension must agree)"
                )
        shapes.append(tuple(shape))
    return shapes


def _dim(meta: TensorMeta, names: tuple[str | None, ...], j: int) -> str:
    if j == 0:
        return "N" if meta.shape[0] < 0 else str(meta.shape[0])
    if meta.shape[j] < 0:
        return names[j - 1] or "n"
    return str(meta.shape[j])


def _input(
    tensor: dict[str, Any],
    meta: TensorMeta,
    shape: tuple[int, ...],
    binary: memoryview,
    offset: int,
    has_binary: bool,
    i: int,
) -> tuple[np.ndarray, int]:
    """One input's rows (from JSON data or the binary data at `offset`) and the offset
    after it."""
    where = f"inputs[{i}]."
    if tensor.get("datatype") != meta.datatype:
        raise _error(
            f"{where}datatype: input {meta.name!r} is {meta.datatype}, got "
            f"{describe_value(tensor.get('datatype'))}"
        )
    params = _object(tensor, "parameters", where)
    if "shared_memory_region" in params:
        raise _error(f"{where}parameters.shared_memory_region: shared memory is not supported")
    dtype = numpy_dtype(meta.datatype)
    count = math.prod(shape)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise _error(
                f"{where}data: required (a JSON array, flat or nested, of {count} numbers), or "
                "binary data with parameters.binary_data_size"
            )
        return _json_rows(tensor["data"], shape, dtype, count, where), offset
    if "data" in tensor:
        raise _error(f"{where}: give either data or parameters.binary_data_size, not both")
    if not has_binary:
        raise _error(
            f"{where}parameters.binary_data_size: binary data needs the "
            "Inference-Header-Content-Length header (the size of the JSON object)"
        )
    expected = count * dtype.itemsize
    if type(size) is not int or size != expected:
        raise _error(
            f"{where}parameters.binary_data_size: shape {list(shape)} of {meta.datatype} takes "
            f"{expected} bytes, got {describe_value(size)}"
        )
    if offset + expected > len(binary):
        raise _error(
            f"body: the binary data ends before input {meta.name!r} ({len(binary)} bytes, "
            f"{offset + expected} declared so far)"
        )
    chunk = binary[offset : offset + expected]
    rows = np.frombuffer(chunk, dtype=dtype.newbyteorder("<"), count=count).astype(dtype)
    return rows.reshape(shape), offset + expected


def encode_named_response(
    signature: ModelSignature,
    request: NamedRequest,
    outputs: Mapping[str, np.ndarray],
    model_version: str,
) -> tuple[bytes, int | None]:
    """The response: each requested output (N rows), JSON or binary as asked; (body, JSON
    size when binary data follows it, else None)."""
    doc: dict[str, Any] = {"model_name": signature.name, "model_version": model_version}
    if request.request_id is not None:
        doc["id"] = request.request_id
    tensors, raw = [], []
    for name in request.outputs:
        tensor, data = _tensor(name, outputs[name], request.binary[name])
        tensors.append(tensor)
        raw.append(data)
    doc["outputs"] = tensors
    binary = any(request.binary[name] for name in request.outputs)
    return _body(doc, b"".join(raw), binary)


def encode_named_request(
    tensors: Mapping[str, np.ndarray],
    *,
    binary_input: bool = False,
    binary_output: bool = False,
    request_id: str | None = None,
    outputs: tuple[str, ...] | None = None,
) -> tuple[bytes, int | None]:
    """A request sending each of `tensors` (input name -> rows, batch dim first); `outputs`
    asks for some outputs only. (body, JSON size when binary data follows it, else None)."""
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    encoded, raw = [], []
    for name, rows in tensors.items():
        tensor, data = _tensor(name, np.asarray(rows), binary_input)
        encoded.append(tensor)
        raw.append(data)
    doc["inputs"] = encoded
    if outputs is not None:
        doc["outputs"] = [{"name": name} for name in outputs]
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return _body(doc, b"".join(raw), binary_input)
