"""Request inputs: what a caller passes to `predict`, made into the model's input array.

A value is taken only when the model receives exactly that value: a wrong shape, a
non-numeric value, a fraction for an integer input or an integer outside the input's range
is refused with InvalidInputError naming the model, the element and what was expected. An
out-of-range integer is never wrapped (``1e20`` cast to int64 is INT64_MIN: a silent wrong
value, or an index the model then fails on).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.inference.errors import InvalidInputError

__all__ = ["check_integers", "coerce_input", "integer_range_text", "integer_range_violation"]


def integer_range_violation(values: np.ndarray, dtype: Any) -> tuple[int, Any] | None:
    """The first element of `values` outside the range of integer `dtype`, as (flat index,
    value), or None when every element fits. Floats are compared exactly: int64 holds
    [-2**63, 2**63), and a float64 at or above 2**63 (such as 9.223372036854775807e18, the
    float nearest INT64_MAX) does not fit. NaN and Inf are not checked here."""
    dtype = np.dtype(dtype)
    if not values.size or values.dtype.kind not in "fiu":
        return None
    info = np.iinfo(dtype)
    if values.dtype.kind == "f":
        # float(info.max) + 1 is 2**(bits - 1) exactly: the first value past the range
        outside = (values < float(info.min)) | (values >= float(info.max) + 1.0)
    elif np.can_cast(values.dtype, dtype):
        return None
    else:
        outside = (values < info.min) | (values > info.max)
    if not outside.any():
        return None
    index = int(np.argmax(outside.ravel()))
    return index, values.ravel()[index].item()


def integer_range_text(dtype: Any) -> str:
    """``[-9223372036854775808, 9223372036854775807]`` for int64."""
    info = np.iinfo(np.dtype(dtype))
    return f"[{info.min}, {info.max}]"


def coerce_input(model: Any, value: Any) -> Any:
    """`value` (an array, a torch tensor or a sequence of numbers, with or without a leading
    batch dimension of 1) as one row of `model`'s input: its dtype and feature shape.
    `model` is a LoadedModel; raises InvalidInputError. A model of named tensors takes a
    mapping of input name -> one sample (`pipeline.inference.tensor_requests`)."""
    if model.tensor_io:
        from pipeline.inference.tensor_requests import coerce_tensors

        return coerce_tensors(model, value)
    dtype = model.dtype
    key = model.info.key
    if isinstance(value, np.ndarray):
        x = value
    elif hasattr(value, "detach"):  # a torch tensor; no torch import needed
        x = value.detach().cpu().numpy()
    else:
        try:
            x = np.asarray(value, dtype=dtype if dtype.kind == "f" else None)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInputError(
                f"model {key!r}: input must be numeric ({dtype}) with shape "
                f"{list(model.feature_shape)}, got {type(value).__name__}: {exc}"
            ) from None
    if x.dtype != dtype:
        if x.dtype.kind not in "fiub":
            raise InvalidInputError(
                f"model {key!r}: input dtype must be numeric ({dtype} expected), got {x.dtype} "
                "(integers too large for any numeric type are read as objects)"
            )
        if dtype.kind in "iu":
            check_integers(key, x, dtype)
        x = x.astype(dtype)
    shape = model.feature_shape
    if x.shape != shape:
        if x.shape == (1, *shape):
            x = x.reshape(shape)
        else:
            raise InvalidInputError(
                f"model {key!r}: expected input of shape {list(shape)} "
                f"(or {[1, *shape]}), got {list(x.shape)}"
            )
    return x


def check_integers(key: str, x: np.ndarray, dtype: np.dtype, what: str = "input") -> None:
    """Whole numbers within `dtype`'s range, or InvalidInputError naming the element."""
    if x.dtype.kind == "f" and not _integral(x):
        raise InvalidInputError(f"model {key!r}: {what} takes {dtype} values; got non-integers")
    violation = integer_range_violation(x, dtype)
    if violation is not None:
        index, value = violation
        raise InvalidInputError(
            f"model {key!r}: {what} element {index} is {value!r}, outside the {dtype} range "
            f"{integer_range_text(dtype)}"
        )


def _integral(x: np.ndarray) -> bool:
    """Every value of a float array is a whole number (fit for an integer input)."""
    return bool(np.isfinite(x).all() and np.all(np.mod(x, 1) == 0))
