"""Overload: a full engine queue answers 503 with Retry-After at once; nothing goes unanswered;
a queued request gets its 503 at its deadline."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from pipeline.serve.client import HttpLoadClient
from tests.serve.conftest import QUALITY_PATH, running_server

pytestmark = pytest.mark.unit


def test_a_burst_past_the_queue_gets_503_with_retry_after(
    built_models: Path, tmp_path: Path
) -> None:
    # One queue slot, and a partial batch waits 200 ms for company: everything that arrives
    # while the first request waits finds the queue full.
    env = {"MAX_QUEUE": "1", "BATCH_TIMEOUT_MS": "200", "CACHE_ENTRIES": "0"}
    body = json.dumps({"features": [0.5] * 10}).encode()
    burst = 40

    async def fire(port: int):
        async with HttpLoadClient("127.0.0.1", port, connections=burst) as client:
            futures = [client.post_json(QUALITY_PATH, body) for _ in range(burst)]
            return await asyncio.wait_for(asyncio.gather(*futures), 30)

    with running_server(built_models, tmp_path, env) as server:
        results = asyncio.run(fire(server.port))
        metrics = server.client().get("/metrics").text

    statuses = [r.status for r in results]
    assert len(results) == burst and all(r.error is None for r in results), results
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1, statuses
    rejected = [r for r in results if r.status == 503]
    assert rejected, statuses
    for r in rejected:
        assert int(r.headers["retry-after"]) >= 1
        assert "queue full" in r.json()["detail"]
    assert f'relcert_http_requests_total{{endpoint="{QUALITY_PATH}",status="503"}}' in metrics
    rejected_total = next(
        line for line in metrics.splitlines() if line.startswith("relcert_engine_rejected_total")
    )
    assert float(rejected_total.split()[-1]) == pytest.approx(len(rejected))


def test_a_queued_request_gets_its_503_at_its_deadline_not_after_the_batch_wait(
    built_models: Path, tmp_path: Path
) -> None:
    # a lone request waits up to 2 s for company, but its deadline is 500 ms
    env = {"DEFAULT_DEADLINE_MS": "500", "BATCH_TIMEOUT_MS": "2000", "CACHE_ENTRIES": "0"}
    with running_server(built_models, tmp_path, env) as server, server.client() as client:
        started = time.monotonic()
        answer = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
        waited_s = time.monotonic() - started
        metrics = client.get("/metrics").text
    assert answer.status_code == 503, answer.text
    assert "deadline" in answer.json()["detail"] and int(answer.headers["retry-after"]) >= 1
    assert 0.45 <= waited_s < 1.5, waited_s  # about 500 ms, not the 2 s batch wait
    assert "relcert_engine_expired_total 1.0" in metrics
