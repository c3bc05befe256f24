"""Bring your own model: import a user's ONNX or TorchScript file into a models folder.

The file is copied byte for byte as ``<name>.onnx`` or ``<name>.pt`` (never converted), its
sha256 verified when models.yaml gives one, then loaded the way the inference library will
load it (``onnx.load`` + ``onnx.checker`` + an ONNX Runtime session, or ``torch.jit.load``).

Input spec. For ONNX it is read from the graph: one input (initializers excluded), each dim
``dim_value`` -> int, ``dim_param`` or unknown -> null. An ``input_shape`` in models.yaml must
agree with it: same rank, the same int wherever the graph fixes a dim; where the graph leaves
a dim dynamic, models.yaml may fix it (the recorded shape then uses the models.yaml value).
``input_dtype``/``input_name`` in models.yaml must match the graph too. For TorchScript the
spec comes from models.yaml (``input_shape`` required, dtype default float32).

Probe. With ``reference`` the reference inputs are run and the outputs compared with the
reference outputs (max abs difference <= atol). Without it, 8 random inputs (seeded by the
model name and snapshot date) are run: standard normal for float inputs, integers in [0, 10)
for integer inputs, random booleans for bool. Dynamic non-batch dims get size 4. A dynamic
batch dim runs all rows in one call; a fixed batch dim ``B`` runs the rows ``B`` at a time
(one at a time for the common ``B = 1``). NaN or Inf in any output fails the import.

Output spec. ``output_shape`` is the batch dim of the graph's output (int, or null when
dynamic; for TorchScript the input's batch dim) followed by the observed per-row shape.

What relcert serves, and so imports: inputs of float32, float64 or int64 (fed as declared),
and a batch dimension that is dynamic (requests are batched) or fixed at 1 (each request
runs alone). A fixed batch larger than 1 is refused with a clear error: a request is one
sample, and padding it with made-up rows could change what the model computes (re-export
the model with a dynamic or batch-1 dimension).

The model's evaluation set (``sla.evaluation``) and reference arrays are copied into the
models folder (``evaluation/<name>.npz``, ``reference/<name>.npz``, as ``x`` and ``y``) so
later stages score the model and draw realistic request inputs from them.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import sha256_file
from pipeline.build.config import ModelSpec
from pipeline.build.errors import BuildError
from pipeline.build.seeds import STREAM_PROBE, model_seed, stream_rng

__all__ = ["PROBE_ROWS", "import_model"]

PROBE_ROWS = 8
_DYNAMIC_DIM = 4
_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


#: the largest model file an import reads, in MB (default: the engine's max_memory_mb)
ENV_MAX_MODEL_MB = "RELCERT_MAX_MODEL_MB"


def _check_file_size(where: str, src: Path) -> None:
    """Refuse a model file larger than the memory budget before reading any of it: its
    weights need at least its size, so the engine could never load it."""
    raw = os.environ.get(ENV_MAX_MODEL_MB, "").strip()
    if raw:
        try:
            limit_mb = float(raw)
        except ValueError:
            limit_mb = -1.0
        if not 0 < limit_mb < float("inf"):
            raise BuildError(f"{ENV_MAX_MODEL_MB}={raw!r}: expected a positive number of MB")
        source = ENV_MAX_MODEL_MB
    else:
        from pipeline.inference.settings import EngineSettings

        limit_mb, source = EngineSettings().max_memory_mb, "the engine's max_memory_mb"
    size = src.stat().st_size
    if size > limit_mb * 2**20:
        raise BuildError(
            f"{where}: file {src} is {size / 2**20:.1f} MB, more than the {limit_mb:g} MB "
            f"a model may take ({source}); it was not read (set {ENV_MAX_MODEL_MB} to allow "
            "larger models, with a matching max_memory_mb for the engine)"
        )


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"


class _Loaded:
    """A loaded model: how to run it and what the file declares."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        input_name: str,
        output_name: str,
        input_shape: tuple[int | None, ...],
        input_dtype: str,
        output_batch_dim: int | None,
        opset: int | None,
    ) -> None:
        self.run = run
        self.input_name = input_name
        self.output_name = output_name
        self.input_shape = input_shape
        self.input_dtype = input_dtype
        self.output_batch_dim = output_batch_dim
        self.opset = opset


