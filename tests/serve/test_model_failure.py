"""A model that fails: NaN outputs and values its runtime raises on are the request's 422; a
runtime that raises on everything is a 500 without internals, and the model is reloaded."""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import pytest

from tests.fault_models import BREAK_VALUE, breakable_model
from tests.serve.conftest import QUALITY_PATH, running_server

pytestmark = pytest.mark.unit


def _nan_on_zero_model(folder: Path) -> Path:
    """A quality_predictor whose output is NaN when its first feature is 0 (0/0)."""
    import torch

    class NanOnZero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first = x[:, :1]
            return torch.sigmoid(x.sum(dim=1, keepdim=True)) * (first / first)

    folder.mkdir(parents=True)
    path = folder / "quality_predictor.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            NanOnZero().eval(),
            (torch.rand(2, 10) + 0.1,),
            path,
            dynamo=False,
            input_names=["features"],
            output_names=["quality"],
            dynamic_axes={"features": {0: "batch"}, "quality": {0: "batch"}},
            opset_version=17,
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {
        "quality_predictor": {
            "name": "quality_predictor",
            "version": "nan-1",
            "input_shape": [None, 10],
            "output_shape": [None, 1],
            "feature_names": [f"p{i}" for i in range(10)],
            "files": {"onnx": {"path": path.name, "sha256": digest}},
        }
    }
    (folder / "model_info.json").write_text(json.dumps(info))
    return folder


def _metric(metrics: str, prefix: str) -> float:
    """The value of the first sample line starting with `prefix` (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_a_nan_output_is_the_requests_422_and_never_reloads_the_model(tmp_path: Path) -> None:
    models = _nan_on_zero_model(tmp_path / "models")
    env = {"CACHE_ENTRIES": "0", "RECOVERY_FAILURE_THRESHOLD": "2", "RECOVERY_COOLDOWN_S": "0"}
    server = running_server(models, tmp_path, env)
    with server as srv, srv.client() as client:
        ok = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
        poisoned = [
            client.post(QUALITY_PATH, json={"features": [0.0] + [0.5] * 9}) for _ in range(8)
        ]
        after = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
        metrics = client.get("/metrics").text
        routes = client.get("/openapi.json").json()["paths"]
        missing = client.post("/api/v1/predict/routing", json={"features": [0.5] * 15})
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == "nan-1"
    assert [r.status_code for r in poisoned] == [422] * 8
    assert all("NaN or Inf" in r.json()["detail"] for r in poisoned)
    assert poisoned[0].json()["detail"].startswith("features:")
    # recovery is for runtime faults: 8 poisoned requests never reload a healthy model
    assert _metric(metrics, 'relcert_recoveries_total{kind="model_reload"}') == 0
    assert _metric(metrics, "relcert_engine_non_finite_outputs_total") == 8
    assert after.status_code == 200 and after.json()["model_version"] == "nan-1"
    # a folder without the routing model serves (and documents) only the quality model
    assert "/api/v1/predict/routing" not in routes and QUALITY_PATH in routes
    assert missing.status_code == 404


def _raising_model(folder: Path) -> Path:
    """A TorchScript quality_predictor whose runtime raises when its first feature > 100."""
    import torch

    class Raises(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool((x[:, 0] > 100.0).any()):
                raise RuntimeError("SECRET-INTERNAL-DETAIL in /srv/private/model_code.py")
            return torch.sigmoid(x.sum(dim=1, keepdim=True))

    folder.mkdir(parents=True)
    path = folder / "quality_predictor.pt"
    torch.jit.save(torch.jit.script(Raises().eval()), str(path))
    info = {
        "quality_predictor": {
            "name": "quality_predictor",
            "version": "raise-1",
            "input_shape": [None, 10],
            "output_shape": [None, 1],
            "feature_names": [f"p{i}" for i in range(10)],
            "files": {
                "torchscript": {
                    "path": path.name,
                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                }
            },
        }
    }
    (folder / "model_info.json").write_text(json.dumps(info))
    return folder


def test_values_the_runtime_raises_on_are_422_without_exception_text(tmp_path: Path) -> None:
    # the runtime raises on these values only, and answers others: the request's error
    models = _raising_model(tmp_path / "models")
    env = {"CACHE_ENTRIES": "0", "RECOVERY_FAILURE_THRESHOLD": "2", "RECOVERY_COOLDOWN_S": "0"}
    server = running_server(models, tmp_path, env, fmt="torchscript")
    with server as srv, srv.client() as client:
        failed = [
            client.post(QUALITY_PATH, json={"features": [1000.0] + [0.5] * 9}) for _ in range(4)
        ]
        ok = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
        metrics = client.get("/metrics").text
    assert ok.status_code == 200, ok.text
    assert [r.status_code for r in failed] == [422] * 4
    detail = failed[0].json()["detail"]
    assert detail.startswith("features: quality_predictor cannot compute these values"), detail
    for leak in ("SECRET-INTERNAL-DETAIL", "RuntimeError", ".py", "Traceback", "/srv/"):
        assert leak not in failed[0].text, failed[0].text
    assert _metric(metrics, 'relcert_recoveries_total{kind="model_reload"}') == 0
    assert _metric(metrics, "relcert_engine_input_runtime_errors_total") == 4


def test_a_model_fault_is_500_without_exception_text_and_reloads_the_model(
    tmp_path: Path,
) -> None:
    # after BREAK_VALUE the runtime raises on every input: the model's fault, not the client's
    models = breakable_model(tmp_path / "models")
    env = {"CACHE_ENTRIES": "0", "RECOVERY_FAILURE_THRESHOLD": "2", "RECOVERY_COOLDOWN_S": "0"}
    server = running_server(models, tmp_path, env, fmt="torchscript")
    good = {"features": [0.5] * 10}
    with server as srv, srv.client() as client:
        before = client.post(QUALITY_PATH, json=good)
        broke = client.post(QUALITY_PATH, json={"features": [BREAK_VALUE] + [0.5] * 9})
        faulted = client.post(QUALITY_PATH, json=good)  # the second fault: reload
        deadline = time.monotonic() + 20.0
        healed = client.post(QUALITY_PATH, json=good)
        while healed.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            healed = client.post(QUALITY_PATH, json=good)
        metrics = client.get("/metrics").text
        log = srv.log()
    assert before.status_code == 200, before.text
    assert (broke.status_code, faulted.status_code) == (500, 500)
    detail = faulted.json()["detail"]
    assert "quality_predictor" in detail and "inference failed" in detail
    for leak in ("SECRET-INTERNAL-DETAIL", "RuntimeError", ".py", "Traceback", "/srv/"):
        assert leak not in faulted.text, faulted.text
    assert "SECRET-INTERNAL-DETAIL" in log  # the operator still gets the reason
    assert healed.status_code == 200, healed.text  # reloaded from its verified file
    assert _metric(metrics, 'relcert_recoveries_total{kind="model_reload"}') == 1
    assert _metric(metrics, "relcert_engine_input_runtime_errors_total") == 0
