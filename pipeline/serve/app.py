"""The ASGI app: Starlette routing around lean raw-ASGI handlers on the shared engine.

The prediction handlers are plain ASGI callables (no Request/Response objects, no pydantic):
read the body with a size bound, decode the features, call `engine.predict()` (which
submits at once and returns a future), and format the answer as JSON text directly. Exact
paths of the hot routes are dispatched before Starlette's middleware stack; everything else
(health, metrics, 404/405 and errors) goes through Starlette as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipeline.serve.features import RequestError, describe_value, load_json_object
from pipeline.serve.http import LIMITS_KEY, HttpLimits
from pipeline.serve.openapi import build_openapi
from pipeline.serve.service import QUALITY, ROUTING, Service
from pipeline.serve.settings import ServeSettings

__all__ = ["ServeApp", "app_from_env", "create_app"]

log = logging.getLogger("uvicorn.error")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_perf = time.perf_counter
_JSON = b"application/json"
_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_RETRY_AFTER_S = "1"
#: a request still waiting for the engine this long starts watching for its client leaving
_WATCH_DISCONNECT_AFTER_S = 0.002

PREDICT_QUALITY = "/api/v1/predict/quality"
PREDICT_ROUTING = "/api/v1/predict/routing"
VALIDATE = "/api/v1/validate/performance"


class _Disconnected(Exception):
    """The client went away before its answer was ready."""


def _internal_error(where: str, exc: BaseException, key: str = "detail") -> bytes:
    """A 500 body that names no exception text or file path (those go to the log)."""
    log.error("relcert serve: %s failed", where, exc_info=exc)
    return _error_body(f"internal error in {where}; the server log has the details", key)


async def _cancel_on_disconnect(receive: Receive, future: asyncio.Future) -> bool:
    """Cancel `future` (so the engine drops the request unrun) once the client is gone."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            future.cancel()
            return True


async def _result_unless_gone(future: asyncio.Future, receive: Receive) -> Any:
    """The engine's result; raises _Disconnected if the client left while it waited.

    Watching costs a task, so it starts only for a request still waiting after a moment
    (a queue under load, or a batch waiting for company): those are the ones worth
    dropping."""
    loop = asyncio.get_running_loop()
    watcher: list[asyncio.Task] = []

    def watch() -> None:
        if not future.done():
            watcher.append(loop.create_task(_cancel_on_disconnect(receive, future)))

    handle = loop.call_later(_WATCH_DISCONNECT_AFTER_S, watch)
    try:
        return await future
    except asyncio.CancelledError:
        if future.cancelled() and watcher and watcher[0].done() and not watcher[0].cancelled():
            raise _Disconnected from None
        raise
    finally:
        handle.cancel()
        if watcher and not watcher[0].done():
            watcher[0].cancel()


@lru_cache(maxsize=64)
def _json_str(text: str) -> str:
    return json.dumps(text)


def _error_body(detail: str, key: str = "detail") -> bytes:
    """``{"detail": ...}``; the Open Inference Protocol's endpoints say ``{"error": ...}``."""
    return json.dumps({key: detail}).encode()


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    content_type: bytes = _JSON,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes by Content-Length or as
    streamed (a chunked body has no Content-Length to check up front)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise RequestError(400, "Content-Length: not an integer") from None
            if declared > limit:
                raise RequestError(
                    413,
                    f"body: {declared} bytes declared by Content-Length, more than "
                    f"MAX_BODY_BYTES={limit}",
                    [("connection", "close")],
                )
            break
    message = await receive()
    if message["type"] != "http.request":
        raise _Disconnected
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:  # a client that lied about Content-Length
            raise _too_large(len(body), limit)
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        413,
        f"body: more than MAX_BODY_BYTES={limit} bytes (received {size} so far)",
        [("connection", "close")],
    )


class _Endpoint:
    """A raw ASGI handler that answers JSON, counts itself and never lets an error escape.

    `handle` returns (status, body) or (status, body, headers, content type)."""

    path = ""
    method = "POST"
    error_key = "detail"  # the key of an error body's message

    def __init__(self, service: Service) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = _perf()
        headers: tuple[tuple[bytes, bytes], ...] = ()
        content_type = _JSON
        try:
            status, body, *extra = await self.handle(scope, receive, started)
            if extra:
                headers, content_type = extra
        except RequestError as exc:
            status, body = exc.status, _error_body(exc.detail, self.error_key)
            headers = tuple((k.encode(), v.encode()) for k, v in exc.headers)
        except _Disconnected:
            self.service.count(self.path, 499, _perf() - started)
            return
        except Exception as exc:  # the answer is a JSON 500, never a dropped connection
            status = 500
            body = _internal_error(self.path, exc, self.error_key)
        await _send(send, status, body, headers, content_type)
        self.service.count(self.path, status, _perf() - started)

    async def handle(self, scope: Scope, receive: Receive, started: float) -> tuple[Any, ...]:
        raise NotImplementedError


