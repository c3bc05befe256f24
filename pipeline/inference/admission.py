"""Admission control in front of the engine: a `ConcurrentProcessingEngine` decides which
requests reach `ProductionInferenceEngine.predict`.

At most `limit` rows are in the engine at once (queued or running). A request is counted by
its rows and admitted or refused whole (`predict_many`): one that finds too few free slots is
refused at once (the service answers 503 with ``Retry-After``) before any of its rows reaches
the engine, or, with a waiting room (`max_waiting` > 0), waits at most `queue_timeout_ms` for
its slots: excess load is shed at the door, never queued without bound. The limit moves by
AIMD (`pipeline.inference.concurrency`): it rises by one per window of `adjust_every`
completed requests while demand uses half of it or more and their p95 latency is within
`target_p95_ms`, halves when the p95 exceeds it (or the engine itself shed or expired a
request), and halves toward demand when demand falls below a quarter of it; always within
its floor (`min_concurrency`, raised to the largest request callers may send, so a request
that may be sent is never refused by an idle server) and `max_concurrency`.

`AdmissionControl.predict` / `predict_many` have the engine's signatures and return a future
as the engine does (a refused request's results have ``rejected=True``, ``error_type``
``AdmissionRejectedError``), so callers treat an admission refusal like the engine's own
load shedding. Cancelling the future (a client that left) cancels the engine requests and
frees their slots.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

from pipeline.inference.concurrency import ConcurrencyStats, ConcurrentProcessingEngine
from pipeline.inference.errors import AdmissionRejectedError

__all__ = ["AdmissionControl", "AdmissionSettings"]

_perf = time.perf_counter
#: engine outcomes that mean the engine is overloaded (they count as failures for AIMD)
_OVERLOAD_ERRORS = frozenset({"DeadlineExceededError"})


@dataclass(frozen=True)
class AdmissionSettings:
    """How requests are admitted to the engine; each field is documented by its effect.

    The defaults never refuse a healthy load (the limit stays at least 64 rows in the
    engine at once, or the largest request callers may send if more, and starts at 1024, the
    engine's default queue size) and shed load once the engine's p95 passes the
    certification's default p95 target (100 ms). Invalid values raise ValueError naming the
    field."""

    #: Admission control on (False: every request goes straight to the engine).
    enabled: bool = True
    #: Highest limit (requests in the engine at once); also where the limit starts.
    max_concurrency: int = 1024
    #: Lowest limit: the floor under multiplicative decreases (raised to the largest request
    #: callers may send, see `floor`).
    min_concurrency: int = 64
    #: The p95 latency (ms, admission to answer, over a window) above which the limit halves.
    target_p95_ms: float = 100.0
    #: Completed requests per window (one limit adjustment per window).
    adjust_every: int = 50
    #: Requests that may wait for a slot when the limit is full (0: refused at once).
    max_waiting: int = 0
    #: How long (ms) a waiting request waits for a slot before it is refused.
    queue_timeout_ms: float = 100.0

    def __post_init__(self) -> None:
        _check("enabled", self.enabled, bool, 0, False)
        for name, (kind, low, strict) in _BOUNDS.items():
            _check(name, getattr(self, name), kind, low, strict)
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                f"admission setting min_concurrency ({self.min_concurrency}) must not exceed "
                f"max_concurrency ({self.max_concurrency})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdmissionSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown admission setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**{k: cls.parse(k, v) for k, v in values.items()})

    @staticmethod
    def parse(name: str, raw: Any) -> Any:
        """One field's value from text (an environment variable) or a value, validated."""
        if name == "enabled":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "on", "yes"):
                return True
            if text in ("0", "false", "off", "no"):
                return False
            raise ValueError(f"admission setting enabled must be on or off, got {raw!r}")
        if name not in _BOUNDS:
            raise ValueError(f"unknown admission setting {name!r}")
        kind, low, strict = _BOUNDS[name]
        value = raw
        if isinstance(raw, str):
            try:
                value = int(raw.strip()) if kind is int else float(raw.strip())
            except ValueError:
                value = raw
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        _check(name, value, kind, low, strict)
        return value

    def limiter(self, largest_request: int = 1) -> ConcurrentProcessingEngine:
        """A ConcurrentProcessingEngine with these settings (starting at max_concurrency),
        whose limit never falls below `largest_request` rows (within max_concurrency)."""
        return ConcurrentProcessingEngine(
            max_workers=self.max_concurrency,
            auto_scale=True,
            min_workers=self.floor(largest_request),
            initial_workers=self.max_concurrency,
            max_waiting=self.max_waiting,
            queue_timeout_s=self.queue_timeout_ms / 1000.0,
            target_latency_ms=self.target_p95_ms,
            adjust_every=self.adjust_every,
        )

    def floor(self, largest_request: int = 1) -> int:
        """The lowest the limit goes: min_concurrency, raised to the largest request (in
        rows) that callers may send, so a request that may be sent is never refused by an
        idle server; never above max_concurrency."""
        return min(self.max_concurrency, max(self.min_concurrency, int(largest_request)))


