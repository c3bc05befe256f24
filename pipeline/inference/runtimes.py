"""Model runtimes: one small class per backend, all with `run(batch: ndarray) -> ndarray`
(one input, the first output: the fast path of single-tensor models) and
`run_many(arrays) -> list[ndarray]` (one array per input in the order `bind` set, every bound
output: models with named tensors).

Heavy backends are imported lazily, so a process that serves only ONNX never imports torch.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.inference.errors import ModelLoadError

__all__ = [
    "FORMATS",
    "NullRuntime",
    "OnnxRuntime",
    "Runtime",
    "TorchScriptRuntime",
    "load_runtime",
]

#: file suffix of each supported format
FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}


class Runtime(Protocol):
    format: str
    memory_bytes: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def bind(self, inputs: Sequence[str], outputs: Sequence[str]) -> None: ...

    def run_many(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class OnnxTensor:
    name: str
    shape: tuple[int | None, ...]
    dtype: str | None  # numpy dtype name; None for a type numpy has no name for


@dataclass(frozen=True)
class OnnxSpec:
    """The graph's inputs and outputs (the first of each under the original names)."""

    inputs: tuple[OnnxTensor, ...]
    outputs: tuple[OnnxTensor, ...]

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.inputs[0].shape

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return self.outputs[0].shape


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _ort_tensor(arg) -> OnnxTensor:
    shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))
    return OnnxTensor(arg.name, shape, _ORT_TYPES.get(arg.type))


#: per thread: the intra-op thread count a TorchScriptRuntime last set there
_torch_threads = threading.local()


class TorchScriptRuntime:
    """A TorchScript module run under `torch.inference_mode` on the CPU.

    `num_threads` is applied on every thread that runs the module, the first time it does:
    torch's intra-op setting belongs to the calling thread, and a service loads its models
    in an executor thread but runs them on its event loop thread (whose idle intra-op
    workers would otherwise spin on the second core)."""

    format = "torchscript"

    def __init__(self, data: bytes, *, num_threads: int | None = 1, label: str = "model") -> None:
        import torch

        self._num_threads = num_threads
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError with a long C++ trace
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{label}: not a loadable TorchScript file (expected a torch.jit.save archive): "
                f"{first}"
            ) from exc
        module.eval()
        self.has_hooks = _has_top_level_hooks(module)
        if self.has_hooks:
            # Forward (pre-)hooks scripted on the top module run only through module(...),
            # and freezing drops them: such a model is served as it is, hooks included.
            self._call = module
        else:
            # Fuses and prepacks for CPU inference (~15% less per-call overhead here); a
            # module that cannot be optimised (e.g. not freezable) is served as it is. With
            # no hooks to run, `forward` is called directly (nn.Module.__call__'s hook
            # dispatch is ~4 us per call on a small model).
            with contextlib.suppress(Exception):
                module = torch.jit.optimize_for_inference(module)
            self._call = module.forward
        self._module = module
        self._torch = torch
        # torch.inference_mode() builds this C++ guard on every entry; entering the guard
        # itself saves ~3 us per call (the public context manager where it is absent)
        self._inference_mode = getattr(torch._C, "_InferenceMode", None)
        self.memory_bytes = max(
            len(data),
            sum(t.numel() * t.element_size() for t in module.state_dict().values()),
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        wanted = self._num_threads
        if wanted and getattr(_torch_threads, "count", None) != wanted:
            # Small models on a shared 2-core machine: one intra-op thread is fastest.
            torch.set_num_threads(wanted)
            _torch_threads.count = wanted
        guard = self._inference_mode
        with guard(True) if guard is not None else torch.inference_mode():
            out = self._call(torch.from_numpy(batch))
        return out.numpy()

    def bind(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """`forward` takes one tensor per input in this order; a dict it returns is read by
        these output names."""
        self._output_names = tuple(outputs)

    def run_many(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every output for one array per input: `forward` may return a tensor, a tuple or
        list of tensors, or a dict of tensors by output name."""
        torch = self._torch
        wanted = self._num_threads
        if wanted and getattr(_torch_threads, "count", None) != wanted:
            torch.set_num_threads(wanted)
            _torch_threads.count = wanted
        guard = self._inference_mode
        with guard(True) if guard is not None else torch.inference_mode():
            out = self._call(*(torch.from_numpy(a) for a in arrays))
        if isinstance(out, dict):
            names = getattr(self, "_output_names", None) or tuple(out)
            return [out[name].numpy() for name in names]
        if isinstance(out, tuple | list):
            return [t.numpy() for t in out]
        return [out.numpy()]


def _has_top_level_hooks(module) -> bool:
    """Whether a loaded ScriptModule has forward hooks or pre-hooks on itself (submodules'
    hooks are compiled into the graph and survive). Unknown counts as hooked: serving it
    unoptimised is slower, never wrong."""
    c = getattr(module, "_c", None)
    try:
        return bool(c._get_forward_hooks() or c._get_forward_pre_hooks())
    except AttributeError:
        return True


class OnnxRuntime:
    """An ONNX Runtime CPU session with one intra-op thread."""

    format = "onnx"

    def __init__(self, data: bytes, *, num_threads: int | None = 1, label: str = "model") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{label}: not a loadable ONNX model (expected a valid ONNX protobuf): {first}"
            ) from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self.spec = OnnxSpec(
            inputs=tuple(_ort_tensor(i) for i in inputs),
            outputs=tuple(_ort_tensor(o) for o in outputs),
        )
        self._session = session
        self._run = session.run
        self._outputs = [outputs[0].name]
        self._input = inputs[0].name
        self._many_inputs = tuple(i.name for i in inputs)
        self._many_outputs = [o.name for o in outputs]
        self.memory_bytes = len(data)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self._outputs, {self._input: batch})[0]

    def bind(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """`run_many` takes arrays for these inputs, in this order, and computes these
        outputs (graph names); `run` takes the first and computes the first."""
        self._many_inputs = tuple(inputs)
        self._many_outputs = list(outputs)
        self._input = self._many_inputs[0]
        self._outputs = self._many_outputs[:1]

    def run_many(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._run(self._many_outputs, dict(zip(self._many_inputs, arrays, strict=True)))


class NullRuntime:
    """A model that does no work: the harness's own ceiling in calibration runs."""

    format = "null"

    def __init__(
        self,
        output_shape: tuple[int, ...] = (1,),
        output_shapes: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        self._output_shape = tuple(output_shape)
        self._output_shapes = [tuple(s) for s in output_shapes or (output_shape,)]
        self.memory_bytes = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], *self._output_shape), dtype=np.float32)

    def bind(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        pass

    def run_many(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        rows = arrays[0].shape[0]
        return [np.zeros((rows, *shape), dtype=np.float32) for shape in self._output_shapes]


def load_runtime(
    fmt: str, data: bytes, *, num_threads: int | None = 1, label: str = "model"
) -> Runtime:
    """Build the runtime for `fmt` ("torchscript" or "onnx") from a model file's bytes."""
    if fmt == "torchscript":
        return TorchScriptRuntime(data, num_threads=num_threads, label=label)
    if fmt == "onnx":
        return OnnxRuntime(data, num_threads=num_threads, label=label)
    raise ModelLoadError(
        f"{label}: unknown model format {fmt!r}; expected one of {sorted(FORMATS)}"
    )
