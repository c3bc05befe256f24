"""Models of named tensors in the model manager: their signature settled with the ONNX graph,
and their warm-up at every batch size and every declared size of their dynamic dimensions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.inference.errors import ModelLoadError, NonFiniteWarmupError
from pipeline.inference.runtimes import Runtime
from pipeline.inference.signature import Signature, TensorSpec, shape_text

if TYPE_CHECKING:
    from pipeline.inference.model_manager import ModelInfo

__all__ = ["dim_size_sets", "settle_signature", "settle_single", "warm_up_tensors"]


def settle_single(info: ModelInfo, runtime: Runtime) -> None:
    """A single-tensor entry against the ONNX graph (the authority on its shapes; an entry
    written the original plan's way gives feature dims only); then its one-input signature
    (a dynamic non-batch dim makes it a named-tensor model)."""
    spec = getattr(runtime, "spec", None)
    if spec is not None:  # ONNX: the graph is the authority on shapes
        graph_shape = list(spec.input_shape)
        if info.metadata.get("legacy_info") and len(info.input_shape) == len(graph_shape) - 1:
            info.input_shape = [graph_shape[0], *info.input_shape]  # feature dims only
        if info.input_shape and len(info.input_shape) != len(graph_shape):
            raise ModelLoadError(
                f"model {info.key!r}: model_info.json input_shape {info.input_shape} "
                f"contradicts the ONNX graph's {graph_shape}"
            )
        if info.input_shape and not info.metadata.get("legacy_info"):
            for ours, theirs in zip(info.input_shape, graph_shape, strict=True):
                if ours is not None and theirs is not None and ours != theirs:
                    raise ModelLoadError(
                        f"model {info.key!r}: model_info.json input_shape "
                        f"{info.input_shape} contradicts the ONNX graph's {graph_shape}"
                    )
        merged = [
            theirs if theirs is not None else (ours if i > 0 else None)
            for i, (ours, theirs) in enumerate(
                zip(info.input_shape or graph_shape, graph_shape, strict=True)
            )
        ]
        info.input_shape = merged
        if not info.output_shape:
            info.output_shape = list(spec.output_shape)
        if len(spec.inputs) != 1:
            raise ModelLoadError(
                f"model {info.key!r}: model_info.json describes one input, but the ONNX "
                f"graph has {len(spec.inputs)} ({', '.join(t.name for t in spec.inputs)}): "
                "rebuild the models folder with `relcert build` (it records every input)"
            )
    if len(info.input_shape) < 2:
        raise ModelLoadError(
            f"model {info.key!r}: input_shape must be [batch, dims...] in model_info.json, "
            f"got {info.input_shape or 'nothing'}"
        )
    # one input, one output: a dynamic non-batch dim makes it a named-tensor model
    info.signature = Signature(
        (TensorSpec(_input_name(info, runtime), tuple(info.input_shape), info.input_dtype),),
        (
            TensorSpec(
                _output_name(info, runtime),
                tuple(info.output_shape),
                str(info.metadata.get("output_dtype") or "float32"),
            ),
        ),
    )


def _input_name(info: ModelInfo, runtime: Runtime) -> str:
    spec = getattr(runtime, "spec", None)
    if spec is not None:
        return spec.input_name
    return str(info.metadata.get("input_name") or "input")


def _output_name(info: ModelInfo, runtime: Runtime) -> str:
    """The served output: model_info.json's output_name (for ONNX, when the graph has it),
    else the graph's first output."""
    named = info.metadata.get("output_name")
    spec = getattr(runtime, "spec", None)
    if spec is None:
        return str(named or "output")
    names = [o.name for o in spec.outputs]
    return str(named) if named in names else names[0]


def settle_signature(info: ModelInfo, runtime: Runtime) -> None:
    """A tensor-form entry against the ONNX graph: the same input names, shapes that agree
    (the graph fixes what it fixes), the same dtypes, outputs the graph has."""
    signature = info.signature
    assert signature is not None
    spec = getattr(runtime, "spec", None)
    if spec is not None:
        graph = {t.name: t for t in spec.inputs}
        names = [t.name for t in signature.inputs]
        if sorted(names) != sorted(graph):
            raise ModelLoadError(
                f"model {info.key!r}: model_info.json inputs {names} do not match the ONNX "
                f"graph's inputs {list(graph)}"
            )
        inputs = tuple(_settle_input(info, t, graph[t.name]) for t in signature.inputs)
        graph_outputs = [o.name for o in spec.outputs]
        missing = [o.name for o in signature.outputs if o.name not in graph_outputs]
        if missing:
            raise ModelLoadError(
                f"model {info.key!r}: model_info.json outputs {missing} are not outputs of the "
                f"ONNX graph ({', '.join(graph_outputs)})"
            )
        outputs = signature.outputs or tuple(
            TensorSpec(o.name, o.shape, o.dtype or "float32") for o in spec.outputs
        )
        signature = Signature(inputs, outputs, signature.dims)
    elif not signature.outputs:
        signature = Signature(
            signature.inputs, (TensorSpec("output", (None,), "float32"),), signature.dims
        )
    info.signature = signature
    info.input_shape = [d if isinstance(d, int) else None for d in signature.inputs[0].shape]
    info.output_shape = [d if isinstance(d, int) else None for d in signature.outputs[0].shape]
    info.input_dtype = signature.inputs[0].dtype


def _settle_input(info: ModelInfo, ours: TensorSpec, theirs: Any) -> TensorSpec:
    agree = len(ours.shape) == len(theirs.shape) and all(
        not isinstance(d, int) or g is None or d == g
        for d, g in zip(ours.shape, theirs.shape, strict=True)
    )
    if not agree:
        raise ModelLoadError(
            f"model {info.key!r}: model_info.json input {ours.name!r} shape "
            f"{shape_text(ours.shape)} contradicts the ONNX graph's {shape_text(theirs.shape)}"
        )
    if theirs.dtype is not None and theirs.dtype != ours.dtype:
        raise ModelLoadError(
            f"model {info.key!r}: model_info.json input {ours.name!r} is {ours.dtype}, the "
            f"ONNX graph's is {theirs.dtype}"
        )
    shape = tuple(g if g is not None else d for d, g in zip(ours.shape, theirs.shape, strict=True))
    return TensorSpec(ours.name, shape, ours.dtype, ours.range)


def dim_size_sets(signature: Signature) -> list[dict[str, int]]:
    """Sizes of the dynamic dimensions to exercise a model at: the i-th declared size of
    every dimension together (cycling through shorter lists)."""
    options = {name: signature.probe_sizes(name) for name in signature.dim_names()}
    count = max((len(v) for v in options.values()), default=1)
    return [{name: sizes[i % len(sizes)] for name, sizes in options.items()} for i in range(count)]


def warm_up_tensors(
    info: ModelInfo,
    runtime: Runtime,
    fixed: int | None,
    batch_sizes: tuple[int, ...],
    rounds: int,
) -> None:
    """Warm up a named-tensor model at every batch size and every declared size of its
    dynamic dimensions, on valid values; every output must be finite with the batch's rows."""
    signature = info.signature
    assert signature is not None
    rng = np.random.default_rng(0)
    names = signature.output_names
    for _ in range(rounds):
        for sizes in dim_size_sets(signature):
            for size in (fixed,) if fixed else batch_sizes:
                arrays = signature.example_batch(size, rng, sizes)
                shapes = ", ".join(
                    f"{t} {list(a.shape)}"
                    for t, a in zip(signature.input_names, arrays, strict=True)
                )
                try:
                    outs = runtime.run_many(arrays)
                except Exception as exc:
                    raise ModelLoadError(
                        f"model {info.key!r}: warm-up inference on a batch of {shapes} failed: "
                        f"{exc}"
                    ) from exc
                if len(outs) != len(names):
                    raise ModelLoadError(
                        f"model {info.key!r}: returned {len(outs)} outputs; model_info.json "
                        f"names {len(names)} ({', '.join(names)})"
                    )
                for name, out in zip(names, outs, strict=True):
                    out = np.asarray(out)
                    if out.dtype.kind in "fc" and not np.all(np.isfinite(out)):
                        raise NonFiniteWarmupError(
                            f"model {info.key!r}: warm-up produced NaN/Inf in output {name!r} "
                            f"for valid inputs ({shapes}) (file {info.path})"
                        )
                    if out.ndim == 0 or out.shape[0] != size:
                        raise ModelLoadError(
                            f"model {info.key!r}: output {name!r} batch dimension "
                            f"{out.shape[0] if out.ndim else 'none'} does not match input batch "
                            f"{size}"
                        )
    info.warmup_complete = True
