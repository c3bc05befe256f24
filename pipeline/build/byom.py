"""Bring your own model: import a user's ONNX or TorchScript file into a models folder.

The file is copied byte for byte as ``<name>.onnx`` or ``<name>.pt`` (never converted), its
sha256 verified when models.yaml gives one, then loaded the way the inference library will
load it (``onnx.load`` + ``onnx.checker`` + an ONNX Runtime session, or ``torch.jit.load``);
its inputs and outputs are settled with the models file by `pipeline.build.byom_load`.

Probe. With ``reference`` the reference inputs are run (a ``.npy``, or a ``.npz`` with one
array per input name) and the outputs compared with the reference outputs (max abs difference
<= atol; every output, or the one ``reference.output`` names). Without it, 8 random inputs
(seeded by the model name and snapshot date) are run at each declared size of the dynamic
dimensions (``dims``; the evaluation set's sizes, or 4 and 8, when undeclared): values in
an input's declared ``range``, else standard normal floats and integers in [0, 10). A dynamic
batch dim runs all rows of a probe in one call; a fixed batch dim ``B`` runs the rows ``B`` at
a time (one at a time for the common ``B = 1``). NaN or Inf in any output fails the import.

Output spec. Each output's shape is the graph's batch dim (for TorchScript the input's)
followed by the observed per-row shape (a dim that differs between probe sizes is dynamic).

What relcert serves, and so imports: inputs of float32, float64 or int64 (fed as declared),
and a batch dimension that is dynamic (requests are batched) or fixed at 1 (each request
runs alone). A fixed batch larger than 1 is refused with a clear error: a request is one
sample, and padding it with made-up rows could change what the model computes (re-export
the model with a dynamic or batch-1 dimension).

model_info.json keeps the single-tensor keys (``input_shape`` ... of the input when there is
one, ``output_*`` of the first output) and, for a model with several inputs or outputs,
dynamic non-batch dims or declared ranges, the tensor form (``inputs``, ``outputs``, ``dims``;
see `pipeline.inference.signature`). The evaluation set (``sla.evaluation``) and reference
arrays are copied into the models folder (``evaluation/<name>.npz``,
``reference/<name>.npz``; see `pipeline.samples`) so later stages score the model and draw
realistic request inputs from them.
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
from pipeline.build.byom_load import Loaded, load_imported, torch_output_names
from pipeline.build.byom_samples import by_name, fit_inputs, read_arrays, row_sizes
from pipeline.build.config import INPUT_DTYPES, ModelSpec
from pipeline.build.errors import BuildError
from pipeline.build.seeds import STREAM_PROBE, model_seed, stream_rng
from pipeline.inference.signature import (
    DEFAULT_DIM_SIZES,
    EVALUATION,
    Signature,
    TensorSpec,
    shape_text,
)
from pipeline.samples import Arrays, samples_bytes

__all__ = ["PROBE_ROWS", "import_model"]

PROBE_ROWS = 8
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


def _check_servable(spec: ModelSpec, src: Path, inputs: tuple[TensorSpec, ...]) -> None:
    where = f"model {spec.name!r}"
    for t in inputs:
        if t.dtype not in INPUT_DTYPES:
            raise BuildError(
                f"{where}: {src} takes {t.dtype} inputs ({t.name!r}); relcert serves "
                f"{', '.join(INPUT_DTYPES)} inputs (fed to the model as declared): re-export the "
                "model with one of these"
            )
        if t.shape[0] not in (None, 1):
            raise BuildError(
                f"{where}: {src} has a fixed batch dimension of {t.shape[0]}; relcert serves a "
                "dynamic batch dimension (requests are batched) or a fixed batch of 1 (each "
                "request alone), never a padded batch: re-export with a dynamic or batch-1 "
                f"dimension (input shape {shape_text(t.shape)})"
            )
    if len({t.shape[0] for t in inputs}) > 1:
        raise BuildError(f"{where}: the inputs of {src} disagree on the batch dimension")


def _check_dims(spec: ModelSpec, src: Path, inputs: tuple[TensorSpec, ...]) -> None:
    """Every dimension `dims` declares is a dynamic dimension of an input."""
    known = {name for t in inputs for _, name in t.row_dims()}
    for dim, _ in spec.dims:
        if dim not in known:
            raise BuildError(
                f"model {spec.name!r}: dims.{dim} in {spec.models_file} is not a dynamic "
                f"dimension of {src} (its dynamic dimensions: {', '.join(sorted(known)) or 'none'})"
            )


def _probe_value(t: TensorSpec, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random probe values: in the declared range, else standard normal floats, integers
    in [0, 10)."""
    if t.range is not None:
        return t.random(rng, shape)
    if t.np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(t.dtype)
    return rng.integers(0, 10, size=shape).astype(t.dtype)


