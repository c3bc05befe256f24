"""Dynamic-batching inference engine.

`predict()` validates a request and puts it in its model's queue *at once*, returning an
awaitable (an asyncio future). A dispatcher scheduled with `loop.call_soon` takes everything
queued for a model (up to `max_batch_size`) and runs it as one batch. That is greedy and
work-conserving: a lone request runs on the next turn of the event loop, and requests that
arrive while a batch runs form the next batch. With `batch_timeout_ms > 0` a partial batch
may instead wait up to that long for company. Every knob is a field of `EngineSettings`.

The queue is bounded (`max_queue_size`): past it a request is rejected at once with a
failed result (`rejected=True`), never queued without bound; `predict_many` queues a client
request's rows all together or rejects them all. Requests may carry deadlines; an expired
request fails without running, at its deadline even while its partial batch waits for
company, and a request whose future was cancelled (its client went away) is dropped without
running. A bad request (wrong shape, NaN, an integer outside its dtype's range) fails alone
and never fails its batch-mates: if the runtime raises on a batch, the batch is bisected
until every request it raises on is isolated (`pipeline.inference.isolation`: at most
2(n - 1) extra runs and one probe). A request the runtime raises on while it answers other
inputs fails with InputRuntimeError, and a NaN or Inf output for one request with
NonFiniteOutputError: those are the request's errors, never the model's. Only model faults
(a runtime that fails its probe too, a wrong output batch) count toward the automatic
reload of a model. Outputs that are views of the pooled input buffer are copied before the
buffer is reused.

Batches run inline on the event loop thread: for small models a thread hand-off costs more
than the inference itself. An engine may be created outside an event loop and then used from
whichever loop calls it, one after another.

Models of named tensors (several inputs or outputs, dynamic non-batch dimensions, declared
value ranges: see `pipeline.inference.signature`) take a mapping of input name -> array per
request (a model of one input also takes the array itself) and answer with `output` (the
first output) and `outputs` (every output by name). Each request is one sample; the values
are checked when it is submitted (dtype, shape, dims shared between inputs, finite, within
the declared range). Requests are batched together only when their inputs have the same
shapes: a batch mixing sequence lengths is split into one runtime call per shape (in order of
arrival), never padded, since padding could change what the model computes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.inference._records import RecordMixin
from pipeline.inference.cache import ResultCache
from pipeline.inference.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelNotLoadedError,
    NonFiniteOutputError,
    PoolExhaustedError,
    QueueFullError,
)
from pipeline.inference.inputs import coerce_input
from pipeline.inference.isolation import FaultIsolation, Health
from pipeline.inference.memory_pool import MemoryPoolManager
from pipeline.inference.model_manager import LoadedModel, ProductionModelManager
from pipeline.inference.monitor import RealTimePerformanceMonitor
from pipeline.inference.settings import EngineSettings
from pipeline.inference.tensor_batches import TensorBatches, request_shapes, shape_groups

__all__ = ["InferenceResult", "ProductionInferenceEngine"]

_perf = time.perf_counter
_UNSET: Any = object()  # "not given" (None is a meaningful default_deadline_ms)


@dataclass(slots=True)
class InferenceResult(RecordMixin):
    """The outcome of one request. `output` has the batch dimension removed."""

    success: bool
    output: np.ndarray | None
    error: str | None
    inference_time_ms: float
    queue_time_ms: float
    batch_size: int
    cache_hit: bool
    total_time_ms: float = 0.0
    model_name: str = ""
    model_version: str = ""
    request_id: Any = None
    rejected: bool = False
    error_type: str | None = None
    batch_id: int = 0
    #: every output by name (models of named tensors; None for single-tensor models)
    outputs: dict[str, np.ndarray] | None = None


# A queued request is a plain tuple (cheaper to build than an object, and unpacked once per
# batch): (input row, future, submitted perf_counter, deadline or None, cache key or None,
# request id). The indices below name its fields where one is read alone.
_X, _FUTURE, _SUBMITTED, _DEADLINE, _CACHE_KEY, _REQUEST_ID = range(6)
_Request = tuple


def _bucket(n: int, cap: int) -> int:
    """Pool buffers come in powers of two so a few shapes serve every batch size."""
    size = 1
    while size < n:
        size <<= 1
    return min(size, max(cap, n))


class ProductionInferenceEngine(TensorBatches, FaultIsolation):
    """Batches concurrent requests per model and runs them on the manager's runtimes."""

    def __init__(
        self,
        model_manager: ProductionModelManager,
        max_batch_size: int | None = None,
        batch_timeout_ms: float | None = None,
        memory_pool: MemoryPoolManager | None = None,
        cache: ResultCache | None = None,
        monitor: RealTimePerformanceMonitor | None = None,
        *,
        settings: EngineSettings | None = None,
        max_queue_size: int | None = None,
        default_deadline_ms: float | object | None = _UNSET,
        auto_load: bool = True,
        recovery_failure_threshold: int | None = None,
        recovery_cooldown_s: float | None = None,
        memory_check_interval_s: float | None = None,
    ) -> None:
        """`settings` configures every knob at once; the keyword arguments (the original
        API) override single knobs. With `settings`, the memory pool and result cache are
        built from it unless given; without, there is none unless given (as before)."""
        base = settings if settings is not None else EngineSettings()
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("max_batch_size", max_batch_size),
                ("batch_timeout_ms", batch_timeout_ms),
                ("max_queue_size", max_queue_size),
                ("recovery_failure_threshold", recovery_failure_threshold),
                ("recovery_cooldown_s", recovery_cooldown_s),
                ("memory_check_interval_s", memory_check_interval_s),
            )
            if value is not None
        }
        if default_deadline_ms is not _UNSET:
            changes["default_deadline_ms"] = default_deadline_ms
        if settings is not None:
            memory_pool = memory_pool if memory_pool is not None else settings.memory_pool()
            cache = cache if cache is not None else settings.result_cache()
        # the settings describe the engine as built: its pool, cache and manager included
        changes["pool_mb"] = memory_pool.max_pool_size_mb if memory_pool is not None else 0.0
        changes["cache_entries"] = cache.max_entries if cache is not None else 0
        changes["max_memory_mb"] = model_manager.max_memory_mb
        threads = getattr(model_manager, "num_threads", None)
        if threads:
            changes["intra_op_threads"] = int(threads)
        self.settings: EngineSettings = base.replace(**changes)
        self.model_manager = model_manager
        self.memory_pool = memory_pool
        self.cache = cache
        self.monitor = monitor
        self.auto_load = auto_load
        memory_check_interval_s = self.settings.memory_check_interval_s
        # hot-path copies of frozen settings (plain attribute reads per request)
        self._max_batch = self.settings.max_batch_size
        self._max_queue = self.settings.max_queue_size
        self._wait_s = self.settings.batch_timeout_ms / 1000.0
        default_ms = self.settings.default_deadline_ms
        self._default_deadline_s = None if default_ms is None else default_ms / 1000.0

        self._queues: dict[str, deque[_Request]] = {}
        self._queued = 0
        self._keys: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch_handle: asyncio.Handle | None = None
        self._timer_handle: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._failures: dict[str, int] = {}
        self._last_recovery: dict[str, float] = {}
        self._recovery_tasks: set[asyncio.Task] = set()
        self._next_memory_check = _perf() + memory_check_interval_s
        self._stats = {
            "submitted": 0,
            "completed": 0,
            "succeeded": 0,
            "failed": 0,
            "rejected": 0,
            "expired": 0,
            "invalid": 0,
            "cache_hits": 0,
            "batches": 0,
            "batched_requests": 0,
            "max_batch_size_seen": 0,
            "unpooled_batches": 0,
            "abandoned": 0,
            "recoveries": 0,
            "runtime_calls": 0,
            "non_finite_outputs": 0,
            "input_runtime_errors": 0,
            "probes": 0,
            "cancelled": 0,
        }
        model_manager.add_reload_listener(self._on_reload)
        if monitor is not None:
            monitor.set_queue_depth_provider(lambda: self._queued)
            monitor.add_pressure_hook(self._relieve_memory)

    # ----------------------------------------------------------------- submission
    def predict(
        self,
        model_name: str,
        input: Any,
        *,
        deadline_ms: float | None = None,
        request_id: Any = None,
        use_cache: bool = True,
    ) -> asyncio.Future[InferenceResult]:
        """Submit one request now; await the returned future for its InferenceResult."""
        loop = self._running_loop()
        future: asyncio.Future[InferenceResult] = loop.create_future()
        now = _perf()
        self._stats["submitted"] += 1
        try:
            model = self._model(model_name)
            # Shape and dtype are two attribute compares per request (the common case: an
            # array of the model's exact dtype and shape); anything else is coerced and
            # checked in full. The values themselves (NaN/Inf) are checked once per batch
            # on the stacked array, in `_execute`.
            x = input
            if (
                type(x) is not np.ndarray
                or x.dtype is not model.dtype
                or x.shape != model.feature_shape
            ):
                x = coerce_input(model, x)
        except InferenceError as exc:
            self._stats["invalid"] += isinstance(exc, InvalidInputError)
            self._fail_now(future, model_name, exc, now, request_id)
            return future
        key = model.info.key
        cache_key = None
        if use_cache and self.cache is not None:
            # the input's bytes are read (and hashed) only when this request uses the cache
            if model.tensor_io:
                cache_key = (
                    key,
                    model.generation,
                    request_shapes(x),
                    b"".join(a.tobytes() for a in x),
                )
            else:
                cache_key = (key, model.generation, x.shape, x.tobytes())
            cached = self.cache.get(cache_key)
            if cached is not None:
                self._stats["cache_hits"] += 1
                result = InferenceResult(
                    True,
                    cached,
                    None,
                    0.0,
                    0.0,
                    0,
                    True,
                    (_perf() - now) * 1000.0,
                    model_name,
                    model.version,
                    request_id,
                )
                if model.tensor_io:  # cached: every output row, in output order
                    result.output = cached[0]
                    result.outputs = dict(zip(model.signature.output_names, cached, strict=True))
                self._complete(future, result)
                return future
        if self._queued >= self._max_queue:
            self._stats["rejected"] += 1
            exc = QueueFullError(
                f"queue full: {self._queued} requests waiting (max_queue_size="
                f"{self._max_queue}); request for {model_name!r} rejected"
            )
            self._fail_now(future, model_name, exc, now, request_id, rejected=True)
            return future
        if deadline_ms is None:
            deadline = None if self._default_deadline_s is None else now + self._default_deadline_s
        else:
            deadline = now + deadline_ms / 1000.0
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append((x, future, now, deadline, cache_key, request_id))
        self._queued += 1
        if self._dispatch_handle is None:  # one wake-up per batch, not per request
            self._dispatch_handle = loop.call_soon(self._dispatch)
        return future

    def predict_many(
        self, model_name: str, inputs: Sequence[Any], **options: Any
    ) -> asyncio.Future[list[InferenceResult]]:
        """Submit the requests of `inputs` (the rows of one client request) together, all or
        none: when the queue has no room for every one of them, each fails at once with
        `rejected=True` and none is queued, so a refused request costs no computation.
        `options` are `predict`'s; the future gives the results in order."""
        loop = self._running_loop()
        count = len(inputs)
        if count and self._queued + count > self._max_queue:
            now = _perf()
            exc = QueueFullError(
                f"queue full: {self._queued} requests waiting, no room for {count} more "
                f"(max_queue_size={self._max_queue}); request for {model_name!r} rejected"
            )
            futures = []
            for _ in range(count):
                self._stats["submitted"] += 1
                self._stats["rejected"] += 1
                future = loop.create_future()
                self._fail_now(future, model_name, exc, now, options.get("request_id"), True)
                futures.append(future)
        else:
            futures = [self.predict(model_name, x, **options) for x in inputs]
        return asyncio.gather(*futures)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "predict() must be called from a running event loop (inside async code); "
                "it submits the request at once and returns a future to await"
            ) from None
        if loop is not self._loop:
            self._bind(loop)
        return loop

    async def predict_batch(self, model_name: str, inputs: Iterable[Any]) -> list[InferenceResult]:
        """Submit several requests together (they batch together) and wait for all."""
        futures = [self.predict(model_name, x) for x in inputs]
        return list(await asyncio.gather(*futures))

    async def start(self) -> None:
        """Bind to the running loop (optional: `predict` binds on first use)."""
        self._bind(asyncio.get_running_loop())

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) until queued requests are served."""
        deadline = _perf() + timeout_s
        while self._queued and _perf() < deadline:
            await asyncio.sleep(0.001)
        for task in list(self._recovery_tasks):
            await asyncio.wait_for(task, timeout=max(0.0, deadline - _perf()))

    @property
    def queue_depth(self) -> int:
        return self._queued

    # The original API's attributes, read from the settings (one source).
    @property
    def max_batch_size(self) -> int:
        return self.settings.max_batch_size

    @property
    def batch_timeout_ms(self) -> float:
        return self.settings.batch_timeout_ms

    @property
    def max_queue_size(self) -> int:
        return self.settings.max_queue_size

    @property
    def default_deadline_ms(self) -> float | None:
        return self.settings.default_deadline_ms

    @property
    def recovery_failure_threshold(self) -> int:
        return self.settings.recovery_failure_threshold

    @property
    def recovery_cooldown_s(self) -> float:
        return self.settings.recovery_cooldown_s

    @property
    def memory_check_interval_s(self) -> float:
        return self.settings.memory_check_interval_s

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve from a new event loop; requests stranded on a closed loop are dropped."""
        if self._loop is not None and self._loop is not loop:
            for queue in self._queues.values():
                for request in queue:
                    self._stats["abandoned"] += 1
                    future = request[_FUTURE]
                    if not future.done() and not future.get_loop().is_closed():
                        future.cancel()
                queue.clear()
            self._queued = 0
        self._loop = loop
        self._dispatch_handle = None
        self._timer_handle = None
        self._timer_due = float("inf")
        self._recovery_tasks = set()

    def _model(self, model_name: str) -> LoadedModel:
        key = self._keys.get(model_name)
        if key is None:
            key = self.model_manager.resolve(model_name)
            self._keys[model_name] = key
        try:
            return self.model_manager.get_model(key)
        except ModelNotLoadedError:
            if self.auto_load and self.model_manager.load_model(key):
                return self.model_manager.get_model(key)
            reason = self.model_manager.load_errors.get(key)
            raise ModelNotLoadedError(
                f"model {model_name!r} is not loaded" + (f": {reason}" if reason else "")
            ) from None

    # ----------------------------------------------------------------- dispatch
    def _dispatch(self) -> None:
        self._dispatch_handle = None
        now = _perf()
        wait_s = self._wait_s
        max_batch = self._max_batch
        pending = False
        for key, queue in self._queues.items():
            if not queue:
                continue
            if wait_s > 0 and len(queue) < max_batch:
                # a partial batch waits for company, but never past a request's deadline
                next_deadline = self._expire_waiting(key, queue, now)
                if not queue:
                    continue
                due = queue[0][_SUBMITTED] + wait_s
                if due > now:
                    self._arm_timer(min(due, next_deadline), now)
                    continue
            if len(queue) <= max_batch:  # the common case: take the whole queue
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(max_batch)]
            self._queued -= len(batch)
            self._run_batch(key, batch)
            pending = pending or bool(queue)
        if pending and self._dispatch_handle is None and self._loop is not None:
            self._dispatch_handle = self._loop.call_soon(self._dispatch)
        if self.monitor is not None and now >= self._next_memory_check:
            self._next_memory_check = now + self.memory_check_interval_s
            self.monitor.check_memory_pressure()

    def _arm_timer(self, due: float, now: float) -> None:
        if self._timer_handle is not None and self._timer_due <= due:
            return
        if self._timer_handle is not None:
            self._timer_handle.cancel()
        self._timer_due = due
        self._timer_handle = self._loop.call_later(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer_handle = None
        self._timer_due = float("inf")
        if self._dispatch_handle is None:
            self._dispatch()  # partial batches whose wait is over run now

    def _expire_waiting(self, key: str, queue: deque[_Request], now: float) -> float:
        """Take out of a partial batch that waits for company the requests whose deadline
        has passed (they fail now, not when the batch is dispatched) and those whose caller
        left; returns the earliest deadline of those that still wait (inf: none)."""
        earliest = float("inf")
        dead = False
        for request in queue:
            deadline = request[_DEADLINE]
            if request[_FUTURE].done() or (deadline is not None and now > deadline):
                dead = True
            elif deadline is not None and deadline < earliest:
                earliest = deadline
        if dead:
            waiting = list(queue)
            queue.clear()
            try:
                version = self.model_manager.get_model(key).version
            except ModelNotLoadedError:
                version = ""
            live = self._drop_dead(key, version, waiting, now)
            queue.extend(live)
            self._queued -= len(waiting) - len(live)
        return earliest

    def _run_batch(self, key: str, batch: list[_Request]) -> None:
        try:
            model = self.model_manager.get_model(key)
        except ModelNotLoadedError as exc:
            for request in batch:
                self._fail(request, key, "", exc, 0.0, 0.0, len(batch))
            return
        model.last_used = start = _perf()
        live = batch
        for request in batch:
            # a cancelled future (its caller went away) or an expired deadline: filter
            deadline = request[_DEADLINE]
            if request[_FUTURE].done() or (deadline is not None and start > deadline):
                live = self._drop_dead(key, model.version, batch, start)
                break
        if not live:
            return
        if model.fixed_batch_size is not None:
            health = Health()  # one probe at most for the whole dispatch
            for request in live:
                self._execute(model, [request], health)
        else:
            self._execute(model, live)

    def _drop_dead(self, key: str, version: str, batch: list[_Request], start: float) -> list:
        """The requests of `batch` still worth running: a cancelled one (its caller went
        away) is dropped, an expired one fails with DeadlineExceededError."""
        live: list[_Request] = []
        for request in batch:
            if request[_FUTURE].done():
                self._stats["cancelled"] += 1
                continue
            deadline = request[_DEADLINE]
            if deadline is not None and start > deadline:
                self._stats["expired"] += 1
                exc = DeadlineExceededError(
                    f"deadline exceeded: waited {(start - request[_SUBMITTED]) * 1000:.1f} ms "
                    f"in the queue for {key!r}"
                )
                self._fail(request, key, version, exc, 0.0, 0.0, 0)
                continue
            live.append(request)
        return live

    def _execute(
        self, model: LoadedModel, batch: list[_Request], health: Health | None = None
    ) -> None:
        """Run one batch and answer its requests. If the runtime raises, find out whose
        input it raised on (`_isolate`), so batch-mates still get answers. A batch of a
        model of named tensors runs as one call per group of requests of equal input
        shapes."""
        if model.tensor_io and len(batch) > 1:
            groups = shape_groups(batch)
            if len(groups) > 1:
                for group in groups:
                    self._execute(model, group, health)
                return
        batch, outputs, error, began, ended = self._attempt(model, batch)
        if not batch:
            return
        if outputs is None:
            self._isolate(model, batch, error, began, ended, health or Health())
        else:
            self._answer(model, batch, outputs, began, ended, health)

    def _attempt(
        self, model: LoadedModel, batch: list[_Request]
    ) -> tuple[list[_Request], np.ndarray | None, Exception | None, float, float]:
        """Stack `batch` into an input array (pooled when possible) and run the runtime once.
        Requests with NaN/Inf inputs fail here, alone. Returns the requests that ran, their
        outputs (None when the runtime raised), its exception, and when the run began and
        ended."""
        if model.tensor_io:
            return self._attempt_tensors(model, batch)
        n = len(batch)
        key = model.info.key
        shape = model.feature_shape
        base = None
        pool = self.memory_pool
        outputs = error = None
        began = ended = _perf()
        if pool is not None:
            try:
                base = pool.allocate_tensor((_bucket(n, self._max_batch), *shape), model.dtype)
                inputs = base[:n]
            except PoolExhaustedError:
                self._stats["unpooled_batches"] += 1
                inputs = np.empty((n, *shape), dtype=model.dtype)
        else:
            inputs = np.empty((n, *shape), dtype=model.dtype)
        try:
            _stack([r[_X] for r in batch], inputs, shape)
            # NaN/Inf inputs: one check over the whole stacked batch; only when it fails are
            # the bad rows found, and those requests (and only those) fail
            finite = _finite_rows(inputs, n)
            if finite is not None:
                for request, ok in zip(batch, finite.tolist(), strict=True):
                    if not ok:
                        self._stats["invalid"] += 1
                        exc = InvalidInputError(
                            f"model {key!r}: input contains NaN or Inf (expected finite values)"
                        )
                        self._fail(request, key, model.version, exc, 0.0, 0.0, n)
                batch = [r for r, ok in zip(batch, finite.tolist(), strict=True) if ok]
                if not batch:
                    return batch, None, None, began, ended
                inputs = np.ascontiguousarray(inputs[finite])
            self._stats["runtime_calls"] += 1
            began = _perf()
            try:
                outputs = model.runtime.run(inputs)
                if base is not None and np.may_share_memory(outputs, base):
                    # a view of (or the model wrote into) the pooled input buffer: the next
                    # batch would overwrite these results once the buffer is reused
                    outputs = outputs.copy()
            except Exception as exc:
                outputs = None
                error = exc
            ended = _perf()
        finally:
            if base is not None:
                pool.release_tensor(base)
        return batch, outputs, error, began, ended

    def _answer(
        self,
        model: LoadedModel,
        batch: list[_Request],
        outputs: np.ndarray,
        began: float,
        ended: float,
        health: Health | None,
    ) -> None:
        """Answer the requests of a batch the runtime ran. An output that is not one row per
        request is a fault of the model: every request of the batch fails."""
        if model.tensor_io:
            self._answer_tensors(model, batch, outputs, began, ended, health)
            return
        n = len(batch)
        key = model.info.key
        if outputs.shape[0] != n:
            exc = InferenceError(
                f"model {key!r}: output batch dimension {outputs.shape[0]} != input batch {n}"
            )
            self._model_failed(model, str(exc))
            for request in batch:
                self._fail(request, key, model.version, exc, 0.0, 0.0, n)
            return
        self._failures[key] = 0  # the runtime answered: recovery counts consecutive faults
        if health is not None:
            health.known = True
        self._deliver(model, batch, outputs, began, ended)

    def _deliver(
        self,
        model: LoadedModel,
        batch: list[_Request],
        outputs: np.ndarray,
        began: float,
        ended: float,
    ) -> None:
        """Answer each request of a batch the runtime ran. A non-finite output row is its
        request's error (the input is outside what the model handles), not the model's.

        The bookkeeping is per batch: one clock read for the batch's completion, one
        monitor update and one cache update (one lock each) for all its requests."""
        n = len(batch)
        key = model.info.key
        version = model.version
        stats = self._stats
        stats["batches"] += 1
        batch_id = stats["batches"]
        stats["batched_requests"] += n
        if n > stats["max_batch_size_seen"]:
            stats["max_batch_size_seen"] = n
        out_ok = _finite_rows(outputs, n)
        if out_ok is not None:  # rare: some rows are NaN/Inf; those requests fail alone
            ok = out_ok.tolist()
            self._non_finite_outputs(model, batch, ok, n, began, ended)
            batch = [r for r, good in zip(batch, ok, strict=True) if good]
            outputs = outputs[out_ok]
            if not batch:
                return
        inference_ms = (ended - began) * 1000.0
        cache = self.cache
        if cache is not None:
            entries = [
                (r[_CACHE_KEY], row)
                for r, row in zip(batch, outputs, strict=True)
                if r[_CACHE_KEY] is not None
            ]
            if entries:
                cache.put_many(entries)
        done = _perf()
        latencies = []
        for request, row in zip(batch, outputs, strict=True):
            submitted = request[_SUBMITTED]
            total_ms = (done - submitted) * 1000.0
            latencies.append(total_ms)
            future = request[_FUTURE]
            if not future.done():
                future.set_result(
                    InferenceResult(
                        True,
                        row,
                        None,
                        inference_ms,
                        (began - submitted) * 1000.0,
                        n,
                        False,
                        total_ms,
                        key,
                        version,
                        request[_REQUEST_ID],
                        False,
                        None,
                        batch_id,
                    )
                )
        delivered = len(latencies)
        stats["completed"] += delivered
        stats["succeeded"] += delivered
        if self.monitor is not None:
            self.monitor.record_batch(latencies, True, False)

    def _non_finite_outputs(self, model, batch, ok, n, began, ended) -> None:
        key = model.info.key
        inference_ms = (ended - began) * 1000.0
        for request, good in zip(batch, ok, strict=True):
            if good:
                continue
            self._stats["non_finite_outputs"] += 1
            exc = NonFiniteOutputError(
                f"model {key!r}: produced NaN or Inf output for this input (finite values "
                "outside the range the model handles)"
            )
            self._fail(
                request,
                key,
                model.version,
                exc,
                inference_ms,
                (began - request[_SUBMITTED]) * 1000.0,
                n,
            )

    # ----------------------------------------------------------------- outcomes
    def _complete(self, future: asyncio.Future, result: InferenceResult) -> None:
        stats = self._stats
        stats["completed"] += 1
        stats["succeeded" if result.success else "failed"] += 1
        if self.monitor is not None:
            self.monitor.record(result.total_time_ms, result.success, result.cache_hit)
        if not future.done():
            future.set_result(result)

    def _fail_now(self, future, model_name, exc, submitted, request_id, rejected=False) -> None:
        result = InferenceResult(
            False,
            None,
            str(exc),
            0.0,
            0.0,
            0,
            False,
            (_perf() - submitted) * 1000.0,
            model_name,
            "",
            request_id,
            rejected,
            type(exc).__name__,
        )
        self._complete(future, result)

    def _fail(self, request, key, version, exc, inference_ms, queue_ms, batch_size) -> None:
        result = InferenceResult(
            False,
            None,
            str(exc),
            inference_ms,
            queue_ms,
            batch_size,
            False,
            (_perf() - request[_SUBMITTED]) * 1000.0,
            key,
            version,
            request[_REQUEST_ID],
            False,
            type(exc).__name__,
        )
        self._complete(request[_FUTURE], result)

    def _fail_after(self, request, model, exc, began, ended, batch_size) -> None:
        """Fail a request that ran (in a run from `began` to `ended`)."""
        self._fail(
            request,
            model.info.key,
            model.version,
            exc,
            (ended - began) * 1000.0,
            max(0.0, began - request[_SUBMITTED]) * 1000.0,
            batch_size,
        )

    # ----------------------------------------------------------------- recovery
    def _model_failed(self, model: LoadedModel, reason: str) -> None:
        key = model.info.key
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if count < self.recovery_failure_threshold or self._loop is None:
            return
        now = _perf()
        if now - self._last_recovery.get(key, -1e9) < self.recovery_cooldown_s:
            return
        self._last_recovery[key] = now
        self._failures[key] = 0
        self._stats["recoveries"] += 1
        task = self._loop.create_task(self._recover(key, reason, count))
        self._recovery_tasks.add(task)
        task.add_done_callback(self._recovery_tasks.discard)

    async def _recover(self, key: str, reason: str, count: int) -> None:
        ok = await self.model_manager.reload_model_async(key)
        if self.monitor is not None:
            detail = f"{count} consecutive failures ({reason}); reloaded from verified file"
            if not ok:
                detail += f": reload failed: {self.model_manager.load_errors.get(key)}"
            self.monitor.record_event("model_reload", key, detail, ok)

    def _on_reload(self, key: str, new: LoadedModel) -> None:
        self._failures[key] = 0
        if self.cache is not None:
            self.cache.invalidate(key)

    def _relieve_memory(self) -> str:
        actions = []
        if self.memory_pool is not None:
            actions.append(f"pool released {self.memory_pool.shrink(0.0):.1f} MB")
        if self.cache is not None:
            actions.append(f"cache dropped {self.cache.invalidate(None)} entries")
        return ", ".join(actions) or "nothing to release"

    # ----------------------------------------------------------------- stats
    def get_stats(self) -> dict[str, Any]:
        stats = dict(self._stats)
        stats["queue_depth"] = self._queued
        stats["mean_batch_size"] = (
            stats["batched_requests"] / stats["batches"] if stats["batches"] else 0.0
        )
        stats["max_batch_size"] = self.max_batch_size
        stats["batch_timeout_ms"] = self.batch_timeout_ms
        stats["max_queue_size"] = self.max_queue_size
        if self.memory_pool is not None:
            stats["memory_pool"] = self.memory_pool.get_memory_stats().to_dict()
        if self.cache is not None:
            stats["cache"] = self.cache.get_stats().to_dict()
        return stats


def as_batch(inputs: Sequence[Any]) -> np.ndarray:
    """Stack request inputs into one float32 batch (a helper for callers and tests)."""
    return np.stack([np.asarray(x, dtype=np.float32) for x in inputs])


def _stack(rows: list[np.ndarray], out: np.ndarray, shape: tuple[int, ...]) -> None:
    """Copy equal-shaped `rows` into `out` (len(rows), *shape): one C-level concatenate
    (np.stack builds a view per row in Python first, ~3x slower for small rows)."""
    if shape:
        np.concatenate(rows, out=out.reshape((len(rows) * shape[0], *shape[1:])))
    else:
        np.stack(rows, out=out)


_isfinite = np.isfinite
_all = np.logical_and.reduce


def _finite_rows(a: np.ndarray, n: int) -> np.ndarray | None:
    """None when every value of `a` (n rows) is finite (one pass over the whole batch),
    else a boolean mask of its finite rows (only then is the row-by-row check done)."""
    if a.dtype.kind not in "fc" or _all(_isfinite(a), axis=None):
        return None
    return _all(_isfinite(a.reshape(n, -1)), axis=1)
