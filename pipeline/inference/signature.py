"""A model's tensors: named inputs and outputs, their shapes, dtypes and valid values.

One description (`Signature`) serves the import, the model manager, the engine, the service
and the stages. It is read from a model_info.json entry in either form:

* the tensor form, written for models with several inputs or outputs, dynamic non-batch
  dimensions or declared value ranges: ``inputs`` / ``outputs``, lists of
  ``{name, shape, dtype, range?}``, and ``dims`` (the workload's sizes of each named dynamic
  dimension: a list of sizes, or ``"evaluation"``: the sizes of the evaluation set's rows);
* the single-tensor form every other model has: ``input_name``, ``input_shape``,
  ``input_dtype``, ``output_name``, ``output_shape``, ``output_dtype`` (an entry written the
  original plan's way gives feature dimensions only: the batch dimension is implied).

A shape lists the batch dimension first: ``null`` or ``"batch"`` when dynamic, else 1. A
later dimension is an int (fixed), a name (dynamic; inputs sharing a name must agree on its
size within a request) or ``null`` (dynamic, named ``<input>:<axis>``). A ``range`` [low,
high] declares the valid values: integers in [low, high) (``[0, vocab_size)``), floats in
[low, high]; the engine refuses others, and request makers draw from it.

numpy only: no torch, no onnx.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BATCH",
    "DEFAULT_DIM_SIZES",
    "EVALUATION",
    "SERVED_DTYPES",
    "Signature",
    "TensorSpec",
]

#: input element types relcert serves (fed to the model as declared)
SERVED_DTYPES = ("float32", "float64", "int64")
#: the name of the batch dimension in a shape
BATCH = "batch"
#: `dims` value: take a dimension's sizes from the evaluation set's rows
EVALUATION = "evaluation"
#: sizes a dynamic dimension is exercised at when the models file declares none
DEFAULT_DIM_SIZES = (4, 8)

Dim = int | str | None


def _dim_text(d: Dim) -> str:
    return "null" if d is None else str(d)


def shape_text(shape: Sequence[Dim]) -> str:
    """``[batch, seq]``, ``[null, 3, 224, 224]``: a shape as the models file writes it."""
    return "[" + ", ".join(_dim_text(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. `shape` starts with the batch dimension (None: dynamic)."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    range: tuple[float, float] | None = None

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None when the batch dimension is dynamic."""
        first = self.shape[0] if self.shape else None
        return first if isinstance(first, int) else None

    @property
    def row(self) -> tuple[int | None, ...]:
        """One request's shape (no batch dimension): an int per fixed dim, None if dynamic."""
        return tuple(d if isinstance(d, int) else None for d in self.shape[1:])

    @property
    def dynamic(self) -> bool:
        """Whether a non-batch dimension is dynamic."""
        return any(d is None for d in self.row)

    def dim_name(self, axis: int) -> str:
        """The name of dynamic dimension `axis` (1-based in `shape`)."""
        d = self.shape[axis]
        return d if isinstance(d, str) else f"{self.name}:{axis}"

    def row_dims(self) -> list[tuple[int, str]]:
        """(axis in the row, name) of every dynamic row dimension."""
        return [(i, self.dim_name(i + 1)) for i, d in enumerate(self.row) if d is None]

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        shape = [BATCH if i == 0 and d is None else d for i, d in enumerate(self.shape)]
        out: dict[str, Any] = {"name": self.name, "shape": shape, "dtype": self.dtype}
        if self.range is not None:
            out["range"] = [_number(v) for v in self.range]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "tensor") -> TensorSpec:
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name must be a non-empty string, got {name!r}")
        shape = data.get("shape")
        if not isinstance(shape, list | tuple):
            raise ValueError(f"{where} {name!r}: shape must be a list, got {shape!r}")
        dims = tuple(None if i == 0 and d == BATCH else d for i, d in enumerate(shape))
        rng = data.get("range")
        return cls(
            name,
            dims,
            str(data.get("dtype") or "float32"),
            None if rng is None else (float(rng[0]), float(rng[1])),
        )

    # ------------------------------------------------------------------ values
    def random(
        self, rng: np.random.Generator, shape: tuple[int, ...], *, low_only: bool = False
    ) -> np.ndarray:
        """Valid values of `shape`: uniform in the range (floats [0, 1) and integers 0/1
        without one); `low_only` gives the range's low end (0 without one) for integers,
        which is valid for any index or mask input."""
        dtype = self.np_dtype
        if dtype.kind == "f":
            low, high = self.range if self.range is not None else (0.0, 1.0)
            return (low + (high - low) * rng.random(shape)).astype(dtype)
        low, high = (int(self.range[0]), int(self.range[1])) if self.range else (0, 2)
        if low_only:
            return np.full(shape, low, dtype=dtype)
        return rng.integers(low, high, size=shape).astype(dtype)

    def outside(self, values: np.ndarray) -> np.ndarray | None:
        """A boolean mask of values outside the declared range (None when all are within
        it, or no range is declared)."""
        if self.range is None or values.size == 0:
            return None
        low, high = self.range
        if values.dtype.kind in "iu":
            bad = (values < low) | (values >= high)
        else:
            bad = (values < low) | (values > high)
        return bad if bad.any() else None

    def range_text(self) -> str:
        if self.range is None:
            return "any value"
        low, high = (_number(v) for v in self.range)
        return f"[{low}, {high})" if self.np_dtype.kind in "iu" else f"[{low}, {high}]"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, and the declared sizes of its dynamic dimensions."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: (dimension name, sizes) pairs: the workload's sizes, or EVALUATION
    dims: tuple[tuple[str, tuple[int, ...] | str], ...] = ()

    @property
    def classic(self) -> bool:
        """One input of known row shape without a declared range, and one output: served
        as one array in, one array out (the engine's fastest path)."""
        return (
            len(self.inputs) == 1
            and len(self.outputs) <= 1
            and not self.inputs[0].dynamic
            and self.inputs[0].range is None
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def fixed_batch_size(self) -> int | None:
        return self.inputs[0].batch if self.inputs else None

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def declared(self, dim: str) -> tuple[int, ...] | str | None:
        """The declared sizes of dimension `dim` (EVALUATION, or None when undeclared)."""
        return dict(self.dims).get(dim)

    def dim_names(self) -> list[str]:
        """Every dynamic row dimension's name, in order of first appearance."""
        names: list[str] = []
        for spec in self.inputs:
            for _, name in spec.row_dims():
                if name not in names:
                    names.append(name)
        return names

    def probe_sizes(self, dim: str) -> tuple[int, ...]:
        """The sizes to exercise `dim` at when no evaluation row fixes it."""
        declared = self.declared(dim)
        return declared if isinstance(declared, tuple) else DEFAULT_DIM_SIZES

    # ------------------------------------------------------------------ JSON
    def to_entry(self) -> dict[str, Any]:
        """The model_info.json keys of the tensor form."""
        out: dict[str, Any] = {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }
        if self.dims:
            out["dims"] = {k: v if isinstance(v, str) else list(v) for k, v in self.dims}
        return out

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Signature:
        """From a model_info.json entry, in the tensor or the single-tensor form (shapes
        may be empty when the entry does not record them)."""
        if entry.get("inputs"):
            inputs = tuple(
                TensorSpec.from_json(t, "model_info.json input") for t in entry["inputs"]
            )
            outputs = tuple(
                TensorSpec.from_json(t, "model_info.json output")
                for t in entry.get("outputs") or []
            )
            raw_dims = entry.get("dims") or {}
            dims = tuple(
                (str(k), v if isinstance(v, str) else tuple(int(s) for s in v))
                for k, v in raw_dims.items()
            )
            return cls(inputs, outputs, dims)
        legacy = not entry.get("files")
        shapes = []
        for key in ("input_shape", "output_shape"):
            shape = list(entry.get(key) or [])
            if legacy and len(shape) == 1:
                shape = [None, *shape]  # the original plan wrote feature dimensions only
            shapes.append(tuple(shape))
        return cls(
            (
                TensorSpec(
                    str(entry.get("input_name") or "input"),
                    shapes[0],
                    str(entry.get("input_dtype") or "float32"),
                ),
            ),
            (
                TensorSpec(
                    str(entry.get("output_name") or "output"),
                    shapes[1],
                    str(entry.get("output_dtype") or "float32"),
                ),
            ),
        )

    # ------------------------------------------------------------------ examples
    def example_rows(
        self, rng: np.random.Generator | None = None, sizes: Mapping[str, int] | None = None
    ) -> dict[str, tuple[int, ...]]:
        """Each input's row shape with its dynamic dims at `sizes` (default: each dim's
        first probe size)."""
        chosen = dict(sizes or {})
        for name in self.dim_names():
            if name not in chosen:
                options = self.probe_sizes(name)
                chosen[name] = int(options[0] if rng is None else rng.choice(options))
        out = {}
        for spec in self.inputs:
            row = list(spec.row)
            for axis, name in spec.row_dims():
                row[axis] = chosen[name]
            out[spec.name] = tuple(int(d) for d in row)
        return out

    def example_batch(
        self,
        size: int,
        rng: np.random.Generator | None = None,
        sizes: Mapping[str, int] | None = None,
    ) -> list[np.ndarray]:
        """A valid batch of `size` rows, one array per input (warm-up, probes, calibration):
        floats uniform in their range ([0, 1) without one), integers at their range's low
        end (0 without one: valid for any index, category or mask input)."""
        rng = rng or np.random.default_rng(0)
        rows = self.example_rows(None, sizes)
        return [spec.random(rng, (size, *rows[spec.name]), low_only=True) for spec in self.inputs]

    def element_count(self, sizes: Mapping[str, int] | None = None) -> int:
        """Elements of one request's inputs (dynamic dims at `sizes`, else their largest
        probe size): for sizing request bodies."""
        total = 0
        for spec in self.inputs:
            row = list(spec.row)
            for axis, name in spec.row_dims():
                row[axis] = (sizes or {}).get(name) or max(self.probe_sizes(name))
            total += math.prod(int(d) for d in row)
        return total
