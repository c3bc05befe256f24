"""Open Inference Protocol (KServe v2) tensors: datatypes, model signatures, request and
response bodies, with the binary tensor data extension.

numpy and json only (no Starlette; integer ranges are checked as the engine checks them):
the service's ``/v2`` endpoints decode requests and encode responses with it, and the infra
stage, the package's golden requests and the tests build requests and read responses with
the same code.

Binary tensor data extension: a body may be a JSON object followed by raw tensor bytes
(little-endian, row-major, no padding); the ``Inference-Header-Content-Length`` header gives
the JSON object's size and each binary input says its size in
``parameters.binary_data_size``. A response carries an output as binary when the request
asked for it (``outputs[i].parameters.binary_data`` or the request's
``parameters.binary_data_output``), with the same header on the response.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.inference.inputs import integer_range_text, integer_range_violation
from pipeline.serve.features import FLOAT32_MAX, RequestError, describe_value

__all__ = [
    "BINARY_EXTENSION",
    "HEADER_LENGTH",
    "INPUT_DATATYPES",
    "PLATFORMS",
    "InferRequest",
    "ModelSignature",
    "TensorMeta",
    "body_limit_for",
    "datatype_of",
    "decode_infer_request",
    "encode_infer_request",
    "encode_infer_response",
    "json_request_bytes",
    "numpy_dtype",
    "read_infer_response",
]

#: the header that splits a body into its JSON object and the binary tensor data after it
HEADER_LENGTH = "inference-header-content-length"
#: the extension name the server metadata lists (as Triton does)
BINARY_EXTENSION = "binary_tensor_data"

_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dtype: name for name, dtype in _DATATYPES.items()}
#: the input datatypes the engine serves (model_info.json input_dtype float32/float64/int64)
INPUT_DATATYPES = ("FP32", "FP64", "INT64")
#: model file format -> the protocol's platform name (Triton's names)
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
#: bytes of JSON per element that a request of one row is sized for (a number written in
#: full, e.g. -1.2345678901234567e-05, plus the separator)
_JSON_BYTES_PER_ELEMENT = 26
_JSON_OVERHEAD_BYTES = 1024
#: body limits are raised in steps of this many bytes
_BODY_STEP = 65_536


def datatype_of(dtype: Any) -> str:
    """The protocol's datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    name = _BY_DTYPE.get(np.dtype(dtype).newbyteorder("="))
    if name is None:
        raise ValueError(f"no Open Inference Protocol datatype for numpy dtype {dtype}")
    return name


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype of a protocol datatype name (``FP32`` -> ``float32``)."""
    try:
        return _DATATYPES[datatype]
    except KeyError:
        raise ValueError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(_DATATYPES)}"
        ) from None


@dataclass(frozen=True)
class TensorMeta:
    """A tensor as model metadata describes it: name, datatype, shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """What the protocol says about one served model: its metadata and input contract.

    A model of one input and one output (`named` False) takes one input tensor; a model of
    named tensors (several inputs or outputs, dynamic dims: `named` True) takes each of its
    inputs (`pipeline.serve.named_tensors`), with `dim_names` naming each input's dynamic
    dims (inputs sharing a name must agree on its size). `bounds` (low, high arrays of one
    row's shape) come from the optional ``input_range`` / ``feature_ranges`` of its
    model_info.json entry; a value outside is refused."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    bounds: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False)
    named: bool = False
    dim_names: tuple[tuple[str | None, ...], ...] = ()

    @property
    def input(self) -> TensorMeta:
        """The first (for a single-tensor model: the) input."""
        return self.inputs[0]

    @property
    def output(self) -> TensorMeta:
        """The first (for a single-tensor model: the) output."""
        return self.outputs[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        """One row's (one engine request's) input shape: the input without its batch dim."""
        return self.input.shape[1:]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes, or None when any number of rows is accepted."""
        first = self.input.shape[0]
        return first if first > 0 else None

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.input.datatype)

    def metadata(self) -> dict[str, Any]:
        """The model metadata response object (``GET /v2/models/{name}``): every input and
        output, -1 for a dynamic dimension."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }

    @classmethod
    def from_model_info(
        cls,
        name: str,
        entry: Mapping[str, Any],
        *,
        model_format: str,
        version: str,
        input_shape: Sequence[int | None],
        output_shape: Sequence[int | None],
        input_dtype: str,
        tensors: Any = None,
    ) -> ModelSignature:
        """From a model_info.json entry and the shapes the model manager settled (the ONNX
        graph is the authority on an ONNX model's shapes); `tensors` the settled
        `pipeline.inference.signature.Signature` of a model of named tensors. Raises
        ValueError for an entry whose input cannot be described (unknown dims, an unserved
        dtype, bad ranges)."""
        where = f"model_info.json: model {name!r}"
        platform = PLATFORMS.get(model_format, model_format)
        if tensors is not None and not tensors.classic:
            return _named(name, version, platform, tensors, where)
        if len(input_shape) < 2 or any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"{where}: input_shape must be [batch, dims...] with known dims, got "
                f"{list(input_shape) or 'nothing'}"
            )
        try:
            in_type = datatype_of(input_dtype)
            out_type = datatype_of(entry.get("output_dtype") or "float32")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if in_type not in INPUT_DATATYPES:
            raise ValueError(
                f"{where}: input_dtype {input_dtype} is not served (expected one of "
                f"float32, float64, int64)"
            )
        dims_in = tuple(-1 if d is None else int(d) for d in input_shape)
        dims_out = tuple(-1 if d is None else int(d) for d in output_shape) or (dims_in[0], -1)
        signature = cls(
            name=name,
            version=version,
            platform=platform,
            inputs=(TensorMeta(str(entry.get("input_name") or "input"), in_type, dims_in),),
            outputs=(TensorMeta(str(entry.get("output_name") or "output"), out_type, dims_out),),
        )
        bounds = _bounds(where, signature.row_shape, entry)
        if bounds is None:
            return signature
        return cls(name, version, platform, signature.inputs, signature.outputs, bounds)

    @classmethod
    def of(cls, name: str, entry: Mapping[str, Any], model: Any) -> ModelSignature:
        """From a model_info.json entry and the model manager's record of the model
        (`pipeline.inference.ModelInfo`: its format, version and settled shapes)."""
        return cls.from_model_info(
            name,
            entry,
            model_format=model.format,
            version=model.version,
            input_shape=model.input_shape,
            output_shape=model.output_shape,
            input_dtype=model.input_dtype,
            tensors=getattr(model, "signature", None),
        )

    def json_request_bytes(self) -> int:
        """About how many bytes a JSON inference request of one row takes (for sizing
        MAX_BODY_BYTES)."""
        return json_request_bytes(self.row_shape)


def _named(name: str, version: str, platform: str, tensors: Any, where: str) -> ModelSignature:
    """The protocol's view of a model of named tensors (its settled Signature)."""

    def meta(spec: Any, served: tuple[str, ...] | None) -> TensorMeta:
        try:
            datatype = datatype_of(spec.dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {spec.name!r}: {exc}") from None
        if served is not None and datatype not in served:
            raise ValueError(
                f"{where}: input {spec.name!r} dtype {spec.dtype} is not served (expected one "
                "of float32, float64, int64)"
            )
        shape = tuple(d if isinstance(d, int) else -1 for d in spec.shape)
        return TensorMeta(spec.name, datatype, shape)

    return ModelSignature(
        name=name,
        version=version,
        platform=platform,
        inputs=tuple(meta(t, INPUT_DATATYPES) for t in tensors.inputs),
        outputs=tuple(meta(t, None) for t in tensors.outputs),
        named=True,
        dim_names=tuple(
            tuple(dict(t.row_dims()).get(i) for i in range(len(t.row))) for t in tensors.inputs
        ),
    )


def json_request_bytes(row_shape: Sequence[int]) -> int:
    """About how many bytes a JSON inference request of one row of `row_shape` takes."""
    return _JSON_OVERHEAD_BYTES + _JSON_BYTES_PER_ELEMENT * math.prod(int(d) for d in row_shape)


def body_limit_for(info: Mapping[str, Mapping[str, Any]], default: int) -> int:
    """MAX_BODY_BYTES for a models folder: `default`, raised (in 64 KiB steps) until a JSON
    inference request of one row of every model of `info` (model_info.json) fits (every
    input of a model of named tensors, its dynamic dims at their largest declared size)."""
    from pipeline.inference.signature import Signature

    needed = default
    for entry in info.values():
        if entry.get("inputs"):
            count = Signature.from_entry(entry).element_count()
            needed = max(needed, _JSON_OVERHEAD_BYTES + _JSON_BYTES_PER_ELEMENT * count)
            continue
        shape = list(entry.get("input_shape") or [])
        row = shape if (not entry.get("files") and len(shape) == 1) else shape[1:]
        if row and all(isinstance(d, int) and d > 0 for d in row):
            needed = max(needed, json_request_bytes(row))
    return default if needed <= default else -(-needed // _BODY_STEP) * _BODY_STEP


def _bounds(
    where: str, row_shape: tuple[int, ...], entry: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-element [low, high] of one row from `input_range` (every element) and, for a
    [batch, features] model, `feature_ranges` (by feature name)."""
    from pipeline.serve.features import _pair, _ranges

    if entry.get("input_range") is None and entry.get("feature_ranges") is None:
        return None
    if len(row_shape) == 1:
        names = entry.get("feature_names") or [f"feature_{i}" for i in range(row_shape[0])]
        ranges = _ranges(entry.get("name") or where, tuple(str(n) for n in names), entry)
        if ranges is None:  # pragma: no cover - guarded above
            return None
        low = np.array([r[0] for r in ranges], dtype=np.float64)
        high = np.array([r[1] for r in ranges], dtype=np.float64)
        return low, high
    if entry.get("feature_ranges") is not None:
        raise ValueError(
            f"{where}: feature_ranges needs an input of shape [batch, features]; this model "
            f"takes rows of shape {list(row_shape)} (use input_range)"
        )
    low_value, high_value = _pair(f"{where} input_range", entry.get("input_range"))
    return np.full(row_shape, low_value), np.full(row_shape, high_value)


# ----------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: the rows to run and how to answer."""

    rows: np.ndarray  # (N, *row_shape) in the model's input dtype
    request_id: str | None
    binary_output: bool


def _error(detail: str) -> RequestError:
    return RequestError(400, detail)


def _header_length(value: bytes | str | None, body_size: int) -> int | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        length = int(text.strip())
    except ValueError:
        raise _error(
            f"Inference-Header-Content-Length: expected the size in bytes of the JSON object "
            f"at the start of the body, got {text.strip()[:40]!r}"
        ) from None
    if not 0 <= length <= body_size:
        raise _error(
            f"Inference-Header-Content-Length: {length} is not within the body's {body_size} bytes"
        )
    return length or None  # 0: the whole body is JSON


def _load_object(text: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise _error(f"{what}: not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise _error(
            f"{what}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError:
        raise _error(f"{what}: invalid JSON (a number too long to read)") from None
    except RecursionError:
        raise _error(f"{what}: JSON nested too deeply") from None
    if type(doc) is not dict:
        raise _error(
            f"{what}: expected a JSON object (an inference request), got {describe_value(doc)}"
        )
    return doc


def _object(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        raise _error(f"{where}{key}: expected an object, got {describe_value(value)}")
    return value


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if type(value) is not bool:
        raise _error(
            f"{where}parameters.{key}: expected true or false, got {describe_value(value)}"
        )
    return value


def decode_infer_request(
    body: bytes, header_length: bytes | str | None, signature: ModelSignature
) -> InferRequest:
    """Decode an inference request for `signature`'s model (400 naming what was wrong and
    what was expected otherwise). `header_length` is the Inference-Header-Content-Length
    header's value, if the request had one."""
    split = _header_length(header_length, len(body))
    doc = _load_object(body[:split] if split is not None else body, "body")
    binary = memoryview(body)[split:] if split is not None else memoryview(b"")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise _error(f"id: expected a string, got {describe_value(request_id)}")
    params = _object(doc, "parameters", "")
    binary_output = _flag(params, "binary_data_output", "")
    binary_output = _requested_outputs(doc.get("outputs"), signature, binary_output)
    inputs = doc.get("inputs")
    want = signature.input
    if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
        raise _error(
            f"inputs: expected a list of one input tensor "
            f'{{"name": "{want.name}", "datatype": "{want.datatype}", "shape": '
            f'{_shape_text(signature)}, "data": [...]}}, got {describe_value(inputs)}'
        )
    rows = _input_rows(inputs[0], signature, binary, split is not None)
    return InferRequest(rows, request_id, binary_output)


def _requested_outputs(outputs: Any, signature: ModelSignature, binary_default: bool) -> bool:
    """Whether the (only) output goes back as binary data; checks the requested names."""
    if outputs is None or outputs == []:
        return binary_default
    if type(outputs) is not list:
        raise _error(
            f"outputs: expected a list of requested outputs, got {describe_value(outputs)}"
        )
    binary = binary_default
    for i, wanted in enumerate(outputs):
        where = f"outputs[{i}]."
        if type(wanted) is not dict or wanted.get("name") != signature.output.name:
            got = wanted.get("name") if type(wanted) is dict else wanted
            raise _error(
                f"{where}name: model {signature.name!r} has one output, "
                f"{signature.output.name!r}; got {describe_value(got)}"
            )
        params = _object(wanted, "parameters", where)
        if params.get("classification"):
            raise _error(
                f"{where}parameters.classification: the classification extension is "
                "not supported; request the output tensor itself"
            )
        if "shared_memory_region" in params:
            raise _error(
                f"{where}parameters.shared_memory_region: shared memory is not "
                "supported; request the output as JSON or binary data"
            )
        if "binary_data" in params:
            binary = _flag(params, "binary_data", where)
    return binary


def _shape_text(signature: ModelSignature) -> str:
    dims = ["N" if d < 0 and i == 0 else str(d) for i, d in enumerate(signature.input.shape)]
    return "[" + ", ".join(dims) + "]"


def _input_rows(
    tensor: dict[str, Any], signature: ModelSignature, binary: memoryview, has_binary: bool
) -> np.ndarray:
    want = signature.input
    where = "inputs[0]."
    if tensor.get("name") != want.name:
        raise _error(
            f"{where}name: model {signature.name!r} has one input, {want.name!r}; got "
            f"{describe_value(tensor.get('name'))}"
        )
    if tensor.get("datatype") != want.datatype:
        raise _error(
            f"{where}datatype: input {want.name!r} of model {signature.name!r} is "
            f"{want.datatype}, got {describe_value(tensor.get('datatype'))}"
        )
    shape = _checked_shape(tensor.get("shape"), signature)
    params = _object(tensor, "parameters", where)
    if "shared_memory_region" in params:
        raise _error(
            f"{where}parameters.shared_memory_region: shared memory is not supported; "
            "send the data as JSON or binary data"
        )
    size = params.get("binary_data_size")
    dtype = signature.dtype
    count = math.prod(shape)
    if size is not None:
        if "data" in tensor:
            raise _error(f"{where}: give either data or parameters.binary_data_size, not both")
        rows = _binary_rows(size, binary, has_binary, shape, dtype, count, where)
    else:
        if "data" not in tensor:
            raise _error(
                f"{where}data: required (a JSON array, flat or nested, of {count} numbers), or "
                "binary data with parameters.binary_data_size and the "
                "Inference-Header-Content-Length header"
            )
        if len(binary):
            raise _error(
                f"body: {len(binary)} bytes of binary data follow the JSON object, but no "
                "input declares parameters.binary_data_size"
            )
        rows = _json_rows(tensor["data"], shape, dtype, count, where)
    _check_values(rows, signature, where)
    return rows


def _checked_shape(shape: Any, signature: ModelSignature) -> tuple[int, ...]:
    expected = _shape_text(signature)
    row = signature.row_shape
    ok = (
        type(shape) is list
        and len(shape) == len(row) + 1
        and all(type(d) is int and d >= 0 for d in shape)
    )
    if not ok or tuple(shape[1:]) != row or shape[0] < 1:
        raise _error(
            f"inputs[0].shape: expected {expected} (N >= 1 rows of shape {list(row)}), got "
            f"{describe_value(shape) if type(shape) is not list else shape}"
        )
    fixed = signature.fixed_batch
    if fixed is not None and shape[0] != fixed:
        raise _error(
            f"inputs[0].shape: model {signature.name!r} takes a fixed batch of {fixed}: "
            f"expected {[fixed, *row]}, got {shape}"
        )
    return tuple(shape)


def _binary_rows(
    size: Any,
    binary: memoryview,
    has_binary: bool,
    shape: tuple[int, ...],
    dtype: np.dtype,
    count: int,
    where: str,
) -> np.ndarray:
    if not has_binary:
        raise _error(
            f"{where}parameters.binary_data_size: binary data needs the "
            "Inference-Header-Content-Length header (the size of the JSON object)"
        )
    expected = count * dtype.itemsize
    if type(size) is not int or size != expected:
        raise _error(
            f"{where}parameters.binary_data_size: shape {list(shape)} of "
            f"{datatype_of(dtype)} takes {expected} bytes, got {describe_value(size)}"
        )
    if len(binary) != expected:
        raise _error(
            f"body: {len(binary)} bytes of binary data follow the JSON object; the input "
            f"declares {expected}"
        )
    rows = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count)
    if rows.dtype != dtype:  # a big-endian host
        rows = rows.astype(dtype)
    return rows.reshape(shape)


def _json_rows(
    data: Any, shape: tuple[int, ...], dtype: np.dtype, count: int, where: str
) -> np.ndarray:
    if type(data) is not list:
        raise _error(f"{where}data: expected a JSON array of numbers, got {describe_value(data)}")
    try:
        values = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise _error(
            f"{where}data: expected {count} numbers, flat or nested as {list(shape)}; got "
            "nested lists of unequal lengths or non-numbers"
        ) from None
    kind = values.dtype.kind
    if kind not in "iuf" or (kind == "f" and dtype.kind == "i" and not _integral(values)):
        what = "integers" if dtype.kind == "i" else "numbers"
        raise _error(
            f"{where}data: expected {what} ({datatype_of(dtype)}), got {_kind_text(values)}"
        )
    if dtype.kind == "i":
        values = _exact_integers(data, values, dtype, where)
    if values.shape != shape:
        if values.ndim != 1 or values.size != count:
            raise _error(
                f"{where}data: expected {count} values (shape {list(shape)}, flat or nested), "
                f"got {values.size} as {list(values.shape)}"
            )
        values = values.reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):  # float overflow: Inf, refused later
        return values.astype(dtype, copy=False)


def _exact_integers(data: list, values: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """`values` (whole numbers, read from the JSON `data`) when each fits `dtype`: an
    out-of-range value is refused (never wrapped: 1e20 cast to int64 is INT64_MIN). A float
    array holding integers beyond 2**53 (a whole-number float such as ``1.0`` makes numpy read
    every integer as a float) is read again as `dtype`, so every integer stays exact."""
    violation = integer_range_violation(values, dtype)
    if violation is not None:
        index = violation[0]
        element = data
        for i in np.unravel_index(index, values.shape):
            element = element[int(i)]
        raise _error(
            f"{where}data: element {index} is {element!r}, outside the {datatype_of(dtype)} "
            f"range {integer_range_text(dtype)}"
        )
    if values.dtype.kind == "f" and values.size and float(np.abs(values).max()) >= 2.0**53:
        return np.array(data, dtype=dtype)
    return values


def _integral(values: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _kind_text(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "b":
        return "booleans"
    if kind in "US":
        return "strings"
    if kind == "f":
        return "numbers with a fractional part"
    return "values that are not all numbers (or integers too large to read)"


def _check_values(rows: np.ndarray, signature: ModelSignature, where: str) -> None:
    if rows.dtype.kind == "f" and not np.all(np.isfinite(rows)):
        flat = int(np.argmin(np.isfinite(rows).ravel()))
        limit = FLOAT32_MAX if rows.dtype == np.float32 else float(np.finfo(rows.dtype).max)
        raise _error(
            f"{where}data: element {flat} is not a finite {datatype_of(rows.dtype)} number "
            f"(NaN, Inf or beyond ±{limit:.4g}); expected finite numbers"
        )
    bounds = signature.bounds
    if bounds is None:
        return
    low, high = bounds
    outside = (rows < low) | (rows > high)
    if outside.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(outside)), rows.shape))
        element = index[1:]
        raise _error(
            f"{where}data: row {index[0]} element {list(element)} is "
            f"{rows[index].item()!r}, outside the model's declared input range "
            f"[{low[element]:g}, {high[element]:g}]"
        )


# ----------------------------------------------------------------------------- responses
def encode_infer_response(
    signature: ModelSignature,
    outputs: np.ndarray,
    model_version: str,
    request_id: str | None,
    binary: bool,
) -> tuple[bytes, int | None]:
    """The inference response for `outputs` (N rows): (body, JSON size when binary data
    follows it, for the Inference-Header-Content-Length header; else None)."""
    output, raw = _tensor(signature.output.name, outputs, binary)
    doc: dict[str, Any] = {"model_name": signature.name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = [output]
    return _body(doc, raw, binary)


def _tensor(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """A tensor object (data in JSON, or binary_data_size) and its binary data."""
    tensor: dict[str, Any] = {
        "name": name,
        "datatype": datatype_of(array.dtype),
        "shape": list(array.shape),
    }
    if not binary:
        tensor["data"] = array.ravel().tolist()
        return tensor, b""
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    return tensor, raw


def _body(doc: dict[str, Any], raw: bytes, binary: bool) -> tuple[bytes, int | None]:
    text = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    return (text + raw, len(text)) if binary else (text, None)


# ----------------------------------------------------------------------------- clients
def encode_infer_request(
    input_name: str,
    rows: np.ndarray,
    *,
    binary_input: bool = False,
    binary_output: bool = False,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """An inference request sending `rows` (the whole input tensor, batch dim first) as
    the input `input_name`: (body, JSON size for Inference-Header-Content-Length when binary
    data follows it, else None)."""
    tensor, raw = _tensor(input_name, np.asarray(rows), binary_input)
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    doc["inputs"] = [tensor]
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return _body(doc, raw, binary_input)


def read_infer_response(body: bytes, header_length: str | int | None) -> dict[str, Any]:
    """A parsed inference response: its JSON object, with each output's tensor (JSON or
    binary data) as a numpy array of its shape under ``outputs[i]["array"]``."""
    split = int(header_length) if header_length not in (None, "") else None
    doc = json.loads(body[:split] if split else body)
    offset = split or 0
    for output in doc.get("outputs") or []:
        dtype = numpy_dtype(output["datatype"])
        shape = tuple(output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = body[offset : offset + size]
            offset += size
            array = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype)
        else:
            array = np.asarray(output["data"], dtype=dtype)
        output["array"] = array.reshape(shape)
    return doc