def _probe_sets(
    spec: ModelSpec,
    inputs: tuple[TensorSpec, ...],
    samples: dict[str, int],
    rng: np.random.Generator,
) -> list[dict[str, np.ndarray]]:
    """Random probes: PROBE_ROWS rows (times a fixed batch) at each declared size of the
    dynamic dimensions (their evaluation sizes, or DEFAULT_DIM_SIZES, when undeclared)."""
    declared = dict(spec.dims)
    options: dict[str, tuple[int, ...]] = {}
    for t in inputs:
        for _, name in t.row_dims():
            sizes = declared.get(name)
            if not isinstance(sizes, tuple):
                sizes = (samples[name],) if name in samples else DEFAULT_DIM_SIZES
            options[name] = sizes
    rows = PROBE_ROWS * (inputs[0].batch or 1)
    sets = []
    for j in range(max((len(v) for v in options.values()), default=1)):
        chosen = {name: sizes[j % len(sizes)] for name, sizes in options.items()}
        probe = {}
        for t in inputs:
            row = [chosen[n] if isinstance(n, str) else n for n in _names(t)]
            probe[t.name] = _probe_value(t, rng, (rows, *row))
        sets.append(probe)
    return sets


def _names(t: TensorSpec) -> list[Any]:
    """Each row dim of `t`: its size when fixed, else its name (resolved by the caller)."""
    dims = dict(t.row_dims())
    return [dims.get(i, d) for i, d in enumerate(t.row)]


def _run_set(
    spec: ModelSpec, src: Path, loaded: Loaded, xs: dict[str, np.ndarray], what: str
) -> list[np.ndarray]:
    """Every output of the model on the rows of `xs` (a fixed batch B runs B at a time)."""
    where = f"model {spec.name!r}"
    inputs = loaded.inputs
    count = len(xs[inputs[0].name])
    chunk = inputs[0].batch or count
    try:
        parts = [
            loaded.run_many([xs[t.name][i : i + chunk] for t in inputs])
            for i in range(0, count, chunk)
        ]
        outputs = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError(f"{where}: {src} failed to run on {what}: {exc}") from None
    for y in outputs:
        if y.ndim == 0 or y.shape[0] != count:
            raise BuildError(
                f"{where}: {src} returned shape {list(y.shape)} for {count} input rows; "
                "expected one output row per input row"
            )
        if y.dtype.kind in "fc" and not np.all(np.isfinite(y)):
            raise BuildError(f"{where}: {src} produces NaN/Inf outputs on {what}")
    return outputs


def _output_specs(
    loaded: Loaded, names: tuple[str, ...], runs: list[list[np.ndarray]]
) -> tuple[TensorSpec, ...]:
    """Each output's spec: the graph's batch dim, then the observed row shape (a dim that
    differs between probe sets is dynamic, named <output>:<axis>)."""
    out = []
    batch = loaded.inputs[0].batch
    for j, name in enumerate(names):
        shapes = {tuple(run[j].shape[1:]) for run in runs}
        first = next(iter(shapes))
        row: list[Any] = [
            first[i] if len({s[i] for s in shapes}) == 1 else f"{name}:{i + 1}"
            for i in range(len(first))
        ]
        graph_batch = loaded.output_batch[j] if loaded.output_batch else batch
        out.append(TensorSpec(name, (graph_batch, *row), runs[0][j].dtype.name))
    return tuple(out)


