"""Predictions over real HTTP equal the in-process engine's, in the documented shapes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.conftest import QUALITY_PATH, ROUTING_PATH, engine_outputs, model_info

pytestmark = pytest.mark.unit


def _served_and_expected(
    http: httpx.Client, model_dir: Path, model: str, path: str, seed: int
) -> list[tuple[dict, np.ndarray]]:
    """(response document, in-process engine output) for a few random inputs, sent
    alternately as a list and as named features."""
    names = model_info(model_dir)[model]["feature_names"]
    xs = np.random.default_rng(seed).random((6, len(names)), dtype=np.float32)
    expected = engine_outputs(model_dir, "onnx", model, xs)
    pairs = []
    for i, (x, want) in enumerate(zip(xs, expected, strict=True)):
        values = [float(v) for v in x]
        features = dict(zip(names, values, strict=True)) if i % 2 else values
        response = http.post(path, json={"features": features})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        pairs.append((response.json(), want))
    return pairs


def test_quality_predictions_match_the_engine(http: httpx.Client, built_models: Path) -> None:
    version = model_info(built_models)["quality_predictor"]["version"]
    for doc, want in _served_and_expected(http, built_models, "quality_predictor", QUALITY_PATH, 1):
        assert set(doc) == {"quality", "model", "model_version", "latency_ms"}
        assert doc["model"] == "quality_predictor"
        assert doc["model_version"] == version
        assert 0.0 <= doc["quality"] <= 1.0
        assert doc["quality"] == pytest.approx(float(want[0]), abs=1e-6)
        assert doc["latency_ms"] >= 0.0


def test_routing_decisions_match_the_engine(http: httpx.Client, built_models: Path) -> None:
    info = model_info(built_models)["routing_classifier"]
    classes = info["class_names"]
    for doc, want in _served_and_expected(
        http, built_models, "routing_classifier", ROUTING_PATH, 2
    ):
        assert set(doc) == {
            "method",
            "confidence",
            "probabilities",
            "model",
            "model_version",
            "latency_ms",
        }
        assert doc["model"] == "routing_classifier"
        assert doc["model_version"] == info["version"]
        assert list(doc["probabilities"]) == classes
        got = np.array([doc["probabilities"][c] for c in classes])
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert doc["method"] == classes[int(np.argmax(want))]
        assert doc["confidence"] == pytest.approx(float(np.max(want)), abs=1e-6)
        assert sum(doc["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_integers_are_numbers_too(http: httpx.Client, built_models: Path) -> None:
    names = model_info(built_models)["routing_classifier"]["feature_names"]
    features = dict.fromkeys(names, 0)
    features["has_text"] = 1
    response = http.post(ROUTING_PATH, json={"features": features})
    assert response.status_code == 200, response.text
