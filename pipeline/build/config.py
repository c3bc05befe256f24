"""Parse and validate ``include/models.yaml``: the models a run builds or imports.

The file is a mapping with one key, ``models``, a list of entries. Each entry is either

* **built**: ``name``, ``builder: "module:callable"`` and optionally ``version`` (the base
  version, default ``"1.0"``; the build appends ``.YYYYMMDD`` of the snapshot date), or
* **imported** ("bring your own model"): ``name``, ``path`` (relative paths resolve against the
  folder of the YAML file) and optionally ``format`` (``onnx`` or ``torchscript``; inferred from
  a ``.onnx`` / ``.pt`` suffix), ``input_shape`` (list of positive ints or null for a dynamic
  dim; required for TorchScript, checked against the graph for ONNX), ``input_dtype``
  (default: from the graph, or float32), ``input_name`` / ``output_name``, ``sha256``,
  ``reference: {inputs: x.npy, outputs: y.npy, atol: 1.0e-5}``, ``version`` (default
  ``imported-<sha256[:12]>``), ``model_type`` (default ``imported``), ``feature_names``,
  ``class_names``.

Both kinds accept ``description``, ``sla`` (the model's quality evidence: ``metric``
(accuracy, top_k_accuracy, pearson_r, mae, rmse), ``threshold``, ``k`` for top-k accuracy,
and ``evaluation``: ``holdout`` for a built model, ``{inputs: x.npy, labels: y.npy}`` or
``{inputs: x.npy, targets: y.npy}`` for an imported one) and ``targets`` (the model's own
target values, e.g. ``{p99_latency_ms: 50}``: tightening the run's unless relaxing is
allowed). Any other key is an error, so a typo never goes unnoticed.
This module imports neither torch nor onnx.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.build.config_tensors import SINGLE_TENSOR_KEYS, TENSOR_KEYS, tensor_form
from pipeline.build.errors import BuildError
from pipeline.build.types import MODEL_TYPES

if TYPE_CHECKING:
    from pipeline.inference.signature import TensorSpec

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_BASE_VERSION",
    "FORMATS",
    "INPUT_DTYPES",
    "ModelSpec",
    "ReferenceSpec",
    "SlaSpec",
    "default_models_file",
    "load_models_config",
]

DEFAULT_BASE_VERSION = "1.0"
DEFAULT_ATOL = 1e-5
FORMATS = ("onnx", "torchscript")
SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript"}
#: input element types relcert serves, fed to the model as declared
INPUT_DTYPES = ("float32", "float64", "int64")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_BUILDER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")

_COMMON_KEYS = {"name", "version", "description", "sla", "targets"}
_BUILT_KEYS = _COMMON_KEYS | {"builder"}
_IMPORTED_KEYS = (
    _COMMON_KEYS
    | SINGLE_TENSOR_KEYS
    | TENSOR_KEYS
    | {"path", "format", "sha256", "reference", "model_type", "feature_names", "class_names"}
)
_REFERENCE_KEYS = {"inputs", "outputs", "atol", "output"}
_SLA_KEYS = {"metric", "threshold", "k", "evaluation", "output"}
HOLDOUT = "holdout"


@dataclass(frozen=True)
class ReferenceSpec:
    """Reference inputs/outputs an imported model must reproduce within atol: ``.npy``
    files, or ``.npz`` with one array per input / output name; `output` restricts the
    comparison to one named output."""

    inputs: Path
    outputs: Path
    atol: float = DEFAULT_ATOL
    output: str | None = None


@dataclass(frozen=True)
class SlaSpec:
    """A model's quality SLA: `metric` >= (or <=) `threshold` on its evaluation set.

    `inputs` is a .npy file, or a .npz with one array per input name, and `truth` a .npy
    file (imported models); both None means the built model's hold-out split. `truth_kind`
    is "labels" (class indices) or "targets" (values). `output` names the output scored
    (default: every output, concatenated per row)."""

    metric: str
    threshold: float
    k: int | None = None
    inputs: Path | None = None
    truth: Path | None = None
    truth_kind: str = "labels"
    output: str | None = None

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"metric": self.metric, "threshold": self.threshold, "k": self.k}
        if self.output is not None:
            record["output"] = self.output
        return record


@dataclass(frozen=True)
class ModelSpec:
    """One validated entry of models.yaml. Paths are absolute."""

    name: str
    models_file: Path
    builder: str | None = None
    path: Path | None = None
    format: str | None = None
    input_shape: tuple[int | None, ...] | None = None
    input_dtype: str | None = None
    input_name: str | None = None
    output_name: str | None = None
    sha256: str | None = None
    reference: ReferenceSpec | None = None
    version: str | None = None
    model_type: str | None = None
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    description: str | None = None
    sla: SlaSpec | None = None
    targets: tuple[tuple[str, float], ...] = ()
    #: the tensor form: named inputs (TensorSpec), output names, dynamic dims' sizes
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[str, ...] | None = None
    dims: tuple[tuple[str, tuple[int, ...] | str], ...] = ()

    @property
    def source(self) -> str:
        """``"built"`` or ``"imported"``."""
        return "built" if self.builder is not None else "imported"


def default_models_file() -> Path:
    """``$RELCERT_MODELS_FILE`` if set, else ``include/models.yaml`` at the repository root."""
    env = os.environ.get("RELCERT_MODELS_FILE")
    if env:
        return Path(env).expanduser()
    import pipeline

    return Path(pipeline.__file__).resolve().parent.parent / "include" / "models.yaml"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _fail(where: str, message: str) -> BuildError:
    return BuildError(f"{where}: {message}")


def _string(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key} must be a non-empty string, got {value!r}")
    return value


def _string_list(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, f"{key} must be a list of non-empty strings, got {value!r}")
    if len(set(value)) != len(value):
        raise _fail(where, f"{key} must not repeat a name, got {value!r}")
    return tuple(value)


def _shape(where: str, value: Any) -> tuple[int | None, ...] | None:
    if value is None:
        return None
    ok = isinstance(value, list | tuple) and len(value) > 0
    ok = ok and all(
        v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0) for v in value
    )
    if not ok:
        raise _fail(where, f"input_shape must be a list of positive ints or null, got {value!r}")
    return tuple(value)


def _float(where: str, key: str, value: Any) -> float:
    # PyYAML reads "1e-5" (no dot) as a string: accept numeric strings too.
    if isinstance(value, bool):
        raise _fail(where, f"{key} must be a non-negative number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"{key} must be a non-negative number, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise _fail(where, f"{key} must be a non-negative number, got {value!r}")
    return number


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    text = _string(where, key, value)
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _reference(where: str, base: Path, value: Any) -> ReferenceSpec:
    if not isinstance(value, Mapping):
        raise _fail(where, f"reference must be a mapping with inputs, outputs, atol, got {value!r}")
    unknown = sorted(set(value) - _REFERENCE_KEYS)
    if unknown:
        raise _fail(
            where,
            f"reference has unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_REFERENCE_KEYS))})",
        )
    for key in ("inputs", "outputs"):
        if key not in value:
            raise _fail(where, f"reference needs '{key}' (a .npy or .npz file)")
    atol = _float(where, "reference.atol", value.get("atol", DEFAULT_ATOL))
    output = value.get("output")
    return ReferenceSpec(
        inputs=_resolve(base, value["inputs"], where, "reference.inputs"),
        outputs=_resolve(base, value["outputs"], where, "reference.outputs"),
        atol=atol,
        output=None if output is None else _string(where, "reference.output", output),
    )


def _sla(where: str, base: Path, value: Any, built: bool) -> SlaSpec:
    from pipeline.quality import SLA_METRICS

    if not isinstance(value, Mapping):
        raise _fail(
            where, f"sla must be a mapping with metric, threshold, evaluation, got {value!r}"
        )
    unknown = sorted(set(map(str, value)) - _SLA_KEYS)
    if unknown:
        raise _fail(
            where,
            f"sla has unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(_SLA_KEYS))})",
        )
    metric = value.get("metric")
    if metric not in SLA_METRICS:
        raise _fail(where, f"sla.metric must be one of {', '.join(SLA_METRICS)}, got {metric!r}")
    if "threshold" not in value:
        raise _fail(where, "sla needs a threshold (the value the metric must reach)")
    threshold = _float(where, "sla.threshold", value["threshold"])
    k = value.get("k")
    if metric == "top_k_accuracy":
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise _fail(where, f"sla.k must be a positive int for top_k_accuracy, got {k!r}")
    elif k is not None:
        raise _fail(where, f"sla.k only applies to top_k_accuracy, not {metric}")
    needs = SLA_METRICS[metric].needs
    evaluation = value.get("evaluation")
    output = value.get("output")
    if built:
        if evaluation not in (None, HOLDOUT):
            raise _fail(
                where,
                f"sla.evaluation of a built model must be '{HOLDOUT}' (its hold-out split), "
                f"got {evaluation!r}",
            )
        if output is not None:
            raise _fail(where, "sla.output applies to imported models (a built one has one)")
        return SlaSpec(metric, threshold, k, truth_kind=needs)
    if not isinstance(evaluation, Mapping) or set(evaluation) != {"inputs", needs}:
        raise _fail(
            where,
            f"sla.evaluation must be {{inputs: x.npy, {needs}: y.npy}} for {metric} (inputs: "
            f"a .npz by input name for a model with several inputs), got {evaluation!r}",
        )
    return SlaSpec(
        metric,
        threshold,
        k,
        inputs=_resolve(base, evaluation["inputs"], where, "sla.evaluation.inputs"),
        truth=_resolve(base, evaluation[needs], where, f"sla.evaluation.{needs}"),
        truth_kind=needs,
        output=None if output is None else _string(where, "sla.output", output),
    )


def _own_targets(where: str, value: Any) -> tuple[tuple[str, float], ...]:
    """A model's own target values: known per-model metrics, finite numbers >= 0 (the
    tightening rule is checked against the run's targets when a run starts)."""
    from pipeline.metrics import METRICS

    if not isinstance(value, Mapping):
        raise _fail(where, f"targets must map metric names to values, got {value!r}")
    per_model = [n for n, m in METRICS.items() if m.scope != "run"]
    out = []
    for name, number in value.items():
        if name not in per_model:
            raise _fail(
                where,
                f"targets: {name!r} is not a per-model metric (per-model metrics: "
                f"{', '.join(per_model)})",
            )
        out.append((str(name), _float(where, f"targets.{name}", number)))
    return tuple(out)


