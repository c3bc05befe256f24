"""Model manager: discovers model files, verifies and loads them, warms them up, reloads them.

Models live in one folder as `<name>.pt` (TorchScript) and/or `<name>.onnx`, described by
`model_info.json` (written by `pipeline.build`). Each file is registered as
`<name>_torchscript` / `<name>_onnx`. A recorded sha256 is always verified before loading;
a missing one is loaded with a warning unless the manager is `strict`.

Every loaded model has a `Signature` (pipeline.inference.signature): its inputs, outputs and
dynamic dimensions, settled with the ONNX graph (the authority on an ONNX model's tensors).
A model of one input with known row shape and one output is served as one array in, one array
out; any other (several inputs or outputs, a dynamic non-batch dimension, a declared value
range) through the engine's named-tensor path. It is warmed up at every batch size and every
declared size of its dynamic dimensions, on valid values (`Signature.example_batch`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin
from pipeline.inference.errors import ModelLoadError, ModelNotLoadedError, NonFiniteWarmupError
from pipeline.inference.runtimes import FORMATS, Runtime, load_runtime
from pipeline.inference.signature import SERVED_DTYPES, Signature
from pipeline.inference.tensor_models import settle_signature, settle_single, warm_up_tensors

__all__ = ["LoadedModel", "ModelInfo", "ProductionModelManager"]

log = logging.getLogger(__name__)

_SUFFIX_TO_FORMAT = {suffix: fmt for fmt, suffix in FORMATS.items()}


@dataclass
class ModelInfo(RecordMixin):
    """What the manager knows of one registered model (loaded or not)."""

    key: str
    name: str
    format: str
    path: str
    version: str
    input_shape: list[int | None]
    output_shape: list[int | None]
    input_dtype: str = "float32"
    expected_sha256: str | None = None
    sha256: str | None = None
    loaded: bool = False
    warmup_complete: bool = False
    load_time_ms: float | None = None
    warmup_time_ms: float | None = None
    memory_mb: float | None = None
    generation: int = 0
    last_error: str | None = None
    checksum_verified: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    #: its inputs and outputs (settled with the ONNX graph once loaded)
    signature: Signature | None = None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of one request's input (the input shape without its batch dimension)
        of a single-tensor model; a model with named tensors has `signature` instead."""
        return tuple(int(d) for d in self.input_shape[1:])  # type: ignore[arg-type]

    @property
    def tensor_io(self) -> bool:
        """Served through named tensors (see the module docstring), not one array."""
        return self.signature is not None and not self.signature.classic

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the signature as model_info.json's tensor form."""
        record = super().to_dict()
        record["signature"] = None if self.signature is None else self.signature.to_entry()
        return record

    @property
    def fixed_batch_size(self) -> int | None:
        """The model's fixed batch size, or None when the batch dimension is dynamic."""
        first = self.input_shape[0] if self.input_shape else None
        return int(first) if first is not None else None


@dataclass
class LoadedModel:
    """A loaded, verified runtime plus the facts a batch needs. Swapped whole on reload.

    A model served through named tensors has `tensor_io` True and `feature_shape` None (no
    single array matches it); its `signature` says what a request holds."""

    info: ModelInfo
    runtime: Runtime
    generation: int
    version: str
    feature_shape: tuple[int, ...] | None
    fixed_batch_size: int | None
    priority: bool = False
    last_used: float = 0.0
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))
    signature: Signature | None = None
    tensor_io: bool = False


