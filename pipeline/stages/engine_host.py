"""Host the inference engine in its own process, and talk to it from the load generator.

The load and stress stages measure the engine, not the caller: the engine runs in a child
process (`python -m pipeline.stages.engine_host`), and the stage's load generator sends
requests over a loopback TCP connection with a compact binary framing. The child's RSS and
CPU are sampled from the parent with psutil while it serves.

Authentication: the parent makes a random per-run token and hands it to the child on stdin
(first line; never on the command line or in the environment). Every connection's first
frame must be that token: the child answers "OK", or "DENIED" and closes the connection, so
no other local user can drive (or disturb) the engine under measurement.

Frame: u32 little-endian length, then the body.
  request  body: u32 id, u8 op, then for PREDICT: u8 model index, the input values in the
           model's own input dtype (model_info.json: float32, float64 or int64); for a model
           of named tensors (pipeline.inference.signature), for each input in the model's
           order: u8 rank, u32 per dim, then its values in its dtype
  response body: u32 id, u8 ok, u8 cache_hit, u16 batch_size, f32 inference ms of the batch,
                 u32 batch id, then float32 output (ok) or
                 UTF-8 "<error class>\0<message>" (not ok); for control ops: UTF-8 JSON. A
                 model of named tensors answers, for each output: u8 rank, u32 per dim, then
                 its float32 values

Stress-test control ops (used by the stress stage; they never run unless asked):
  BALLAST  body: u32 MB — hold that much touched memory in the engine process (0 frees it);
           growth is one numpy array per call, so a step of 33 MB or more is mmapped by
           glibc and goes back to the OS when freed
  POOL     body: UTF-8 JSON {"action": "exhaust", "shape": [...], "count": n, "fill": bool}
           allocates from the engine's MemoryPoolManager (n attempts; `fill` then takes what
           is left, so no batch buffer fits); {"action": "release"} returns every held buffer;
           {"action": "probe", "shape": [...]} allocates one buffer and releases it
  ADMISSION body: UTF-8 JSON {"settings": {AdmissionSettings fields}} puts admission control
           (`pipeline.inference.admission`, as the service has it) in front of the engine
           for the requests that follow; {"off": true} removes it. Answers (and STATS
           includes) {"enabled": bool, "stats": the limiter's stats or null}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.settings import EngineSettings

__all__ = ["EngineHost", "HostConfig", "HostResult", "ResourceSampler", "connect_authenticated"]

OP_PREDICT, OP_STATS, OP_RELOAD, OP_CONFIG = 0, 1, 2, 3
OP_BALLAST, OP_POOL, OP_ADMISSION = 4, 5, 6
_LEN = struct.Struct("<I")
_REQ = struct.Struct("<IBB")
_CTL = struct.Struct("<IB")
_RESP = struct.Struct("<IBBHfI")
_TOKEN_BYTES = 32
_AUTH_TIMEOUT_S = 10.0
_AUTH_OK, _AUTH_DENIED = b"OK", b"DENIED"
_F32 = np.dtype(np.float32)


@dataclass(frozen=True)
class HostConfig:
    """How the hosted engine is configured (the settings a certification applies to)."""

    models: tuple[str, ...]  # engine keys, e.g. ("quality_predictor_onnx", ...)
    engine: EngineSettings = field(default_factory=EngineSettings)

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready form: {"models": [...], <every EngineSettings field>}. The load
        stage records it as `engine_config`; the deployment package reads it back."""
        return {"models": list(self.models), **self.engine.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HostConfig:
        """The inverse of `to_dict` (a nested {"engine": {...}} is accepted too)."""
        raw = dict(values)
        models = raw.pop("models", None)
        if not isinstance(models, list | tuple) or not all(isinstance(m, str) for m in models):
            raise ValueError(f"HostConfig: models must be a list of engine keys, got {models!r}")
        engine = raw.pop("engine", None)
        if isinstance(engine, dict):
            raw = {**engine, **raw}
        return cls(models=tuple(models), engine=EngineSettings.from_dict(raw))

    @classmethod
    def from_json(cls, text: str) -> HostConfig:
        return cls.from_dict(json.loads(text))


def _input_dtypes(model_dir: Path, keys: Sequence[str]) -> dict[str, Any]:
    """Each engine key's input dtype, from model_info.json (keys are `<name>_<format>`); for
    a model of named tensors, its Signature (its inputs' order and dtypes)."""
    from pipeline.inference.signature import Signature

    try:
        info = json.loads((Path(model_dir) / "model_info.json").read_text())
    except (OSError, ValueError):
        info = {}
    out: dict[str, Any] = {}
    for key in keys:
        name = key.rsplit("_", 1)[0]
        entry = (info.get(name) if isinstance(info, dict) else None) or {}
        signature = Signature.from_entry(entry) if entry else None
        if signature is not None and signature.inputs and not signature.classic:
            out[key] = signature
        else:
            out[key] = np.dtype(entry.get("input_dtype") or "float32")
    return out


def pack_tensors(arrays: Sequence[np.ndarray]) -> bytes:
    """Arrays with their shapes: for each, u8 rank, u32 per dim, then its raw values."""
    parts = []
    for a in arrays:
        parts.append(struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape))
        parts.append(np.ascontiguousarray(a).tobytes())
    return b"".join(parts)


