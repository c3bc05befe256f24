"""Sample arrays a models file names for an imported model (reference inputs and outputs,
evaluation inputs): read from ``.npy`` (the only tensor's) or ``.npz`` (one array per tensor
name), checked against the input specs and cast to their dtypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.build.config import ModelSpec
from pipeline.build.errors import BuildError
from pipeline.inference.signature import TensorSpec, shape_text
from pipeline.samples import Arrays

__all__ = ["by_name", "fit_inputs", "read_arrays", "row_sizes"]


def read_arrays(spec: ModelSpec, path: Path, what: str) -> Arrays:
    """A .npy array, or a .npz's arrays by name."""
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BuildError(
            f"model {spec.name!r}: {what} file {path} not found (listed in {spec.models_file})"
        ) from None
    except Exception as exc:
        raise BuildError(
            f"model {spec.name!r}: {what} file {path} is not a readable .npy or .npz: {exc}"
        ) from None
    if isinstance(data, np.ndarray):
        return data
    with data:
        return {key: np.asarray(data[key]) for key in data.files}


def by_name(
    spec: ModelSpec, path: Path, what: str, value: Arrays, names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """`value` as arrays by tensor name: a .npy is the only tensor's; a .npz must hold
    every name of `names`."""
    where = f"model {spec.name!r}"
    if isinstance(value, np.ndarray):
        if len(names) != 1:
            raise BuildError(
                f"{where}: {what} {path} is one array, but the model has {len(names)} "
                f"({', '.join(names)}): give a .npz with one array per name"
            )
        return {names[0]: value}
    if len(names) == 1 and list(value) in (["x"], ["arr_0"]):
        return {names[0]: value[next(iter(value))]}
    missing = [n for n in names if n not in value]
    if missing:
        raise BuildError(
            f"{where}: {what} {path} has no array {', '.join(map(repr, missing))} (it holds "
            f"{', '.join(map(repr, value)) or 'nothing'}; one array per name is expected)"
        )
    return {n: value[n] for n in names}


def fit_inputs(
    spec: ModelSpec, path: Path, what: str, value: Arrays, inputs: tuple[TensorSpec, ...]
) -> dict[str, np.ndarray]:
    """Inputs read from a file, checked against the input specs and cast to their dtypes."""
    where = f"model {spec.name!r}"
    arrays = by_name(spec, path, what, value, tuple(t.name for t in inputs))
    rows = {len(a) if a.ndim else 0 for a in arrays.values()}
    sizes: dict[str, int] = {}
    out = {}
    for t in inputs:
        x = arrays[t.name]
        label = f"{what} {path}" + (f" ({t.name!r})" if len(inputs) > 1 else "")
        fits = x.ndim == len(t.shape) and all(
            d is None or d == n for d, n in zip(t.row, x.shape[1:], strict=True)
        )
        if fits and t.batch is not None:
            fits = x.shape[0] > 0 and x.shape[0] % t.batch == 0
        if not fits or x.shape[0] == 0 or len(rows) > 1:
            raise BuildError(
                f"{where}: {label} have shape {list(x.shape)}, which does not fit the input "
                f"shape {shape_text(t.shape)}" + (" (row counts differ)" if len(rows) > 1 else "")
            )
        for axis, name in t.row_dims():
            if sizes.setdefault(name, x.shape[axis + 1]) != x.shape[axis + 1]:
                raise BuildError(
                    f"{where}: {label}: dimension {name!r} is {x.shape[axis + 1]} here and "
                    f"{sizes[name]} in another input"
                )
        if t.np_dtype.kind in "iu" and x.dtype.kind == "f" and not np.all(np.mod(x, 1) == 0):
            raise BuildError(f"{where}: {label} must hold integers for the {t.dtype} input")
        x = np.ascontiguousarray(x.astype(t.dtype, copy=False))
        bad = t.outside(x)
        if bad is not None:
            raise BuildError(
                f"{where}: {label} holds {x[bad].ravel()[0]!r}, outside the declared range "
                f"{t.range_text()} of input {t.name!r}"
            )
        out[t.name] = x
    return out


def row_sizes(inputs: tuple[TensorSpec, ...], xs: dict[str, np.ndarray]) -> dict[str, int]:
    """The size of each dynamic dimension in sample arrays `xs`."""
    return {name: int(xs[t.name].shape[axis + 1]) for t in inputs for axis, name in t.row_dims()}
