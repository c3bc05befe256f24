"""A model that fails on an input: the service answers 500 with the engine's message."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from tests.serve.conftest import QUALITY_PATH, running_server


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


def test_inference_failure_is_500_with_the_engine_message(tmp_path: Path) -> None:
    models = _nan_on_zero_model(tmp_path / "models")
    server = running_server(models, tmp_path, {"CACHE_ENTRIES": "0"})
    with server as srv, srv.client() as client:
        ok = client.post(QUALITY_PATH, json={"features": [0.5] * 10})
        failed = client.post(QUALITY_PATH, json={"features": [0.0] + [0.5] * 9})
        routes = client.get("/openapi.json").json()["paths"]
        missing = client.post("/api/v1/predict/routing", json={"features": [0.5] * 15})
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == "nan-1"
    assert failed.status_code == 500
    assert "NaN or Inf output" in failed.json()["detail"]
    # a folder without the routing model serves (and documents) only the quality model
    assert "/api/v1/predict/routing" not in routes and QUALITY_PATH in routes
    assert missing.status_code == 404