# field -> (int or float, lower bound, bound is strict)
_BOUNDS: dict[str, tuple[type, float, bool]] = {
    "max_concurrency": (int, 1, False),
    "min_concurrency": (int, 1, False),
    "target_p95_ms": (float, 0.0, True),
    "adjust_every": (int, 1, False),
    "max_waiting": (int, 0, False),
    "queue_timeout_ms": (float, 0.0, True),
}


def _check(name: str, value: Any, kind: type, low: float, strict: bool) -> None:
    if name == "enabled":
        if not isinstance(value, bool):
            raise ValueError(f"admission setting enabled must be true or false, got {value!r}")
        return
    bound = f"{'>' if strict else '>='} {low:g}"
    expected = f"{'an integer' if kind is int else 'a finite number'} {bound}"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (kind is not int or isinstance(value, int)) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ValueError(f"admission setting {name} must be {expected}, got {value!r}")


class AdmissionControl:
    """`predict` and `predict_many` through the limiter (see the module docstring)."""

    def __init__(
        self, engine: Any, settings: AdmissionSettings | None = None, *, largest_request: int = 1
    ) -> None:
        """`largest_request`: the most rows one `predict_many` call may bring (the service's
        MAX_REQUEST_ROWS); the limit never falls below it."""
        self.engine = engine
        self.settings = settings or AdmissionSettings()
        self.limiter = self.settings.limiter(largest_request)

    def predict(self, model_name: str, input: Any, **kwargs: Any) -> asyncio.Future:
        """Admit (or refuse) one request now; the future resolves to its InferenceResult."""
        limiter = self.limiter
        if limiter.try_acquire():
            return self._submit(model_name, input, kwargs)
        loop = asyncio.get_running_loop()
        if limiter.can_wait():
            return loop.create_task(self._wait_then_predict(model_name, input, kwargs))
        refused = loop.create_future()
        refused.set_result(_refusal(model_name, limiter.reject()))
        return refused

    def predict_many(self, model_name: str, inputs: Sequence[Any], **kwargs: Any) -> asyncio.Future:
        """Admit (or refuse) a request of `len(inputs)` rows whole: it takes one slot per row,
        all at once, and holds them until its last row is answered; refused, none of its
        rows reaches the engine (no computation is spent on it). The future resolves to the
        rows' InferenceResults, in order."""
        rows = len(inputs)
        limiter = self.limiter
        if limiter.try_acquire(rows):
            return self._submit_many(model_name, inputs, kwargs)
        loop = asyncio.get_running_loop()
        if limiter.can_wait(rows):
            return loop.create_task(self._wait_then_predict_many(model_name, inputs, kwargs))
        refused = loop.create_future()
        exc = limiter.reject(rows)
        refused.set_result([_refusal(model_name, exc) for _ in range(rows)])
        return refused

    def _submit(self, model_name: str, input: Any, kwargs: dict[str, Any]) -> asyncio.Future:
        started = _perf()
        try:
            future = self.engine.predict(model_name, input, **kwargs)
        except BaseException:
            self.limiter.release(None)
            raise
        future.add_done_callback(partial(self._done, started, 1))
        return future

    def _submit_many(
        self, model_name: str, inputs: Sequence[Any], kwargs: dict[str, Any]
    ) -> asyncio.Future:
        started = _perf()
        try:
            future = self.engine.predict_many(model_name, inputs, **kwargs)
        except BaseException:
            self.limiter.release(None, slots=len(inputs))
            raise
        future.add_done_callback(partial(self._done, started, len(inputs)))
        return future

    def _done(self, started: float, slots: int, future: asyncio.Future) -> None:
        if future.cancelled():
            self.limiter.release(None, slots=slots)
            return
        result = future.result()
        results = result if isinstance(result, list) else (result,)
        overloaded = any(r.rejected or r.error_type in _OVERLOAD_ERRORS for r in results)
        self.limiter.release((_perf() - started) * 1000.0, ok=not overloaded, slots=slots)

    async def _wait_then_predict(self, model_name: str, input: Any, kwargs: dict[str, Any]):
        try:
            await self.limiter.acquire()
        except AdmissionRejectedError as exc:
            return _refusal(model_name, exc)
        return await self._submit(model_name, input, kwargs)

    async def _wait_then_predict_many(
        self, model_name: str, inputs: Sequence[Any], kwargs: dict[str, Any]
    ):
        try:
            await self.limiter.acquire(len(inputs))
        except AdmissionRejectedError as exc:
            return [_refusal(model_name, exc) for _ in inputs]
        return await self._submit_many(model_name, inputs, kwargs)

    def get_stats(self) -> ConcurrencyStats:
        return self.limiter.get_stats()

    def collect_metrics(self) -> Iterator[Any]:
        """Prometheus families of the limit and its adjustments (``relcert_admission_*``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.limiter.get_stats()
        for name, help_text, value in (
            ("limit", "Rows admitted to the engine at once now (the AIMD limit)", s.limit),
            (
                "limit_min",
                "Lowest limit (ADMISSION_MIN_CONCURRENCY, raised to the largest request)",
                s.min_workers,
            ),
            ("limit_max", "Highest limit (ADMISSION_MAX_CONCURRENCY)", s.max_workers),
            ("in_flight", "Rows of admitted requests not yet answered", s.in_flight),
            ("waiting", "Requests waiting for a slot", s.waiting),
            ("window_p95_ms", "p95 latency (ms) of the recent admitted requests", s.p95_latency_ms),
            ("target_p95_ms", "p95 latency (ms) above which the limit halves", s.target_latency_ms),
        ):
            yield GaugeMetricFamily(f"relcert_admission_{name}", help_text, value=value)
        for name, help_text, value in (
            ("admitted", "Requests admitted to the engine", s.admitted),
            ("rejected", "Requests refused at once because the limit was full (503)", s.rejected),
            ("timed_out", "Requests refused after waiting for a slot (503)", s.timed_out),
        ):
            yield CounterMetricFamily(f"relcert_admission_{name}", help_text, value=value)
        adjustments = CounterMetricFamily(
            "relcert_admission_adjustments",
            "Changes of the limit: up (demand near it, latency within target), down because "
            "of latency (overload) or of demand (the load fell)",
            labels=["direction", "cause"],
        )
        adjustments.add_metric(["up", "demand"], s.scale_ups)
        adjustments.add_metric(["down", "latency"], s.overload_scale_downs)
        adjustments.add_metric(["down", "demand"], s.scale_downs - s.overload_scale_downs)
        yield adjustments


def _refusal(model_name: str, exc: AdmissionRejectedError) -> Any:
    from pipeline.inference.engine import InferenceResult

    return InferenceResult(
        success=False,
        output=None,
        error=str(exc),
        inference_time_ms=0.0,
        queue_time_ms=0.0,
        batch_size=0,
        cache_hit=False,
        model_name=model_name,
        rejected=True,
        error_type=type(exc).__name__,
    )
