"""The stage engine host's control port accepts only clients holding the run's token."""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.inference import EngineSettings
from pipeline.stages.engine_host import EngineHost, HostConfig, connect_authenticated

pytestmark = pytest.mark.stage

_LEN = struct.Struct("<I")
_CTL = struct.Struct("<IB")
OP_STATS, OP_BALLAST = 1, 4


async def _frame(reader: asyncio.StreamReader) -> bytes:
    size = _LEN.unpack(await asyncio.wait_for(reader.readexactly(4), 30))[0]
    return await asyncio.wait_for(reader.readexactly(size), 30)


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the host has closed the connection (EOF within a generous bound)."""
    try:
        while await asyncio.wait_for(reader.read(65536), 30):
            pass
    except ConnectionError:
        pass
    return True


def test_a_client_without_the_token_is_refused(built_models: Path) -> None:
    config = HostConfig(models=("quality_predictor_onnx",), engine=EngineSettings(pool_mb=16))

    async def scenario() -> dict:
        host = await EngineHost(built_models, config).start()
        try:
            seen: dict = {}
            # 1. the wrong token: DENIED, then the connection is closed
            with pytest.raises(PermissionError, match="refused the token"):
                await connect_authenticated(host.port, secrets.token_bytes(32))
            # 2. no token at all, straight to a control op (ballast would disturb a measurement)
            reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
            body = _CTL.pack(1, OP_BALLAST) + _LEN.pack(64)
            writer.write(_LEN.pack(len(body)) + body)
            seen["unauthenticated_answer"] = await _frame(reader)
            seen["unauthenticated_closed"] = await _closed(reader)
            writer.close()
            # 3. a token of the wrong length is refused without reading it
            reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
            writer.write(_LEN.pack(2**31) + b"x" * 16)
            seen["oversized_answer"] = await _frame(reader)
            writer.close()
            # the host's own (authenticated) client still works
            stats = await host.stats()
            seen["stats_pid"] = stats["pid"]
            result = await host.predict("quality_predictor_onnx", np.full(10, 0.5, np.float32))
            seen["predict_ok"] = result.success
            seen["cmdline"] = " ".join(psutil.Process(host.pid).cmdline())
            seen["environ"] = json.dumps(psutil.Process(host.pid).environ())
            seen["token"] = host._token.hex()
            seen["pid"] = host.pid
            return seen
        finally:
            await host.stop()

    seen = asyncio.run(scenario())
    assert seen["unauthenticated_answer"] == b"DENIED"
    assert seen["unauthenticated_closed"]
    assert seen["oversized_answer"] == b"DENIED"
    assert seen["predict_ok"] and seen["stats_pid"] == seen["pid"]
    # the token never shows in the child's command line or environment
    assert seen["token"] not in seen["cmdline"] and seen["token"] not in seen["environ"]