def unpack_tensors(data: Any, dtypes: Sequence[np.dtype], offset: int = 0) -> list[np.ndarray]:
    """The inverse of `pack_tensors` for arrays of `dtypes`, read from `offset`."""
    arrays = []
    for dtype in dtypes:
        (rank,) = struct.unpack_from("<B", data, offset)
        shape = struct.unpack_from(f"<{rank}I", data, offset + 1)
        offset += 1 + 4 * rank
        count = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape))
        offset += count * dtype.itemsize
    return arrays


@dataclass(slots=True)
class HostResult:
    """What a request to the hosted engine returned."""

    success: bool
    output: np.ndarray | None
    error: str | None
    batch_size: int
    cache_hit: bool
    error_type: str | None = None  # the engine's error class (InvalidInputError, ...)
    inference_ms: float = 0.0  # the model's own compute time for the request's batch
    batch_id: int = 0  # requests answered by one runtime call share it
    #: a model of named tensors: every output (float32, shaped); `output` is then all of
    #: them flattened one after the other
    outputs: tuple[np.ndarray, ...] | None = None


# --------------------------------------------------------------------------- child side
async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: bytes
) -> bool:
    """The connection's first frame must be the run's token (constant-time compare)."""
    try:
        size = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), _AUTH_TIMEOUT_S))[0]
        given = b""
        if size == len(token):
            given = await asyncio.wait_for(reader.readexactly(size), _AUTH_TIMEOUT_S)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return False
    if hmac.compare_digest(given, token):
        writer.write(_LEN.pack(len(_AUTH_OK)) + _AUTH_OK)
        return True
    writer.write(_LEN.pack(len(_AUTH_DENIED)) + _AUTH_DENIED)
    return False


