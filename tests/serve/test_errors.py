"""Bad requests get a JSON error that names the field; big bodies 413; unknown paths 404."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import QUALITY_PATH, ROUTING_PATH, SHARED_ENV, model_info

pytestmark = pytest.mark.unit

LIMIT = int(SHARED_ENV["MAX_BODY_BYTES"])


@pytest.fixture(scope="module")
def quality_features(built_models: Path) -> dict[str, float]:
    names = model_info(built_models)["quality_predictor"]["feature_names"]
    return {name: 0.5 for name in names}


def _post_raw(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        (b"{not json", "body", "invalid JSON"),
        (b"", "body", "invalid JSON"),
        (b"[1, 2]", "body", "expected a JSON object"),
        (b'{"other": 1}', "features", "missing"),
        (b'{"features": "abc"}', "features", "expected an object of 10 named numbers"),
        (b'{"features": [1, 2, 3]}', "features", "expected a list of 10 numbers"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]}', "features", "got 11"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9, NaN]}', "features[9]", "got NaN"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9, Infinity]}', "features[9]", "finite"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, 9, 1e39]}', "features[9]", "float32 range"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, true, 0]}', "features[8]", "got true"),
        (b'{"features": [1, 2, 3, 4, 5, 6, 7, 8, null, 0]}', "features[8]", "got null"),
    ],
)
def test_invalid_bodies_are_422_naming_the_field(
    http: httpx.Client, body: bytes, field: str, phrase: str
) -> None:
    response = _post_raw(http, QUALITY_PATH, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:"), detail
    assert phrase in detail


def test_named_feature_errors_name_the_feature(
    http: httpx.Client, quality_features: dict[str, float]
) -> None:
    first, second = list(quality_features)[:2]

    missing = dict(quality_features)
    del missing[second]
    detail = http.post(QUALITY_PATH, json={"features": missing}).json()["detail"]
    assert detail.startswith(f"features.{second}:") and "missing" in detail

    extra = {**quality_features, "bogus": 1.0}
    response = http.post(QUALITY_PATH, json={"features": extra})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("features.bogus: unexpected feature")

    text = {**quality_features, second: "abc"}
    response = http.post(QUALITY_PATH, json={"features": text})
    assert response.status_code == 422
    assert response.json()["detail"] == f'features.{second}: expected a finite number, got "abc"'

    nan = json.dumps({"features": quality_features}).replace(f'"{first}": 0.5', f'"{first}": NaN')
    response = _post_raw(http, QUALITY_PATH, nan.encode())
    assert response.status_code == 422
    assert response.json()["detail"] == f"features.{first}: expected a finite number, got NaN"

    response = http.post(QUALITY_PATH, json={"features": quality_features, "extra": 1})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("extra: unexpected field")


def test_routing_wants_its_own_15_features(
    http: httpx.Client, quality_features: dict[str, float]
) -> None:
    response = http.post(ROUTING_PATH, json={"features": quality_features})
    assert response.status_code == 422
    assert "required feature is missing" in response.json()["detail"]
    response = http.post(ROUTING_PATH, json={"features": [0.5] * 10})
    assert response.status_code == 422
    assert "expected a list of 15 numbers" in response.json()["detail"]


def test_oversized_body_is_413_by_content_length(http: httpx.Client) -> None:
    body = b'{"features": [' + b" " * LIMIT + b"1]}"
    response = _post_raw(http, QUALITY_PATH, body)
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]


def test_oversized_streamed_body_is_413(server) -> None:
    chunk = b" " * 1024

    def stream():  # no Content-Length: sent chunked, so only counting can catch it
        yield b'{"features": ['
        for _ in range(LIMIT // len(chunk) + 2):
            yield chunk
        yield b"1]}"

    with server.client() as client:
        response = client.post(QUALITY_PATH, content=stream())
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]


def test_streamed_body_under_the_limit_is_fine(http: httpx.Client) -> None:
    def stream():
        yield b'{"features": '
        yield b"[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}"

    response = http.post(QUALITY_PATH, content=stream())
    assert response.status_code == 200, response.text


def test_unknown_path_and_method_are_json(http: httpx.Client) -> None:
    response = http.get("/no/such/path")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "no route" in response.json()["detail"]
    response = http.get(QUALITY_PATH)
    assert response.status_code == 405
    assert response.json()["detail"].startswith("method GET not allowed")
