"""The Open Inference Protocol (KServe v2 REST API) for every model of the folder.

The protocol KServe, Triton and MLServer speak, so their clients (e.g. ``tritonclient``)
work unchanged:

``GET /v2``
    server metadata: ``{"name": "relcert", "version", "extensions": ["binary_tensor_data"]}``
``GET /v2/health/live`` / ``GET /v2/health/ready``
    ``{"live": true}`` / ``{"ready": true}`` (200 once every model is loaded and warm, 503
    ``{"error": ...}`` before)
``GET /v2/models/{model_name}[/versions/{model_version}]``
    model metadata: name, versions, platform (``onnxruntime_onnx`` / ``pytorch_libtorch``),
    inputs and outputs with name, datatype (FP32, FP64, INT64, ...) and shape (-1: any size)
``GET /v2/models/{model_name}[/versions/{model_version}]/ready``
    ``{"name", "ready": true}``; 503 while loading
``POST /v2/models/{model_name}[/versions/{model_version}]/infer``
    tensor JSON in (``inputs: [{name, shape, datatype, data}]``, data flat row-major or
    nested; or binary data, see `pipeline.serve.tensors`), tensor JSON out (``outputs:
    [{name, shape, datatype, data}]``, ``model_name``, ``model_version``, ``id`` echoed). A
    batch of N rows (at most MAX_REQUEST_ROWS) becomes N engine requests (batched with
    everyone else's), admitted or refused whole and answered together. A model of named
    tensors takes every input tensor and answers with every output (or those ``outputs``
    asks for): see `pipeline.serve.named_tensors`.

Errors are ``{"error": "..."}``, naming what was wrong and what was expected: 400 for a bad
request (wrong input name, shape, datatype or size, invalid JSON, non-finite values, values
outside a declared input range, values for which the model answers NaN/Inf), 404 for an
unknown model or version, 413 over MAX_BODY_BYTES, 503 with Retry-After while loading or
when the engine's queue is full or a request outwaited its deadline, 500 (no exception text:
that goes to the log) when the model's runtime fails.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from starlette.routing import BaseRoute, Route

from pipeline.serve.app import (
    _RETRY_AFTER_S,
    Receive,
    Scope,
    _Endpoint,
    _read_body,
    _result_unless_gone,
    engine_refusal,
)
from pipeline.serve.features import RequestError
from pipeline.serve.named_tensors import decode_named_request, encode_named_response
from pipeline.serve.service import READY, Service
from pipeline.serve.settings import SettingsError
from pipeline.serve.tensors import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    ModelSignature,
    decode_infer_request,
    encode_infer_response,
)

__all__ = ["ERROR_KEY", "PREFIX", "InferEndpoint", "V2Models", "v2_routes"]

PREFIX = "/v2"
MODEL = "/v2/models/{model_name}"
VERSIONED = "/v2/models/{model_name}/versions/{model_version}"
_HEADER_LENGTH = HEADER_LENGTH.encode()
_OCTETS = b"application/octet-stream"
ERROR_KEY = "error"


def _name_text(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:57] + "...")


class V2Models:
    """The served models as the protocol sees them: names, versions and signatures."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._signatures: dict[str, ModelSignature] = {}
        for name in service.keys:
            record = service.manager.model_info[service.keys[name]]
            if record.tensor_io or record.signature is not None:
                continue  # named tensors: settled with the graph once it loads
            try:
                self._signatures[name] = self._describe(name)
            except ValueError as exc:
                shape = record.input_shape
                if len(shape) >= 2 and None not in shape[1:]:
                    raise SettingsError(f"MODEL_DIR: {exc}") from None
                # else its shapes are recorded nowhere but in the file: known once it loads

    def _describe(self, name: str) -> ModelSignature:
        service = self.service
        model = service.manager.model_info[service.keys[name]]
        return ModelSignature.of(name, service.info.get(name, {}), model)

    def check(self, name: str, version: str | None) -> str:
        """The engine key of `name` (404 naming the served models, or the served version)."""
        service = self.service
        key = service.keys.get(name)
        if key is None:
            names = sorted(service.keys)
            listed = ", ".join(names[:20])
            if len(names) > 20:
                listed += f" and {len(names) - 20} more"
            raise RequestError(
                404, f"unknown model {_name_text(name)}; this server serves {listed}"
            )
        served = service.manager.model_info[key].version
        if version is not None and version != served:
            raise RequestError(
                404,
                f"model {name!r} has no version {_name_text(version)}; the served version is "
                f"{served!r}",
            )
        return key

    def signature(self, name: str) -> ModelSignature:
        """`name`'s signature; 503 while it is known only once the model has loaded."""
        signature = self._signatures.get(name)
        if signature is not None:
            return signature
        if self.service.status != READY:
            raise _not_ready(self.service, name)
        signature = self._signatures[name] = self._describe(name)
        return signature