async def _serve(model_dir: Path, config: HostConfig, port: int, token: bytes) -> None:
    import gc

    from pipeline.inference import (
        ProductionInferenceEngine,
        ProductionModelManager,
        RealTimePerformanceMonitor,
    )

    settings = config.engine
    manager = ProductionModelManager(
        model_dir, max_memory_mb=settings.max_memory_mb, num_threads=settings.intra_op_threads
    )
    init_started = time.perf_counter()
    load_errors = {}
    for key in config.models:
        if key.endswith("_null"):  # calibration: the harness's own floor
            name = key[: -len("_null")]
            records = [i for i in manager.model_info.values() if i.name == name]
            # the loaded record first: its signature is settled with the model file
            real = next((i for i in records if i.loaded), records[0] if records else None)
            if real is None:
                load_errors[key] = f"no model {name!r} to take a null model's shapes from"
                continue
            if real.tensor_io:
                manager.register_null_model(name, (), signature=real.signature)
                continue
            if real.signature is None and None in real.input_shape[1:]:
                load_errors[key] = f"model {name!r} did not load: its shapes are not settled"
                continue
            out_shape = tuple(int(d) for d in real.output_shape[1:]) or (1,)
            manager.register_null_model(name, real.feature_shape, out_shape, real.input_dtype)
        elif not manager.load_model(key, priority=True):
            load_errors[key] = manager.load_errors.get(key, "unknown error")
    init_s = time.perf_counter() - init_started
    engine = ProductionInferenceEngine(
        manager, settings=settings, monitor=RealTimePerformanceMonitor(window_seconds=60)
    )
    keys = list(config.models)
    # request payloads carry each model's own input dtype (float32, float64 or int64)
    dtypes = [
        np.dtype(manager.model_info[k].input_dtype if k in manager.model_info else "float32")
        for k in keys
    ]
    # ... and are flat: each is reshaped to its model's request shape (any rank); a model of
    # named tensors sends each input with its shape (pack_tensors)
    named = [manager.is_loaded(k) and manager.get_model(k).tensor_io for k in keys]
    shapes = [
        manager.model_info[k].feature_shape if manager.is_loaded(k) and not named[i] else (-1,)
        for i, k in enumerate(keys)
    ]
    tensor_dtypes = [
        [t.np_dtype for t in manager.get_model(k).signature.inputs] if named[i] else []
        for i, k in enumerate(keys)
    ]
    input_names = [
        manager.get_model(k).signature.input_names if named[i] else () for i, k in enumerate(keys)
    ]
    ballast: list[np.ndarray] = []  # OP_BALLAST: memory held on purpose (stress tests)
    held: list[np.ndarray] = []  # OP_POOL: pool buffers held on purpose (stress tests)
    gate: dict[str, Any] = {"admission": None}  # OP_ADMISSION: admission control, when on
    gc.collect()
    gc.freeze()

    def set_ballast(target_mb: int) -> dict[str, Any]:
        current = sum(a.nbytes for a in ballast)
        target = int(target_mb) * 2**20
        if target <= 0:
            ballast.clear()
        elif target > current:
            chunk = np.empty(target - current, dtype=np.uint8)
            chunk.fill(1)  # touch every page: the memory is resident, not just reserved
            ballast.append(chunk)
        else:
            while ballast and sum(a.nbytes for a in ballast) > target:
                ballast.pop()
        return {"ballast_mb": sum(a.nbytes for a in ballast) / 2**20, "chunks": len(ballast)}

    def pool_op(args: dict[str, Any]) -> dict[str, Any]:
        from pipeline.inference.errors import PoolExhaustedError

        pool = engine.memory_pool
        if pool is None:
            return {"error": "the engine has no memory pool"}
        action = args.get("action")
        result: dict[str, Any] = {"action": action}
        if action == "exhaust":
            shape = tuple(int(d) for d in args.get("shape", (1000, 1000)))
            ok = failed = 0
            for _ in range(int(args.get("count", 100))):
                try:
                    held.append(pool.allocate_tensor(shape))
                    ok += 1
                except PoolExhaustedError:
                    failed += 1
            result.update(shape=list(shape), allocated=ok, failed=failed)
            if args.get("fill"):
                stats = pool.get_memory_stats()
                rest = int(stats.max_pool_size_mb * 2**20) - int(stats.in_use_mb * 2**20)
                if rest > 0:
                    try:
                        held.append(pool.allocate_tensor((rest,), np.uint8))
                        result["filled_bytes"] = rest
                    except PoolExhaustedError:
                        result["filled_bytes"] = 0
        elif action == "release":
            for buffer in held:
                pool.release_tensor(buffer)
            result["released"] = len(held)
            held.clear()
        elif action == "probe":
            shape = tuple(int(d) for d in args.get("shape", (1000, 1000)))
            try:
                pool.release_tensor(pool.allocate_tensor(shape))
                result.update(ok=True, error=None)
            except PoolExhaustedError as exc:
                result.update(ok=False, error=str(exc))
        else:
            return {"error": f"unknown pool action {action!r}"}
        result["held"] = len(held)
        result["pool"] = pool.get_memory_stats().to_dict()
        return result

    def admission_op(args: dict[str, Any]) -> dict[str, Any]:
        from pipeline.inference.admission import AdmissionControl, AdmissionSettings

        if args.get("settings") is not None:
            try:
                settings = AdmissionSettings.from_dict(args["settings"])
            except ValueError as exc:
                return {"error": str(exc)}
            gate["admission"] = AdmissionControl(engine, settings)
        elif args.get("off"):
            gate["admission"] = None
        return admission_state()

    def admission_state() -> dict[str, Any]:
        control = gate["admission"]
        return {
            "enabled": control is not None,
            "stats": control.get_stats().to_dict() if control is not None else None,
        }

    def stats() -> dict[str, Any]:
        return {
            "admission": admission_state(),
            "engine": engine.get_stats(),
            "init_s": init_s,
            "load_errors": load_errors,
            "models": {
                k: {
                    "version": manager.model_info[k].version,
                    "sha256": manager.model_info[k].sha256,
                    "load_time_ms": manager.model_info[k].load_time_ms,
                    "warmup_time_ms": manager.model_info[k].warmup_time_ms,
                    "loaded": manager.is_loaded(k),
                }
                for k in keys
                if k in manager.model_info
            },
            "monitor": engine.monitor.get_current_metrics().to_dict(),
            "pid": os.getpid(),
        }

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply(request_id: int, future: asyncio.Future) -> None:
            result = future.result()
            if result.success and result.outputs is not None:  # named tensors
                payload = pack_tensors(
                    [np.asarray(o, dtype=np.float32) for o in result.outputs.values()]
                )
            elif result.success:
                payload = np.ascontiguousarray(result.output, dtype=np.float32).tobytes()
            else:  # "<error class>\0<message>"
                payload = f"{result.error_type or ''}\0{result.error or 'failed'}".encode()
            head = _RESP.pack(
                request_id,
                result.success,
                result.cache_hit,
                min(result.batch_size, 65535),
                result.inference_time_ms if result.success else 0.0,
                result.batch_id & 0xFFFFFFFF,
            )
            writer.write(_LEN.pack(len(head) + len(payload)) + head + payload)

        try:
            if not await _authenticate(reader, writer, token):
                return  # refused: nothing else is read from this connection
            while True:
                size = _LEN.unpack(await reader.readexactly(4))[0]
                body = await reader.readexactly(size)
                request_id, op = _CTL.unpack_from(body)
                if op == OP_PREDICT:
                    _, _, index = _REQ.unpack_from(body)
                    if named[index]:
                        arrays = unpack_tensors(body, tensor_dtypes[index], _REQ.size)
                        x = dict(zip(input_names[index], arrays, strict=True))
                    else:
                        x = np.frombuffer(body, dtype=dtypes[index], offset=_REQ.size)
                        x = x.reshape(shapes[index]) if x.size else x
                    future = (gate["admission"] or engine).predict(keys[index], x)
                    future.add_done_callback(lambda f, rid=request_id: reply(rid, f))
                    continue
                if op == OP_STATS:
                    payload = json.dumps(stats(), default=float).encode()
                elif op == OP_RELOAD:
                    key = keys[body[_CTL.size]]
                    ok = await manager.reload_model_async(key)
                    payload = json.dumps(
                        {
                            "ok": ok,
                            "version": manager.model_info[key].version,
                            "error": manager.load_errors.get(key),
                        }
                    ).encode()
                elif op == OP_BALLAST:
                    (target_mb,) = _LEN.unpack_from(body, _CTL.size)
                    loop = asyncio.get_running_loop()
                    state = await loop.run_in_executor(None, set_ballast, target_mb)
                    payload = json.dumps(state).encode()
                elif op == OP_POOL:
                    args = json.loads(body[_CTL.size :].decode() or "{}")
                    payload = json.dumps(pool_op(args), default=float).encode()
                elif op == OP_ADMISSION:
                    args = json.loads(body[_CTL.size :].decode() or "{}")
                    payload = json.dumps(admission_op(args), default=float).encode()
                else:
                    payload = b'{"error": "unknown op"}'
                head = _RESP.pack(request_id, 1, 0, 0, 0.0, 0)
                writer.write(_LEN.pack(len(head) + len(payload)) + head + payload)
        except (asyncio.IncompleteReadError, ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, or the server is shutting down
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound} {json.dumps(load_errors)}", flush=True)
    async with server:
        # the parent closes our stdin to ask for shutdown (or kills us)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


