"""The service's OpenAPI 3.1 document, written by hand to match what the handlers do.

Feature and class names come from `model_info.json`, so the document describes the models
this instance serves; the Open Inference Protocol's paths (``/v2``, every model) are
described by `v2_document`. `tests/serve` checks that the document is valid, that every route of
the app is in it, and that real responses validate against its schemas.
"""

from __future__ import annotations

from typing import Any

from pipeline.serve.features import FLOAT32_MAX, FeatureSpec

__all__ = ["build_openapi"]

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {JSON: {"schema": _ref(schema)}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }
}

_ERROR_RESPONSES = {
    "413": _json_response(
        "The body is larger than MAX_BODY_BYTES (by Content-Length or as streamed)", "Error"
    ),
    "422": _json_response(
        "Invalid JSON, or a missing, extra, non-numeric or non-finite feature, a wrong "
        "number of features, a value outside the model's declared input range, or values "
        "for which the model answers NaN/Inf or its runtime raises (while it answers other "
        "inputs); `detail` names the field",
        "Error",
    ),
    "500": _json_response(
        "The model's runtime failed (it fails on every input: the model is reloaded after "
        "RECOVERY_FAILURE_THRESHOLD such faults); the server log has the details",
        "Error",
    ),
    "503": _json_response(
        "Overloaded (the admission limit or the engine's bounded queue is full, or the "
        "request outwaited its deadline in the queue) or the models are still loading",
        "Error",
        _RETRY_AFTER,
    ),
}


def _features_schema(spec: FeatureSpec) -> dict[str, Any]:
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    return {
        "oneOf": [
            {
                "type": "object",
                "description": f"The {spec.count} features of {spec.model} by name",
                "properties": {name: dict(number) for name in spec.feature_names},
                "required": list(spec.feature_names),
                "additionalProperties": False,
            },
            {
                "type": "array",
                "description": "The features in this order: " + ", ".join(spec.feature_names),
                "items": dict(number),
                "minItems": spec.count,
                "maxItems": spec.count,
            },
        ]
    }


def _request_schema(spec: FeatureSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"features": _features_schema(spec)},
        "required": ["features"],
        "additionalProperties": False,
    }


def _predict_operation(spec: FeatureSpec, summary: str, request: str, response: str) -> dict:
    return {
        "post": {
            "operationId": f"predict_{spec.model}",
            "summary": summary,
            "tags": ["predict"],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
            "responses": {
                "200": _json_response("The model's prediction", response),
                **_ERROR_RESPONSES,
            },
        }
    }


