"""Overload: a full engine queue answers 503 with Retry-After at once; nothing goes unanswered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pipeline.serve.client import HttpLoadClient
from tests.serve.conftest import QUALITY_PATH, running_server


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
