"""The tensor form of an imported model's models-file entry: `inputs` (name, shape with
named dynamic dims, dtype, range), `outputs` (names) and `dims` (workload sizes of each named
dynamic dim, or ``evaluation``); see `pipeline.build.config`. Imports neither torch nor onnx.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.inference.signature import TensorSpec

__all__ = ["SINGLE_TENSOR_KEYS", "TENSOR_KEYS", "tensor_form"]

#: the single-tensor form's keys (one input, one output)
SINGLE_TENSOR_KEYS = {"input_shape", "input_dtype", "input_name", "output_name"}
#: the tensor form's keys (named inputs and outputs)
TENSOR_KEYS = {"inputs", "outputs", "dims"}
_INPUT_KEYS = {"name", "shape", "dtype", "range"}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _input_spec(where: str, index: int, value: Any) -> TensorSpec:
    """One entry of `inputs`: {name, shape, dtype, range}."""
    from pipeline.build.config import _fail, _string
    from pipeline.inference.signature import BATCH, SERVED_DTYPES, TensorSpec

    at = f"inputs[{index}]"
    if not isinstance(value, Mapping):
        raise _fail(where, f"{at} must be a mapping with name, shape, dtype, got {value!r}")
    unknown = sorted(set(map(str, value)) - _INPUT_KEYS)
    if unknown:
        raise _fail(
            where,
            f"{at} has unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_INPUT_KEYS))})",
        )
    name = _string(where, f"{at}.name", value.get("name"))
    shape = value.get("shape")
    ok = isinstance(shape, list) and len(shape) >= 1
    ok = ok and (shape[0] in (None, BATCH, 1))
    ok = ok and all(
        d is None or _positive_int(d) or (isinstance(d, str) and _NAME_RE.match(d) and d != BATCH)
        for d in shape[1:]
    )
    if not ok:
        raise _fail(
            where,
            f"{at}.shape of input {name!r} must be a list starting with the batch dimension "
            f"(batch, null or 1) followed by positive ints (fixed) or names (dynamic, e.g. "
            f"seq), got {shape!r}",
        )
    dtype = value.get("dtype", "float32")
    if dtype not in SERVED_DTYPES:
        raise _fail(
            where,
            f"{at}.dtype of input {name!r} must be one of {', '.join(SERVED_DTYPES)}, got "
            f"{dtype!r}",
        )
    bounds = value.get("range")
    if bounds is not None:
        numbers = isinstance(bounds, list) and len(bounds) == 2
        numbers = numbers and all(
            isinstance(b, int | float) and not isinstance(b, bool) and abs(b) < float("inf")
            for b in bounds
        )
        if not numbers or not bounds[0] < bounds[1]:
            raise _fail(
                where,
                f"{at}.range of input {name!r} must be [low, high] with low < high (integers "
                f"in [low, high), floats in [low, high]), got {bounds!r}",
            )
        if dtype == "int64" and not all(float(b).is_integer() for b in bounds):
            raise _fail(where, f"{at}.range of int64 input {name!r} must be ints, got {bounds!r}")
    dims = tuple(None if i == 0 and d == BATCH else d for i, d in enumerate(shape))
    return TensorSpec(
        name, dims, dtype, None if bounds is None else (float(bounds[0]), float(bounds[1]))
    )


def tensor_form(
    where: str, raw: Mapping[str, Any]
) -> tuple[tuple[TensorSpec, ...] | None, tuple[str, ...] | None, tuple]:
    """`inputs`, `outputs` and `dims` of an imported model (the tensor form)."""
    from pipeline.build.config import _fail, _string_list
    from pipeline.inference.signature import EVALUATION

    mixed = sorted(SINGLE_TENSOR_KEYS & set(raw))
    if mixed and set(raw) & TENSOR_KEYS:
        raise _fail(
            where,
            f"{', '.join(mixed)} belong to the single-tensor form; with inputs/outputs/dims "
            "give each tensor's name, shape and dtype in `inputs` instead",
        )
    inputs = None
    if raw.get("inputs") is not None:
        if not isinstance(raw["inputs"], list) or not raw["inputs"]:
            raise _fail(where, f"inputs must be a non-empty list, got {raw['inputs']!r}")
        inputs = tuple(_input_spec(where, i, v) for i, v in enumerate(raw["inputs"]))
        names = [t.name for t in inputs]
        if len(set(names)) != len(names):
            raise _fail(where, f"inputs must not repeat a name, got {names}")
        batches = {t.shape[0] for t in inputs}
        if len(batches) > 1:
            raise _fail(where, "every input must have the same batch dimension (batch or 1)")
    outputs = None
    if raw.get("outputs") is not None:
        outputs = _string_list(where, "outputs", raw["outputs"])
        if not outputs:
            raise _fail(where, "outputs must name at least one output")
    dims: list[tuple[str, tuple[int, ...] | str]] = []
    raw_dims = raw.get("dims")
    if raw_dims is not None:
        if not isinstance(raw_dims, Mapping):
            raise _fail(where, f"dims must map dimension names to sizes, got {raw_dims!r}")
        known = {d for t in inputs or () for d in t.shape[1:] if isinstance(d, str)}
        for dim, sizes in raw_dims.items():
            if inputs is not None and dim not in known:
                raise _fail(
                    where,
                    f"dims: {dim!r} is not a dynamic dimension of any input (named: "
                    f"{', '.join(sorted(known)) or 'none'})",
                )
            if sizes == EVALUATION:
                dims.append((str(dim), EVALUATION))
                continue
            if not (isinstance(sizes, list) and sizes and all(map(_positive_int, sizes))):
                raise _fail(
                    where,
                    f"dims.{dim} must be a list of positive sizes (e.g. [16, 32, 64]) or "
                    f"'{EVALUATION}', got {sizes!r}",
                )
            dims.append((str(dim), tuple(sorted(set(sizes)))))
        if inputs is None:
            raise _fail(where, "dims needs `inputs` naming the dynamic dimensions")
    return inputs, outputs, tuple(dims)
