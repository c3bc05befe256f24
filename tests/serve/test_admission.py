"""Admission control in front of the service's engine: past the limit a request gets 503 with
Retry-After at once; the limit and its adjustments are Prometheus metrics with their types;
the defaults let a healthy load through."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.serve.client import HttpLoadClient
from pipeline.serve.settings import ServeSettings, SettingsError
from tests.serve.conftest import QUALITY_PATH, Server, running_server

BODY = json.dumps({"features": [0.5] * 10}).encode()


def _admission(text: str) -> dict[str, tuple[str, list]]:
    """relcert_admission_* families: name -> (type, samples)."""
    return {
        f.name: (f.type, f.samples)
        for f in text_string_to_metric_families(text)
        if f.name.startswith("relcert_admission_")
    }


async def _closed_loop(port: int, users: int, per_user: int) -> list:
    async with HttpLoadClient("127.0.0.1", port, connections=users) as client:

        async def user() -> list:
            return [await client.post_json(QUALITY_PATH, BODY) for _ in range(per_user)]

        results = await asyncio.wait_for(asyncio.gather(*(user() for _ in range(users))), 60)
    return [r for rs in results for r in rs]


def test_the_defaults_let_a_healthy_load_through(server: Server, http: httpx.Client) -> None:
    results = asyncio.run(_closed_loop(server.port, users=32, per_user=25))
    assert [r.status for r in results] == [200] * len(results)
    families = _admission(http.get("/metrics").text)
    kind, [limit] = families["relcert_admission_limit"]
    assert kind == "gauge" and 64 <= limit.value <= 1024  # ADMISSION_MIN/MAX defaults
    assert families["relcert_admission_rejected"][0] == "counter"
    [rejected] = families["relcert_admission_rejected"][1]
    assert rejected.name == "relcert_admission_rejected_total" and rejected.value == 0
    admitted = families["relcert_admission_admitted"][1][0]
    assert admitted.value >= len(results)


def test_past_the_limit_requests_get_503_with_retry_after_and_are_counted(
    built_models: Path, tmp_path: Path
) -> None:
    # two requests in the engine at most, and a partial batch waits 200 ms for company:
    # the rest of a burst finds the limit full
    env = {
        "ADMISSION_MAX_CONCURRENCY": "2",
        "ADMISSION_MIN_CONCURRENCY": "2",
        "BATCH_TIMEOUT_MS": "200",
        "CACHE_ENTRIES": "0",
    }
    burst = 12

    async def fire(port: int) -> list:
        async with HttpLoadClient("127.0.0.1", port, connections=burst) as client:
            futures = [client.post_json(QUALITY_PATH, BODY) for _ in range(burst)]
            return await asyncio.wait_for(asyncio.gather(*futures), 30)

    with running_server(built_models, tmp_path, env) as server:
        results = asyncio.run(fire(server.port))
        text = server.client().get("/metrics").text

    statuses = [r.status for r in results]
    assert sorted(statuses) == [200] * 2 + [503] * (burst - 2), statuses
    for refused in (r for r in results if r.status == 503):
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["detail"].startswith("admission rejected: 2 jobs in flight (limit 2)")
    families = _admission(text)
    assert families["relcert_admission_rejected"][1][0].value == burst - 2
    assert families["relcert_admission_limit"][1][0].value == 2
    kind, samples = families["relcert_admission_adjustments"]
    assert kind == "counter"
    assert {(s.labels["direction"], s.labels["cause"]) for s in samples} == {
        ("up", "demand"),
        ("down", "latency"),
        ("down", "demand"),
    }
    assert all(s.name == "relcert_admission_adjustments_total" for s in samples)
    for gauge in ("limit_min", "limit_max", "in_flight", "waiting", "target_p95_ms"):
        assert families[f"relcert_admission_{gauge}"][0] == "gauge", gauge
    assert "# TYPE relcert_admission_limit gauge" in text
    assert "# TYPE relcert_admission_rejected_total counter" in text
    # nothing reached the engine's own queue limit
    assert "relcert_engine_rejected_total 0.0" in text


def test_admission_settings_come_from_the_environment(built_models: Path) -> None:
    base = {"MODEL_DIR": str(built_models)}
    assert ServeSettings.from_env(base).admission.max_concurrency == 1024
    settings = ServeSettings.from_env(
        {
            **base,
            "ADMISSION_CONTROL": "on",
            "ADMISSION_MAX_CONCURRENCY": "128",
            "ADMISSION_MIN_CONCURRENCY": "8",
            "ADMISSION_TARGET_P95_MS": "50",
            "ADMISSION_ADJUST_EVERY": "20",
            "ADMISSION_MAX_WAITING": "16",
            "ADMISSION_QUEUE_TIMEOUT_MS": "25",
        }
    )
    admission = settings.admission
    assert (admission.max_concurrency, admission.min_concurrency) == (128, 8)
    assert (admission.target_p95_ms, admission.adjust_every) == (50.0, 20)
    assert (admission.max_waiting, admission.queue_timeout_ms) == (16, 25.0)
    assert ServeSettings.from_env({**base, **settings.to_env()}).admission == admission
    assert not ServeSettings.from_env({**base, "ADMISSION_CONTROL": "off"}).admission.enabled


@pytest.mark.parametrize(
    "var,value,phrase",
    [
        ("ADMISSION_CONTROL", "maybe", "on or off"),
        ("ADMISSION_MAX_CONCURRENCY", "0", "integer >= 1"),
        ("ADMISSION_MIN_CONCURRENCY", "2000", "must not exceed"),
        ("ADMISSION_TARGET_P95_MS", "fast", "finite number > 0"),
        ("ADMISSION_MAX_WAITING", "-1", "integer >= 0"),
    ],
)
def test_invalid_admission_values_name_the_variable(
    built_models: Path, var: str, value: str, phrase: str
) -> None:
    with pytest.raises(SettingsError, match=rf"^{var}.*{phrase}"):
        ServeSettings.from_env({"MODEL_DIR": str(built_models), var: value})
