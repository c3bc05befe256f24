"""/metrics: Prometheus text that parses, with HTTP request counters by endpoint and status."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import QUALITY_PATH


def _scrape(http: httpx.Client) -> dict[str, dict]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    return families


def _http_count(families: dict, endpoint: str, status: str) -> float:
    family = families["relcert_http_requests"]
    return sum(
        s.value
        for s in family.samples
        if s.name == "relcert_http_requests_total"
        and s.labels == {"endpoint": endpoint, "status": status}
    )


def test_metrics_parse_and_count_requests(http: httpx.Client) -> None:
    before = _scrape(http)
    for _ in range(3):
        assert http.post(QUALITY_PATH, json={"features": [0.5] * 10}).status_code == 200
    for _ in range(2):
        assert http.post(QUALITY_PATH, json={"features": [0.5]}).status_code == 422
    after = _scrape(http)
    assert _http_count(after, QUALITY_PATH, "200") - _http_count(before, QUALITY_PATH, "200") == 3
    assert _http_count(after, QUALITY_PATH, "422") - _http_count(before, QUALITY_PATH, "422") == 2
    # the engine monitor's own families are there too
    for name in (
        "relcert_requests",
        "relcert_request_latency_ms",
        "relcert_queue_depth",
        "relcert_memory_rss_bytes",
        "relcert_model_ready",
    ):
        assert name in after, sorted(after)
    ready = [s for s in after["relcert_model_ready"].samples]
    assert {s.labels["model"] for s in ready} == {"quality_predictor", "routing_classifier"}
    assert all(s.value == 1.0 for s in ready)