def _format(where: str, fmt: Any, path: Path) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise _fail(
                where, f"unknown format {fmt!r} for {path}: expected one of {', '.join(FORMATS)}"
            )
        return str(fmt)
    inferred = SUFFIX_FORMATS.get(path.suffix.lower())
    if inferred is None:
        raise _fail(
            where,
            f"unknown format for {path}: expected a .onnx (ONNX) or .pt (TorchScript) file, "
            f"or an explicit format: {' | '.join(FORMATS)}",
        )
    return inferred


def _entry(index: int, raw: Any, models_file: Path) -> ModelSpec:
    where = f"{models_file}: models[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(where, f"must be a mapping, got {_type_name(raw)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(
            where,
            "name must start with a letter and hold only letters, digits, '_' and '-' "
            f"(at most 64 characters), got {name!r}",
        )
    where = f"{models_file}: model {name!r}"
    has_builder, has_path = "builder" in raw, "path" in raw
    if has_builder == has_path:
        which = "both" if has_builder else "neither"
        raise _fail(
            where,
            "must have exactly one of 'builder' (a built model) or 'path' (an imported model), "
            f"got {which}",
        )
    allowed = _BUILT_KEYS if has_builder else _IMPORTED_KEYS
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        kind = "built" if has_builder else "imported"
        raise _fail(
            where,
            f"unknown key(s) {', '.join(map(repr, unknown))} for a {kind} model "
            f"(allowed: {', '.join(sorted(allowed))})",
        )
    version = raw.get("version")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise _fail(where, f"version must be a string (quote it in YAML), got {version!r}")
    description = raw.get("description")
    if description is not None:
        description = _string(where, "description", description)
    base = models_file.parent
    sla = None if raw.get("sla") is None else _sla(where, base, raw["sla"], has_builder)
    targets = () if raw.get("targets") is None else _own_targets(where, raw["targets"])

    if has_builder:
        builder = raw["builder"]
        if not isinstance(builder, str) or not _BUILDER_RE.match(builder):
            raise _fail(where, f"builder must be 'package.module:callable', got {builder!r}")
        return ModelSpec(
            name=name,
            models_file=models_file,
            builder=builder,
            version=version,
            description=description,
            sla=sla,
            targets=targets,
        )

    path = _resolve(base, raw["path"], where, "path")
    fmt = _format(where, raw.get("format"), path)
    inputs, outputs, dims = tensor_form(where, raw)
    input_shape = _shape(where, raw.get("input_shape"))
    if fmt == "torchscript" and input_shape is None and inputs is None:
        raise _fail(
            where,
            f"input_shape is required for a TorchScript model ({path}): a list of positive ints "
            "or null (dynamic), e.g. [null, 10] or [1, 3, 224, 224] (or `inputs` naming each "
            "input's name, shape and dtype)",
        )
    input_dtype = raw.get("input_dtype")
    if input_dtype is not None and input_dtype not in INPUT_DTYPES:
        raise _fail(
            where,
            f"input_dtype must be one of {', '.join(INPUT_DTYPES)} (relcert feeds inputs to the "
            f"model as declared), got {input_dtype!r}",
        )
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
        raise _fail(where, f"sha256 must be 64 hex digits, got {sha!r}")
    model_type = raw.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise _fail(
            where, f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}"
        )
    return ModelSpec(
        name=name,
        models_file=models_file,
        path=path,
        format=fmt,
        input_shape=input_shape,
        input_dtype=input_dtype,
        input_name=None
        if raw.get("input_name") is None
        else _string(where, "input_name", raw["input_name"]),
        output_name=None
        if raw.get("output_name") is None
        else _string(where, "output_name", raw["output_name"]),
        sha256=None if sha is None else sha.lower(),
        reference=None
        if raw.get("reference") is None
        else _reference(where, base, raw["reference"]),
        version=version,
        model_type=model_type,
        feature_names=None
        if raw.get("feature_names") is None
        else _string_list(where, "feature_names", raw["feature_names"]),
        class_names=None
        if raw.get("class_names") is None
        else _string_list(where, "class_names", raw["class_names"]),
        description=description,
        sla=sla,
        targets=targets,
        inputs=inputs,
        outputs=outputs,
        dims=dims,
    )