def _child_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="host the relcert engine on loopback")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--config", required=True, help="HostConfig as JSON")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    line = sys.stdin.readline().strip()  # the parent's per-run token comes first on stdin
    try:
        token = bytes.fromhex(line)
    except ValueError:
        token = b""
    if len(token) != _TOKEN_BYTES:
        parser.error(f"expected a {_TOKEN_BYTES}-byte hex token as the first line of stdin")
    asyncio.run(_serve(args.model_dir, HostConfig.from_json(args.config), args.port, token))


# --------------------------------------------------------------------------- parent side
async def connect_authenticated(
    port: int, token: bytes, timeout_s: float = 30.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the engine host that has sent `token` and been accepted.

    Raises PermissionError when the host refuses the token."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_LEN.pack(len(token)) + token)
    try:
        size = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), timeout_s))[0]
        answer = await asyncio.wait_for(reader.readexactly(min(size, 64)), timeout_s)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        writer.close()
        raise PermissionError(f"engine host on port {port} closed the connection: {exc}") from None
    if answer != _AUTH_OK:
        writer.close()
        raise PermissionError(f"engine host on port {port} refused the token ({answer!r})")
    return reader, writer


class ResourceSampler:
    """Samples a process's RSS and CPU every `interval_s` in the background (bounded list)."""

    def __init__(self, pid: int, interval_s: float = 0.5, max_samples: int = 100_000) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[tuple[float, float, float]] = []  # (t, rss_mb, cpu_percent)
        self._task: asyncio.Task | None = None
        self._t0 = time.perf_counter()

    def now_s(self) -> float:
        """Seconds since the sampler started (the time axis of its samples)."""
        return time.perf_counter() - self._t0

    def sample(self) -> tuple[float, float, float]:
        with self.process.oneshot():
            row = (
                time.perf_counter() - self._t0,
                self.process.memory_info().rss / 2**20,
                self.process.cpu_percent(None),
            )
        if len(self.samples) < self.max_samples:
            self.samples.append(row)
        return row

    async def _run(self) -> None:
        self.process.cpu_percent(None)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sample()
            except Exception:  # the process ended
                return

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def peak_rss_mb(self) -> float:
        return max((s[1] for s in self.samples), default=float("nan"))

    def mean_cpu_percent(self) -> float:
        cpu = [s[2] for s in self.samples[1:]]
        return float(np.mean(cpu)) if cpu else float("nan")