def _not_ready(service: Service, name: str | None = None) -> RequestError:
    subject = f"model {name!r} is not ready: " if name else ""
    if service.status == READY:
        return RequestError(
            503, f"{subject}it is not loaded; retry", [("retry-after", _RETRY_AFTER_S)]
        )
    if service.status == "failed":
        failed = ", ".join(sorted(k for k in service.load_errors)) or "a model"
        return RequestError(
            503, f"{subject}models failed to load ({failed}); the server log has the details"
        )
    return RequestError(
        503,
        f"{subject}models are loading; poll /v2/health/ready",
        [("retry-after", _RETRY_AFTER_S)],
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class _V2Endpoint(_Endpoint):
    """A protocol endpoint: errors are ``{"error": ...}``."""

    error_key = ERROR_KEY

    def __init__(self, models: V2Models, path: str, method: str = "GET") -> None:
        super().__init__(models.service)
        self.models = models
        self.path = path
        self.method = method


class _Get(_V2Endpoint):
    """A GET answered with JSON by `produce(path_params)`."""

    def __init__(self, models: V2Models, path: str, produce: Any) -> None:
        super().__init__(models, path)
        self.produce = produce

    async def handle(self, scope: Scope, receive: Receive, started: float) -> tuple[int, bytes]:
        return 200, json.dumps(self.produce(scope.get("path_params") or {})).encode()


class InferEndpoint(_V2Endpoint):
    """``POST .../infer``: decode the tensor, one engine request per row, encode the rows."""

    def __init__(self, models: V2Models, path: str) -> None:
        super().__init__(models, path, "POST")
        self.limit = models.service.settings.max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, started: float) -> tuple[Any, ...]:
        body = await _read_body(scope, receive, self.limit)
        params = scope.get("path_params") or {}
        name = params.get("model_name", "")
        key = self.models.check(name, params.get("model_version"))
        service = self.service
        if not service.model_ready(name):
            raise _not_ready(service, name)
        encoding = _header(scope, b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            raise RequestError(
                400,
                f"Content-Encoding: {encoding.decode('latin-1')[:40]!r} is not supported; send "
                "the body uncompressed",
            )
        signature = self.models.signature(name)
        if signature.named:
            return await self._named(scope, receive, body, name, key, signature)
        request = decode_infer_request(body, _header(scope, _HEADER_LENGTH), signature)
        rows = request.rows
        most = service.request_rows
        if len(rows) > most:
            raise RequestError(
                400,
                f"inputs[0].shape: {len(rows)} rows, more than the {most} a request may carry "
                "(MAX_REQUEST_ROWS, within MAX_QUEUE and ADMISSION_MAX_CONCURRENCY); send at "
                "most that many rows per request",
            )
        results = await self._run(key, rows, receive)
        failed = next((r for r in results if not r.success), None)
        if failed is not None:
            raise engine_refusal(name, failed, client_status=400, field="inputs[0]")
        outputs = np.stack([r.output for r in results])
        payload, json_size = encode_infer_response(
            signature, outputs, results[0].model_version, request.request_id, request.binary_output
        )
        if json_size is None:
            return 200, payload
        return 200, payload, ((_HEADER_LENGTH, str(json_size).encode()),), _OCTETS

    async def _named(
        self, scope: Scope, receive: Receive, body: bytes, name: str, key: str, signature
    ) -> tuple[Any, ...]:
        """A model of named tensors: every input tensor in, each sample an engine request
        (a mapping of input name -> row), every requested output tensor out."""
        request = decode_named_request(body, _header(scope, _HEADER_LENGTH), signature)
        most = self.service.request_rows
        if request.count > most:
            raise RequestError(
                400,
                f"inputs: {request.count} rows, more than the {most} a request may carry "
                "(MAX_REQUEST_ROWS, within MAX_QUEUE and ADMISSION_MAX_CONCURRENCY); send at "
                "most that many rows per request",
            )
        rows = [request.row(i) for i in range(request.count)]
        results = await self._run(key, rows, receive)
        failed = next((r for r in results if not r.success), None)
        if failed is not None:
            raise engine_refusal(name, failed, client_status=400, field="inputs")
        outputs = {n: np.stack([r.outputs[n] for r in results]) for n in request.outputs}
        payload, json_size = encode_named_response(
            signature, request, outputs, results[0].model_version
        )
        if json_size is None:
            return 200, payload
        return 200, payload, ((_HEADER_LENGTH, str(json_size).encode()),), _OCTETS

    async def _run(self, key: str, rows: Any, receive: Receive) -> list[Any]:
        """Every row (an array, or a mapping input name -> array) as its own engine request
        (batched with everyone else's), admitted or refused as one request by the service's
        admission control; results in order."""
        service = self.service
        if len(rows) == 1:
            future = service.predict(key, rows[0])
            if future.done():
                return [future.result()]
            return [await _result_unless_gone(future, receive)]
        future = service.predict_many(key, rows)
        return list(await _result_unless_gone(future, receive))


def v2_routes(service: Service) -> list[BaseRoute]:
    """The protocol's routes on `service` (plain and versioned model paths)."""
    from pipeline import __version__

    models = V2Models(service)

    def server_metadata(_: dict[str, str]) -> dict[str, Any]:
        return {"name": "relcert", "version": __version__, "extensions": [BINARY_EXTENSION]}

    def live(_: dict[str, str]) -> dict[str, Any]:
        return {"live": True}

    def ready(_: dict[str, str]) -> dict[str, Any]:
        if service.status != READY:
            raise _not_ready(service)
        return {"ready": True}

    def model_metadata(params: dict[str, str]) -> dict[str, Any]:
        name = params.get("model_name", "")
        models.check(name, params.get("model_version"))
        return models.signature(name).metadata()

    def model_ready(params: dict[str, str]) -> dict[str, Any]:
        name = params.get("model_name", "")
        models.check(name, params.get("model_version"))
        if not service.model_ready(name):
            raise _not_ready(service, name)
        return {"name": name, "ready": True}

    endpoints: list[_V2Endpoint] = [
        _Get(models, PREFIX, server_metadata),
        _Get(models, f"{PREFIX}/health/live", live),
        _Get(models, f"{PREFIX}/health/ready", ready),
    ]
    for base in (MODEL, VERSIONED):
        endpoints += [
            _Get(models, base, model_metadata),
            _Get(models, f"{base}/ready", model_ready),
            InferEndpoint(models, f"{base}/infer"),
        ]
    return [Route(e.path, endpoint=e, methods=[e.method]) for e in endpoints]