def _not_ready(service: Service) -> RequestError:
    if service.status == "failed":
        return RequestError(503, "models failed to load: see /health/ready", ())
    return RequestError(
        503, "models are loading: poll /health/ready", [("retry-after", _RETRY_AFTER_S)]
    )


def engine_refusal(model: str, result: Any, *, client_status: int, field: str) -> RequestError:
    """The HTTP error for a failed engine result: the client's fault (`client_status`, the
    message naming `field`: invalid values, values the model answers NaN/Inf for or its
    runtime raises on), overload (503) or the model's (500). No exception text: that goes to
    the log."""
    kind = result.error_type
    if result.rejected:
        return RequestError(503, result.error or "overloaded", [("retry-after", _RETRY_AFTER_S)])
    if kind == "ModelNotLoadedError":
        return RequestError(503, f"{model}: model not loaded", [("retry-after", _RETRY_AFTER_S)])
    if kind == "DeadlineExceededError":
        return RequestError(
            503,
            f"{model}: the request waited longer than its deadline in the queue "
            "(DEFAULT_DEADLINE_MS); try again later",
            [("retry-after", _RETRY_AFTER_S)],
        )
    if kind == "InvalidInputError":
        return RequestError(client_status, f"{field}: {result.error}")
    if kind == "NonFiniteOutputError":
        return RequestError(
            client_status,
            f"{field}: {model} produced a NaN or Inf output for these values: they are "
            "outside the range the model handles",
        )
    if kind == "InputRuntimeError":
        # the client's values, not the model: no exception text (it goes to the log)
        log.info("relcert serve: %s refused a request's values: %s", model, result.error)
        return RequestError(
            client_status,
            f"{field}: {model} cannot compute these values (its runtime raised on them, e.g. "
            "an index past an embedding table or a check in the model; it answers other "
            "inputs): they are outside what the model handles",
        )
    log.error("relcert serve: %s inference failed: %s", model, result.error)
    return RequestError(500, f"{model}: inference failed; the server log has the details")


class _PredictEndpoint(_Endpoint):
    """Decode -> engine.predict -> encode, for one model."""

    model = ""

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.key = service.keys[self.model]
        self.spec = service.specs[self.model]
        self.limit = service.settings.max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, started: float) -> tuple[int, bytes]:
        body = await _read_body(scope, receive, self.limit)
        service = self.service
        if service.status != "ready":
            raise _not_ready(service)
        x = self.spec.decode(body)
        future = service.predict(self.key, x)  # through admission control
        result = future.result() if future.done() else await _result_unless_gone(future, receive)
        if result.success:
            return 200, self.encode(result.output, result.model_version, started)
        raise self.refusal(result)

    def refusal(self, result: Any) -> RequestError:
        return engine_refusal(self.model, result, client_status=422, field="features")

    def encode(self, row: Any, version: str, started: float) -> bytes:
        raise NotImplementedError


class QualityEndpoint(_PredictEndpoint):
    path = PREDICT_QUALITY
    model = QUALITY

    def encode(self, row: Any, version: str, started: float) -> bytes:
        latency_ms = (_perf() - started) * 1000.0
        return (
            f'{{"quality":{float(row[0])!r},"model":"quality_predictor",'
            f'"model_version":{_json_str(version)},"latency_ms":{latency_ms:.3f}}}'
        ).encode()


