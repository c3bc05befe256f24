"""/metrics: Prometheus text that parses, with HTTP request counters by endpoint and status,
and the counters, histogram and gauges the package's alert rules compute from."""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import QUALITY_PATH, missing_for_rules, rule_metrics

pytestmark = pytest.mark.unit


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


def _histogram(families: dict, name: str) -> tuple[list[tuple[float, float]], float, float]:
    """(cumulative buckets by upper bound, _count, _sum) of a histogram family."""
    samples = families[name].samples
    buckets = sorted(
        (float(s.labels["le"]), s.value) for s in samples if s.name == f"{name}_bucket"
    )
    count = next(s.value for s in samples if s.name == f"{name}_count")
    total = next(s.value for s in samples if s.name == f"{name}_sum")
    return buckets, count, total


def test_metrics_export_what_the_alert_rules_use(http: httpx.Client) -> None:
    from pipeline.package.alerts import alert_rules_and_tests, latency_buckets_ms
    from pipeline.package.settings import EngineSettings
    from pipeline.targets import load_targets

    before = _scrape(http)
    for _ in range(5):
        assert http.post(QUALITY_PATH, json={"features": [0.5] * 10}).status_code == 200
    after = _scrape(http)

    # every metric the package's rules use (capacity alert included) has the assumed type
    targets = load_targets()
    rules, _ = alert_rules_and_tests(targets, EngineSettings(), "relcert-service", 100.0)
    assert rule_metrics(rules) >= {
        "relcert_request_latency_ms_bucket",
        "relcert_request_latency_ms_sum",
        "relcert_request_latency_ms_count",
        "relcert_requests_total",
        "relcert_engine_cache_hits_total",
        "relcert_memory_rss_bytes",
        "relcert_queue_depth",
    }
    assert missing_for_rules(after, rules) == []

    # the latency histogram: the targets' latency thresholds are bucket bounds (so
    # histogram_quantile is exact there), counts are cumulative and count every request
    buckets, count, total = _histogram(after, "relcert_request_latency_ms")
    bounds = [b for b, _ in buckets]
    assert bounds == [*latency_buckets_ms(targets), math.inf]
    for name in ("average_inference_latency_ms", "p95_latency_ms", "p99_latency_ms"):
        assert targets[name].threshold in bounds, name
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == count
    _, old_count, old_total = _histogram(before, "relcert_request_latency_ms")
    assert count - old_count == 5 and total > old_total
    assert _requests(after, "success") - _requests(before, "success") == 5
    assert after["relcert_memory_rss_bytes"].samples[0].value > 2**20


def _requests(families: dict, outcome: str) -> float:
    family = families["relcert_requests"]
    return next(
        s.value
        for s in family.samples
        if s.name == "relcert_requests_total" and s.labels == {"outcome": outcome}
    )
