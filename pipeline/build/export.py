"""Export built models to TorchScript and ONNX, and check that the exports agree.

Deterministic bytes
-------------------
* **TorchScript.** ``torch.jit.save`` writes a zip whose entries carry a fixed timestamp and
  whose ``.data/serialization_id`` is derived from the content, so the bytes depend only on the
  module and on the names of the compiled classes. Those names are the problem: TorchScript
  compiles classes into a process-wide compilation unit and "mangles" a name that is already
  taken (``__torch__...___torch_mangle_7.Linear``) with a counter that depends on everything
  scripted earlier in the process. :func:`fresh_compilation_unit` scripts and freezes each
  model in a new, empty compilation unit, so the names (and bytes) are the same in every
  process. Source ranges in ``*.debug_pkl`` hold the absolute paths of the Python files the
  modules were defined in (e.g. the torch installation), so byte identity holds across builds
  in the same environment, not across installations at different paths.
* **ONNX.** The TorchScript-based exporter (``dynamo=False``) is used: it takes a fraction of a
  second (the dynamo exporter takes several), supports ``dynamic_axes`` and is deterministic.
  Its deprecation warning is silenced locally. Opset :data:`OPSET`, one file (no external
  data), checked with ``onnx.checker.check_model``.

Parity
------
:func:`check_parity` runs a probe set through the eager module, the saved TorchScript file
(``torch.jit.load``) and the saved ONNX file (ONNX Runtime, CPUExecutionProvider, one thread)
in batch sizes 1, 7 and 64 (every probe in every batch size), and fails on NaN/Inf or on a
max abs difference above the tolerance between backends or between batch sizes.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipeline._io import atomic_write_bytes
from pipeline.build.errors import BuildError

__all__ = [
    "BATCH_SIZES",
    "OPSET",
    "PARITY_TOLERANCE",
    "check_parity",
    "export_onnx",
    "export_torchscript",
    "fresh_compilation_unit",
    "onnx_io_spec",
    "ort_session",
    "quiet_torchscript",
    "run_in_batches",
]

OPSET = 17
BATCH_SIZES = (1, 7, 64)
PARITY_TOLERANCE = 1e-5


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Silence torch's deprecation warnings for torch.jit in the block.

    TorchScript is deprecated upstream, but ``<name>.pt`` TorchScript files are part of the
    model contract (the inference library and the original plan load them), so the build uses
    torch.jit on purpose and keeps the warning out of the user's output.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit.*deprecated.*", category=DeprecationWarning
        )
        yield


@contextlib.contextmanager
def fresh_compilation_unit() -> Iterator[None]:
    """Compile TorchScript classes into a new compilation unit for the duration of the block.

    Uses two private torch attributes (``torch.jit._state._python_cu`` and
    ``torch.jit._recursive.concrete_type_store``); modules scripted inside keep a reference to
    their unit and stay valid after the block. If torch ever drops these attributes the block
    still runs, only without the determinism guarantee (the determinism test would notice).
    """
    import torch.jit._recursive as recursive
    import torch.jit._state as state

    if not hasattr(state, "_python_cu") or not hasattr(recursive, "concrete_type_store"):
        yield  # pragma: no cover - future torch versions
        return
    saved = (state._python_cu, recursive._python_cu, recursive.concrete_type_store)
    unit = torch._C.CompilationUnit()
    state._python_cu = unit
    recursive._python_cu = unit
    recursive.concrete_type_store = recursive.ConcreteTypeStore()
    try:
        yield
    finally:
        state._python_cu, recursive._python_cu, recursive.concrete_type_store = saved


def export_torchscript(
    module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str]
) -> Path:
    """Script (or, if scripting fails, trace) and freeze ``module``; save it to ``path``."""
    module = module.eval()
    with quiet_torchscript(), fresh_compilation_unit(), torch.no_grad():
        try:
            scripted = torch.jit.script(module)
        except Exception:  # not scriptable: trace with the example input instead
            scripted = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.freeze(scripted.eval())
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    input_name: str,
    output_name: str,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Export with a dynamic batch axis named ``batch``; check and save as a single file."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            dynamo=False,
            export_params=True,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    data = buffer.getvalue()
    model = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise BuildError(f"exported ONNX model {path} fails onnx.checker: {exc}") from exc
    atomic_write_bytes(path, data)
    return model


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in tensor.shape.dim
    ]


def _dim_names(value_info: onnx.ValueInfoProto) -> list[str | None] | None:
    """The graph's name of each dimension (its dim_param), None where it has none."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [
        d.dim_param if d.HasField("dim_param") and d.dim_param else None for d in tensor.shape.dim
    ]


