"""/openapi.json: a valid OpenAPI 3.1 document that lists every route and matches behaviour."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from pipeline.serve import ServeSettings, create_app
from tests.serve.conftest import (
    QUALITY_PATH,
    ROUTING_PATH,
    VALIDATE_AUTH,
    VALIDATE_PATH,
    VALIDATE_TOKEN,
    model_info,
)

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def document(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _check_structure(doc: dict[str, Any]) -> None:
    """What openapi-spec-validator would check, for when it is not installed."""
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema), name
    operation_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/"), path
        assert set(item) <= METHODS, (path, set(item))
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), status
                assert isinstance(response["description"], str)
                for media in response.get("content", {}).values():
                    assert "schema" in media
                for header in response.get("headers", {}).values():
                    Draft202012Validator.check_schema(header["schema"])
            body = operation.get("requestBody")
            if body is not None:
                assert body["content"], (path, method)
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, f"unresolved $ref {ref}"


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    try:
        from openapi_spec_validator import validate
    except ImportError:  # not in the project's environment: check the structure ourselves
        validate = None
    if validate is not None:
        validate(document)
    _check_structure(document)


def test_every_route_is_documented(document: dict[str, Any], built_models: Path) -> None:
    app = create_app(
        ServeSettings.from_env({}, model_dir=built_models, validate_token=VALIDATE_TOKEN)
    )
    routes = {(r.path, m.lower()) for r in app.routes for m in r.methods if m != "HEAD"}
    documented = {(p, m) for p, item in document["paths"].items() for m in item}
    assert routes == documented
    # without a token the validation endpoint neither exists nor is documented
    off = create_app(ServeSettings.from_env({}, model_dir=built_models))
    assert VALIDATE_PATH not in {r.path for r in off.routes}


def test_feature_names_come_from_model_info(document: dict[str, Any], built_models: Path) -> None:
    info = model_info(built_models)
    schemas = document["components"]["schemas"]
    named = schemas["QualityRequest"]["properties"]["features"]["oneOf"][0]
    assert named["required"] == info["quality_predictor"]["feature_names"]
    routing = schemas["RoutingDecision"]["properties"]["method"]["enum"]
    assert routing == info["routing_classifier"]["class_names"]


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def _response_schema(document: dict, path: str, method: str, status: int) -> str:
    response = document["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]


def test_real_responses_match_the_documented_schemas(
    document: dict[str, Any], http: httpx.Client, built_models: Path
) -> None:
    names = model_info(built_models)["routing_classifier"]["feature_names"]
    cases = [
        ("post", QUALITY_PATH, {"features": [0.25] * 10}),
        ("post", ROUTING_PATH, {"features": dict.fromkeys(names, 0.5)}),
        ("post", ROUTING_PATH, {"features": [0.5] * 3}),
        ("post", QUALITY_PATH, {"nothing": 1}),
        ("post", VALIDATE_PATH, {"requests": 20, "duration_s": 0.5}),
        ("post", VALIDATE_PATH, {"requests": "many"}),
        ("get", "/health/ready", None),
        ("get", "/health/live", None),
    ]
    for method, path, body in cases:
        headers = VALIDATE_AUTH if path == VALIDATE_PATH else None
        response = http.request(method.upper(), path, json=body, headers=headers)
        schema = _response_schema(document, path, method, response.status_code)
        _validator(document, schema).validate(response.json())
        if method == "post":
            request_schema = document["paths"][path]["post"]["requestBody"]["content"][
                "application/json"
            ]["schema"]["$ref"].rsplit("/", 1)[1]
            valid = _validator(document, request_schema).is_valid(body)
            assert valid == (response.status_code == 200), (path, body, response.text)
    big = http.post(QUALITY_PATH, content=b" " * 10_000)
    _validator(document, _response_schema(document, QUALITY_PATH, "post", 413)).validate(big.json())