@dataclass
class EngineHost:
    """Starts the engine process, connects to it, and sends it requests (async)."""

    model_dir: Path
    config: HostConfig
    start_timeout_s: float = 60.0
    process: subprocess.Popen | None = None
    port: int = 0
    load_errors: dict[str, str] = field(default_factory=dict)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    #: request id -> (future, control op, outputs expected: 0 unless named tensors)
    _pending: dict[int, tuple[asyncio.Future, bool, int]] = field(default_factory=dict)
    _next_id: int = 0
    _index: dict[str, int] = field(default_factory=dict)
    _dtypes: dict[str, Any] = field(default_factory=dict)  # np.dtype, or a Signature
    _reader_task: asyncio.Task | None = None
    _token: bytes = field(default_factory=lambda: secrets.token_bytes(_TOKEN_BYTES), repr=False)

    async def start(self) -> EngineHost:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.stages.engine_host",
            "--model-dir",
            str(self.model_dir),
            "--config",
            self.config.to_json(),
        ]
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.process.stdin.write(self._token.hex() + "\n")  # never on the command line
        self.process.stdin.flush()
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(
                loop.run_in_executor(None, self.process.stdout.readline), self.start_timeout_s
            )
        except TimeoutError:
            self.kill()
            raise RuntimeError(
                f"engine host did not become ready within {self.start_timeout_s:g} s"
            ) from None
        if not line.startswith("READY "):
            code = self.process.poll()
            self.kill()
            raise RuntimeError(f"engine host failed to start (exit code {code}): {line.strip()}")
        _, port, errors = line.strip().split(" ", 2)
        self.port = int(port)
        self.load_errors = json.loads(errors)
        self._index = {k: i for i, k in enumerate(self.config.models)}
        self._dtypes = _input_dtypes(self.model_dir, self.config.models)
        self._reader, self._writer = await connect_authenticated(self.port, self._token)
        self._reader_task = loop.create_task(self._read_loop())
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def _read_loop(self) -> None:
        reader = self._reader
        pending = self._pending
        try:
            while True:
                size = _LEN.unpack(await reader.readexactly(4))[0]
                body = await reader.readexactly(size)
                request_id, ok, hit, batch, inference_ms, batch_id = _RESP.unpack_from(body)
                entry = pending.pop(request_id, None)
                if entry is None:
                    continue
                future, control = entry[0], entry[1]
                if future.done():
                    continue
                data = body[_RESP.size :]
                if control:
                    future.set_result(data)
                elif ok and entry[2]:  # a model of named tensors: shaped outputs
                    outs = tuple(unpack_tensors(data, [_F32] * entry[2]))
                    flat = np.concatenate([o.ravel() for o in outs]) if outs else np.empty(0)
                    future.set_result(
                        HostResult(
                            True, flat, None, batch, bool(hit), None, inference_ms, batch_id, outs
                        )
                    )
                elif ok:
                    out = np.frombuffer(data, dtype=np.float32)
                    future.set_result(
                        HostResult(True, out, None, batch, bool(hit), None, inference_ms, batch_id)
                    )
                else:
                    kind, _, message = data.decode().rpartition("\0")
                    result = HostResult(False, None, message, batch, False, kind or None)
                    future.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            for future, control, *_ in pending.values():
                if future.done():
                    continue
                if control:
                    future.set_exception(ConnectionError("engine host connection closed"))
                else:
                    future.set_result(
                        HostResult(False, None, "engine host connection closed", 0, False)
                    )
            pending.clear()

    def _send(self, body: bytes, control: bool, outputs: int = 0) -> asyncio.Future:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        request_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, control, outputs)
        struct.pack_into("<I", body, 0, request_id)
        self._writer.write(_LEN.pack(len(body)) + body)
        return future

    def _payload(self, model_key: str, x: Any) -> tuple[bytes, int]:
        """A request's input bytes, and how many outputs its answer holds (0: one flat
        float32 output)."""
        kind = self._dtypes[model_key]
        if isinstance(kind, np.dtype):
            return np.ascontiguousarray(x, dtype=kind).tobytes(), 0
        arrays = [np.asarray(x[t.name], dtype=t.dtype) for t in kind.inputs]
        return pack_tensors(arrays), len(kind.outputs)

    def predict(self, model_key: str, x: Any) -> asyncio.Future:
        """Send one request now (an array, or a mapping input name -> array for a model of
        named tensors); the future resolves to a HostResult."""
        head = bytearray(_REQ.pack(0, OP_PREDICT, self._index[model_key]))
        payload, outputs = self._payload(model_key, x)
        head += payload
        return self._send(head, control=False, outputs=outputs)

    async def _control(self, op: int, extra: bytes = b"") -> dict[str, Any]:
        future = self._send(bytearray(_CTL.pack(0, op)) + extra, control=True)
        return json.loads(await asyncio.wait_for(future, 60))

    async def stats(self) -> dict[str, Any]:
        return await self._control(OP_STATS)

    async def reload(self, model_key: str) -> dict[str, Any]:
        return await self._control(OP_RELOAD, bytes([self._index[model_key]]))

    def predict_many(self, items: Sequence[tuple[str, np.ndarray]]) -> list[asyncio.Future]:
        """Send several requests in one write (a burst that reaches the engine together);
        each future resolves to a HostResult, as with `predict`."""
        frames = bytearray()
        futures = []
        loop = asyncio.get_running_loop()
        for model_key, x in items:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
            future = loop.create_future()
            payload, outputs = self._payload(model_key, x)
            self._pending[self._next_id] = (future, False, outputs)
            body = _REQ.pack(self._next_id, OP_PREDICT, self._index[model_key]) + payload
            frames += _LEN.pack(len(body)) + body
            futures.append(future)
        self._writer.write(bytes(frames))
        return futures

    async def ballast(self, mb: int) -> dict[str, Any]:
        """Make the engine process hold `mb` MB of touched memory (0 frees it all)."""
        return await self._control(OP_BALLAST, _LEN.pack(max(0, int(mb))))

    async def pool(self, action: str, **args: Any) -> dict[str, Any]:
        """Drive the engine's memory pool: "exhaust", "release" or "probe" (see OP_POOL)."""
        return await self._control(OP_POOL, json.dumps({"action": action, **args}).encode())

    async def admission(self, settings: dict[str, Any] | None) -> dict[str, Any]:
        """Put admission control (AdmissionSettings fields) in front of the hosted engine, or
        remove it (None); returns {"enabled", "stats"} (see OP_ADMISSION)."""
        args = {"settings": settings} if settings is not None else {"off": True}
        return await self._control(OP_ADMISSION, json.dumps(args).encode())

    async def stop(self, timeout_s: float = 10.0) -> int | None:
        """Ask the child to exit (close stdin), then kill it if it does not; returns the code."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        if self.process is None:
            return None
        with contextlib.suppress(Exception):
            self.process.stdin.close()
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), timeout_s)
        except TimeoutError:
            self.kill()
            return self.process.poll()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


if __name__ == "__main__":
    _child_main()
