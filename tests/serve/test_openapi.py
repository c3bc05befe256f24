"""/openapi.json: a valid OpenAPI 3.1 document that lists every route and matches behaviour."""

from __future__ import annotations

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

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def document(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _spec_errors(document: dict[str, Any]) -> list[str]:
    """What openapi-spec-validator finds wrong with `document` (an unresolvable $ref raises
    inside the validator: that is an error too)."""
    from openapi_spec_validator import OpenAPIV31SpecValidator
    from referencing.exceptions import Unresolvable

    try:
        return [e.message for e in OpenAPIV31SpecValidator(document).iter_errors()]
    except Unresolvable as unresolved:
        return [f"unresolvable reference: {unresolved}"]


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    """Validated by openapi-spec-validator (the OpenAPI 3.1 schema, every $ref resolved,
    unique operationIds), not by a check of our own."""
    assert _spec_errors(document) == []


def test_a_broken_document_is_refused_by_the_validator(document: dict[str, Any]) -> None:
    """The validator is not vacuous here: the same document with a dangling $ref or a
    duplicated operationId fails."""
    import copy

    dangling = copy.deepcopy(document)
    del dangling["components"]["schemas"][next(iter(dangling["components"]["schemas"]))]
    assert _spec_errors(dangling)
    duplicated = copy.deepcopy(document)
    operations = [op for item in duplicated["paths"].values() for op in item.values()]
    operations[1]["operationId"] = operations[0]["operationId"]
    assert _spec_errors(duplicated)


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
