"""A request to a model of named tensors, checked when it is submitted.

A request is one sample: a mapping of input name -> array-like (a model of one input also
takes the array-like itself), each with or without a leading batch dimension of 1. Each input
is converted to its declared dtype (integers from whole-number floats only), its shape checked
against the input's row shape (fixed dims equal, dynamic dims at least 1, a dimension shared by
name between inputs the same size in all of them), its values checked finite and within the
declared range. Errors are InvalidInputError naming the input and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.inference.errors import InvalidInputError
from pipeline.inference.inputs import check_integers
from pipeline.inference.signature import TensorSpec

if TYPE_CHECKING:
    from pipeline.inference.model_manager import LoadedModel

__all__ = ["coerce_tensors"]


def coerce_tensors(model: LoadedModel, value: Any) -> tuple[np.ndarray, ...]:
    """One request's inputs as arrays, in the signature's input order."""
    signature = model.signature
    assert signature is not None
    key = model.info.key
    names = signature.input_names
    if isinstance(value, Mapping):
        missing = [n for n in names if n not in value]
        unknown = sorted(str(n) for n in value if n not in names)
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing {', '.join(map(repr, missing))}")
            if unknown:
                problems.append(f"unknown {', '.join(map(repr, unknown))}")
            raise InvalidInputError(
                f"model {key!r}: takes inputs {', '.join(map(repr, names))}; got a mapping "
                f"with {' and '.join(problems)}"
            )
        raw = [value[n] for n in names]
    elif len(names) == 1:
        raw = [value]
    else:
        raise InvalidInputError(
            f"model {key!r}: takes {len(names)} inputs ({', '.join(map(repr, names))}): send a "
            f"mapping of input name -> array, got {type(value).__name__}"
        )
    sizes: dict[str, int] = {}
    return tuple(
        _checked(key, spec, x, sizes) for spec, x in zip(signature.inputs, raw, strict=True)
    )


def _array(key: str, spec: TensorSpec, value: Any) -> np.ndarray:
    dtype = spec.np_dtype
    if isinstance(value, np.ndarray):
        x = value
    elif hasattr(value, "detach"):  # a torch tensor; no torch import needed
        x = value.detach().cpu().numpy()
    else:
        try:
            x = np.asarray(value, dtype=dtype if dtype.kind == "f" else None)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInputError(
                f"model {key!r}: input {spec.name!r} must be numeric ({dtype}), got "
                f"{type(value).__name__}: {exc}"
            ) from None
    if x.dtype == dtype:
        return x
    if x.dtype.kind not in "fiub":
        raise InvalidInputError(
            f"model {key!r}: input {spec.name!r} must be numeric ({dtype} expected), got {x.dtype}"
        )
    if dtype.kind in "iu":  # whole numbers within the dtype: never wrapped
        check_integers(key, x, dtype, f"input {spec.name!r}")
    return x.astype(dtype)


def _checked(key: str, spec: TensorSpec, value: Any, sizes: dict[str, int]) -> np.ndarray:
    x = _array(key, spec, value)
    row = spec.row
    if x.ndim == len(row) + 1 and x.shape[0] == 1:
        x = x[0]  # a leading batch dimension of 1
    expected = "[" + ", ".join(str(d) if d is not None else "n" for d in row) + "]"
    fits = x.ndim == len(row) and all(
        (d is None and n >= 1) or d == n for d, n in zip(row, x.shape, strict=True)
    )
    if not fits:
        raise InvalidInputError(
            f"model {key!r}: input {spec.name!r} must have shape {expected} (n: any size >= 1; "
            f"or with a leading batch dimension of 1), got {list(x.shape)}"
        )
    for axis, name in spec.row_dims():
        size = sizes.setdefault(name, x.shape[axis])
        if size != x.shape[axis]:
            raise InvalidInputError(
                f"model {key!r}: dimension {name!r} is {x.shape[axis]} in input {spec.name!r} "
                f"but {size} in another input (inputs sharing a dimension must agree)"
            )
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InvalidInputError(
            f"model {key!r}: input {spec.name!r} contains NaN or Inf (expected finite values)"
        )
    bad = spec.outside(x)
    if bad is not None:
        raise InvalidInputError(
            f"model {key!r}: input {spec.name!r} holds {x[bad].ravel()[0].item()!r}, outside "
            f"its valid range {spec.range_text()}"
        )
    return np.ascontiguousarray(x)