def _compare_reference(
    spec: ModelSpec,
    src: Path,
    outputs: tuple[TensorSpec, ...],
    got: list[np.ndarray],
    tensor_form: bool,
) -> tuple[dict[str, np.ndarray], float]:
    """The reference outputs (by output name) and the largest difference from `got`."""
    where = f"model {spec.name!r}"
    reference = spec.reference
    assert reference is not None
    served = tuple(o.name for o in outputs)
    if reference.output is not None and reference.output not in served:
        raise BuildError(
            f"{where}: reference.output {reference.output!r} in {spec.models_file} is not an "
            f"output of {src} (outputs: {', '.join(served)})"
        )
    compared = (reference.output,) if reference.output is not None else served
    value = read_arrays(spec, reference.outputs, "reference outputs")
    refs = by_name(spec, reference.outputs, "reference outputs", value, compared)
    diff = 0.0
    for name in compared:
        y, ref = got[served.index(name)], refs[name]
        if ref.shape != y.shape:
            label = f" ({name!r})" if tensor_form else ""
            raise BuildError(
                f"{where}: reference outputs {reference.outputs}{label} have shape "
                f"{list(ref.shape)}, but {src} returned {list(y.shape)}"
            )
        diff = max(diff, float(np.max(np.abs(y.astype(np.float64) - ref.astype(np.float64)))))
    if not diff <= reference.atol:
        raise BuildError(
            f"{where}: {src} does not reproduce the reference outputs {reference.outputs}: max "
            f"abs difference {diff:.3g} exceeds atol {reference.atol:g}"
        )
    return refs, diff


def _scored_width(spec: ModelSpec, src: Path, outputs: tuple[TensorSpec, ...]) -> int:
    """Values per row of what the SLA scores: its named output, else every output."""
    sla = spec.sla
    assert sla is not None
    names = tuple(o.name for o in outputs)
    if sla.output is not None and sla.output not in names:
        raise BuildError(
            f"model {spec.name!r}: sla.output {sla.output!r} in {spec.models_file} is not an "
            f"output of {src} (outputs: {', '.join(names)})"
        )
    if sla.output is None and len(outputs) > 1 and sla.truth_kind == "labels":
        raise BuildError(
            f"model {spec.name!r}: sla.metric {sla.metric} scores one output's classes, and "
            f"{src} has {len(outputs)} ({', '.join(names)}): name it with sla.output"
        )
    chosen = [o for o in outputs if sla.output in (None, o.name)]
    if any(d is None or isinstance(d, str) for o in chosen for d in o.shape[1:]):
        return -1  # a dynamic output: its width is known per row only
    return sum(int(np.prod([int(d) for d in o.shape[1:]])) for o in chosen)


def _evaluation_inputs(
    spec: ModelSpec, inputs: tuple[TensorSpec, ...]
) -> dict[str, np.ndarray] | None:
    """The SLA's evaluation inputs, checked against the inputs (None without an SLA)."""
    sla = spec.sla
    if sla is None:
        return None
    assert sla.inputs is not None  # config: imported models
    value = read_arrays(spec, sla.inputs, "sla evaluation inputs")
    return fit_inputs(spec, sla.inputs, "evaluation inputs", value, inputs)


def _evaluation(
    spec: ModelSpec,
    out_dir: Path,
    src: Path,
    xs: dict[str, np.ndarray] | None,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    tensor_form: bool,
) -> dict[str, Any] | None:
    """Copy the SLA's evaluation set into the models folder; its model_info record."""
    from pipeline.build.builder import EVALUATION_DIR

    sla = spec.sla
    if sla is None or xs is None:
        return None
    assert sla.inputs is not None and sla.truth is not None  # config: imported models
    where = f"model {spec.name!r}"
    y = read_arrays(spec, sla.truth, f"sla evaluation {sla.truth_kind}")
    if not isinstance(y, np.ndarray):
        raise BuildError(f"{where}: evaluation {sla.truth_kind} {sla.truth} must be a .npy array")
    rows = len(xs[inputs[0].name])
    if y.ndim == 0 or y.shape[0] != rows:
        raise BuildError(
            f"{where}: evaluation {sla.truth_kind} {sla.truth} have {y.shape[0] if y.ndim else 0} "
            f"rows for {rows} input rows (one each needed)"
        )
    width = _scored_width(spec, src, outputs)
    if sla.truth_kind == "labels":
        if y.dtype.kind not in "iu" and not np.all(np.mod(y, 1) == 0):
            raise BuildError(f"{where}: evaluation labels {sla.truth} must be class indices")
        if y.min() < 0 or (width > 0 and y.max() >= width):
            raise BuildError(
                f"{where}: evaluation labels {sla.truth} range {int(y.min())}..{int(y.max())}, "
                f"but the model outputs {width} classes per row"
            )
    rel = f"{EVALUATION_DIR}/{spec.name}.npz"
    (out_dir / EVALUATION_DIR).mkdir(exist_ok=True)
    x: Arrays = xs if tensor_form else xs[inputs[0].name]
    (out_dir / rel).write_bytes(samples_bytes(x, y))
    return {
        **sla.to_record(),
        "evaluation_file": rel,
        "truth_kind": sla.truth_kind,
        "rows": rows,
        "source": {"inputs": sla.inputs.name, sla.truth_kind: sla.truth.name},
    }


