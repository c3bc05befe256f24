"""A package of a run with imported models: every model packaged in the format it was
certified in (a TorchScript-only import from its .pt, with the torchscript service lock),
golden requests through the Open Inference Protocol for every model, and the smoke test
passing against the real service started from the package's own configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.package import build_package
from pipeline.package.settings import engine_settings_for_run
from tests.imported_models import IMAGE, IMAGE_VERSION, PRECISE
from tests.package.conftest import extract, make_run, smoke_against_the_service

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def package(mixed_models: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("package-imported")
    run = make_run(root / "run", mixed_models)
    result = build_package(run, version="1.0.0")
    return run, result, extract(result.path, root / "unzipped")


def test_each_model_is_packaged_in_the_format_it_is_served_in(package) -> None:
    _, _, top = package
    models = sorted(p.name for p in (top / "models").iterdir())
    assert models == [
        "SHA256SUMS",
        f"{IMAGE}.onnx",
        "model_info.json",
        f"{PRECISE}.pt",  # TorchScript only: served from its .pt
        "quality_predictor.onnx",
        "routing_classifier.onnx",
    ]
    env = yaml.safe_load((top / "kubernetes/configmap.yaml").read_text())["data"]
    assert env["MODEL_FORMAT"] == "onnx"
    service = json.loads((top / "config/service.json").read_text())
    assert service["model_formats"][PRECISE] == "torchscript"
    assert service["model_formats"][IMAGE] == "onnx"
    assert service["service_lock"] == "torchscript"
    pins = re.findall(r"^([A-Za-z0-9._-]+)==", (top / "requirements.txt").read_text(), re.M)
    assert "torch" in pins and "onnxruntime" in pins  # the lock that can load both formats


def test_golden_requests_cover_every_model_through_the_protocol(package) -> None:
    _, _, top = package
    golden = json.loads((top / "validation/golden.json").read_text())
    protocol = [c for c in golden["cases"] if c.get("protocol") == "v2"]
    assert sorted({c["model"] for c in protocol}) == sorted(golden["models"])
    assert len(golden["models"]) == 4
    image = next(c for c in protocol if c["model"] == IMAGE)
    assert image["request"]["inputs"][0]["shape"] == [1, 3, 8, 8]
    assert image["expected"]["model_version"] == IMAGE_VERSION
    precise = next(c for c in protocol if c["model"] == PRECISE)
    assert precise["request"]["inputs"][0]["datatype"] == "FP64"
    assert precise["expected"]["outputs"][0]["datatype"] == "FP64"
    assert golden["models"][PRECISE]["format"] == "torchscript"
    assert golden["models"][IMAGE]["endpoint"] is None  # no named endpoint: /v2 only
    named = {c["model"] for c in golden["cases"] if c.get("protocol") != "v2"}
    assert named == {"quality_predictor", "routing_classifier"}


def test_smoke_script_passes_against_the_real_service(package) -> None:
    _, _, top = package
    completed, errors = smoke_against_the_service(top, wait_s=60)
    assert completed.returncode == 0, completed.stdout + errors
    # 3 health + 4 model metadata + 20 golden through /v2 + 10 on the named endpoints
    assert "smoke test PASSED: 37 of 37 checks passed" in completed.stdout
    assert f"PASS  GET /v2/models/{PRECISE}" in completed.stdout
    assert f"PASS  POST /v2/models/{IMAGE}/infer [{IMAGE}-v2-0]" in completed.stdout


def test_the_body_limit_fits_one_json_request_of_every_model(tmp_path: Path) -> None:
    """An image model of [1, 3, 224, 224] needs a body limit far above the default 64 KiB;
    the package raises it (a JSON request of one image takes up to ~3 MB) and says so."""
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    entry = {
        "name": "big_image",
        "version": "1",
        "input_shape": [1, 3, 224, 224],
        "input_dtype": "float32",
        "files": {"onnx": {"path": "big_image.onnx"}},
    }
    (models / "model_info.json").write_text(json.dumps({"big_image": entry}))
    settings, source = engine_settings_for_run(tmp_path / "run")
    assert settings.max_body_bytes >= 3 * 224 * 224 * 20 and settings.max_body_bytes % 65536 == 0
    assert f"MAX_BODY_BYTES={settings.max_body_bytes}" in source
    assert settings.env()["MAX_BODY_BYTES"] == str(settings.max_body_bytes)
    explicit, _ = engine_settings_for_run(tmp_path / "run", {"max_body_bytes": 100_000})
    assert explicit.max_body_bytes == 100_000  # an explicit setting wins
