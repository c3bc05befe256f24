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

pytestmark = pytest.mark.unit

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


def _v2_body(rows: int) -> bytes:
    tensor = {"name": "features", "shape": [rows, 10], "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": [[0.5] * 10] * rows}]}).encode()


def _sample(text: str, name: str, **labels: str) -> float:
    return next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


V2_QUALITY = "/v2/models/quality_predictor/infer"


def test_a_large_request_is_admitted_on_an_idle_server_after_a_quiet_spell(
    built_models: Path, tmp_path: Path
) -> None:
    # Issue 24: low demand halves the limit toward its floor; a request is counted by its
    # rows against a limit that never falls below the most rows a request may carry.
    async def scenario(port: int) -> tuple[list, object, str]:
        async with HttpLoadClient("127.0.0.1", port, connections=2) as client:
            singles = [await client.post_json(QUALITY_PATH, BODY) for _ in range(260)]
            quiet = (await client.get("/metrics")).body.decode()
            large = await client.post_json(V2_QUALITY, _v2_body(200))
            return singles, large, quiet

    env = {"CACHE_ENTRIES": "0", "MAX_BODY_BYTES": "131072"}
    with running_server(built_models, tmp_path, env) as server:
        singles, large, quiet = asyncio.run(scenario(server.port))
    assert {r.status for r in singles} == {200}
    assert _sample(quiet, "relcert_admission_limit") < 1024  # it fell with the low demand
    assert large.status == 200, large.body[:300]
    assert large.json()["outputs"][0]["shape"] == [200, 1]
    assert _sample(quiet, "relcert_admission_limit_min") == 256  # MAX_REQUEST_ROWS' default


def test_a_request_is_admitted_or_refused_whole_and_a_refusal_costs_no_computation(
    built_models: Path, tmp_path: Path
) -> None:
    env = {
        "ADMISSION_MAX_CONCURRENCY": "16",
        "ADMISSION_MIN_CONCURRENCY": "16",
        "BATCH_TIMEOUT_MS": "1000",  # the singles wait in the engine for company
        "CACHE_ENTRIES": "0",
    }

    async def in_flight(client: HttpLoadClient, wanted: int) -> None:
        for _ in range(400):
            text = (await client.get("/metrics")).body.decode()
            if _sample(text, "relcert_admission_in_flight") >= wanted:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"the singles never reached the engine: {text[-2000:]}")

    async def scenario(port: int) -> dict:
        async with HttpLoadClient("127.0.0.1", port, connections=14) as client:
            singles = [client.post_json(QUALITY_PATH, BODY) for _ in range(10)]
            await in_flight(client, 10)
            refused = await client.post_json(V2_QUALITY, _v2_body(10))  # 6 slots are free
            singles = await asyncio.wait_for(asyncio.gather(*singles), 30)
            after = (await client.get("/metrics")).body.decode()
            whole = await client.post_json(V2_QUALITY, _v2_body(10))  # idle: admitted whole
            too_many = await client.post_json(V2_QUALITY, _v2_body(17))
            return locals()

    with running_server(built_models, tmp_path, env) as server:
        seen = asyncio.run(scenario(server.port))
    assert [r.status for r in seen["singles"]] == [200] * 10
    refused = seen["refused"]
    assert refused.status == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"].startswith("admission rejected: 10 jobs in flight (limit 16)")
    # nothing of the refused request was computed: the engine answered the 10 singles only
    assert _sample(seen["after"], "relcert_requests_total", outcome="success") == 10
    assert _sample(seen["after"], "relcert_admission_rejected_total") == 1
    assert seen["whole"].status == 200, seen["whole"].body[:300]
    too_many = seen["too_many"]
    assert too_many.status == 400
    assert "17 rows, more than the 16 a request may carry" in too_many.json()["error"]
