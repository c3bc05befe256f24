"""/api/v1/validate/performance: a bounded closed-loop run through the engine."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serve.conftest import SHARED_ENV, VALIDATE_AUTH, VALIDATE_PATH

pytestmark = pytest.mark.unit

MAX_REQUESTS = int(SHARED_ENV["VALIDATE_MAX_REQUESTS"])
MAX_SECONDS = float(SHARED_ENV["VALIDATE_MAX_SECONDS"])


def test_small_run_reports_every_figure(http: httpx.Client) -> None:
    response = http.post(
        VALIDATE_PATH, json={"requests": 50, "duration_s": MAX_SECONDS}, headers=VALIDATE_AUTH
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["requests"] == 50
    assert doc["capped"] is False
    assert doc["success_rate"] == 1.0
    assert 0 < doc["p50_ms"] <= doc["p95_ms"] <= doc["p99_ms"]
    assert doc["mean_latency_ms"] > 0 and doc["throughput_rps"] > 0 and doc["rss_mb"] > 10
    assert doc["models"] == ["quality_predictor", "routing_classifier"]


def test_requests_are_capped(http: httpx.Client) -> None:
    doc = http.post(
        VALIDATE_PATH, json={"requests": 10**9, "model": "quality_predictor"}, headers=VALIDATE_AUTH
    ).json()
    assert doc["capped"] is True
    assert 0 < doc["requests"] <= MAX_REQUESTS
    assert doc["models"] == ["quality_predictor"]
    assert doc["limits"] == {"requests": MAX_REQUESTS, "duration_s": MAX_SECONDS, "concurrency": 8}


def test_duration_is_capped(http: httpx.Client) -> None:
    started = time.monotonic()
    doc = http.post(
        VALIDATE_PATH,
        json={"requests": MAX_REQUESTS, "duration_s": 3600, "concurrency": 2},
        headers=VALIDATE_AUTH,
    ).json()
    assert time.monotonic() - started < MAX_SECONDS + 20
    assert doc["capped"] is True
    assert doc["duration_s"] <= MAX_SECONDS + 0.5
    assert 0 < doc["requests"] <= MAX_REQUESTS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"requests": 0}, "requests"),
        ({"requests": 2.5}, "requests"),
        ({"requests": True}, "requests"),
        ({"duration_s": -1}, "duration_s"),
        ({"duration_s": "long"}, "duration_s"),
        ({"model": "nope"}, "model"),
        ({"concurrency": 9}, "concurrency"),  # VALIDATE_MAX_CONCURRENCY (8): its own bound
        ({"concurrency": 1000}, "concurrency"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_fields_are_422(http: httpx.Client, body: dict, field: str) -> None:
    response = http.post(VALIDATE_PATH, json=body, headers=VALIDATE_AUTH)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field}:")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-token-wrong-token-wrong"},
        {"authorization": VALIDATE_AUTH["authorization"] + "x"},
        {"authorization": VALIDATE_AUTH["authorization"].replace("Bearer ", "Basic ")},
    ],
    ids=["none", "wrong", "longer", "basic"],
)
def test_validation_needs_the_bearer_token(http: httpx.Client, headers: dict) -> None:
    response = http.post(VALIDATE_PATH, json={"requests": 5}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "requests" not in response.json()  # nothing ran
