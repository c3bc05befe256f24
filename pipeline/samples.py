"""Sample files kept with a model: hold-out splits, evaluation sets, reference inputs/outputs.

Each is an ``.npz`` in the models folder. A model of one input and one output keeps ``x``
(inputs, one row per sample) and ``y`` (labels, targets or outputs). A model with named
tensors keeps one array per input as ``x.<input name>`` and its truth as ``y`` (labels or
targets) or one array per output as ``y.<output name>`` (reference outputs).

numpy only.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["Arrays", "npz_bytes", "read_samples", "sample_count", "samples_bytes", "take_rows"]

#: one array (a single tensor) or one array per tensor name
Arrays = np.ndarray | dict[str, np.ndarray]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """An ``.npz`` (np.load-able) with fixed zip timestamps, unlike np.savez."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _members(prefix: str, value: Arrays | None) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {f"{prefix}.{name}": np.asarray(a) for name, a in value.items()}
    return {prefix: np.asarray(value)}


def samples_bytes(x: Arrays, y: Arrays | None = None) -> bytes:
    """A samples file: inputs `x` and truth or outputs `y` (arrays or arrays by name)."""
    return npz_bytes(**_members("x", x), **_members("y", y))


def read_samples(path: str | Path) -> tuple[Arrays, Arrays | None]:
    """(inputs, truth or outputs) of a samples file, each an array or arrays by name."""
    with np.load(path, allow_pickle=False) as data:
        found: dict[str, Arrays | None] = {"x": None, "y": None}
        for key in data.files:
            head, dot, name = key.partition(".")
            if head not in found:
                continue
            if not dot:
                found[head] = np.asarray(data[key])
                continue
            group = found[head]
            if not isinstance(group, dict):
                group = found[head] = {}
            group[name] = np.asarray(data[key])
    if found["x"] is None:
        raise ValueError(f"{path}: not a samples file (no x array)")
    return found["x"], found["y"]


def sample_count(x: Arrays) -> int:
    """The number of samples (rows) of `x`."""
    if isinstance(x, Mapping):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def take_rows(x: Arrays, index: np.ndarray | slice) -> Arrays:
    """Rows `index` of `x` (of every array, for arrays by name)."""
    if isinstance(x, Mapping):
        return {name: a[index] for name, a in x.items()}
    return x[index]