class RoutingEndpoint(_PredictEndpoint):
    path = PREDICT_ROUTING
    model = ROUTING

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        names = service.class_names
        self.methods = [_json_str(c) for c in names]
        self.prefixes = [_json_str(c) + ":" for c in names]

    def encode(self, row: Any, version: str, started: float) -> bytes:
        probs = row.tolist()
        if len(probs) != len(self.methods):
            raise RequestError(
                500,
                f"{ROUTING}: the model returned {len(probs)} outputs but model_info.json names "
                f"{len(self.methods)} classes",
            )
        best = max(range(len(probs)), key=probs.__getitem__)
        pairs = ",".join([p + repr(v) for p, v in zip(self.prefixes, probs, strict=True)])
        latency_ms = (_perf() - started) * 1000.0
        return (
            f'{{"method":{self.methods[best]},"confidence":{probs[best]!r},'
            f'"probabilities":{{{pairs}}},"model":"routing_classifier",'
            f'"model_version":{_json_str(version)},"latency_ms":{latency_ms:.3f}}}'
        ).encode()


class ValidateEndpoint(_Endpoint):
    """A bounded measurement through the engine. Registered only when VALIDATE_TOKEN is set;
    every request must carry ``Authorization: Bearer <VALIDATE_TOKEN>``; one run at a time,
    with at most VALIDATE_MAX_CONCURRENCY requests of its own in the engine's queue."""

    path = VALIDATE

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.expected = b"bearer " + service.settings.validate_token.encode()

    def authorize(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                # the scheme is case-insensitive; the token is compared in constant time
                given = value[:7].lower() + value[7:]
                if hmac.compare_digest(given, self.expected):
                    return
                break
        raise RequestError(
            401,
            "authorization: expected the header Authorization: Bearer <VALIDATE_TOKEN>",
            [("www-authenticate", 'Bearer realm="relcert-validate"')],
        )

    async def handle(self, scope: Scope, receive: Receive, started: float) -> tuple[int, bytes]:
        self.authorize(scope)
        service = self.service
        settings = service.settings
        doc = load_json_object(
            await _read_body(scope, receive, settings.max_body_bytes), allow_empty=True
        )
        allowed = ("requests", "duration_s", "model", "concurrency")
        for key in doc:
            if key not in allowed:
                raise RequestError(422, f"{key}: unexpected field; allowed: {', '.join(allowed)}")
        requests = _positive(doc, "requests", 500, integer=True)
        duration_s = _positive(doc, "duration_s", 5.0, integer=False)
        most = settings.validate_max_concurrency
        concurrency = _positive(doc, "concurrency", min(8, most), integer=True)
        if concurrency > most:
            raise RequestError(
                422,
                f"concurrency: expected an integer in 1..{most} (VALIDATE_MAX_CONCURRENCY), "
                f"got {concurrency}",
            )
        model = doc.get("model")
        if model is None:
            models = list(service.keys)
        elif type(model) is str and model in service.keys:
            models = [model]
        else:
            raise RequestError(
                422,
                f"model: expected one of {', '.join(service.keys)} (or null), got "
                f"{describe_value(model)}",
            )
        if service.status != "ready":
            raise _not_ready(service)
        if service.validation_running:
            raise RequestError(409, "a validation run is already in progress; try again later")
        capped = (
            requests > settings.validate_max_requests or duration_s > settings.validate_max_seconds
        )
        service.validation_running = True
        try:
            result = await service.validate_performance(
                min(requests, settings.validate_max_requests),
                min(duration_s, settings.validate_max_seconds),
                models,
                concurrency,
            )
        finally:
            service.validation_running = False
        result["capped"] = capped
        result["limits"] = {
            "requests": settings.validate_max_requests,
            "duration_s": settings.validate_max_seconds,
            "concurrency": most,
        }
        return 200, json.dumps(result).encode()


def _positive(doc: dict[str, Any], key: str, default: float, *, integer: bool) -> Any:
    if key not in doc or doc[key] is None:
        return default
    value = doc[key]
    t = type(value)
    if integer:
        if t is not int or value < 1:
            raise RequestError(422, f"{key}: expected an integer >= 1, got {describe_value(value)}")
        return value
    if (t is not int and t is not float) or not 0 < value < float("inf"):
        raise RequestError(422, f"{key}: expected a finite number > 0, got {describe_value(value)}")
    return float(value)


class _JsonGet(_Endpoint):
    """A GET endpoint with a JSON answer computed by `produce`."""

    method = "GET"

    def __init__(
        self,
        service: Service,
        path: str,
        produce: Callable[[], tuple[int, bytes]],
        content_type: bytes = _JSON,
    ) -> None:
        super().__init__(service)
        self.path = path
        self.produce = produce
        self.content_type = content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = _perf()
        try:
            status, body = self.produce()
        except Exception as exc:
            status, body = 500, _internal_error(self.path, exc)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", self.content_type if status == 200 else _JSON),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.service.count(self.path, status, _perf() - started)


class ServeApp(Starlette):
    """Starlette with an exact-path fast lane for the prediction routes."""

    def __init__(self, service: Service, fast: dict[str, _Endpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self._fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] == "http":
            endpoint = self._fast.get(scope["path"])
            if endpoint is not None and scope["method"] == endpoint.method:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: ServeSettings) -> ServeApp:
    """The service for `settings`: routes, OpenAPI document and the background model load.

    Raises SettingsError (naming the variable) when MODEL_DIR holds nothing to serve."""
    from pipeline import __version__ as relcert_version
    from pipeline.serve import v2  # imports this module: imported here, not at the top

    service = Service(settings)

    def ready() -> tuple[int, bytes]:
        if service.status == "ready":
            doc = {
                "status": "ready",
                "format": settings.model_format,
                "models": service.versions(),
                "formats": service.formats(),
            }
            return 200, json.dumps(doc).encode()
        doc: dict[str, Any] = {"status": service.status}
        if service.load_errors:  # which models, not why: reasons name files (see the log)
            doc["errors"] = dict.fromkeys(
                service.load_errors, "failed to load; the server log has the details"
            )
        return 503, json.dumps(doc).encode()

    def live() -> tuple[int, bytes]:
        return 200, json.dumps({"status": "alive", "uptime_s": service.uptime_s()}).encode()

    metrics_registry = _metrics_registry(service)

    def metrics() -> tuple[int, bytes]:
        from prometheus_client import generate_latest

        return 200, service.monitor.prometheus_exposition() + generate_latest(metrics_registry)

    protocol_routes = v2.v2_routes(service)  # /v2: the Open Inference Protocol, every model
    openapi = json.dumps(
        build_openapi(
            service.specs,
            service.class_names,
            models=sorted(service.keys),
            version=relcert_version,
            max_body_bytes=settings.max_body_bytes,
            validate_max_requests=settings.validate_max_requests,
            validate_max_seconds=settings.validate_max_seconds,
            validate_max_concurrency=settings.validate_max_concurrency,
            validate_enabled=settings.validate_enabled,
        )
    ).encode()

    endpoints: list[_Endpoint] = []
    if QUALITY in service.keys:
        endpoints.append(QualityEndpoint(service))
    if ROUTING in service.keys:
        endpoints.append(RoutingEndpoint(service))
    if settings.validate_enabled:
        endpoints.append(ValidateEndpoint(service))
    endpoints += [
        _JsonGet(service, "/health/ready", ready),
        _JsonGet(service, "/health/live", live),
        _JsonGet(service, "/metrics", metrics, _METRICS_TYPE.encode()),
        _JsonGet(service, "/openapi.json", lambda: (200, openapi)),
    ]
    routes: list[BaseRoute] = [
        Route(e.path, endpoint=e, methods=[e.method], include_in_schema=True) for e in endpoints
    ]
    routes += protocol_routes

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        detail = (
            f"no route {request.method} {request.url.path}"
            if status == 404
            else getattr(exc, "detail", None) or str(exc)
        )
        if status == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        headers = dict(getattr(exc, "headers", None) or {})
        service.count(endpoint, status, None)
        key = v2.ERROR_KEY if request.url.path.startswith(v2.PREFIX) else "detail"
        return Response(_error_body(detail, key), status, headers, media_type="application/json")

    async def server_error(request: Request, exc: Exception) -> Response:
        service.count("unmatched", 500, None)
        return Response(_internal_error(request.url.path, exc), 500, media_type="application/json")

    limits = HttpLimits(settings.max_header_bytes, settings.body_read_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        service.start_loading()  # in the background: the server listens meanwhile
        try:
            # lifespan state reaches every connection (BoundedHttpToolsProtocol reads it)
            yield {LIMITS_KEY: limits}
        finally:
            await service.stop()

    return ServeApp(
        service,
        {e.path: e for e in endpoints if isinstance(e, _PredictEndpoint | ValidateEndpoint)},
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )


def _metrics_registry(service: Service) -> Any:
    from prometheus_client import CollectorRegistry

    class _Collector:
        def describe(self) -> list:
            return []

        def collect(self) -> Any:
            return service.collect_metrics()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return registry


def app_from_env() -> ServeApp:
    """Factory for `uvicorn --factory pipeline.serve.app:app_from_env` (settings from env)."""
    return create_app(ServeSettings.from_env())
