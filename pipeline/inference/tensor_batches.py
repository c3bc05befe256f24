"""Batches of a model of named tensors in the engine (see `pipeline.inference.engine`).

Requests are grouped by the shapes of their inputs (`shape_groups`: one runtime call per
group; requests of different sequence lengths never share a call, and nothing is padded);
each input is stacked into a pooled buffer (`_attempt_tensors`); every output must have the
batch's rows (`_answer_tensors`); each request is answered with its row of every output. A
batch the runtime raised on goes through the engine's fault isolation, whose probe is one row
of valid values (`_probe`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.inference.errors import InferenceError, PoolExhaustedError

_perf = time.perf_counter

if TYPE_CHECKING:
    from pipeline.inference.model_manager import LoadedModel

__all__ = ["TensorBatches", "request_shapes", "shape_groups"]

# a queued request's fields (pipeline.inference.engine)
_X, _FUTURE, _SUBMITTED, _DEADLINE, _CACHE_KEY, _REQUEST_ID = range(6)
_Request = tuple


def request_shapes(arrays: tuple[np.ndarray, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes of a named-tensor request's inputs: requests batch together only when
    these are equal."""
    return tuple(a.shape for a in arrays)


def shape_groups(batch: list[_Request]) -> list[list[_Request]]:
    """The requests of `batch` grouped by their inputs' shapes, in order of arrival."""
    groups: dict[tuple, list[_Request]] = {}
    for request in batch:
        groups.setdefault(request_shapes(request[_X]), []).append(request)
    return list(groups.values())


class TensorBatches:
    """The engine's named-tensor batches (a mixin of ProductionInferenceEngine)."""

    _stats: dict[str, int]
    _max_batch: int
    _failures: dict[str, int]
    memory_pool: Any
    cache: Any
    monitor: Any

    def _attempt_tensors(
        self, model: LoadedModel, batch: list[_Request]
    ) -> tuple[list[_Request], list[np.ndarray] | None, Exception | None, float, float]:
        """`_attempt` for a named-tensor model: stack each input of `batch` (one shape
        group; values were checked at submission) into a pooled buffer and run the runtime
        once. Returns the requests that ran, every output (None when the runtime raised),
        its exception, and when the run began and ended."""
        from pipeline.inference.engine import _bucket, _stack

        n = len(batch)
        pool = self.memory_pool
        held: list[np.ndarray] = []
        arrays = []
        outputs = error = None
        began = ended = _perf()
        try:
            for i, first in enumerate(batch[0][_X]):
                buffer = None
                if pool is not None:
                    try:
                        bucket = (_bucket(n, self._max_batch), *first.shape)
                        buffer = pool.allocate_tensor(bucket, first.dtype)
                        held.append(buffer)
                    except PoolExhaustedError:
                        self._stats["unpooled_batches"] += 1
                out = buffer[:n] if buffer is not None else np.empty((n, *first.shape), first.dtype)
                _stack([r[_X][i] for r in batch], out, first.shape)
                arrays.append(out)
            self._stats["runtime_calls"] += 1
            began = _perf()
            try:
                outputs = [np.asarray(o) for o in model.runtime.run_many(arrays)]
                # a view of (or written into) a pooled input buffer would be overwritten
                outputs = [
                    o.copy() if any(np.may_share_memory(o, h) for h in held) else o for o in outputs
                ]
            except Exception as exc:
                outputs = None
                error = exc
            ended = _perf()
        finally:
            for buffer in held:
                pool.release_tensor(buffer)
        return batch, outputs, error, began, ended

    def _answer_tensors(
        self,
        model: LoadedModel,
        batch: list[_Request],
        outputs: list[np.ndarray],
        began: float,
        ended: float,
        health: Any,
    ) -> None:
        """`_answer` for a named-tensor model: every output must have the batch's rows (else
        the model is at fault and every request of the batch fails)."""
        n = len(batch)
        key = model.info.key
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
        if health is not None:
            health.known = True
        self._deliver_tensors(model, batch, outputs, began, ended)

    def _probe(self, model: LoadedModel) -> bool:
        """FaultIsolation's probe for a named-tensor model: one row of valid values (its
        warm-up input) must give one finite row of every output."""
        if not model.tensor_io:
            return super()._probe(model)  # type: ignore[misc]
        rows = model.fixed_batch_size or 1
        arrays = model.signature.example_batch(rows)
        self._stats["runtime_calls"] += 1
        self._stats["probes"] += 1
        try:
            outs = [np.asarray(o) for o in model.runtime.run_many(arrays)]
        except Exception:
            return False
        return len(outs) == len(model.signature.outputs) and all(
            o.shape[:1] == (rows,) and (o.dtype.kind not in "fc" or bool(np.isfinite(o).all()))
            for o in outs
        )

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