def _check_names(spec: ModelSpec, src: Path, inputs, outputs) -> None:
    """feature_names fit a [batch, n] input; class_names the first output's classes."""
    where = f"model {spec.name!r}"
    shape = inputs[0].shape
    if spec.feature_names is not None and (
        len(inputs) != 1 or len(shape) != 2 or not isinstance(shape[1], int)
    ):
        raise BuildError(
            f"{where}: feature_names in {spec.models_file} need an input shape [batch, n]; "
            f"{src} takes {shape_text(shape)}"
        )
    if spec.feature_names is not None and len(spec.feature_names) != shape[1]:
        raise BuildError(
            f"{where}: {len(spec.feature_names)} feature_names in {spec.models_file} do not "
            f"fit the input shape {shape_text(shape)} of {src}"
        )
    y = outputs[0]
    if spec.class_names is not None and (y.ndim != 2 or y.shape[1] != len(spec.class_names)):
        raise BuildError(
            f"{where}: {len(spec.class_names)} class_names in {spec.models_file} do not fit the "
            f"output shape {list(y.shape[1:])} per row of {src}"
        )


def _probes(
    spec: ModelSpec,
    loaded: Loaded,
    samples: dict[str, int],
    snapshot_date: _dt.date,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The probe inputs (the reference inputs, and random probes at every declared size of
    a dynamic dimension) and what they are."""
    inputs = loaded.inputs
    rng = stream_rng(model_seed(spec.name, snapshot_date), STREAM_PROBE)
    sets = []
    if spec.reference is None or any(t.dynamic for t in inputs):
        sets = _probe_sets(spec, inputs, samples, rng)
    count = sum(len(p[inputs[0].name]) for p in sets)
    shapes = " and ".join(", ".join(shape_text(p[t.name].shape[1:]) for t in inputs) for p in sets)
    what = f"{count} random probe inputs of shape {shapes}"
    if spec.reference is not None:
        value = read_arrays(spec, spec.reference.inputs, "reference inputs")
        xs = fit_inputs(spec, spec.reference.inputs, "reference inputs", value, inputs)
        reference = f"the reference inputs {spec.reference.inputs}"
        return [xs, *sets], reference + (f" and {what}" if sets else "")
    return sets, what


def _classic_keys(inputs, outputs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    """The single-tensor keys of model_info.json (the first output; the input when one)."""

    def ints(shape):
        return [d if isinstance(d, int) else None for d in shape]

    keys: dict[str, Any] = {}
    if len(inputs) == 1:
        keys.update(input_name=inputs[0].name)
    keys.update(output_name=outputs[0].name)
    if len(inputs) == 1:
        keys.update(input_shape=ints(inputs[0].shape))
    keys.update(output_shape=ints(outputs[0].shape))
    if len(inputs) == 1:
        keys.update(input_dtype=inputs[0].dtype)
    keys.update(output_dtype=outputs[0].dtype)
    return keys


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

    loaded = load_imported(spec, src, dest)
    inputs = loaded.inputs
    _check_servable(spec, src, inputs)
    _check_dims(spec, src, inputs)
    evaluation_xs = _evaluation_inputs(spec, inputs)
    samples = row_sizes(inputs, evaluation_xs) if evaluation_xs is not None else {}
    probe_sets, what = _probes(spec, loaded, samples, snapshot_date)
    runs = [_run_set(spec, src, loaded, xs, what) for xs in probe_sets]
    names = loaded.outputs or torch_output_names(len(runs[0]))
    outputs = _output_specs(loaded, names, runs)
    _check_names(spec, src, inputs, runs[0])
    signature = Signature(inputs, outputs, spec.dims)
    tensor_form = loaded.tensor_form or not signature.classic
    if spec.dims and any(v == EVALUATION for _, v in spec.dims) and not samples:
        raise BuildError(
            f"{where}: dims in {spec.models_file} take sizes from the evaluation set, but the "
            "model declares none (sla.evaluation)"
        )

    reference_record = None
    if spec.reference is not None:
        reference_record = _reference_record(
            spec, out_dir, src, outputs, probe_sets[0], runs[0], tensor_form
        )
    probe_count = sum(len(p[inputs[0].name]) for p in probe_sets)
    version = spec.version or f"imported-{sha[:12]}"
    entry: dict[str, Any] = {
        "name": spec.name,
        "model_type": spec.model_type or "imported",
        "source": "imported",
        "version": version,
        "snapshot_date": snapshot_date.isoformat(),
        **_classic_keys(inputs, outputs),
        "files": {
            spec.format: {"path": dest.name, "sha256": sha, "bytes": dest.stat().st_size},
        },
        "training_data": None,
        "holdout_metrics": None,
        "holdout_file": None,
        "sla": _evaluation(spec, Path(out_dir), src, evaluation_xs, inputs, outputs, tensor_form),
        "targets": dict(spec.targets),
        "parity": {
            "reference": reference_record,
            "probe_count": probe_count,
            "batch_sizes": [int(inputs[0].batch or len(probe_sets[0][inputs[0].name]))],
            "passed": reference_record is None or reference_record["passed"],
        },
        "build": {**_versions(), "opset": loaded.opset},
    }
    if tensor_form:
        entry.update(signature.to_entry())
    if spec.feature_names is not None:
        entry["feature_names"] = list(spec.feature_names)
    if spec.class_names is not None:
        entry["class_names"] = list(spec.class_names)
    if spec.description is not None:
        entry["description"] = spec.description
    if progress is not None:
        progress(_import_line(spec, src, sha, inputs, outputs, probe_count, reference_record))
    return entry


def _reference_record(
    spec: ModelSpec,
    out_dir: str | os.PathLike[str],
    src: Path,
    outputs: tuple[TensorSpec, ...],
    xs: dict[str, np.ndarray],
    got: list[np.ndarray],
    tensor_form: bool,
) -> dict[str, Any]:
    """Compare the outputs with the reference outputs; keep both in the models folder."""
    from pipeline.build.builder import REFERENCE_DIR

    reference = spec.reference
    assert reference is not None
    refs, diff = _compare_reference(spec, src, outputs, got, tensor_form)
    (Path(out_dir) / REFERENCE_DIR).mkdir(exist_ok=True)
    rel = f"{REFERENCE_DIR}/{spec.name}.npz"
    if tensor_form:
        data = samples_bytes(xs, refs)
    else:
        data = samples_bytes(next(iter(xs.values())), next(iter(refs.values())))
    (Path(out_dir) / rel).write_bytes(data)
    record = {
        "file": rel,
        "inputs": reference.inputs.name,
        "outputs": reference.outputs.name,
        "count": len(next(iter(xs.values()))),
        "atol": reference.atol,
        "max_abs_diff": diff,
        "passed": diff <= reference.atol,
    }
    if reference.output is not None:
        record["output"] = reference.output
    return record


def _import_line(spec, src, sha, inputs, outputs, probes, reference) -> str:
    ref_text = (
        f"reference max abs diff {reference['max_abs_diff']:.2g}" if reference else "no reference"
    )
    ins = ", ".join(
        (f"{t.name} " if len(inputs) > 1 else "") + f"{shape_text(t.shape)} {t.dtype}"
        for t in inputs
    )
    outs = ", ".join(
        (f"{o.name} " if len(outputs) > 1 else "") + shape_text(o.shape) for o in outputs
    )
    return (
        f"{spec.name}: imported {spec.format} {src} (sha256 {sha[:12]}), input {ins}, "
        f"output {outs}, {probes} probes finite, {ref_text}"
    )