def load_models_config(path: str | os.PathLike[str] | None = None) -> list[ModelSpec]:
    """Read and validate a models file (default: :func:`default_models_file`).

    Raises :class:`BuildError` naming the file (and the model) for every problem: a missing or
    unreadable file, invalid YAML, no ``models`` list, an entry with both or neither of
    ``builder`` and ``path``, unknown keys, duplicate names, bad values.
    """
    models_file = Path(path).expanduser() if path is not None else default_models_file()
    models_file = models_file.resolve()
    try:
        text = models_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildError(f"models file not found: {models_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{models_file}: cannot read the models file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BuildError(f"{models_file}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise BuildError(
            f"{models_file}: expected a mapping with a 'models' list at the top level, "
            f"got {_type_name(data)}"
        )
    unknown = sorted(set(map(str, data)) - {"models"})
    if unknown:
        raise BuildError(
            f"{models_file}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
            "(expected only 'models')"
        )
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise BuildError(
            f"{models_file}: 'models' must be a non-empty list of model entries, "
            f"got {_type_name(entries) if not isinstance(entries, list) else 'an empty list'}"
        )
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        spec = _entry(index, raw, models_file)
        if spec.name in seen:
            raise BuildError(
                f"{models_file}: duplicate model name {spec.name!r} "
                f"(models[{seen[spec.name]}] and models[{index}])"
            )
        seen[spec.name] = index
        specs.append(spec)
    return specs
