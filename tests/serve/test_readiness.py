"""Readiness: 503 `loading` until every model is loaded and warm, then 200 (TorchScript)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import QUALITY_PATH, engine_outputs, model_info, start_server

pytestmark = pytest.mark.unit


def test_ready_only_after_warm_up_and_torchscript_values_match(
    built_models: Path, tmp_path: Path
) -> None:
    server = start_server(built_models, tmp_path, {"STARTUP_DELAY_S": "2.0"}, fmt="torchscript")
    try:
        server.wait_listening()
        with server.client() as client:
            response = client.get("/health/ready")
            assert response.status_code == 503
            assert response.json() == {"status": "loading"}
            assert client.get("/health/live").status_code == 200
            early = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
            assert early.status_code == 503
            assert int(early.headers["retry-after"]) >= 1
            assert "loading" in early.json()["detail"]

            started = time.monotonic()
            server.wait_ready()
            assert time.monotonic() - started < 60
            ready = client.get("/health/ready").json()
            info = model_info(built_models)
            assert ready == {
                "status": "ready",
                "format": "torchscript",
                "models": {name: entry["version"] for name, entry in info.items()},
                "formats": dict.fromkeys(info, "torchscript"),
            }

            xs = np.random.default_rng(5).random((4, 10), dtype=np.float32)
            expected = engine_outputs(built_models, "torchscript", "quality_predictor", xs)
            for x, want in zip(xs, expected, strict=True):
                doc = client.post(QUALITY_PATH, json={"features": [float(v) for v in x]}).json()
                assert doc["quality"] == pytest.approx(float(want[0]), abs=1e-6)
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_live_answers_at_once(server) -> None:
    with server.client() as client:
        response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "alive"