def build_openapi(
    specs: dict[str, FeatureSpec],
    class_names: tuple[str, ...],
    *,
    models: list[str] | None = None,
    version: str,
    max_body_bytes: int,
    validate_max_requests: int,
    validate_max_seconds: float,
    validate_max_concurrency: int = 8,
    validate_enabled: bool = True,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an instance serving `models` (default: those of
    `specs`), the models in `specs` also on their named endpoints."""
    models = sorted(models if models is not None else specs)
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {"detail": {"type": "string"}},
            "required": ["detail"],
        },
        "Live": {
            "type": "object",
            "properties": {
                "status": {"const": "alive"},
                "uptime_s": {"type": "number", "minimum": 0},
            },
            "required": ["status"],
        },
        "Ready": {
            "type": "object",
            "properties": {
                "status": {"const": "ready"},
                "format": {"enum": ["onnx", "torchscript"]},
                "models": {
                    "type": "object",
                    "description": "model name -> version",
                    "additionalProperties": {"type": "string"},
                },
                "formats": {
                    "type": "object",
                    "description": "model name -> the format it is served in: `format` "
                    "(MODEL_FORMAT) when the model has that file, else the one it has",
                    "additionalProperties": {"enum": ["onnx", "torchscript"]},
                },
            },
            "required": ["status", "models"],
        },
        "NotReady": {
            "type": "object",
            "properties": {
                "status": {"enum": ["loading", "failed"]},
                "errors": {
                    "type": "object",
                    "description": "model -> failed to load (status failed; the reason is in "
                    "the server log)",
                    "additionalProperties": {"type": "string"},
                },
            },
            "required": ["status"],
        },
        "ValidationRequest": {
            "type": "object",
            "properties": {
                "requests": {
                    "type": "integer",
                    "minimum": 1,
                    "default": 500,
                    "description": f"Requests to send; capped at {validate_max_requests} "
                    "(VALIDATE_MAX_REQUESTS)",
                },
                "duration_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "default": 5.0,
                    "description": f"Longest run in seconds; capped at {validate_max_seconds:g} "
                    "(VALIDATE_MAX_SECONDS)",
                },
                "model": {
                    "enum": [*models, None],
                    "description": "Model to measure; null or absent: every served model in turn",
                },
                "concurrency": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": validate_max_concurrency,
                    "default": min(8, validate_max_concurrency),
                    "description": "Closed-loop users (each sends when its last request is done)",
                },
            },
            "additionalProperties": False,
        },
        "ValidationResult": {
            "type": "object",
            "properties": {
                "requests": {"type": "integer", "minimum": 0, "description": "requests sent"},
                "success_rate": {"type": "number", "minimum": 0, "maximum": 1},
                "mean_latency_ms": {"type": "number", "minimum": 0},
                "p50_ms": {"type": "number", "minimum": 0},
                "p95_ms": {"type": "number", "minimum": 0},
                "p99_ms": {"type": "number", "minimum": 0},
                "throughput_rps": {"type": "number", "minimum": 0},
                "rss_mb": {"type": "number", "minimum": 0},
                "capped": {
                    "type": "boolean",
                    "description": "requests or duration_s was lowered to the service's limit",
                },
                "duration_s": {"type": "number", "minimum": 0},
                "models": {"type": "array", "items": {"enum": models}},
                "concurrency": {"type": "integer", "minimum": 1},
                "limits": {
                    "type": "object",
                    "properties": {
                        "requests": {"type": "integer"},
                        "duration_s": {"type": "number"},
                    },
                },
            },
            "required": [
                "requests",
                "success_rate",
                "mean_latency_ms",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "throughput_rps",
                "rss_mb",
                "capped",
            ],
        },
    }
    paths: dict[str, Any] = {}
    if "quality_predictor" in specs:
        spec = specs["quality_predictor"]
        schemas["QualityRequest"] = _request_schema(spec)
        schemas["QualityPrediction"] = {
            "type": "object",
            "properties": {
                "quality": {"type": "number", "minimum": 0, "maximum": 1},
                "model": {"const": "quality_predictor"},
                "model_version": {"type": "string"},
                "latency_ms": {"type": "number", "minimum": 0},
            },
            "required": ["quality", "model", "model_version", "latency_ms"],
            "additionalProperties": False,
        }
        paths["/api/v1/predict/quality"] = _predict_operation(
            spec,
            f"Predicted conversion quality in [0, 1] from {spec.count} optimisation parameters",
            "QualityRequest",
            "QualityPrediction",
        )
    if "routing_classifier" in specs:
        spec = specs["routing_classifier"]
        schemas["RoutingRequest"] = _request_schema(spec)
        schemas["RoutingDecision"] = {
            "type": "object",
            "properties": {
                "method": {"enum": list(class_names)},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "probabilities": {
                    "type": "object",
                    "properties": {
                        c: {"type": "number", "minimum": 0, "maximum": 1} for c in class_names
                    },
                    "required": list(class_names),
                    "additionalProperties": False,
                },
                "model": {"const": "routing_classifier"},
                "model_version": {"type": "string"},
                "latency_ms": {"type": "number", "minimum": 0},
            },
            "required": [
                "method",
                "confidence",
                "probabilities",
                "model",
                "model_version",
                "latency_ms",
            ],
            "additionalProperties": False,
        }
        paths["/api/v1/predict/routing"] = _predict_operation(
            spec,
            f"Routing decision (one of {', '.join(class_names)}) from {spec.count} image features",
            "RoutingRequest",
            "RoutingDecision",
        )
    validate_operation = {
        "post": {
            "operationId": "validate_performance",
            "summary": "Run a bounded closed-loop measurement through the engine",
            "description": "Present only when VALIDATE_TOKEN is set; send it as a bearer token.",
            "tags": ["validate"],
            "security": [{"validateToken": []}],
            "requestBody": {
                "required": False,
                "content": {JSON: {"schema": _ref("ValidationRequest")}},
            },
            "responses": {
                "200": _json_response("Measured figures", "ValidationResult"),
                "401": _json_response("Missing or wrong bearer token", "Error"),
                "409": _json_response("Another validation run is in progress", "Error"),
                "413": _ERROR_RESPONSES["413"],
                "422": _json_response("Invalid body; `detail` names the field", "Error"),
                "503": _json_response("The models are still loading", "Error", _RETRY_AFTER),
            },
        }
    }
    if validate_enabled:
        paths["/api/v1/validate/performance"] = validate_operation
    paths["/health/ready"] = {
        "get": {
            "operationId": "health_ready",
            "summary": "Readiness: every served model is loaded and warm",
            "tags": ["health"],
            "responses": {
                "200": _json_response("Ready to serve", "Ready"),
                "503": _json_response("Models loading (or failed to load)", "NotReady"),
            },
        }
    }
    paths["/health/live"] = {
        "get": {
            "operationId": "health_live",
            "summary": "Liveness: the event loop runs",
            "tags": ["health"],
            "responses": {"200": _json_response("Alive", "Live")},
        }
    }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics: engine monitor, HTTP requests by endpoint and status",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format 0.0.4",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    v2_paths, v2_schemas = v2_document(models, max_body_bytes)
    paths.update(v2_paths)
    schemas.update(v2_schemas)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["operations"],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relcert model service",
            "version": version,
            "description": (
                "Predictions from the certified models over HTTP, on relcert's batching "
                "engine: every model through the Open Inference Protocol (KServe v2, `/v2`), "
                "the two example models also on their named endpoints (`/api/v1/predict`). "
                f"Request bodies are limited to {max_body_bytes} bytes. Unknown paths "
                'answer 404 and wrong methods 405, with a JSON {"detail": ...} body '
                '(`{"error": ...}` under /v2).'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"validateToken": {"type": "http", "scheme": "bearer"}},
        },
    }


# ----------------------------------------------------------------------------- /v2
_V2_TAG = "open inference protocol"
_TENSOR_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": -1}}


def _v2_error(description: str, headers: dict | None = None) -> dict[str, Any]:
    return _json_response(description, "V2Error", headers)


def _v2_model_parameters(models: list[str], versioned: bool) -> list[dict[str, Any]]:
    parameters = [
        {
            "name": "model_name",
            "in": "path",
            "required": True,
            "description": "A model of this server (GET /v2/models/{model_name} describes it)",
            "schema": {"type": "string", "enum": models} if models else {"type": "string"},
        }
    ]
    if versioned:
        parameters.append(
            {
                "name": "model_version",
                "in": "path",
                "required": True,
                "description": "The served version (the model metadata's `versions`); "
                "another version is 404",
                "schema": {"type": "string"},
            }
        )
    return parameters


def _v2_schemas() -> dict[str, Any]:
    parameters = {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    }
    tensor_data = {
        "type": "array",
        "description": "Row-major values, flat or nested as the shape",
        "items": {"type": ["number", "array"]},
    }
    return {
        "V2Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}},
            "required": ["error"],
        },
        "V2ServerMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "version", "extensions"],
        },
        "V2Live": {
            "type": "object",
            "properties": {"live": {"const": True}},
            "required": ["live"],
        },
        "V2Ready": {
            "type": "object",
            "properties": {"ready": {"const": True}},
            "required": ["ready"],
        },
        "V2ModelReady": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "ready": {"const": True}},
            "required": ["name", "ready"],
        },
        "V2MetadataTensor": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string", "description": "FP32, FP64, INT64, ..."},
                "shape": {**_TENSOR_SHAPE, "description": "-1: a dimension of any size"},
            },
            "required": ["name", "datatype", "shape"],
        },
        "V2ModelMetadata": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"enum": ["onnxruntime_onnx", "pytorch_libtorch"]},
                "inputs": {"type": "array", "items": _ref("V2MetadataTensor")},
                "outputs": {"type": "array", "items": _ref("V2MetadataTensor")},
            },
            "required": ["name", "versions", "platform", "inputs", "outputs"],
        },
        "V2RequestInput": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The model's input name"},
                "shape": {
                    **_TENSOR_SHAPE,
                    "description": "[N, row dims...]: N rows (fixed for a fixed-batch model)",
                },
                "datatype": {"enum": ["FP32", "FP64", "INT64"]},
                "parameters": {
                    **parameters,
                    "description": "binary_data_size: the tensor is binary data after the "
                    "JSON object (with the Inference-Header-Content-Length header)",
                },
                "data": tensor_data,
            },
            "required": ["name", "shape", "datatype"],
        },
        "V2RequestOutput": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The model's output name"},
                "parameters": {
                    **parameters,
                    "description": "binary_data: true to receive the tensor as binary data",
                },
            },
            "required": ["name"],
        },
        "V2InferRequest": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "Echoed in the response"},
                "parameters": {
                    **parameters,
                    "description": "binary_data_output: true for every output as binary data",
                },
                "inputs": {
                    "type": "array",
                    "items": _ref("V2RequestInput"),
                    "minItems": 1,
                    "maxItems": 1,
                },
                "outputs": {"type": "array", "items": _ref("V2RequestOutput")},
            },
            "required": ["inputs"],
        },
        "V2ResponseOutput": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "shape": _TENSOR_SHAPE,
                "datatype": {"type": "string"},
                "parameters": parameters,
                "data": {"type": "array", "items": {"type": "number"}},
            },
            "required": ["name", "shape", "datatype"],
        },
        "V2InferResponse": {
            "type": "object",
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": {"type": "array", "items": _ref("V2ResponseOutput")},
            },
            "required": ["model_name", "model_version", "outputs"],
        },
    }


def _v2_get(operation_id: str, summary: str, ok: tuple[str, str], errors: dict) -> dict:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "tags": [_V2_TAG],
            "responses": {"200": _json_response(ok[0], ok[1]), **errors},
        }
    }


def _v2_infer(parameters: list, tail: str, errors: dict[str, Any]) -> dict[str, Any]:
    """The inference operation (JSON or binary tensor data in and out)."""
    return {
        "post": {
            "operationId": f"v2_infer{tail}",
            "summary": "Inference: N rows in one input tensor, one output tensor back",
            "description": (
                "Each row becomes one request to the batching engine; the rows (at most "
                "MAX_REQUEST_ROWS) are admitted or refused as one request and answered "
                "together. With the binary tensor data extension the body is the "
                "JSON object followed by the tensor's bytes (little-endian, row-major), "
                "the Inference-Header-Content-Length header giving the JSON object's size; "
                "a response with binary outputs carries the same header."
            ),
            "tags": [_V2_TAG],
            "parameters": [
                *parameters,
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "required": False,
                    "description": "Size of the JSON object when binary data follows it",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _ref("V2InferRequest")},
                    "application/octet-stream": {
                        "schema": {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "A V2InferRequest JSON object, then binary tensor data",
                        }
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "The output tensor (binary data after the JSON object "
                    "when requested, with the Inference-Header-Content-Length header)",
                    "content": {
                        JSON: {"schema": _ref("V2InferResponse")},
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        },
                    },
                    "headers": {
                        "Inference-Header-Content-Length": {
                            "description": "Size of the JSON object when binary data follows it",
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    },
                },
                **errors,
            },
        }
    }


def v2_document(models: list[str], max_body_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The paths and schemas of the Open Inference Protocol (KServe v2 REST) for `models`."""
    not_ready = {"503": _v2_error("Models are loading (or failed to load)", _RETRY_AFTER)}
    unknown = {"404": _v2_error("Unknown model (or a version other than the served one)")}
    paths: dict[str, Any] = {
        "/v2": _v2_get(
            "v2_server_metadata",
            "Server metadata: name, version and the binary_tensor_data extension",
            ("Server metadata", "V2ServerMetadata"),
            {},
        ),
        "/v2/health/live": _v2_get(
            "v2_health_live", "Liveness: the server answers", ("Alive", "V2Live"), {}
        ),
        "/v2/health/ready": _v2_get(
            "v2_health_ready",
            "Readiness: every model is loaded and warm",
            ("Ready", "V2Ready"),
            not_ready,
        ),
    }
    infer_errors = {
        "400": _v2_error(
            "A bad request: invalid JSON, a wrong input name, datatype, shape or data size, "
            "more rows than MAX_REQUEST_ROWS, non-finite values, integers outside the "
            "datatype's range, values outside the model's declared input range, or values "
            "for which the model answers NaN/Inf or its runtime raises (while it answers "
            "other inputs); `error` names what was wrong and what was expected"
        ),
        **unknown,
        "413": _v2_error(f"The body is larger than MAX_BODY_BYTES ({max_body_bytes} bytes)"),
        "500": _v2_error(
            "The model's runtime failed (it fails on every input); the server log has the details"
        ),
        "503": _v2_error(
            "The models are loading, the admission limit or the engine's queue is full (the "
            "request is refused whole) or the request outwaited its deadline in the queue",
            _RETRY_AFTER,
        ),
    }
    for suffix, versioned in (("", False), ("/versions/{model_version}", True)):
        base = "/v2/models/{model_name}" + suffix
        tail = "_version" if versioned else ""
        parameters = _v2_model_parameters(models, versioned)
        metadata = _v2_get(
            f"v2_model_metadata{tail}",
            "Model metadata: versions, platform, input and output tensors",
            ("Model metadata", "V2ModelMetadata"),
            {**unknown, **not_ready},
        )
        ready = _v2_get(
            f"v2_model_ready{tail}",
            "Model readiness: loaded and warm",
            ("Ready", "V2ModelReady"),
            {**unknown, **not_ready},
        )
        metadata["get"]["parameters"] = ready["get"]["parameters"] = parameters
        paths[base] = metadata
        paths[f"{base}/ready"] = ready
        paths[f"{base}/infer"] = _v2_infer(parameters, tail, infer_errors)
    return paths, _v2_schemas()
