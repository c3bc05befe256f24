"""The service's OpenAPI 3.1 document, written by hand to match what the handlers do.

Feature and class names come from `model_info.json`, so the document describes the models
this instance serves. `tests/serve` checks that the document is valid, that every route of
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
        "for which the model answers NaN/Inf; `detail` names the field",
        "Error",
    ),
    "500": _json_response("The model's runtime failed; the server log has the details", "Error"),
    "503": _json_response(
        "Overloaded (the engine's bounded queue is full, or the request outwaited its "
        "deadline in the queue) or the models are still loading",
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
    version: str,
    max_body_bytes: int,
    validate_max_requests: int,
    validate_max_seconds: float,
    validate_max_concurrency: int = 8,
    validate_enabled: bool = True,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an instance serving the models in `specs`."""
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
                    "enum": [*sorted(specs), None],
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
                "models": {"type": "array", "items": {"enum": sorted(specs)}},
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
                f"engine. Request bodies are limited to {max_body_bytes} bytes. Unknown paths "
                'answer 404 and wrong methods 405, both with a JSON {"detail": ...} body.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"validateToken": {"type": "http", "scheme": "bearer"}},
        },
    }
