"""models.yaml validation, dates, model_info helpers, the data generator, import hygiene."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.build import (
    QUALITY_FEATURES,
    ROUTING_CLASSES,
    ROUTING_FEATURES,
    BuildError,
    ModelSpec,
    build_models,
    default_models_file,
    load_models_config,
    parse_snapshot_date,
    read_model_info,
    write_model_info,
)

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILT = {"name": "q", "builder": "pipeline.build.examples:build_quality_predictor"}

MALFORMED = {
    "not_yaml": ("models: [unclosed", "not valid YAML"),
    "top_level_list": ([BUILT], "expected a mapping with a 'models' list"),
    "top_level_scalar": ("just text", "expected a mapping"),
    "empty_file": ("", "got null"),
    "missing_models": ({"model": [BUILT]}, "unknown top-level key(s) 'model'"),
    "models_not_list": ({"models": BUILT}, "'models' must be a non-empty list"),
    "models_empty": ({"models": []}, "an empty list"),
    "entry_not_mapping": ({"models": ["q"]}, "models[0]: must be a mapping, got str"),
    "missing_name": ({"models": [{"builder": BUILT["builder"]}]}, "name must start"),
    "bad_name": ({"models": [{**BUILT, "name": "../q"}]}, "name must start"),
    "both": ({"models": [{**BUILT, "path": "q.onnx"}]}, "exactly one of 'builder'"),
    "neither": ({"models": [{"name": "q", "version": "1"}]}, "got neither"),
    "unknown_key": ({"models": [{**BUILT, "epochs": 3}]}, "unknown key(s) 'epochs'"),
    "import_key_on_built": ({"models": [{**BUILT, "sha256": "0" * 64}]}, "unknown key(s)"),
    "duplicate": ({"models": [BUILT, BUILT]}, "duplicate model name 'q'"),
    "builder_syntax": ({"models": [{**BUILT, "builder": "pipeline.build.examples"}]}, "module:"),
    "version_number": ({"models": [{**BUILT, "version": 1.5}]}, "version must be a string"),
    "bad_shape": (
        {"models": [{"name": "routing", "path": "r.onnx", "input_shape": [15, -1]}]},
        "model 'routing': input_shape must be a list of positive ints or null, got [15, -1]",
    ),
    "bool_shape": ({"models": [{"name": "r", "path": "r.onnx", "input_shape": [True]}]}, "shape"),
    "bad_sha": ({"models": [{"name": "r", "path": "r.onnx", "sha256": "abc"}]}, "64 hex"),
    "bad_dtype": ({"models": [{"name": "r", "path": "r.onnx", "input_dtype": "f4"}]}, "dtype"),
    "bad_reference": (
        {"models": [{"name": "r", "path": "r.onnx", "reference": {"inputs": "a.npy"}}]},
        "reference needs 'outputs'",
    ),
    "bad_atol": (
        {
            "models": [
                {
                    "name": "r",
                    "path": "r.onnx",
                    "reference": {"inputs": "a.npy", "outputs": "b.npy", "atol": "x"},
                }
            ]
        },
        "reference.atol must be a non-negative number",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_models_yaml(case, write_models_yaml) -> None:
    content, expected = MALFORMED[case]
    path = write_models_yaml(content)
    with pytest.raises(BuildError) as info:
        load_models_config(path)
    message = str(info.value)
    assert str(path) in message, message
    assert expected in message, message


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("pipeline.build.no_such_module:build", "cannot import builder module"),
        ("pipeline.build.examples:no_such_builder", "has no attribute 'no_such_builder'"),
        ("pipeline.build.examples:N_TRAIN", "is not callable"),
    ],
)
def test_bad_builder(builder, expected, write_models_yaml, tmp_path) -> None:
    path = write_models_yaml({"models": [{"name": "q", "builder": builder}]})
    with pytest.raises(BuildError) as info:
        build_models(tmp_path / "out", "2026-11-26", models_file=path)
    assert "model 'q'" in str(info.value) and expected in str(info.value)
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == [path]  # nothing written, no temp folder


def test_missing_models_file(tmp_path) -> None:
    with pytest.raises(BuildError, match="models file not found"):
        load_models_config(tmp_path / "nope.yaml")


def test_default_models_file_parses() -> None:
    assert default_models_file() == REPO_ROOT / "include" / "models.yaml"
    specs = load_models_config(None)
    assert [s.name for s in specs] == ["quality_predictor", "routing_classifier"]
    assert all(isinstance(s, ModelSpec) and s.source == "built" for s in specs)
    assert specs[0].builder == "pipeline.build.examples:build_quality_predictor"
    assert specs[0].version == "1.0"


def test_imported_spec_paths_resolve(write_models_yaml, tmp_path) -> None:
    path = write_models_yaml(
        "models:\n"
        "  - name: m\n"
        "    path: sub/m.onnx\n"
        "    reference: {inputs: a.npy, outputs: /abs/b.npy}\n"
    )
    (spec,) = load_models_config(path)
    assert spec.source == "imported" and spec.format == "onnx"
    assert spec.path == tmp_path / "sub" / "m.onnx"
    assert spec.reference is not None
    assert spec.reference.inputs == tmp_path / "a.npy"
    assert spec.reference.outputs == Path("/abs/b.npy")
    assert spec.reference.atol == 1e-5


def test_parse_snapshot_date() -> None:
    day = dt.date(2026, 11, 26)
    assert parse_snapshot_date(day) == day
    assert parse_snapshot_date("2026-11-26") == day
    assert parse_snapshot_date("2026-11-26T23:30:00+00:00") == day
    assert (
        parse_snapshot_date(
            dt.datetime(2026, 11, 27, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        )
        == day
    )
    assert parse_snapshot_date(None) == dt.datetime.now(dt.UTC).date()
    with pytest.raises(BuildError, match="snapshot_date"):
        parse_snapshot_date("26/11/2026")


def test_model_info_roundtrip(tmp_path) -> None:
    info = {"m": {"name": "m", "version": "1", "input_shape": [None, 3]}}
    path = write_model_info(tmp_path, info)
    assert path == tmp_path / "model_info.json"
    assert read_model_info(tmp_path) == info
    assert read_model_info(path) == info
    with pytest.raises(BuildError, match="non-finite"):
        write_model_info(tmp_path, {"m": {"name": "m", "x": float("nan")}})
    with pytest.raises(BuildError, match="not found"):
        read_model_info(tmp_path / "elsewhere")
    (tmp_path / "model_info.json").write_text("[1, 2]")
    with pytest.raises(BuildError, match="keyed by model name"):
        read_model_info(tmp_path)


def test_synthetic_data_is_structured() -> None:
    from pipeline.build import synthetic

    assert ROUTING_CLASSES == ("vtracer_optimized", "potrace", "hybrid", "fallback")
    assert len(ROUTING_FEATURES) == 15 and len(QUALITY_FEATURES) == 10
    rng = np.random.default_rng(7)
    x, y = synthetic.sample_routing(rng, 5000)
    assert x.dtype == np.float32 and x.shape == (5000, 15) and y.dtype == np.int64
    col = {name: x[:, i] for i, name in enumerate(ROUTING_FEATURES)}
    for name in ROUTING_FEATURES:
        low, high = (-2, 2) if name == "aspect_ratio_log" else (0, 1)
        assert col[name].min() >= low and col[name].max() <= high, name
    assert set(np.unique(col["has_text"])) <= {0.0, 1.0}
    np.testing.assert_allclose(col["color_count_norm"] * 16, np.rint(col["color_count_norm"] * 16))
    # Correlated through the latent image kind, not independent noise.
    assert np.corrcoef(col["photo_likelihood"], col["noise_level"])[0, 1] > 0.5
    assert np.corrcoef(col["line_art_score"], col["photo_likelihood"])[0, 1] < -0.2
    # Labels follow the documented rule up to ~1 % label noise; every class is present.
    agree = np.mean(synthetic.routing_rule(x) == y)
    assert 0.98 < agree < 1.0
    freq = np.bincount(y, minlength=4) / len(y)
    assert np.all(freq > 0.05)
    q_x, q_y = synthetic.sample_quality(rng, 5000)
    assert q_x.shape == (5000, 10) and q_x.min() >= 0 and q_x.max() <= 1
    assert q_y.min() >= 0 and q_y.max() <= 1 and q_y.std() > 0.1
    assert np.corrcoef(synthetic.quality_function(q_x), q_y)[0, 1] > 0.98


def test_import_is_light_and_airflow_free() -> None:
    code = (
        "import sys, pipeline.build; "
        "bad = [m for m in ('airflow', 'torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == ""
    for source in (REPO_ROOT / "pipeline" / "build").glob("*.py"):
        text = source.read_text()
        assert "import airflow" not in text and "from airflow" not in text, source


def test_out_dir_must_be_a_folder(write_models_yaml, tmp_path) -> None:
    target = tmp_path / "models"
    target.write_text("a file")
    models = write_models_yaml({"models": [BUILT]})
    with pytest.raises(BuildError, match="is not a folder"):
        build_models(target, "2026-11-26", models_file=str(models))
    assert target.read_text() == "a file"
