"""Batches of a model of named tensors in the engine (see `pipeline.inference.engine`).

Requests are grouped by the shapes of their inputs (one runtime call per group: requests of
different sequence lengths never share a call, and nothing is padded); each input is stacked
into a pooled buffer; every output must have the batch's rows; each request is answered with
its row of every output.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.inference.errors import InferenceError, PoolExhaustedError

_perf = time.perf_counter

if TYPE_CHECKING:
    from pipeline.inference.model_manager import LoadedModel

__all__ = ["TensorBatches", "request_shapes"]

# a queued request's fields (pipeline.inference.engine)
_X, _FUTURE, _SUBMITTED, _DEADLINE, _CACHE_KEY, _REQUEST_ID = range(6)
_Request = tuple


def request_shapes(arrays: tuple[np.ndarray, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes of a named-tensor request's inputs: requests batch together only when
    these are equal."""
    return tuple(a.shape for a in arrays)


class TensorBatches:
    """The engine's named-tensor batches (a mixin of ProductionInferenceEngine)."""

    _stats: dict[str, int]
    _max_batch: int
    _failures: dict[str, int]
    memory_pool: Any
    cache: Any
    monitor: Any

    def _execute_tensors(
        self,
        model: LoadedModel,
        batch: list[_Request],
        start: float,
        budget: list[int] | None,
    ) -> None:
        """Run a batch of a named-tensor model: one runtime call per group of requests whose
        inputs have the same shapes (values were checked at submission)."""
        from pipeline.inference.engine import _bucket, _stack

        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request_shapes(request[_X]), []).append(request)
        if len(groups) > 1:
            for group in groups.values():
                self._execute_tensors(model, group, start, budget)
            return
        n = len(batch)
        key = model.info.key
        pool = self.memory_pool
        held: list[np.ndarray] = []
        arrays = []
        try:
            for i, first in enumerate(batch[0][_X]):
                shape = (n, *first.shape)
                buffer = None
                if pool is not None:
                    try:
                        bucket = (_bucket(n, self._max_batch), *first.shape)
                        buffer = pool.allocate_tensor(bucket, first.dtype)
                        held.append(buffer)
                    except PoolExhaustedError:
                        self._stats["unpooled_batches"] += 1
                out = buffer[:n] if buffer is not None else np.empty(shape, dtype=first.dtype)
                _stack([r[_X][i] for r in batch], out, first.shape)
                arrays.append(out)
            self._stats["runtime_calls"] += 1
            began = _perf()
            try:
                outputs = [np.asarray(o) for o in model.runtime.run_many(arrays)]
                outputs = [
                    o.copy() if any(np.may_share_memory(o, h) for h in held) else o for o in outputs
                ]
            except Exception as exc:
                outputs = None
                error: Exception = exc
            ended = _perf()
        finally:
            for buffer in held:
                pool.release_tensor(buffer)
        if outputs is None:
            self._isolate(model, batch, start, budget, error, began, ended)
            return
        names = model.signature.output_names
        wrong = len(outputs) != len(names) or any(o.ndim == 0 or o.shape[0] != n for o in outputs)
        if wrong:
            exc = InferenceError(
                f"model {key!r}: returned outputs of shapes {[list(o.shape) for o in outputs]} "
                f"for a batch of {n}; expected {len(names)} output(s) ({', '.join(names)}) "
                "with the batch's rows"
            )
            self._model_failed(model, str(exc))
            for request in batch:
                self._fail(request, key, model.version, exc, 0.0, 0.0, n)
            return
        self._failures[key] = 0
        self._deliver_tensors(model, batch, outputs, began, ended)

    def _deliver_tensors(
        self,
        model: LoadedModel,
        batch: list[_Request],
        outputs: list[np.ndarray],
        began: float,
        ended: float,
    ) -> None:
        """Answer each request of a named-tensor batch: `output` its first output's row,
        `outputs` every output's row by name."""
        from pipeline.inference.engine import InferenceResult, _finite_rows

        n = len(batch)
        masks = [m for m in (_finite_rows(o, n) for o in outputs) if m is not None]
        if masks:  # rare: some rows are NaN/Inf in some output; those requests fail alone
            good = np.logical_and.reduce(masks)
            self._non_finite_outputs(model, batch, good.tolist(), n, began, ended)
            batch = [r for r, ok in zip(batch, good.tolist(), strict=True) if ok]
            outputs = [o[good] for o in outputs]
            if not batch:
                return
        rows = list(zip(*outputs, strict=True))
        stats = self._stats
        stats["batches"] += 1
        batch_id = stats["batches"]
        stats["batched_requests"] += n
        stats["max_batch_size_seen"] = max(stats["max_batch_size_seen"], n)
        if self.cache is not None:
            entries = [(r[_CACHE_KEY], row) for r, row in zip(batch, rows, strict=True)]
            entries = [e for e in entries if e[0] is not None]
            if entries:
                self.cache.put_many(entries)
        names = model.signature.output_names
        inference_ms = (ended - began) * 1000.0
        done = _perf()
        latencies = []
        for request, row in zip(batch, rows, strict=True):
            submitted = request[_SUBMITTED]
            total_ms = (done - submitted) * 1000.0
            latencies.append(total_ms)
            future = request[_FUTURE]
            if not future.done():
                result = InferenceResult(
                    True,
                    row[0],
                    None,
                    inference_ms,
                    (began - submitted) * 1000.0,
                    n,
                    False,
                    total_ms,
                    model.info.key,
                    model.version,
                    request[_REQUEST_ID],
                    False,
                    None,
                    batch_id,
                    dict(zip(names, row, strict=True)),
                )
                future.set_result(result)
        stats["completed"] += len(latencies)
        stats["succeeded"] += len(latencies)
        if self.monitor is not None:
            self.monitor.record_batch(latencies, True, False)
