"""The HTTP service that a deployment package runs: the certified models behind a small API.

An ASGI app on Starlette + uvicorn (uvloop, httptools) around relcert's batching engine
(`pipeline.inference`). Run it with ``relcert serve --model-dir DIR`` or
``python -m pipeline.serve --model-dir DIR [--host 127.0.0.1] [--port 8000] [--workers 1]
[--format onnx]``; the server listens at once and loads the models in the background, so
poll ``GET /health/ready`` until it answers 200.

It serves every model of its models folder, each in ``MODEL_FORMAT`` when the model has that
file, else in the format it has (a TorchScript-only import is served from its ``.pt``):
every model through the Open Inference Protocol (``/v2``), the two example models also on
their named endpoints (``/api/v1/predict/...``).

Endpoints: the Open Inference Protocol (KServe v2 REST; `pipeline.serve.v2`)
------------------------------------------------------------------------------
The protocol KServe, Triton and MLServer speak; a standard client (``tritonclient[http]``)
works unchanged. Model names are those of model_info.json; ``[/versions/{version}]`` may
follow the name (another version than the served one is 404).

``GET /v2``
    ``{"name": "relcert", "version", "extensions": ["binary_tensor_data"]}``
``GET /v2/health/live`` / ``GET /v2/health/ready``
    ``{"live": true}`` / ``{"ready": true}`` (503 ``{"error"}`` until every model is warm)
``GET /v2/models/{name}``
    ``{"name", "versions": [version], "platform": "onnxruntime_onnx" | "pytorch_libtorch",
    "inputs": [{"name", "datatype": "FP32" | "FP64" | "INT64", "shape"}], "outputs": [...]}``;
    -1 is a dynamic dimension (``[-1, 10]``), a fixed batch is given (``[1, 3, 224, 224]``)
``GET /v2/models/{name}/ready``
    ``{"name", "ready": true}``; 503 while loading
``POST /v2/models/{name}/infer``
    ``{"id"?, "inputs": [{"name", "shape": [N, ...], "datatype", "data": [...]}],
    "outputs"?: [{"name", "parameters"?: {"binary_data": bool}}], "parameters"?:
    {"binary_data_output": bool}}`` -> ``{"model_name", "model_version", "id"?, "outputs":
    [{"name", "datatype", "shape": [N, ...], "data": [...]}]}``. ``data`` is row-major, flat
    or nested. Each of the N rows (at most ``MAX_REQUEST_ROWS``) is one engine request
    (batched with other traffic); the request is admitted or refused whole and the N
    answers come back together. Binary tensor data extension: the body is the JSON object
    followed by the tensor's bytes (little-endian) with ``Inference-Header-Content-Length:
    <JSON size>`` and ``parameters.binary_data_size`` on the input; a binary output is
    appended to the response the same way (``application/octet-stream``, same header).
    Errors are ``{"error": "..."}`` naming what was wrong and what was expected: 400 for a
    wrong input name, datatype, shape or data size, more rows than ``MAX_REQUEST_ROWS``,
    invalid JSON, non-finite values, integers outside the datatype's range (never wrapped),
    values outside a declared input range, values for which the model answers NaN/Inf or
    its runtime raises (e.g. an index past an embedding table, while it answers other
    inputs); 404 for an unknown model or version; 413 over ``MAX_BODY_BYTES``; 503 with
    ``Retry-After`` while loading, when the admission limit or the queue is full or past the
    deadline; 500 when the model's runtime fails on every input (it is reloaded).

Endpoints: the original plan's API
----------------------------------
``POST /api/v1/predict/quality``
    ``{"features": {<the model's 10 feature_names>: number, ...}}`` or
    ``{"features": [10 numbers in feature_names order]}`` ->
    ``{"quality": 0..1, "model": "quality_predictor", "model_version": "...", "latency_ms": ...}``
``POST /api/v1/predict/routing``
    15 named features (or a list of 15) -> ``{"method": <one of class_names>, "confidence": max
    probability, "probabilities": {class: p}, "model": "routing_classifier", "model_version",
    "latency_ms"}``
``POST /api/v1/validate/performance``
    Off unless ``VALIDATE_TOKEN`` is set (404 then). With ``Authorization: Bearer
    <VALIDATE_TOKEN>`` (else 401): ``{"requests": int, "duration_s": float, "model": name |
    null, "concurrency": int}`` (all optional) -> a bounded closed-loop measurement through
    the engine: ``{requests, success_rate, mean_latency_ms, p50_ms, p95_ms, p99_ms,
    throughput_rps, rss_mb, capped, ...}``; ``capped`` is true when a request was lowered to
    the limits below. One run at a time (409), at most ``VALIDATE_MAX_CONCURRENCY`` of its
    requests in the engine's queue.
``GET /health/ready``
    200 ``{"status": "ready", "format": MODEL_FORMAT, "models": {name: version}, "formats":
    {name: format served}}`` once every model is loaded and warm; 503 ``{"status":
    "loading"}`` before (or ``"failed"`` with ``errors``).
``GET /health/live``
    200 whenever the event loop runs.
``GET /metrics``
    Prometheus text (``text/plain; version=0.0.4``): the engine monitor's metrics plus
    ``relcert_http_requests_total{endpoint, status}`` and request durations. What the
    package's alert rules use: counters ``relcert_requests_total{outcome}``,
    ``relcert_engine_cache_hits_total``; the histogram ``relcert_request_latency_ms``
    (``_bucket{le}``, ``_sum``, ``_count``); gauges ``relcert_memory_rss_bytes`` (process
    RSS) and ``relcert_queue_depth``. Admission control: gauges ``relcert_admission_limit``
    (the current limit), ``_limit_min``, ``_limit_max``, ``_in_flight``, ``_waiting``,
    ``_window_p95_ms``, ``_target_p95_ms``; counters ``relcert_admission_admitted_total``,
    ``_rejected_total`` (503 at once), ``_timed_out_total`` (503 after waiting) and
    ``relcert_admission_adjustments_total{direction="up"|"down", cause="demand"|"latency"}``.
    Requests refused for their values: ``relcert_engine_non_finite_outputs_total`` (the
    model answered NaN/Inf) and ``relcert_engine_input_runtime_errors_total`` (its runtime
    raised on them while it answers other inputs); neither counts toward a reload.
``GET /openapi.json``
    The OpenAPI 3.1 document of all of the above, with this model folder's feature names.

Errors of these are JSON ``{"detail": "..."}`` naming the field: 422 for invalid JSON (including too
deeply nested) or a missing, extra, non-numeric, non-finite or wrongly counted feature (e.g.
``features.complexity_score: expected a finite number, got "abc"``), a value outside the
model's declared input range (optional ``input_range`` / ``feature_ranges`` in
model_info.json), or values for which the model answers NaN/Inf or its runtime raises while
it answers other inputs (the request's error: it never counts toward reloading the model);
413 for a body over ``MAX_BODY_BYTES`` (by
Content-Length or as streamed); 431 for headers over ``MAX_HEADER_BYTES``; 408 when a
request does not arrive within ``BODY_READ_TIMEOUT_S``; 503 with ``Retry-After`` when the
admission limit is full (see below), the engine's bounded queue is full, a request
outwaited ``DEFAULT_DEADLINE_MS`` in the queue (answered at its deadline, even while its
batch waits for company) or models are still loading (and uvicorn's plain 503 past
``LIMIT_CONCURRENCY``); 500 when the model's runtime fails on every input, its warm-up
input included (the body names the endpoint only: exception text, tracebacks and file paths
go to the server log, never to a client; ``RECOVERY_FAILURE_THRESHOLD`` such faults reload
the model); 404 / 405 for unknown paths / methods.
A request whose client disconnects while it waits is dropped without running.

Configuration (environment variables; ``ServeSettings.from_env``)
-----------------------------------------------------------------
==============================  ========  =====================================================
variable                        default   meaning
==============================  ========  =====================================================
``MODEL_DIR``                   required  models folder written by ``relcert build`` (with
                                          ``model_info.json``); ``--model-dir`` sets it
``MODEL_FORMAT``                onnx      ``onnx`` or ``torchscript``: which file of each model
                                          to serve when it has both (``--format``); a model
                                          with one file is served from it. Torch is imported
                                          only when a model is served from TorchScript
``MAX_BODY_BYTES``              65536     largest request body accepted (413 beyond); raise it
                                          for large inputs (a JSON request of one
                                          [3, 224, 224] image takes up to ~3 MB; binary 0.6 MB)
``MAX_REQUEST_ROWS``            256       most rows one ``/v2`` inference request may carry
                                          (400 beyond; also bounded by ``MAX_QUEUE`` and
                                          ``ADMISSION_MAX_CONCURRENCY``); the admission limit
                                          never falls below it
``LIMIT_CONCURRENCY``           2048      open connections / requests in progress; beyond,
                                          uvicorn answers 503
``TIMEOUT_KEEP_ALIVE_S``        5         an idle connection (or one that never sends) closes
``MAX_HEADER_BYTES``            16384     request line + headers (431 beyond)
``BODY_READ_TIMEOUT_S``         10        a request's headers and body must arrive within this
                                          from its first byte (408 and close otherwise)
``VALIDATE_TOKEN``              unset     bearer token (>= 16 characters) that turns
                                          ``/api/v1/validate/performance`` on; unset: off (404).
                                          ``--validate-token-stdin`` reads it from stdin instead
                                          (held in memory only; one worker)
``VALIDATE_MAX_REQUESTS``       2000      cap on ``requests`` of the validation run
``VALIDATE_MAX_SECONDS``        10        cap on its ``duration_s``
``VALIDATE_MAX_CONCURRENCY``    8         most validation requests in the engine at once
``STARTUP_DELAY_S``             0         wait before loading models (tests observe ``loading``)
``LATENCY_BUCKETS_MS``          ladder    upper bounds (ms, comma-separated, increasing) of the
                                          ``relcert_request_latency_ms`` histogram; default 1 ms
                                          to 10 s with the default alert thresholds as bounds
==============================  ========  =====================================================

The engine's knobs are one ``EngineSettings`` (``pipeline.inference.settings``; the service
keeps it as ``ServeSettings.engine``), each read from its variable (``ENGINE_ENV``):

==============================  ========  =====================================================
``MAX_BATCH_SIZE``              32        most requests the engine runs as one batch
``BATCH_TIMEOUT_MS``            0         how long a partial batch may wait for company; 0 is
                                          greedy (a lone request runs at once)
``MAX_QUEUE``                   1024      requests waiting in the engine; beyond it a request
                                          is answered 503 with ``Retry-After`` at once
``DEFAULT_DEADLINE_MS``         10000     a request still queued this long fails unrun (503);
                                          ``none`` disables it
``MAX_MEMORY_MB``               500       model memory budget; also the RSS above which the
                                          buffer pool and result cache give memory back
``POOL_MB``                     400       memory pool for batch buffers (0: no pool)
``CACHE_ENTRIES``               10000     LRU result cache entries (0: no cache)
``RECOVERY_FAILURE_THRESHOLD``  5         consecutive model faults before a model reloads (a
                                          request's values the runtime raises on never count)
``RECOVERY_COOLDOWN_S``         5         shortest time between two reloads of a model
``MEMORY_CHECK_INTERVAL_S``     1         how often the engine checks memory pressure
``INTRA_OP_THREADS``            1         intra-op threads per runtime (on the inferring thread)
==============================  ========  =====================================================

Admission control (``AdmissionSettings``, ``pipeline.inference.admission``; ``ADMISSION_ENV``)
sits in front of the engine: at most *limit* rows are in the engine at once, a request
counted by its rows and admitted or refused whole (a refused request costs no computation);
one that finds too few free slots is answered 503 with ``Retry-After`` at once (or, with a
waiting room, after at most ``ADMISSION_QUEUE_TIMEOUT_MS``), never queued without bound.
The limit starts at its maximum and moves by AIMD once per window of
``ADMISSION_ADJUST_EVERY`` completed requests: +1 while demand (rows in flight and waiting)
reaches half of it and the window's p95 is within ``ADMISSION_TARGET_P95_MS``; halved when
the p95 exceeds it (or the engine shed or expired a request); halved when demand falls below
a quarter of it. So a healthy load keeps it at 2x-4x its demand, never below its floor:
``ADMISSION_MIN_CONCURRENCY`` raised to the most rows a request may carry
(``MAX_REQUEST_ROWS``, 256 by default), so an idle server never refuses a request it
accepts:

==============================  ========  =====================================================
``ADMISSION_CONTROL``           on        ``off`` sends every request straight to the engine
``ADMISSION_MAX_CONCURRENCY``   1024      highest limit, and where it starts
``ADMISSION_MIN_CONCURRENCY``   64        lowest limit, raised to the largest request's rows
``ADMISSION_TARGET_P95_MS``     100       p95 (admission to answer) above which it halves
``ADMISSION_ADJUST_EVERY``      50        completed requests per adjustment window
``ADMISSION_MAX_WAITING``       0         requests that may wait for a slot (0: 503 at once)
``ADMISSION_QUEUE_TIMEOUT_MS``  100       longest wait for a slot before the 503
==============================  ========  =====================================================

Every value is validated at start-up; an error names the variable and what was expected.

Load generation: `HttpLoadClient` (`pipeline.serve.client`) is a lean keep-alive HTTP/1.1
client for loopback targets only, fast enough to drive `pipeline.loadgen.run_open_loop` at
thousands of requests per second.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "HttpLoadClient",
    "HttpResult",
    "ServeApp",
    "ServeSettings",
    "SettingsError",
    "app_from_env",
    "check_loopback",
    "create_app",
]

# Imported on first use, so `relcert --help` (which imports `pipeline.serve.cli`) and a load
# generator (which needs only the client) do not pay for Starlette and the engine.
_HOMES = {
    "ServeApp": "app",
    "app_from_env": "app",
    "create_app": "app",
    "HttpLoadClient": "client",
    "HttpResult": "client",
    "check_loopback": "client",
    "ServeSettings": "settings",
    "SettingsError": "settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pipeline.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.serve.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
