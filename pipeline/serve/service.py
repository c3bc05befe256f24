"""The service's state: the shared engine, background model loading, readiness, counters.

It serves every model of its models folder: each in MODEL_FORMAT when the model has that
file, else in the format it has (a TorchScript-only import is served from its `.pt`).

Models load in a background task *after* the server starts listening, so `/health/live`
answers at once and `/health/ready` reports `loading` until every served model is loaded
and warm. Then start-up objects are frozen out of the garbage collector's reach
(`gc.freeze`): a full collection in a process that imported torch would otherwise pause
the event loop for tens of milliseconds and break the latency tail.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference import (
    AdmissionControl,
    InferenceError,
    ProductionInferenceEngine,
    ProductionModelManager,
    RealTimePerformanceMonitor,
)
from pipeline.inference.model_manager import dummy_batch
from pipeline.inference.runtimes import FORMATS
from pipeline.serve.features import FeatureSpec
from pipeline.serve.settings import ServeSettings, SettingsError

__all__ = ["QUALITY", "ROUTING", "SERVED_MODELS", "Service", "served_keys"]

log = logging.getLogger("uvicorn.error")

QUALITY = "quality_predictor"
ROUTING = "routing_classifier"
#: the models with named endpoints (/api/v1/predict/...); every model has the /v2 endpoints
SERVED_MODELS = (QUALITY, ROUTING)

LOADING, READY, FAILED = "loading", "ready", "failed"


class Service:
    """One process's engine and what the HTTP layer needs to know about it."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.started = time.monotonic()
        info = _read_model_info(settings.model_dir)
        engine_settings = settings.engine
        try:
            self.manager = ProductionModelManager(
                settings.model_dir,
                max_memory_mb=engine_settings.max_memory_mb,
                num_threads=engine_settings.intra_op_threads,
            )
        except (OSError, InferenceError) as exc:
            raise SettingsError(f"MODEL_DIR: {exc}") from None
        #: model_info.json, by model name
        self.info = info
        #: model name -> the engine key it is served as (every model of the folder)
        self.keys: dict[str, str] = served_keys(self.manager, settings.model_format)
        if not self.keys:
            raise SettingsError(
                f"MODEL_DIR: {settings.model_dir} holds no model file (<name>.onnx or <name>.pt "
                "described in model_info.json)"
            )
        for name in sorted(set(info) - set(self.keys)):
            log.warning("relcert serve: model_info.json lists %s, but its file is missing", name)
        try:
            # the decoders of the named endpoints (the example models')
            self.specs = {
                name: FeatureSpec.from_model_info(name, info.get(name, {}))
                for name in SERVED_MODELS
                if name in self.keys
            }
        except ValueError as exc:
            raise SettingsError(f"MODEL_DIR: {exc}") from None
        routing = info.get(ROUTING, {})
        outputs = (routing.get("output_shape") or [None, 4])[-1] or 4
        self.class_names: tuple[str, ...] = tuple(
            str(c) for c in routing.get("class_names") or [f"class_{i}" for i in range(outputs)]
        )
        self.monitor = RealTimePerformanceMonitor(
            window_seconds=60.0,
            memory_limit_mb=engine_settings.max_memory_mb,
            latency_buckets_ms=settings.latency_buckets_ms,
        )
        self.engine = ProductionInferenceEngine(
            self.manager,
            settings=engine_settings,
            monitor=self.monitor,
            auto_load=False,  # never load a model on the event loop in a request
        )
        # admission control in front of the engine: requests past its limit are refused
        # (503 with Retry-After) instead of queueing, whole (a request of several rows is
        # admitted or refused as one); `predict` / `predict_many` are the endpoints' way in
        #: the most rows one request may carry (the admission limit never falls below it)
        self.request_rows = settings.request_rows
        self.admission = (
            AdmissionControl(self.engine, settings.admission, largest_request=self.request_rows)
            if settings.admission.enabled
            else None
        )
        self.predict = (self.admission or self.engine).predict
        self.predict_many = (self.admission or self.engine).predict_many
        self.status = LOADING
        self.load_errors: dict[str, str] = {}
        self.load_seconds: float | None = None
        self.validation_running = False
        # HTTP counters: plain dicts of ints and floats, read by the /metrics collector
        self.http_counts: dict[tuple[str, int], int] = {}
        self.http_seconds: dict[str, list[float]] = {}
        self._task: asyncio.Task | None = None

    # ----------------------------------------------------------------- lifecycle
    @property
    def ready(self) -> bool:
        return self.status == READY

    def versions(self) -> dict[str, str]:
        return {name: self.manager.model_info[key].version for name, key in self.keys.items()}

    def formats(self) -> dict[str, str]:
        """model name -> the format it is served in (onnx or torchscript)."""
        return {name: self.manager.model_info[key].format for name, key in self.keys.items()}

    def model_ready(self, name: str) -> bool:
        """The service is ready and `name` is loaded and warm."""
        info = self.manager.model_info[self.keys[name]]
        return self.status == READY and info.loaded and info.warmup_complete

    def start_loading(self) -> None:
        """Load the models in the background (call from the running loop, once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        if self.settings.startup_delay_s > 0:
            await asyncio.sleep(self.settings.startup_delay_s)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        errors = await loop.run_in_executor(None, self._load_blocking)
        self.load_seconds = time.perf_counter() - started
        if errors:
            self.load_errors = errors
            self.status = FAILED
            for key, reason in errors.items():
                log.error("relcert serve: model %s failed to load: %s", key, reason)
            return
        await self.engine.start()
        # Everything alive now (torch, runtimes, models) lives as long as the process: keep
        # it out of every future collection.
        gc.collect()
        gc.freeze()
        self.status = READY
        log.info(
            "relcert serve: ready in %.2f s: %s",
            self.load_seconds,
            ", ".join(f"{k} v{v}" for k, v in self.versions().items()),
        )

    def _load_blocking(self) -> dict[str, str]:
        errors = {}
        for key in self.keys.values():
            if not self.manager.load_model(key, priority=True):
                errors[key] = self.manager.load_errors.get(key, "unknown error")
            elif not self.manager.model_info[key].warmup_complete:
                errors[key] = "warm-up did not complete"
        return errors

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.engine.stop(timeout_s=5.0)

    # ----------------------------------------------------------------- counters
    def count(self, endpoint: str, status: int, seconds: float | None) -> None:
        """Count one answered request (`seconds`: handler time, None when not measured)."""
        key = (endpoint, status)
        counts = self.http_counts
        counts[key] = counts.get(key, 0) + 1
        if seconds is None:
            return
        timing = self.http_seconds.get(endpoint)
        if timing is None:
            self.http_seconds[endpoint] = [1.0, seconds]
        else:
            timing[0] += 1.0
            timing[1] += seconds

    # ----------------------------------------------------------------- validation
    async def validate_performance(
        self, requests: int, duration_s: float, models: list[str], concurrency: int
    ) -> dict[str, Any]:
        """A bounded closed-loop run through the engine: `concurrency` users, each sending
        its next request when the previous one completes, until `requests` are done or
        `duration_s` has passed. Inputs are random (the cache is bypassed)."""
        engine = self.engine
        rng = np.random.default_rng(int(time.time_ns() % 2**32))
        inputs = {
            name: _random_requests(self.manager.model_info[self.keys[name]], rng) for name in models
        }
        keys = [self.keys[name] for name in models]
        latency_ms = np.zeros(requests)
        success = np.zeros(requests, dtype=np.bool_)
        issued = 0
        clock = time.perf_counter
        started = clock()
        deadline = started + duration_s

        async def user() -> None:
            nonlocal issued
            while issued < requests and clock() < deadline:
                i = issued
                issued += 1
                name = models[i % len(models)]
                sent = clock()
                result = await engine.predict(
                    keys[i % len(keys)], inputs[name][i & 255], use_cache=False
                )
                latency_ms[i] = (clock() - sent) * 1000.0
                success[i] = result.success

        await asyncio.wait_for(
            asyncio.gather(*(user() for _ in range(concurrency))), duration_s + 10.0
        )
        wall = clock() - started
        done = latency_ms[:issued]
        pct = np.percentile(done, [50, 95, 99]) if issued else [0.0, 0.0, 0.0]
        return {
            "requests": issued,
            "success_rate": float(success[:issued].mean()) if issued else 0.0,
            "mean_latency_ms": float(done.mean()) if issued else 0.0,
            "p50_ms": float(pct[0]),
            "p95_ms": float(pct[1]),
            "p99_ms": float(pct[2]),
            "throughput_rps": issued / wall if wall > 0 else 0.0,
            "rss_mb": self.monitor.memory_usage_mb(),
            "duration_s": wall,
            "models": list(models),
            "concurrency": concurrency,
        }

    # ----------------------------------------------------------------- metrics
    def collect_metrics(self) -> Iterator[Any]:
        """Prometheus families for HTTP traffic, the engine's queue and the models."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        requests = CounterMetricFamily(
            "relcert_http_requests",
            "HTTP requests answered, by endpoint and status code",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), n in sorted(self.http_counts.items()):
            requests.add_metric([endpoint, str(status)], n)
        yield requests
        duration = SummaryMetricFamily(
            "relcert_http_request_duration_seconds",
            "Time from the request's arrival at the handler to its response",
            labels=["endpoint"],
        )
        for endpoint, (n, total) in sorted(self.http_seconds.items()):
            duration.add_metric([endpoint], count_value=n, sum_value=total)
        yield duration
        stats = self.engine.get_stats()
        for name, help_text, key in (
            ("relcert_engine_rejected", "Requests rejected because the queue was full", "rejected"),
            ("relcert_engine_batches", "Batches run by the engine", "batches"),
            ("relcert_engine_cache_hits", "Requests answered from the result cache", "cache_hits"),
            (
                "relcert_engine_expired",
                "Requests that outwaited their deadline in the queue (not run)",
                "expired",
            ),
            (
                "relcert_engine_cancelled",
                "Requests dropped unrun because their client disconnected",
                "cancelled",
            ),
            (
                "relcert_engine_non_finite_outputs",
                "Requests whose input made the model answer NaN/Inf (answered 422)",
                "non_finite_outputs",
            ),
            (
                "relcert_engine_input_runtime_errors",
                "Requests whose values made the model's runtime raise while it answers other "
                "inputs (answered 422 / 400; never counted toward reloading the model)",
                "input_runtime_errors",
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=stats[key])
        yield GaugeMetricFamily(
            "relcert_engine_mean_batch_size", "Mean requests per batch", stats["mean_batch_size"]
        )
        if self.admission is not None:
            yield from self.admission.collect_metrics()
        ready = GaugeMetricFamily(
            "relcert_model_ready",
            "1 when the model is loaded and warm",
            labels=["model", "format", "version"],
        )
        for name, key in self.keys.items():
            info = self.manager.model_info[key]
            ready.add_metric(
                [name, info.format, info.version], float(info.loaded and info.warmup_complete)
            )
        yield ready
        yield GaugeMetricFamily(
            "relcert_uptime_seconds", "Seconds since the service started", self.uptime_s()
        )

    def uptime_s(self) -> float:
        return time.monotonic() - self.started


def _random_requests(info: Any, rng: np.random.Generator) -> Any:
    """256 random requests for a model: rows of one array, or (named tensors) mappings of
    input name -> row with valid values at each declared size of its dynamic dims."""
    if not info.tensor_io:
        return dummy_batch((256, *info.feature_shape), info.input_dtype, rng)
    from pipeline.inference.tensor_models import dim_size_sets

    signature = info.signature
    sets = dim_size_sets(signature)
    requests = []
    for i in range(256):
        rows = signature.example_rows(None, sets[i % len(sets)])
        requests.append({t.name: t.random(rng, rows[t.name]) for t in signature.inputs})
    return requests


def _read_model_info(model_dir: Path) -> dict[str, dict[str, Any]]:
    from pipeline.build.errors import BuildError
    from pipeline.build.model_info import read_model_info

    try:
        return read_model_info(model_dir)
    except BuildError as exc:
        raise SettingsError(f"MODEL_DIR: {exc}") from None


def served_keys(manager: ProductionModelManager, model_format: str) -> dict[str, str]:
    """model name -> the engine key it is served as: every model the manager found in the
    folder, in `model_format` when it has that file, else in the format it has."""
    registered = manager.model_info
    keys = {}
    for name in sorted({info.name for info in registered.values()}):
        for fmt in (model_format, *FORMATS):
            if f"{name}_{fmt}" in registered:
                keys[name] = f"{name}_{fmt}"
                break
    return keys