def _load_onnx(spec: ModelSpec, src: Path, dest: Path) -> _Loaded:
    import onnx

    from pipeline.build.export import onnx_io_spec, ort_session

    where = f"model {spec.name!r}"
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
    inputs, outputs = onnx_io_spec(model)
    if len(inputs) != 1:
        raise BuildError(
            f"{where}: file {src} has {len(inputs)} graph inputs "
            f"({', '.join(i['name'] for i in inputs)}); expected exactly one"
        )
    graph_in = inputs[0]
    if spec.input_name is not None and spec.input_name != graph_in["name"]:
        raise BuildError(
            f"{where}: input_name {spec.input_name!r} in {spec.models_file} does not match the "
            f"graph input {graph_in['name']!r} of {src}"
        )
    if spec.output_name is not None:
        matches = [o for o in outputs if o["name"] == spec.output_name]
        if not matches:
            raise BuildError(
                f"{where}: output_name {spec.output_name!r} in {spec.models_file} is not an "
                f"output of {src} (outputs: {', '.join(o['name'] for o in outputs)})"
            )
        graph_out = matches[0]
    else:
        graph_out = outputs[0]

    graph_shape = graph_in["shape"]
    shape = _agree_shapes(spec, src, graph_in["name"], graph_shape)
    graph_dtype = graph_in["dtype"]
    if graph_dtype is None:
        raise BuildError(f"{where}: file {src}: unsupported input element type")
    if spec.input_dtype is not None and spec.input_dtype != graph_dtype:
        raise BuildError(
            f"{where}: input_dtype {spec.input_dtype!r} in {spec.models_file} contradicts the "
            f"graph input {graph_in['name']!r} of {src}, which is {graph_dtype}"
        )
    try:
        session = ort_session(dest)
    except Exception as exc:
        raise BuildError(
            f"{where}: file {src} cannot be loaded by ONNX Runtime "
            f"(unsupported operator or corrupt model): {exc}"
        ) from None
    in_name, out_name = graph_in["name"], graph_out["name"]

    def run(chunk: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([out_name], {in_name: chunk})[0])

    out_shape = graph_out["shape"]
    opsets = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return _Loaded(
        run=run,
        input_name=in_name,
        output_name=out_name,
        input_shape=shape,
        input_dtype=graph_dtype,
        output_batch_dim=out_shape[0] if out_shape else shape[0],
        opset=max(opsets) if opsets else None,
    )


def _agree_shapes(
    spec: ModelSpec, src: Path, input_name: str, graph_shape: list[int | None] | None
) -> tuple[int | None, ...]:
    where = f"model {spec.name!r}"
    given = spec.input_shape
    if graph_shape is None:
        if given is None:
            raise BuildError(
                f"{where}: the graph input {input_name!r} of {src} declares no shape; "
                f"give input_shape in {spec.models_file}"
            )
        return given
    if not graph_shape:
        raise BuildError(f"{where}: the graph input {input_name!r} of {src} is a scalar")
    if given is None:
        return tuple(graph_shape)
    agree = len(given) == len(graph_shape) and all(
        g is None or g == y for g, y in zip(graph_shape, given, strict=True)
    )
    if not agree:
        raise BuildError(
            f"{where}: input_shape {_shape_text(given)} in {spec.models_file} contradicts the "
            f"graph input {input_name!r} of {src}, whose shape is {_shape_text(graph_shape)}"
        )
    return given


