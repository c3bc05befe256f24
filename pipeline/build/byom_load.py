"""Load an imported model file and settle its tensors with what the models file says.

ONNX: the graph is read (every input, initializers excluded, and every output), each dim
``dim_value`` -> int, ``dim_param`` -> its name, unknown -> null. In the single-tensor form
(``input_shape`` / ``input_dtype`` / ``input_name`` / ``output_name``) the graph must have one
input; ``input_shape`` must agree with it (same rank, the same int wherever the graph fixes a
dim; where the graph leaves a dim dynamic the models file may fix it) and one output is served
(``output_name``, default the first). In the tensor form (``inputs``, ``outputs``, ``dims``, or
a graph of several inputs) each named input must be a graph input and agree with it the same
way (a name in the models file for a dim the graph leaves dynamic; an int to fix it), and
every listed output (default: all of the graph's) is served.

TorchScript: the tensors come from the models file (``input_shape`` or ``inputs`` required);
``forward`` is called with one tensor per input, in order, and may return a tensor, a tuple or
list of tensors, or a dict of tensors by output name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.build.config import ModelSpec
from pipeline.build.errors import BuildError
from pipeline.inference.signature import TensorSpec, shape_text

__all__ = ["Loaded", "load_imported"]


@dataclass
class Loaded:
    """A loaded model: how to run it and the tensors it takes and gives.

    `outputs` holds the served outputs' names (None for a TorchScript model that does not
    name them: known once it has run) and `output_batch` the graph's batch dim of each."""

    run_many: Callable[[list[np.ndarray]], list[np.ndarray]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...] | None
    output_batch: tuple[int | None, ...] | None
    tensor_form: bool
    opset: int | None = None


def load_imported(spec: ModelSpec, src: Path, dest: Path) -> Loaded:
    """Load `dest` (the copied file of `src`) the way its format says."""
    loader = _load_onnx if spec.format == "onnx" else _load_torchscript
    return loader(spec, src, dest)


def _tensor_form(spec: ModelSpec) -> bool:
    return spec.inputs is not None or spec.outputs is not None or bool(spec.dims)


def _where(spec: ModelSpec) -> str:
    return f"model {spec.name!r}"