def _dtype(value_info: onnx.ValueInfoProto) -> str | None:
    elem = value_info.type.tensor_type.elem_type
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name
    except Exception:
        return None


def onnx_io_spec(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Graph inputs (initializers excluded) and outputs as ``{name, shape, dtype}``.

    ``shape`` is a list with an int for a fixed dim and None for a symbolic or unknown one
    (or None when the graph declares no shape); ``dim_names`` the symbolic dims' names.
    """
    initializers = {init.name for init in model.graph.initializer}

    def describe(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        return {
            "name": vi.name,
            "shape": _dims(vi),
            "dtype": _dtype(vi),
            "dim_names": _dim_names(vi),
        }

    inputs = [describe(vi) for vi in model.graph.input if vi.name not in initializers]
    outputs = [describe(vi) for vi in model.graph.output]
    return inputs, outputs


def ort_session(path: str | os.PathLike[str]) -> ort.InferenceSession:
    """A single-threaded CPU ONNX Runtime session for ``path``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_in_batches(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int
) -> np.ndarray:
    """Concatenated outputs of ``run`` over consecutive chunks of ``batch_size`` rows."""
    return np.concatenate(
        [np.asarray(run(x[i : i + batch_size])) for i in range(0, x.shape[0], batch_size)]
    )


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def check_parity(
    name: str,
    module: nn.Module,
    torchscript_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    probes: np.ndarray,
    input_name: str,
    output_name: str,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Eager vs TorchScript vs ONNX Runtime on ``probes``; raise BuildError on a failure.

    Returns the ``parity`` record of ``model_info.json``.
    """
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    with quiet_torchscript():
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    session = ort_session(onnx_path)

    def eager(chunk: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(chunk)).numpy()

    def torchscript(chunk: np.ndarray) -> np.ndarray:
        return scripted(torch.from_numpy(chunk)).numpy()

    def onnxruntime(chunk: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: chunk})[0]

    backends = {"eager": eager, "torchscript": torchscript, "onnx": onnxruntime}
    outputs: dict[str, dict[int, np.ndarray]] = {key: {} for key in backends}
    with torch.inference_mode():
        for key, run in backends.items():
            for size in batch_sizes:
                out = run_in_batches(run, probes, size)
                if out.shape[0] != probes.shape[0]:
                    raise BuildError(
                        f"model {name!r}: {key} returned {out.shape[0]} rows for "
                        f"{probes.shape[0]} probes in batches of {size}"
                    )
                if not np.all(np.isfinite(out)):
                    raise BuildError(
                        f"model {name!r}: {key} output holds NaN/Inf for probe inputs "
                        f"(batch size {size}; file "
                        f"{torchscript_path if key == 'torchscript' else onnx_path})"
                    )
                outputs[key][size] = out

    def across(a: str, b: str) -> float:
        return max(_max_abs(outputs[a][s], outputs[b][s]) for s in batch_sizes)

    first = batch_sizes[0]
    diffs = {
        "eager_vs_torchscript": across("eager", "torchscript"),
        "eager_vs_onnx": across("eager", "onnx"),
        "torchscript_vs_onnx": across("torchscript", "onnx"),
        "across_batch_sizes": max(
            _max_abs(outputs[key][first], outputs[key][s]) for key in backends for s in batch_sizes
        ),
    }
    worst = max(diffs, key=lambda k: diffs[k])
    if diffs[worst] > tolerance:
        raise BuildError(
            f"model {name!r}: parity check failed for {torchscript_path} / {onnx_path}: "
            f"max abs difference {worst} = {diffs[worst]:.3g} exceeds tolerance {tolerance:g} "
            f"({probes.shape[0]} probes, batch sizes {list(batch_sizes)})"
        )
    return {
        "probe_count": int(probes.shape[0]),
        "batch_sizes": list(batch_sizes),
        "tolerance": tolerance,
        "passed": diffs[worst] <= tolerance,
        "max_abs_diff": diffs,
    }
