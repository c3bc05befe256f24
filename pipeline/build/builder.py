"""Orchestration: build or import every model of models.yaml into one models folder.

The build for snapshot date D is a function of D (and of the models file and the
environment): every seed comes from :func:`~pipeline.build.seeds.model_seed`, nothing
wall-clock dependent is written, so two builds of the same date give byte-identical folders.

Atomicity: everything is written into a temporary sibling folder (``.<out>.build-*``) that
replaces ``out_dir`` only when every model has been built, exported, checked and checksummed.
On failure the temporary folder is removed and ``out_dir`` keeps its previous content.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline._io import (
    atomic_write_bytes,
    fsync_dir,
    replace_durably,
    sha256_file,
    write_sha256sums,
)
from pipeline.build.config import DEFAULT_BASE_VERSION, ModelSpec, load_models_config
from pipeline.build.errors import BuildError
from pipeline.build.model_info import write_model_info
from pipeline.build.seeds import STREAM_PROBE, model_seed, stream_rng
from pipeline.build.types import BuildResult, BuiltModel
from pipeline.samples import npz_bytes

__all__ = ["PROBE_COUNT", "build_models", "parse_snapshot_date", "resolve_builder"]

log = logging.getLogger(__name__)

PROBE_COUNT = 1024
HOLDOUT_DIR = "holdout"
#: where imported models' evaluation sets and reference inputs/outputs are kept
EVALUATION_DIR = "evaluation"
REFERENCE_DIR = "reference"

Progress = Callable[[str], None]


def parse_snapshot_date(value: _dt.date | str | None) -> _dt.date:
    """A date from a date, a datetime (its UTC date), an ISO string, or None (today, UTC)."""
    if value is None:
        return _dt.datetime.now(_dt.UTC).date()
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC).date() if value.tzinfo else value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return _dt.date.fromisoformat(text)
        except ValueError:
            pass
        try:
            return parse_snapshot_date(_dt.datetime.fromisoformat(text))
        except ValueError:
            pass
    raise BuildError(
        f"snapshot_date must be a date or an ISO date string (YYYY-MM-DD), got {value!r}"
    )


def resolve_builder(spec: ModelSpec) -> Callable[[_dt.date, int], BuiltModel]:
    """Import the ``module:callable`` of a built model."""
    assert spec.builder is not None
    where = f"{spec.models_file}: model {spec.name!r}"
    module_name, _, attr_path = spec.builder.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise BuildError(
            f"{where}: cannot import builder module {module_name!r} ({spec.builder}): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise BuildError(
                f"{where}: builder {spec.builder!r}: module {module_name!r} has no attribute "
                f"{attr_path!r}"
            ) from None
    if not callable(target):
        raise BuildError(f"{where}: builder {spec.builder!r} is not callable")
    return target


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _file_record(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _check_built(spec: ModelSpec, built: Any) -> BuiltModel:
    where = f"model {spec.name!r} (builder {spec.builder})"
    if not isinstance(built, BuiltModel):
        raise BuildError(
            f"{where}: the builder returned {type(built).__name__}, expected BuiltModel"
        )
    if built.model_type not in ("regression", "classification"):
        raise BuildError(
            f"{where}: model_type must be 'regression' or 'classification', "
            f"got {built.model_type!r}"
        )
    for key in ("x_train", "x_holdout"):
        x = getattr(built, key)
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype != np.float32:
            raise BuildError(f"{where}: {key} must be a float32 array [n, n_features]")
    n_features = built.x_train.shape[1]
    if built.x_holdout.shape[1] != n_features or len(built.feature_names) != n_features:
        raise BuildError(
            f"{where}: x_train, x_holdout and feature_names disagree on the number of features"
        )
    if len(built.y_train) != len(built.x_train) or len(built.y_holdout) != len(built.x_holdout):
        raise BuildError(f"{where}: x and y arrays differ in length")
    if built.model_type == "classification" and not built.class_names:
        raise BuildError(f"{where}: a classification model needs class_names")
    return built


def _metric_text(metrics: Mapping[str, Any]) -> str:
    parts = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float)]
    return ", ".join(parts)


def _build_one(
    spec: ModelSpec,
    builder: Callable[[_dt.date, int], BuiltModel],
    date: _dt.date,
    folder: Path,
    say: Progress,
) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from pipeline.build.export import (
        BATCH_SIZES,
        OPSET,
        PARITY_TOLERANCE,
        check_parity,
        export_onnx,
        export_torchscript,
        onnx_io_spec,
    )
    from pipeline.build.train import deterministic_torch

    name = spec.name
    seed = model_seed(name, date)
    built = _check_built(spec, builder(date, seed))
    module = built.module.eval()
    n_features = built.x_train.shape[1]

    with deterministic_torch(), torch.inference_mode():
        holdout_out = module(torch.from_numpy(np.ascontiguousarray(built.x_holdout))).numpy()
    if not np.all(np.isfinite(holdout_out)):
        raise BuildError(
            f"model {name!r}: the trained module (builder {spec.builder}) outputs NaN/Inf "
            "on the holdout inputs"
        )
    metrics = dict(built.metrics(holdout_out, built.y_holdout))
    try:
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BuildError(
            f"model {name!r}: holdout metrics must be JSON numbers/strings, not NaN/Inf: "
            f"{metrics!r} ({exc})"
        ) from None
    say(
        f"{name}: trained {built.training.get('epochs', '?')} epochs in "
        f"{built.train_seconds:.1f} s, holdout {_metric_text(metrics)}"
    )

    probes = np.asarray(built.sample_inputs(stream_rng(seed, STREAM_PROBE), PROBE_COUNT))
    if probes.shape != (PROBE_COUNT, n_features):
        raise BuildError(
            f"model {name!r}: sample_inputs returned shape {list(probes.shape)}, "
            f"expected [{PROBE_COUNT}, {n_features}]"
        )
    probes = np.ascontiguousarray(probes, dtype=np.float32)
    example = torch.from_numpy(probes[:1].copy())
    pt_name, onnx_name = f"{name}.pt", f"{name}.onnx"
    with deterministic_torch():
        try:
            export_torchscript(module, example, folder / pt_name)
        except Exception as exc:
            raise BuildError(
                f"model {name!r}: TorchScript export to {folder / pt_name} failed: {exc}"
            ) from exc
        try:
            onnx_model = export_onnx(
                module, example, folder / onnx_name, built.input_name, built.output_name
            )
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(
                f"model {name!r}: ONNX export to {folder / onnx_name} failed: {exc}"
            ) from exc
        parity = check_parity(
            name,
            module,
            folder / pt_name,
            folder / onnx_name,
            probes,
            built.input_name,
            built.output_name,
            batch_sizes=BATCH_SIZES,
            tolerance=PARITY_TOLERANCE,
        )
        with torch.inference_mode():
            eager_out = module(example).numpy()
    diffs = parity["max_abs_diff"]
    say(
        f"{name}: exported TorchScript + ONNX (opset {OPSET}); parity over {PROBE_COUNT} probes x "
        f"batch sizes {'/'.join(map(str, BATCH_SIZES))}: max abs diff "
        f"{max(diffs.values()):.2g} (tolerance {PARITY_TOLERANCE:g})"
    )

    inputs, outputs = onnx_io_spec(onnx_model)
    per_row = [int(d) for d in eager_out.shape[1:]]
    input_shape = inputs[0]["shape"] or [None, n_features]
    output_shape = outputs[0]["shape"] or [None, *per_row]
    if input_shape != [None, n_features] or output_shape != [None, *per_row]:
        raise BuildError(
            f"model {name!r}: exported graph {folder / onnx_name} has input shape {input_shape} "
            f"and output shape {output_shape}; expected [None, {n_features}] and [None, *{per_row}]"
        )
    if built.class_names is not None and per_row != [len(built.class_names)]:
        raise BuildError(
            f"model {name!r}: {len(built.class_names)} class names but output shape {per_row}"
        )

    holdout_rel = f"{HOLDOUT_DIR}/{name}.npz"
    atomic_write_bytes(folder / holdout_rel, npz_bytes(x=built.x_holdout, y=built.y_holdout))
    sla = None
    if spec.sla is not None:
        if spec.sla.truth_kind == "labels" and built.model_type != "classification":
            raise BuildError(
                f"model {name!r}: sla.metric {spec.sla.metric} needs class labels, but the "
                f"builder {spec.builder} makes a {built.model_type} model"
            )
        sla = {
            **spec.sla.to_record(),
            "evaluation_file": holdout_rel,
            "truth_kind": spec.sla.truth_kind,
            "rows": int(built.x_holdout.shape[0]),
        }

    entry: dict[str, Any] = {
        "name": name,
        "model_type": built.model_type,
        "source": "built",
        "version": f"{spec.version or DEFAULT_BASE_VERSION}.{date:%Y%m%d}",
        "snapshot_date": date.isoformat(),
        "input_name": built.input_name,
        "output_name": built.output_name,
        "input_shape": input_shape,
        "output_shape": output_shape,
        "input_dtype": "float32",
        "output_dtype": eager_out.dtype.name,
        "feature_names": list(built.feature_names),
        "files": {
            "torchscript": _file_record(folder, pt_name),
            "onnx": _file_record(folder, onnx_name),
        },
        "training_data": {
            "fingerprint": _fingerprint(
                built.x_train, built.y_train, built.x_holdout, built.y_holdout
            ),
            "seed": seed,
            "n_train": int(built.x_train.shape[0]),
            "n_holdout": int(built.x_holdout.shape[0]),
            "generator": built.generator,
        },
        "training": dict(built.training),
        "holdout_metrics": metrics,
        "holdout_file": holdout_rel,
        "sla": sla,
        "targets": dict(spec.targets),
        "parity": parity,
        "build": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": OPSET,
        },
    }
    if built.class_names is not None:
        entry["class_names"] = list(built.class_names)
    if spec.description is not None:
        entry["description"] = spec.description
    return entry


def _make_readable(folder: Path) -> None:
    """Temporary files are created private (0600); a models folder is meant to be shared."""
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an existing ``target`` only once ``new`` is ready.

    On Linux the two folders are swapped atomically (readers never see a missing or partial
    folder); elsewhere the old folder is renamed aside first, then ``new`` moved into place.
    The parent folder is fsynced once the new folder is in place (`replace_durably`).
    """
    if not target.exists():
        replace_durably(new, target)
        return
    if _exchange(new, target):
        fsync_dir(target.parent)
        shutil.rmtree(new, ignore_errors=True)  # now holds the previous content
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(target, old)
    try:
        replace_durably(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_replaceable(out: Path) -> None:
    """A build replaces ``out`` whole: refuse a non-empty folder that is not a previous build
    (one holds model_info.json and SHA256SUMS; its other files are the build's to replace)."""
    previous = (out / "model_info.json").is_file() and (out / "SHA256SUMS").is_file()
    if not out.is_dir() or previous:
        return
    held = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    if held:
        more = f" and {len(held) - 5} more" if len(held) > 5 else ""
        raise BuildError(
            f"out_dir {out} is not empty and is not a previous build (no model_info.json and "
            f"SHA256SUMS): it holds {', '.join(held[:5])}{more}. A build replaces the whole "
            "folder, so it was left as it is: choose a new or empty folder, or replace it "
            "anyway with force=True (relcert build --force)"
        )


def build_models(
    out_dir: str | os.PathLike[str],
    snapshot_date: _dt.date | str | None = None,
    models_file: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    only: Sequence[str] | None = None,
    *,
    force: bool = False,
) -> BuildResult:
    """Build or import every model listed in the models file into ``out_dir``.

    With ``only``, just those models (by name) are built: this is how the DAG fans the
    build out, one mapped task per model, before the parts are assembled.

    Args:
        out_dir: the models folder to (re)create. Replaced only when the whole build succeeds.
        snapshot_date: the snapshot date D (a date, an ISO string, or None for today in UTC).
            Every seed derives from ``sha256(f"{name}:{D}")``: the same D gives the same bytes.
        models_file: the models YAML (default ``$RELCERT_MODELS_FILE`` or
            ``include/models.yaml`` at the repository root).
        progress: optional callable receiving one human-readable line per step.
        force: replace ``out_dir`` even when it holds files that are not a previous build
            (otherwise such a folder is refused, before anything is built).

    Writes ``<name>.pt`` and ``<name>.onnx`` (built), or the one imported file,
    ``holdout/<name>.npz`` (built), ``model_info.json`` and ``SHA256SUMS``.

    Raises:
        BuildError: for any failure, naming the model, the file and what was expected.
    """
    start = time.perf_counter()

    def say(line: str) -> None:
        log.info("%s", line)
        if progress is not None:
            progress(line)

    date = parse_snapshot_date(snapshot_date)
    specs = load_models_config(models_file)
    if only is not None:
        unknown = sorted(set(only) - {spec.name for spec in specs})
        if unknown:
            raise BuildError(
                f"models {unknown} are not in the models file "
                f"(it lists {[spec.name for spec in specs]})"
            )
        specs = [spec for spec in specs if spec.name in set(only)]
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise BuildError(f"out_dir {out} exists and is not a folder")
    if not force:
        _check_replaceable(out)

    # Fail fast, before any training: every builder resolves, every imported file exists.
    builders = {spec.name: resolve_builder(spec) for spec in specs if spec.builder is not None}
    for spec in specs:
        if spec.path is not None and not spec.path.is_file():
            raise BuildError(
                f"model {spec.name!r}: file {spec.path} not found (path in {spec.models_file})"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    model_seconds: dict[str, float] = {}
    try:
        os.chmod(work, 0o755)
        for folder in (HOLDOUT_DIR, EVALUATION_DIR, REFERENCE_DIR):
            (work / folder).mkdir()
        info: dict[str, dict[str, Any]] = {}
        for spec in specs:
            t0 = time.perf_counter()
            try:
                if spec.builder is not None:
                    entry = _build_one(spec, builders[spec.name], date, work, say)
                else:
                    from pipeline.build.byom import import_model

                    entry = import_model(spec, work, date, progress=say)
            except BuildError as exc:
                # Name the file where it would have been, not in the temporary folder.
                raise BuildError(str(exc).replace(str(work), str(out))) from exc
            except Exception as exc:
                raise BuildError(
                    f"model {spec.name!r}: build failed ({spec.builder or spec.path}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            info[spec.name] = entry
            model_seconds[spec.name] = time.perf_counter() - t0
            say(f"{spec.name}: done in {model_seconds[spec.name]:.1f} s")
        for folder in (HOLDOUT_DIR, EVALUATION_DIR, REFERENCE_DIR):
            if (work / folder).is_dir() and not any((work / folder).iterdir()):
                (work / folder).rmdir()
        write_model_info(work, info)
        write_sha256sums(work)
        _make_readable(work)
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    say(f"built {len(info)} model(s) for snapshot {date.isoformat()} in {seconds:.1f} s -> {out}")
    return BuildResult(
        out_dir=out,
        snapshot_date=date,
        models=info,
        seconds=seconds,
        model_seconds=model_seconds,
    )