# ----------------------------------------------------------------------------- ONNX
def _read_onnx(spec: ModelSpec, src: Path, dest: Path) -> Any:
    import onnx

    where = _where(spec)
    try:
        model = onnx.load(str(dest), load_external_data=False)
    except Exception as exc:
        raise BuildError(
            f"{where}: file {src} is not a valid ONNX model (truncated or corrupt): {exc}"
        ) from None
    external = [
        t.name
        for t in model.graph.initializer
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        raise BuildError(
            f"{where}: file {src} keeps weights in external data files ({external[0]!r}, ...); "
            "only single-file ONNX models can be imported (export with external_data=False)"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise BuildError(
            f"{where}: file {src} is not a valid ONNX model (truncated or corrupt): "
            f"onnx.checker: {exc}"
        ) from None
    return model


def _load_onnx(spec: ModelSpec, src: Path, dest: Path) -> Loaded:
    from pipeline.build.export import onnx_io_spec, ort_session

    where = _where(spec)
    model = _read_onnx(spec, src, dest)
    graph_inputs, graph_outputs = onnx_io_spec(model)
    tensor_form = _tensor_form(spec) or len(graph_inputs) != 1
    if tensor_form:
        inputs = _onnx_inputs(spec, src, graph_inputs)
        outputs = _onnx_outputs(spec, src, graph_outputs)
    else:
        inputs = (_onnx_single_input(spec, src, graph_inputs[0]),)
        outputs = [_onnx_single_output(spec, src, graph_outputs)]
    try:
        session = ort_session(dest)
    except Exception as exc:
        raise BuildError(
            f"{where}: file {src} cannot be loaded by ONNX Runtime "
            f"(unsupported operator or corrupt model): {exc}"
        ) from None
    names = [o["name"] for o in outputs]
    in_names = [t.name for t in inputs]

    def run_many(arrays: list[np.ndarray]) -> list[np.ndarray]:
        got = session.run(names, dict(zip(in_names, arrays, strict=True)))
        return [np.asarray(a) for a in got]

    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return Loaded(
        run_many=run_many,
        inputs=inputs,
        outputs=tuple(names),
        output_batch=tuple((o["shape"] or [inputs[0].batch])[0] for o in outputs),
        tensor_form=tensor_form,
        opset=max(opsets) if opsets else None,
    )


def _graph_dims(graph_in: dict[str, Any]) -> list[Any] | None:
    """The graph's shape of an input with its symbolic dims' names (None: no shape)."""
    shape = graph_in["shape"]
    if shape is None:
        return None
    names = graph_in.get("dim_names") or [None] * len(shape)
    return [d if d is not None else n for d, n in zip(shape, names, strict=True)]


def _onnx_single_input(spec: ModelSpec, src: Path, graph_in: dict[str, Any]) -> TensorSpec:
    where = _where(spec)
    if spec.input_name is not None and spec.input_name != graph_in["name"]:
        raise BuildError(
            f"{where}: input_name {spec.input_name!r} in {spec.models_file} does not match the "
            f"graph input {graph_in['name']!r} of {src}"
        )
    shape = _agree_shapes(spec, src, graph_in, spec.input_shape, "input_shape")
    graph_dtype = graph_in["dtype"]
    if graph_dtype is None:
        raise BuildError(f"{where}: file {src}: unsupported input element type")
    if spec.input_dtype is not None and spec.input_dtype != graph_dtype:
        raise BuildError(
            f"{where}: input_dtype {spec.input_dtype!r} in {spec.models_file} contradicts the "
            f"graph input {graph_in['name']!r} of {src}, which is {graph_dtype}"
        )
    return TensorSpec(graph_in["name"], shape, graph_dtype)


def _onnx_single_output(
    spec: ModelSpec, src: Path, graph_outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    if spec.output_name is None:
        return graph_outputs[0]
    matches = [o for o in graph_outputs if o["name"] == spec.output_name]
    if not matches:
        raise BuildError(
            f"{_where(spec)}: output_name {spec.output_name!r} in {spec.models_file} is not an "
            f"output of {src} (outputs: {', '.join(o['name'] for o in graph_outputs)})"
        )
    return matches[0]


def _onnx_inputs(
    spec: ModelSpec, src: Path, graph_inputs: list[dict[str, Any]]
) -> tuple[TensorSpec, ...]:
    where = _where(spec)
    by_name = {g["name"]: g for g in graph_inputs}
    if spec.inputs is None:
        out = []
        for g in graph_inputs:
            if g["dtype"] is None:
                raise BuildError(f"{where}: file {src}: unsupported element type of {g['name']!r}")
            out.append(
                TensorSpec(g["name"], _agree_shapes(spec, src, g, None, "shape"), g["dtype"])
            )
        return tuple(out)
    given = [t.name for t in spec.inputs]
    if sorted(given) != sorted(by_name):
        raise BuildError(
            f"{where}: inputs {given} in {spec.models_file} do not match the graph inputs "
            f"{list(by_name)} of {src} (name every graph input once)"
        )
    out = []
    for t in spec.inputs:
        graph_in = by_name[t.name]
        shape = _agree_shapes(spec, src, graph_in, t.shape, f"inputs {t.name!r} shape")
        if graph_in["dtype"] != t.dtype:
            raise BuildError(
                f"{where}: inputs {t.name!r} dtype {t.dtype!r} in {spec.models_file} "
                f"contradicts the graph input {t.name!r} of {src}, which is {graph_in['dtype']}"
            )
        out.append(TensorSpec(t.name, shape, t.dtype, t.range))
    return tuple(out)


def _onnx_outputs(
    spec: ModelSpec, src: Path, graph_outputs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if spec.outputs is None:
        return graph_outputs
    by_name = {o["name"]: o for o in graph_outputs}
    unknown = [n for n in spec.outputs if n not in by_name]
    if unknown:
        raise BuildError(
            f"{_where(spec)}: outputs {unknown} in {spec.models_file} are not outputs of {src} "
            f"(outputs: {', '.join(by_name)})"
        )
    return [by_name[n] for n in spec.outputs]


def _agree_shapes(
    spec: ModelSpec, src: Path, graph_in: dict[str, Any], given: Any, what: str
) -> tuple[Any, ...]:
    """The input's shape: the graph's, with the models file's value wherever the graph
    leaves a dim dynamic (a name, or an int that fixes it)."""
    where = _where(spec)
    name = graph_in["name"]
    graph = _graph_dims(graph_in)
    if graph is None:
        if given is None:
            raise BuildError(
                f"{where}: the graph input {name!r} of {src} declares no shape; "
                f"give {what.split(' ')[0]} in {spec.models_file}"
            )
        return tuple(given)
    if not graph:
        raise BuildError(f"{where}: the graph input {name!r} of {src} is a scalar")
    graph[0] = graph[0] if isinstance(graph[0], int) else None  # a named batch is dynamic
    if given is None:
        return tuple(graph)
    agree = len(given) == len(graph) and all(
        not isinstance(g, int) or g == y for g, y in zip(graph, given, strict=True)
    )
    if not agree:
        raise BuildError(
            f"{where}: {what} {shape_text(given)} in {spec.models_file} contradicts the graph "
            f"input {name!r} of {src}, whose shape is {shape_text(graph)}"
        )
    pairs = enumerate(zip(graph, given, strict=True))
    return tuple(y if y is not None or i == 0 else g for i, (g, y) in pairs)


# ----------------------------------------------------------------------------- TorchScript
def _load_torchscript(spec: ModelSpec, src: Path, dest: Path) -> Loaded:
    import torch

    from pipeline.build.export import quiet_torchscript

    where = _where(spec)
    try:
        with quiet_torchscript():
            module = torch.jit.load(str(dest), map_location="cpu")
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(
            f"{where}: file {src} is not a valid TorchScript archive (torch.jit.load failed; "
            f"save models with torch.jit.script/trace + torch.jit.save): {detail}"
        ) from None
    module.eval()
    tensor_form = _tensor_form(spec)
    if spec.inputs is not None:
        inputs = spec.inputs
    else:
        assert spec.input_shape is not None  # enforced by config for TorchScript
        inputs = (
            TensorSpec(spec.input_name or "input", spec.input_shape, spec.input_dtype or "float32"),
        )
    names = spec.outputs
    if names is None and not tensor_form:
        names = (spec.output_name or "output",)

    def run_many(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(a) for a in arrays))
        return _torch_outputs(spec, src, out, names)

    return Loaded(
        run_many=run_many,
        inputs=inputs,
        outputs=names,
        output_batch=None,
        tensor_form=tensor_form,
    )


def _torch_outputs(
    spec: ModelSpec, src: Path, out: Any, names: tuple[str, ...] | None
) -> list[np.ndarray]:
    import torch

    where = _where(spec)
    if isinstance(out, dict):
        wanted = names or tuple(out)
        missing = [n for n in wanted if n not in out]
        if missing:
            raise BuildError(
                f"{where}: {src} returned no output {missing} (it returned {list(out)})"
            )
        tensors = [out[n] for n in wanted]
    elif isinstance(out, tuple | list):
        tensors = list(out)
    else:
        tensors = [out]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        kinds = ", ".join(type(t).__name__ for t in tensors)
        raise BuildError(f"{where}: {src} returned {kinds}; expected tensors")
    if names is not None and len(tensors) != len(names):
        raise BuildError(
            f"{where}: {src} returned {len(tensors)} tensor(s); {spec.models_file} names "
            f"{len(names)} output(s) ({', '.join(names)})"
        )
    return [t.numpy() for t in tensors]


def torch_output_names(count: int) -> tuple[str, ...]:
    """Default names of a TorchScript model's outputs the models file does not name."""
    return ("output",) if count == 1 else tuple(f"output_{i}" for i in range(count))
