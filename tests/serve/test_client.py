"""HttpLoadClient: loopback only, keep-alive with pipelining, bounded in flight."""

from __future__ import annotations

import asyncio
import json

import pytest

from pipeline.serve.client import HttpLoadClient, check_loopback
from tests.serve.conftest import QUALITY_PATH

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("host", ["10.0.0.1", "8.8.8.8", "example.com", "0.0.0.0", "::", ""])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        HttpLoadClient(host, 8000)


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.8.9.10", "127.8.9.10"),
        ("localhost", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_accepts_loopback_hosts(host: str, address: str) -> None:
    assert check_loopback(host) == address


def _bodies(count: int) -> list[bytes]:
    return [json.dumps({"features": [i / count] * 10}).encode() for i in range(count)]


def test_pipelined_responses_come_back_to_their_requests(server) -> None:
    bodies = _bodies(60)

    async def run():
        async with HttpLoadClient(
            "127.0.0.1", server.port, connections=2, max_pipeline=30
        ) as client:
            one_by_one = [await client.post_json(QUALITY_PATH, b) for b in bodies]
            together = await asyncio.gather(*(client.post_json(QUALITY_PATH, b) for b in bodies))
            health = await client.get("/health/live")
            return one_by_one, together, health

    one_by_one, together, health = asyncio.run(asyncio.wait_for(run(), 60))
    assert health.success and health.json()["status"] == "alive"
    assert all(r.success and r.status == 200 for r in one_by_one + together)
    assert [r.json()["quality"] for r in together] == [r.json()["quality"] for r in one_by_one]


def test_in_flight_is_bounded(server) -> None:
    body = _bodies(1)[0]

    async def run():
        async with HttpLoadClient(
            "127.0.0.1", server.port, connections=1, max_pipeline=2
        ) as client:
            futures = [client.post_json(QUALITY_PATH, body) for _ in range(5)]
            assert client.in_flight == 2
            return await asyncio.gather(*futures)

    results = asyncio.run(asyncio.wait_for(run(), 60))
    assert [r.success for r in results] == [True, True, False, False, False]
    assert all("in-flight limit" in r.error for r in results[2:])
    assert results[2].status == 0


def test_a_closed_connection_is_replaced(server) -> None:
    async def run():
        async with HttpLoadClient("127.0.0.1", server.port, connections=1) as client:
            too_big = await client.post_json(QUALITY_PATH, b" " * 10_000)  # 413 closes it
            for _ in range(100):
                if client.open_connections:
                    break
                await asyncio.sleep(0.02)
            after = await client.post_json(QUALITY_PATH, _bodies(1)[0])
            return too_big, after

    too_big, after = asyncio.run(asyncio.wait_for(run(), 60))
    assert too_big.status == 413 and not too_big.success
    assert after.success, after
