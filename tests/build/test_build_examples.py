"""The two example models: SLAs, exports, parity, checksums and determinism in the date."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.build import (
    QUALITY_FEATURES,
    ROUTING_CLASSES,
    ROUTING_FEATURES,
    BuildResult,
    read_model_info,
)

# The .pt contract uses TorchScript on purpose; torch 2.13 marks torch.jit deprecated.
pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning"),
]

SNAPSHOT = "2026-11-26"  # the dates the session builds use (see conftest.py)
OTHER_SNAPSHOT = "2026-11-27"

NAMES = ("quality_predictor", "routing_classifier")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _ort(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_build_result(built: BuildResult) -> None:
    assert isinstance(built, BuildResult)
    assert built.snapshot_date == dt.date.fromisoformat(SNAPSHOT)
    assert set(built.models) == set(NAMES)
    assert built.out_dir.is_dir()
    assert 0 < built.seconds < 60, "the two example models must build quickly"
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seconds = 0.0  # type: ignore[misc]
    assert built.models == read_model_info(built.out_dir)


def test_folder_layout(built: BuildResult) -> None:
    names = set(_files(built.out_dir))
    assert names == {
        "SHA256SUMS",
        "model_info.json",
        "quality_predictor.pt",
        "quality_predictor.onnx",
        "routing_classifier.pt",
        "routing_classifier.onnx",
        "holdout/quality_predictor.npz",
        "holdout/routing_classifier.npz",
    }
    leftovers = [p.name for p in built.out_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_slas_met_and_recorded(built: BuildResult) -> None:
    quality = built.models["quality_predictor"]["holdout_metrics"]
    routing = built.models["routing_classifier"]["holdout_metrics"]
    assert quality["pearson_r"] > 0.9
    assert set(quality) == {"pearson_r", "mse", "mae"}
    assert routing["accuracy"] > 0.95
    assert set(routing["per_class_accuracy"]) == set(ROUTING_CLASSES)
    assert routing["macro_f1"] > 0.9


def test_model_info_contract(built: BuildResult) -> None:
    info = json.loads((built.out_dir / "model_info.json").read_text())
    q, r = info["quality_predictor"], info["routing_classifier"]
    for name, entry in info.items():
        assert entry["name"] == name
        assert entry["source"] == "built"
        assert entry["version"] == "1.0.20261126"
        assert entry["snapshot_date"] == SNAPSHOT
        assert entry["input_name"] == "features"
        assert entry["input_dtype"] == entry["output_dtype"] == "float32"
        assert entry["holdout_file"] == f"holdout/{name}.npz"
        assert entry["build"]["opset"] == 17
        assert {"torch", "onnx", "onnxruntime"} <= set(entry["build"])
        assert "seconds" not in entry["build"]
        data = entry["training_data"]
        assert data["n_train"] == 16000 and data["n_holdout"] == 4000
        assert data["generator"] == "pipeline.build.synthetic/v1"
        assert len(data["fingerprint"]) == 64 and isinstance(data["seed"], int)
        for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
            record = entry["files"][fmt]
            path = built.out_dir / record["path"]
            assert record["path"] == name + suffix
            assert record["bytes"] == path.stat().st_size
            assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert q["model_type"] == "regression" and r["model_type"] == "classification"
    assert q["output_name"] == "quality" and r["output_name"] == "probabilities"
    assert q["input_shape"] == [None, 10] and q["output_shape"] == [None, 1]
    assert r["input_shape"] == [None, 15] and r["output_shape"] == [None, 4]
    assert q["feature_names"] == list(QUALITY_FEATURES) and len(QUALITY_FEATURES) == 10
    assert r["feature_names"] == list(ROUTING_FEATURES) and len(ROUTING_FEATURES) == 15
    assert r["class_names"] == list(ROUTING_CLASSES)
    assert "class_names" not in q


def test_parity_recorded(built: BuildResult) -> None:
    for entry in built.models.values():
        parity = entry["parity"]
        assert parity["passed"] is True
        assert parity["probe_count"] >= 1024
        assert parity["batch_sizes"] == [1, 7, 64]
        assert parity["tolerance"] == 1e-5
        diffs = parity["max_abs_diff"]
        assert set(diffs) == {
            "eager_vs_torchscript",
            "eager_vs_onnx",
            "torchscript_vs_onnx",
            "across_batch_sizes",
        }
        assert all(0 <= v <= 1e-5 for v in diffs.values())


def test_sha256sums_verify(built: BuildResult) -> None:
    lines = (built.out_dir / "SHA256SUMS").read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = _files(built.out_dir)
    assert set(listed) == set(files) - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name


def test_onnx_dynamic_batch(built: BuildResult) -> None:
    import onnx

    for name, width, out in (("quality_predictor", 10, 1), ("routing_classifier", 15, 4)):
        path = built.out_dir / f"{name}.onnx"
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        session = _ort(path)
        x = np.random.default_rng(3).random((3, width), dtype=np.float32)
        (y,) = session.run(None, {"features": x})
        assert y.shape == (3, out)
        assert np.all((y >= 0) & (y <= 1))
        if out == 4:
            np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)


def test_torchscript_loads(built: BuildResult) -> None:
    import torch

    for name, width, out in (("quality_predictor", 10, 1), ("routing_classifier", 15, 4)):
        module = torch.jit.load(str(built.out_dir / f"{name}.pt"))
        with torch.no_grad():
            y = module(torch.rand(3, width))
        assert tuple(y.shape) == (3, out)


def test_holdout_recomputes_slas(built: BuildResult) -> None:
    """Later stages recompute the SLAs from the holdout file with the exported model."""
    from pipeline.build.examples import classification_metrics, regression_metrics

    for name in NAMES:
        entry = built.models[name]
        with np.load(built.out_dir / entry["holdout_file"]) as data:
            x, y = data["x"], data["y"]
        assert x.dtype == np.float32 and x.shape == (4000, len(entry["feature_names"]))
        (out,) = _ort(built.out_dir / entry["files"]["onnx"]["path"]).run(None, {"features": x})
        if name == "quality_predictor":
            metrics = regression_metrics(out, y)
            assert metrics["pearson_r"] == pytest.approx(
                entry["holdout_metrics"]["pearson_r"], abs=1e-5
            )
        else:
            metrics = classification_metrics(out, y, ROUTING_CLASSES)
            assert metrics["accuracy"] == pytest.approx(
                entry["holdout_metrics"]["accuracy"], abs=1e-3
            )


def test_same_date_is_byte_identical(build_session) -> None:
    first, second = build_session["first"], build_session["second"]
    a, b = _files(first.out_dir), _files(second.out_dir)
    assert a.keys() == b.keys()
    different = [name for name in a if a[name] != b[name]]
    assert different == []
    assert first.models == second.models


def test_other_date_differs(build_session) -> None:
    first, other = build_session["first"], build_session["other"]
    assert other.snapshot_date == dt.date.fromisoformat(OTHER_SNAPSHOT)
    for name in NAMES:
        a, b = first.models[name], other.models[name]
        assert b["version"] == "1.0.20261127" != a["version"]
        assert b["training_data"]["seed"] != a["training_data"]["seed"]
        assert b["training_data"]["fingerprint"] != a["training_data"]["fingerprint"]
        for fmt in ("torchscript", "onnx"):
            assert b["files"][fmt]["sha256"] != a["files"][fmt]["sha256"]
    assert other.models["routing_classifier"]["holdout_metrics"]["accuracy"] > 0.95
    assert other.models["quality_predictor"]["holdout_metrics"]["pearson_r"] > 0.9


def test_weights_differ_between_dates(build_session) -> None:
    import torch

    a = torch.jit.load(str(build_session["first"].out_dir / "routing_classifier.pt"))
    b = torch.jit.load(str(build_session["other"].out_dir / "routing_classifier.pt"))
    x = torch.rand(16, 15)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))


def test_progress_and_threads(build_session) -> None:
    lines = build_session["progress"]
    assert any(
        line.startswith("quality_predictor: trained") and "pearson_r=" in line for line in lines
    )
    assert any(
        line.startswith("routing_classifier: trained") and "accuracy=" in line for line in lines
    )
    assert any("parity" in line for line in lines)
    assert build_session["threads_after"] == build_session["threads_before"]


def test_rebuild_replaces_folder(built: BuildResult, tmp_path: Path) -> None:
    """Building into an existing folder replaces its content (old files do not linger)."""
    import shutil

    from pipeline.build import build_models

    out = tmp_path / "models"
    shutil.copytree(built.out_dir, out)
    (out / "stale.txt").write_text("old")
    # Import the built ONNX model as a user model: fast, and exercises the replace path.
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "models:\n  - name: q\n    path: "
        + str(built.out_dir / "quality_predictor.onnx")
        + "\n    sha256: "
        + built.models["quality_predictor"]["files"]["onnx"]["sha256"]
        + "\n"
    )
    result = build_models(out, SNAPSHOT, models_file=models_yaml)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "model_info.json", "q.onnx"]
    entry = result.models["q"]
    assert entry["input_shape"] == [None, 10] and entry["output_shape"] == [None, 1]
    assert entry["input_name"] == "features" and entry["output_name"] == "quality"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
