"""Whose input did the runtime raise on? Fault isolation for the batching engine.

When the runtime raises on a batch, either some requests' values are beyond what the model
computes (an index past an embedding table, a data-dependent check in the model) or the
model itself is broken (a corrupt session, a runtime in a bad state). The first is those
requests' error: answered alone (the service says 4xx), counted apart
(``input_runtime_errors``), never counted toward the model's reload. The second is the
model's fault: it counts toward `recovery_failure_threshold` and the model is reloaded from
its verified file. Good requests of a batch are never failed for another request's input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.inference.errors import InputRuntimeError
from pipeline.inference.model_manager import LoadedModel, dummy_batch

__all__ = ["FaultIsolation", "Health"]


class Health:
    """What one dispatch has learnt of its model's runtime: `known` is True once the
    runtime answered in it (a part of the batch, or the probe), False once it failed the
    probe; `counted` once the dispatch's fault has counted toward the model's recovery."""

    __slots__ = ("counted", "known")

    def __init__(self) -> None:
        self.known: bool | None = None
        self.counted = False


def _halves(part: list) -> list[list]:
    """The two halves of `part`, the first half last (a stack pops it first)."""
    half = len(part) // 2
    return [part[half:], part[:half]]


class FaultIsolation:
    """`_isolate`, the engine's answer to a batch its runtime raised on (a mixin of
    ProductionInferenceEngine: it uses the engine's `_attempt`, `_answer`, `_fail_after`,
    `_model_failed` and `_stats`)."""

    _stats: dict[str, Any]

    def _isolate(
        self,
        model: LoadedModel,
        batch: list,
        error: Exception,
        began: float,
        ended: float,
        health: Health,
    ) -> None:
        """The runtime raised on `batch` (n requests): find the requests it raises on.

        Bisection: a part that raised is split in halves and each half runs again, until
        every request is answered or has raised alone; a request fails only after raising
        alone, so its batch-mates' inputs never fail it. Bound: at most 2(n - 1) runs beyond
        the batch's own (every part of the bisection tree runs once; about 2k log2(n/k)
        when k requests are bad), plus one probe, and never more than twice the runs of
        serving every request alone.

        Who is at fault is settled when the first request raises alone: if the runtime has
        answered another part of this dispatch, or answers the probe (one row of the input
        it was warmed up with), it is healthy and each request that raised alone fails with
        InputRuntimeError. If it fails the probe too, the model is at fault: that request
        and every request not yet run fail at once with the runtime's error (no further
        runs: a broken runtime costs the batch, one path down the bisection and the probe)
        and the dispatch counts once toward the model's recovery."""
        suspects: list[tuple[Any, Exception, float, float]] = []  # raised alone
        parts: list[list] = []  # parts still to run; the next one last
        if len(batch) == 1:
            suspects.append((batch[0], error, began, ended))
        else:
            parts += _halves(batch)
        while True:
            if suspects and health.known is None:
                health.known = self._probe(model)
            if health.known is False:
                unrun = [request for part in parts for request in part]
                self._model_fault(model, suspects, unrun, error, health)
                return
            if not parts:
                break
            part, outputs, raised, began, ended = self._attempt(model, parts.pop())
            if not part:
                continue
            if outputs is not None:
                self._answer(model, part, outputs, began, ended, health)
                continue
            error = raised
            if len(part) == 1:
                suspects.append((part[0], raised, began, ended))
            else:
                parts += _halves(part)
        for request, raised, began, ended in suspects:
            self._stats["input_runtime_errors"] += 1
            exc = InputRuntimeError(
                f"model {model.info.key!r}: the runtime raised on this request's values, "
                f"while it answers other inputs ({type(raised).__name__}: {raised})"
            )
            self._fail_after(request, model, exc, began, ended, 1)

    def _probe(self, model: LoadedModel) -> bool:
        """Whether the runtime answers one row of its warm-up input (zeros for integer
        inputs, uniform [0, 1) floats otherwise) with one finite output row."""
        rows = model.fixed_batch_size or 1
        x = dummy_batch((rows, *model.feature_shape), model.dtype)
        self._stats["runtime_calls"] += 1
        self._stats["probes"] += 1
        try:
            out = np.asarray(model.runtime.run(x))
        except Exception:
            return False
        finite = out.dtype.kind not in "fc" or bool(np.isfinite(out).all())
        return out.shape[:1] == (rows,) and finite

    def _model_fault(
        self,
        model: LoadedModel,
        suspects: list[tuple[Any, Exception, float, float]],
        unrun: list,
        error: Exception,
        health: Health,
    ) -> None:
        """The runtime fails its probe: every request of `suspects` and `unrun` fails with
        the runtime's error; the dispatch counts once toward the model's recovery."""
        if not health.counted:
            health.counted = True
            self._model_failed(model, f"inference raised {type(error).__name__}: {error}")
        size = len(suspects) + len(unrun)
        for request, raised, began, ended in suspects:
            self._fail_after(request, model, raised, began, ended, size)
        for request in unrun:
            self._fail_after(request, model, error, 0.0, 0.0, size)