def _load_torchscript(spec: ModelSpec, src: Path, dest: Path) -> _Loaded:
    import torch

    from pipeline.build.export import quiet_torchscript

    where = f"model {spec.name!r}"
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
    assert spec.input_shape is not None  # enforced by config for TorchScript

    def run(chunk: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(chunk))
        if not isinstance(out, torch.Tensor):
            raise BuildError(
                f"{where}: {src} returned {type(out).__name__}; expected a single tensor"
            )
        return out.numpy()

    return _Loaded(
        run=run,
        input_name=spec.input_name or "input",
        output_name=spec.output_name or "output",
        input_shape=spec.input_shape,
        input_dtype=spec.input_dtype or "float32",
        output_batch_dim=spec.input_shape[0],
        opset=None,
    )


def _random_inputs(
    rng: np.random.Generator, shape: tuple[int | None, ...], dtype: str
) -> np.ndarray:
    batch = shape[0]
    rows = PROBE_ROWS if batch is None else PROBE_ROWS * batch
    full = (rows, *(_DYNAMIC_DIM if d is None else d for d in shape[1:]))
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.standard_normal(full).astype(dtype)
    if kind in "iu":
        return rng.integers(0, 10, size=full).astype(dtype)
    return rng.random(full) < 0.5


def _load_npy(spec: ModelSpec, path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BuildError(
            f"model {spec.name!r}: reference {what} file {path} not found "
            f"(listed in {spec.models_file})"
        ) from None
    except Exception as exc:
        raise BuildError(
            f"model {spec.name!r}: reference {what} file {path} is not a readable .npy array: {exc}"
        ) from None


def _check_reference_inputs(
    spec: ModelSpec, path: Path, x: np.ndarray, shape: tuple[int | None, ...]
) -> None:
    ok = x.ndim == len(shape) and all(
        d is None or d == n for d, n in zip(shape[1:], x.shape[1:], strict=True)
    )
    if ok and shape[0] is not None:
        ok = x.shape[0] > 0 and x.shape[0] % shape[0] == 0
    if not ok or x.shape[0] == 0:
        raise BuildError(
            f"model {spec.name!r}: reference inputs {path} have shape {list(x.shape)}, "
            f"which does not fit the input shape {_shape_text(shape)}"
        )


def _check_servable(spec: ModelSpec, src: Path, shape: tuple[int | None, ...], dtype: str) -> None:
    from pipeline.build.config import INPUT_DTYPES

    where = f"model {spec.name!r}"
    if dtype not in INPUT_DTYPES:
        raise BuildError(
            f"{where}: {src} takes {dtype} inputs; relcert serves {', '.join(INPUT_DTYPES)} "
            "inputs (fed to the model as declared): re-export the model with one of these"
        )
    if shape[0] not in (None, 1):
        raise BuildError(
            f"{where}: {src} has a fixed batch dimension of {shape[0]}; relcert serves a "
            "dynamic batch dimension (requests are batched) or a fixed batch of 1 (each "
            "request alone), never a padded batch: re-export with a dynamic or batch-1 "
            f"dimension (input shape {_shape_text(shape)})"
        )


def _evaluation(
    spec: ModelSpec, out_dir: Path, shape: tuple[int | None, ...], dtype: str, y_per_row: int
) -> dict[str, Any] | None:
    """Copy the SLA's evaluation set into the models folder; its model_info record."""
    from pipeline.build.builder import EVALUATION_DIR, npz_bytes

    sla = spec.sla
    if sla is None:
        return None
    assert sla.inputs is not None and sla.truth is not None  # config: imported models
    where = f"model {spec.name!r}"
    x = _load_npy(spec, sla.inputs, "sla evaluation inputs")
    y = _load_npy(spec, sla.truth, f"sla evaluation {sla.truth_kind}")
    fits = x.ndim == len(shape) and all(
        d is None or d == n for d, n in zip(shape[1:], x.shape[1:], strict=True)
    )
    if not fits or x.shape[0] == 0:
        raise BuildError(
            f"{where}: evaluation inputs {sla.inputs} have shape {list(x.shape)}, which does "
            f"not fit the input shape {_shape_text(shape)}"
        )
    if y.shape[0] != x.shape[0]:
        raise BuildError(
            f"{where}: evaluation {sla.truth_kind} {sla.truth} have {y.shape[0]} rows for "
            f"{x.shape[0]} input rows (one each needed)"
        )
    if sla.truth_kind == "labels":
        if y.dtype.kind not in "iu" and not np.all(np.mod(y, 1) == 0):
            raise BuildError(f"{where}: evaluation labels {sla.truth} must be class indices")
        if y.min() < 0 or y.max() >= y_per_row:
            raise BuildError(
                f"{where}: evaluation labels {sla.truth} range {int(y.min())}..{int(y.max())}, "
                f"but the model outputs {y_per_row} classes per row"
            )
    rel = f"{EVALUATION_DIR}/{spec.name}.npz"
    (out_dir / EVALUATION_DIR).mkdir(exist_ok=True)
    (out_dir / rel).write_bytes(npz_bytes(x=np.ascontiguousarray(x.astype(dtype)), y=y))
    return {
        **sla.to_record(),
        "evaluation_file": rel,
        "truth_kind": sla.truth_kind,
        "rows": int(x.shape[0]),
        "source": {"inputs": sla.inputs.name, sla.truth_kind: sla.truth.name},
    }


def import_model(
    spec: ModelSpec,
    out_dir: str | os.PathLike[str],
    snapshot_date: _dt.date,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Copy, verify, load and probe one imported model; return its model_info entry."""
    if spec.path is None or spec.format is None:
        raise BuildError(f"model {spec.name!r} is not an imported model")
    where = f"model {spec.name!r}"
    src = spec.path
    if not src.is_file():
        raise BuildError(f"{where}: file {src} not found (path in {spec.models_file})")
    _check_file_size(where, src)
    sha = sha256_file(src)
    if spec.sha256 is not None and sha != spec.sha256:
        raise BuildError(f"{where}: sha256 mismatch for {src}: expected {spec.sha256}, got {sha}")
    dest = Path(out_dir) / f"{spec.name}{_SUFFIX[spec.format]}"
    shutil.copyfile(src, dest)
    if sha256_file(dest) != sha:
        raise BuildError(f"{where}: {src} changed while it was being copied")

    loaded = (_load_onnx if spec.format == "onnx" else _load_torchscript)(spec, src, dest)
    shape, dtype = loaded.input_shape, loaded.input_dtype
    _check_servable(spec, src, shape, dtype)
    if spec.feature_names is not None and (len(shape) != 2 or shape[1] is None):
        raise BuildError(
            f"{where}: feature_names in {spec.models_file} need an input shape [batch, n]; "
            f"{src} takes {_shape_text(shape)}"
        )
    if spec.feature_names is not None and len(spec.feature_names) != shape[1]:
        raise BuildError(
            f"{where}: {len(spec.feature_names)} feature_names in {spec.models_file} do not "
            f"fit the input shape {_shape_text(shape)} of {src}"
        )

    reference_record: dict[str, Any] | None = None
    if spec.reference is not None:
        x = _load_npy(spec, spec.reference.inputs, "inputs")
        _check_reference_inputs(spec, spec.reference.inputs, x, shape)
        x = np.ascontiguousarray(x.astype(dtype, copy=False))
        what = f"the reference inputs {spec.reference.inputs}"
    else:
        rng = stream_rng(model_seed(spec.name, snapshot_date), STREAM_PROBE)
        x = _random_inputs(rng, shape, dtype)
        what = f"{x.shape[0]} random probe inputs of shape {_shape_text(shape)}"
    chunk = x.shape[0] if shape[0] is None else shape[0]
    try:
        outputs = [loaded.run(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
        y = np.concatenate(outputs)
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"{where}: {src} failed to run on {what}: {exc}") from None
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise BuildError(
            f"{where}: {src} returned shape {list(y.shape)} for {x.shape[0]} input rows; "
            "expected one output row per input row"
        )
    outputs_finite = y.dtype.kind not in "fc" or bool(np.all(np.isfinite(y)))
    if not outputs_finite:
        raise BuildError(f"{where}: {src} produces NaN/Inf outputs on {what}")
    if spec.class_names is not None and (y.ndim != 2 or y.shape[1] != len(spec.class_names)):
        raise BuildError(
            f"{where}: {len(spec.class_names)} class_names in {spec.models_file} do not fit the "
            f"output shape {list(y.shape[1:])} per row of {src}"
        )

    if spec.reference is not None:
        ref = _load_npy(spec, spec.reference.outputs, "outputs")
        if ref.shape != y.shape:
            raise BuildError(
                f"{where}: reference outputs {spec.reference.outputs} have shape "
                f"{list(ref.shape)}, but {src} returned {list(y.shape)}"
            )
        diff = float(np.max(np.abs(y.astype(np.float64) - ref.astype(np.float64))))
        if not diff <= spec.reference.atol:
            raise BuildError(
                f"{where}: {src} does not reproduce the reference outputs "
                f"{spec.reference.outputs}: max abs difference {diff:.3g} exceeds atol "
                f"{spec.reference.atol:g}"
            )
        from pipeline.build.builder import REFERENCE_DIR, npz_bytes

        (Path(out_dir) / REFERENCE_DIR).mkdir(exist_ok=True)
        reference_rel = f"{REFERENCE_DIR}/{spec.name}.npz"
        (Path(out_dir) / reference_rel).write_bytes(npz_bytes(x=x, y=ref))
        reference_record = {
            "file": reference_rel,
            "inputs": spec.reference.inputs.name,
            "outputs": spec.reference.outputs.name,
            "count": int(x.shape[0]),
            "atol": spec.reference.atol,
            "max_abs_diff": diff,
            "passed": diff <= spec.reference.atol,
        }

    version = spec.version or f"imported-{sha[:12]}"
    entry: dict[str, Any] = {
        "name": spec.name,
        "model_type": spec.model_type or "imported",
        "source": "imported",
        "version": version,
        "snapshot_date": snapshot_date.isoformat(),
        "input_name": loaded.input_name,
        "output_name": loaded.output_name,
        "input_shape": list(shape),
        "output_shape": [loaded.output_batch_dim, *map(int, y.shape[1:])],
        "input_dtype": dtype,
        "output_dtype": y.dtype.name,
        "files": {
            spec.format: {"path": dest.name, "sha256": sha, "bytes": dest.stat().st_size},
        },
        "training_data": None,
        "holdout_metrics": None,
        "holdout_file": None,
        "sla": _evaluation(spec, Path(out_dir), shape, dtype, int(np.prod(y.shape[1:]))),
        "targets": dict(spec.targets),
        "parity": {
            "reference": reference_record,
            "probe_count": int(x.shape[0]),
            "batch_sizes": [int(chunk)],
            "passed": outputs_finite and (reference_record is None or reference_record["passed"]),
        },
        "build": {**_versions(), "opset": loaded.opset},
    }
    if spec.feature_names is not None:
        entry["feature_names"] = list(spec.feature_names)
    if spec.class_names is not None:
        entry["class_names"] = list(spec.class_names)
    if spec.description is not None:
        entry["description"] = spec.description
    if progress is not None:
        ref_text = (
            f"reference max abs diff {reference_record['max_abs_diff']:.2g}"
            if reference_record
            else "no reference"
        )
        progress(
            f"{spec.name}: imported {spec.format} {src} (sha256 {sha[:12]}), input "
            f"{_shape_text(shape)} {dtype}, output {_shape_text(entry['output_shape'])}, "
            f"{x.shape[0]} probes finite, {ref_text}"
        )
    return entry