def dummy_batch(
    shape: tuple[int, ...], dtype: Any, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A batch for warm-up and probing: uniform [0, 1) floats, or zeros for integer inputs
    (0 is a valid index for any embedding or category input)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        rng = rng or np.random.default_rng(0)
        return rng.random(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


class ProductionModelManager:
    """Loads TorchScript and ONNX models from `model_dir` within a memory budget."""

    def __init__(
        self,
        model_dir: str | Path,
        max_memory_mb: float = 500.0,
        warmup_enabled: bool = True,
        *,
        strict: bool = False,
        num_threads: int | None = 1,
        warmup_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
        warmup_rounds: int = 3,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_memory_mb = float(max_memory_mb)
        self.warmup_enabled = warmup_enabled
        self.strict = strict
        self.num_threads = num_threads
        self.warmup_batch_sizes = warmup_batch_sizes
        self.warmup_rounds = warmup_rounds
        self.model_info: dict[str, ModelInfo] = {}
        self.load_errors: dict[str, str] = {}
        #: the error class of each load failure (NonFiniteWarmupError, ModelLoadError, ...)
        self.load_error_types: dict[str, str] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._reload_listeners: list[Callable[[str, LoadedModel], None]] = []
        self.discover()

    # ----------------------------------------------------------------- discovery
    def discover(self) -> list[str]:
        """(Re)scan `model_dir`; returns the registered model keys."""
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model_dir {self.model_dir} does not exist or is not a folder")
        info_path = self.model_dir / "model_info.json"
        infos: dict[str, Any] = {}
        if info_path.exists():
            try:
                infos = json.loads(info_path.read_text())
            except json.JSONDecodeError as exc:
                raise ModelLoadError(f"{info_path}: not valid JSON: {exc}") from exc
            if not isinstance(infos, dict):
                raise ModelLoadError(f"{info_path}: expected an object keyed by model name")
        for file in sorted(self.model_dir.iterdir()):
            fmt = _SUFFIX_TO_FORMAT.get(file.suffix)
            if fmt is None or not file.is_file():
                continue
            name = file.stem
            key = f"{name}_{fmt}"
            if key in self.model_info and self.model_info[key].loaded:
                continue
            self.model_info[key] = self._describe(name, fmt, file, infos.get(name) or {})
        return sorted(self.model_info)

    def _describe(self, name: str, fmt: str, file: Path, entry: dict[str, Any]) -> ModelInfo:
        files = entry.get("files") or {}
        file_entry = files.get(fmt) or {}
        expected = file_entry.get("sha256") or entry.get("sha256")
        input_shape = entry.get("input_shape")
        output_shape = entry.get("output_shape")
        legacy = bool(entry) and not files
        if legacy:
            # the original plan wrote feature dimensions only (`input_shape: [10]`,
            # `output_shape: [1]`): the batch dimension is implied and dynamic
            if input_shape and len(input_shape) == 1:
                input_shape = [None, *input_shape]
            if output_shape and len(output_shape) == 1:
                output_shape = [None, *output_shape]
        metadata = {k: v for k, v in entry.items() if k not in {"files", "input_shape"}}
        metadata["legacy_info"] = legacy
        signature = None
        if entry.get("inputs"):  # the tensor form: its first input under the original names
            try:
                signature = Signature.from_entry(entry)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                signature = None
                metadata["signature_error"] = f"model_info.json inputs/outputs: {exc}"
            else:
                first = signature.inputs[0]
                input_shape = [d if isinstance(d, int) else None for d in first.shape]
                entry = {**entry, "input_dtype": first.dtype}
                output_shape = output_shape or [
                    d if isinstance(d, int) else None for d in signature.outputs[0].shape
                ]
        return ModelInfo(
            key=f"{name}_{fmt}",
            name=name,
            format=fmt,
            path=str(file),
            version=str(entry.get("version", "unknown")),
            input_shape=list(input_shape) if input_shape else [],
            output_shape=list(output_shape) if output_shape else [],
            input_dtype=str(entry.get("input_dtype", "float32")),
            expected_sha256=expected,
            metadata=metadata,
            signature=signature,
        )

    def resolve(self, name: str) -> str:
        """Map a model name to its registered key (`quality_predictor` -> `..._torchscript`)."""
        if name in self.model_info:
            return name
        for fmt in FORMATS:
            if f"{name}_{fmt}" in self.model_info:
                return f"{name}_{fmt}"
        known = ", ".join(sorted(self.model_info)) or "none"
        raise ModelNotLoadedError(f"unknown model {name!r}; registered models: {known}")

    @property
    def available_models(self) -> list[str]:
        return sorted(self.model_info)

    @property
    def loaded_models(self) -> list[str]:
        return sorted(self._loaded)

    # ----------------------------------------------------------------- loading
    def load_model(self, name: str, priority: bool = False) -> bool:
        """Load, verify and warm up a model. Returns False (reason in `load_errors`) on failure."""
        try:
            key = self.resolve(name)
        except ModelNotLoadedError as exc:
            self.load_errors[name] = str(exc)
            return False
        with self._lock:
            if key in self._loaded:
                self._loaded[key].priority = self._loaded[key].priority or priority
                return True
            try:
                loaded = self._build(self.model_info[key], priority=priority)
                self._admit(loaded)
            except ModelLoadError as exc:
                self.load_errors[key] = str(exc)
                self.load_error_types[key] = type(exc).__name__
                self.model_info[key].last_error = str(exc)
                log.warning("%s", exc)
                return False
            self._loaded[key] = loaded
            self.load_errors.pop(key, None)
            self.load_error_types.pop(key, None)
            return True

    def _read_verified(self, info: ModelInfo) -> tuple[bytes, str]:
        path = Path(info.path)
        # a model's weights take at least its file's size: refuse a file over the budget
        # before reading it (and never read more than the budget, should it grow meanwhile)
        limit = self.max_memory_mb * 2**20
        try:
            size = path.stat().st_size
            if size <= limit:
                with open(path, "rb") as handle:
                    data = handle.read(int(min(limit, 2**62)) + 1)
                size = max(size, len(data))
        except OSError as exc:
            raise ModelLoadError(f"model {info.key!r}: cannot read {path}: {exc}") from exc
        if size > limit:
            raise ModelLoadError(
                f"model {info.key!r}: {path} is {size / 2**20:.1f} MB, more than "
                f"max_memory_mb={self.max_memory_mb:g}; not loaded (a model's weights take "
                "at least its file's size)"
            )
        digest = hashlib.sha256(data).hexdigest()
        if info.expected_sha256:
            if digest != info.expected_sha256:
                raise ModelLoadError(
                    f"model {info.key!r}: sha256 mismatch for {path}: model_info.json records "
                    f"{info.expected_sha256}, file has {digest}"
                )
        elif self.strict:
            raise ModelLoadError(
                f"model {info.key!r}: no sha256 recorded for {path} in model_info.json "
                "and the manager is strict"
            )
        else:
            log.warning("model %r: no sha256 recorded for %s; loading unverified", info.key, path)
        return data, digest

    def _build(self, info: ModelInfo, *, priority: bool) -> LoadedModel:
        started = time.perf_counter()
        if info.metadata.get("signature_error"):
            raise ModelLoadError(f"model {info.key!r}: {info.metadata['signature_error']}")
        dtypes = [t.dtype for t in info.signature.inputs] if info.signature else []
        for dtype in dtypes or [info.input_dtype]:
            if dtype not in SERVED_DTYPES:
                raise ModelLoadError(
                    f"model {info.key!r}: input dtype {dtype} is not served; relcert "
                    f"serves {', '.join(SERVED_DTYPES)} inputs"
                )
        data, digest = self._read_verified(info)
        runtime = load_runtime(info.format, data, num_threads=self.num_threads, label=info.key)
        if info.signature is not None and info.signature.inputs:
            settle_signature(info, runtime)
        else:
            settle_single(info, runtime)
        signature = info.signature
        assert signature is not None  # settled above
        runtime.bind(signature.input_names, signature.output_names)
        load_ms = (time.perf_counter() - started) * 1000.0
        fixed = info.fixed_batch_size
        if info.format == "torchscript" and info.metadata.get("legacy_info") and fixed == 1:
            # The plan's model_info.json wrote example shapes like [1, 10]; a TorchScript
            # module may still accept any batch. Probe it rather than trust the example.
            fixed = None if _accepts_batch(runtime, info.feature_shape, 2, info.input_dtype) else 1
        warm_ms = None
        if self.warmup_enabled:
            warm_started = time.perf_counter()
            if info.tensor_io:
                warm_up_tensors(info, runtime, fixed, self.warmup_batch_sizes, self.warmup_rounds)
            else:
                self._warm_up(info, runtime, fixed)
            warm_ms = (time.perf_counter() - warm_started) * 1000.0
        generation = info.generation + 1
        info.sha256 = digest
        info.checksum_verified = bool(info.expected_sha256)
        info.load_time_ms = load_ms
        info.warmup_time_ms = warm_ms
        info.memory_mb = runtime.memory_bytes / 2**20
        return LoadedModel(
            info=info,
            runtime=runtime,
            generation=generation,
            version=info.version,
            feature_shape=None if info.tensor_io else info.feature_shape,
            fixed_batch_size=fixed,
            priority=priority,
            last_used=time.monotonic(),
            dtype=np.dtype(info.input_dtype),
            signature=signature,
            tensor_io=info.tensor_io,
        )

    def _warm_up(self, info: ModelInfo, runtime: Runtime, fixed: int | None) -> None:
        rng = np.random.default_rng(0)
        sizes = (fixed,) if fixed else self.warmup_batch_sizes
        for _ in range(self.warmup_rounds):
            for size in sizes:
                batch = dummy_batch((size, *info.feature_shape), info.input_dtype, rng)
                try:
                    out = runtime.run(batch)
                except Exception as exc:
                    raise ModelLoadError(
                        f"model {info.key!r}: warm-up inference on a batch of shape "
                        f"{list(batch.shape)} failed: {exc}"
                    ) from exc
                if not np.all(np.isfinite(out)):
                    raise NonFiniteWarmupError(
                        f"model {info.key!r}: warm-up produced NaN/Inf outputs for finite "
                        f"inputs of shape {list(batch.shape)} (file {info.path})"
                    )
                if out.shape[0] != size:
                    raise ModelLoadError(
                        f"model {info.key!r}: output batch dimension {out.shape[0]} does not "
                        f"match input batch {size}"
                    )
        info.warmup_complete = True

    def _admit(self, new: LoadedModel, replacing: str | None = None) -> None:
        """Fit `new` into the memory budget, evicting least-recently-used models if needed."""
        needed = new.runtime.memory_bytes / 2**20
        if needed > self.max_memory_mb:
            raise ModelLoadError(
                f"model {new.info.key!r} needs {needed:.3f} MB, more than max_memory_mb="
                f"{self.max_memory_mb:g}"
            )
        while self.memory_usage_mb(exclude=replacing) + needed > self.max_memory_mb:
            victims = [m for k, m in self._loaded.items() if not m.priority and k != replacing]
            if not victims:
                raise ModelLoadError(
                    f"model {new.info.key!r} needs {needed:.3f} MB; "
                    f"{self.memory_usage_mb():.3f} MB of max_memory_mb={self.max_memory_mb:g} "
                    "is held by priority models that cannot be evicted"
                )
            victim = min(victims, key=lambda m: m.last_used)
            log.info("evicting %s (least recently used) to fit %s", victim.info.key, new.info.key)
            self.unload_model(victim.info.key)
        new.info.loaded = True
        new.info.generation = new.generation
        new.info.last_error = None

    def memory_usage_mb(self, exclude: str | None = None) -> float:
        return sum(m.runtime.memory_bytes for k, m in self._loaded.items() if k != exclude) / 2**20

    def unload_model(self, name: str) -> bool:
        with self._lock:
            key = self.resolve(name)
            model = self._loaded.pop(key, None)
            if model is None:
                return False
            info = self.model_info[key]
            info.loaded = False
            info.warmup_complete = False
            return True

    def get_model(self, name: str) -> LoadedModel:
        """The currently loaded model for `name` (key or base name)."""
        model = self._loaded.get(name)
        if model is None:
            try:
                model = self._loaded.get(self.resolve(name))
            except ModelNotLoadedError:
                model = None
            if model is None:
                raise ModelNotLoadedError(
                    f"model {name!r} is not loaded; loaded models: "
                    f"{', '.join(sorted(self._loaded)) or 'none'}"
                )
        return model

    def is_loaded(self, name: str) -> bool:
        try:
            return self.resolve(name) in self._loaded
        except ModelNotLoadedError:
            return False

    def register_null_model(
        self,
        name: str,
        feature_shape: tuple[int, ...],
        output_shape: tuple[int, ...] = (1,),
        dtype: str = "float32",
        *,
        signature: Signature | None = None,
    ) -> str:
        """Register and load `<name>_null`: a model that does no work, for measuring the
        harness's own ceiling (calibration). Returns its key. With the `signature` of a
        model of named tensors it takes that model's requests (its outputs are zeros of
        each output's row shape, 1 for a dynamic dim)."""
        from pipeline.inference.runtimes import NullRuntime

        key = f"{name}_null"
        tensor_io = signature is not None and not signature.classic
        if tensor_io:
            assert signature is not None
            outputs = [
                tuple(d if isinstance(d, int) else 1 for d in o.shape[1:])
                for o in signature.outputs
            ]
            runtime = NullRuntime(outputs[0] if outputs else (1,), outputs)
        else:
            runtime = NullRuntime(output_shape)
        info = ModelInfo(
            key=key,
            name=name,
            format="null",
            path="",
            version="null",
            input_shape=[None, *feature_shape],
            output_shape=[None, *output_shape],
            input_dtype=dtype,
            loaded=True,
            warmup_complete=True,
            generation=1,
            memory_mb=0.0,
            signature=signature,
        )
        with self._lock:
            self.model_info[key] = info
            self._loaded[key] = LoadedModel(
                info,
                runtime,
                1,
                "null",
                None if tensor_io else tuple(feature_shape),
                None,
                dtype=np.dtype(dtype),
                signature=signature,
                tensor_io=tensor_io,
            )
        return key

    # ----------------------------------------------------------------- reload
    def add_reload_listener(self, listener: Callable[[str, LoadedModel], None]) -> None:
        """Called with (key, new model) after every successful reload (e.g. cache invalidation)."""
        self._reload_listeners.append(listener)

    def prepare_reload(self, name: str) -> LoadedModel:
        """Load and warm a fresh copy from the verified file without touching the live one."""
        key = self.resolve(name)
        fresh = _refresh_info(dataclasses.replace(self.model_info[key]), self.model_dir)
        live = self._loaded.get(key)
        return self._build(fresh, priority=live.priority if live else False)

    def commit_reload(self, new: LoadedModel) -> None:
        """Swap the live model for `new` in one step: batches see the old or the new, never both."""
        key = new.info.key
        with self._lock:
            self._admit(new, replacing=key)
            self._loaded[key] = new
            self.model_info[key] = new.info
            self.load_errors.pop(key, None)
        for listener in list(self._reload_listeners):
            listener(key, new)

    def reload_model(self, name: str) -> bool:
        """Hot reload: requests in flight finish on the old version, later ones use the new."""
        try:
            new = self.prepare_reload(name)
            self.commit_reload(new)
        except (ModelLoadError, ModelNotLoadedError) as exc:
            self.load_errors[name] = str(exc)
            log.warning("reload of %s failed: %s", name, exc)
            return False
        return True

    async def reload_model_async(self, name: str) -> bool:
        """Hot reload with the file read and warm-up off the event loop."""
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self.prepare_reload, name)
            self.commit_reload(new)
        except (ModelLoadError, ModelNotLoadedError) as exc:
            self.load_errors[name] = str(exc)
            log.warning("reload of %s failed: %s", name, exc)
            return False
        return True

    def get_status(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "available": self.available_models,
            "loaded": self.loaded_models,
            "memory_usage_mb": self.memory_usage_mb(),
            "max_memory_mb": self.max_memory_mb,
            "load_errors": dict(self.load_errors),
            "models": {k: v.to_dict() for k, v in self.model_info.items()},
        }


def _accepts_batch(
    runtime: Runtime, feature_shape: tuple[int, ...], size: int, dtype: str = "float32"
) -> bool:
    try:
        out = runtime.run(np.zeros((size, *feature_shape), dtype=dtype))
    except Exception:
        return False
    return out.shape[0] == size


def _refresh_info(info: ModelInfo, model_dir: Path) -> ModelInfo:
    """Re-read model_info.json so a reload picks up a new version and checksum."""
    path = model_dir / "model_info.json"
    if not path.exists():
        return info
    try:
        entry = json.loads(path.read_text()).get(info.name) or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: not valid model_info.json: {exc}") from exc
    files = entry.get("files") or {}
    info.metadata = dict(info.metadata)
    info.expected_sha256 = (files.get(info.format) or {}).get("sha256") or entry.get("sha256")
    info.version = str(entry.get("version", info.version))
    return info
