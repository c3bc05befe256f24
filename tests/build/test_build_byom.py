"""Bring your own model: imports that work, imports that must fail, and atomicity."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.build import BuildError, build_models, load_models_config, read_model_info

# The .pt contract uses TorchScript on purpose; torch 2.13 marks torch.jit deprecated.
pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning"),
]

SNAPSHOT = "2026-11-26"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_onnx_fixed_batch_shape_from_graph(byom_files, write_models_yaml, tmp_path) -> None:
    models = write_models_yaml({"models": [{"name": "conv", "path": str(byom_files["conv_onnx"])}]})
    result = build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    entry = result.models["conv"]
    assert entry["input_shape"] == [1, 3, 8, 8]
    assert entry["output_shape"] == [1, 2]
    assert entry["input_name"] == "image" and entry["output_name"] == "logits"
    assert entry["input_dtype"] == "float32" and entry["output_dtype"] == "float32"
    assert entry["source"] == "imported" and entry["model_type"] == "imported"
    sha = hashlib.sha256(byom_files["conv_onnx"].read_bytes()).hexdigest()
    assert entry["version"] == f"imported-{sha[:12]}"
    assert entry["files"] == {
        "onnx": {
            "path": "conv.onnx",
            "sha256": sha,
            "bytes": byom_files["conv_onnx"].stat().st_size,
        }
    }
    assert entry["training_data"] is None and entry["holdout_file"] is None
    assert entry["parity"]["reference"] is None
    assert entry["parity"]["batch_sizes"] == [1]  # a fixed batch of 1 runs one row at a time
    assert entry["parity"]["probe_count"] == 8
    assert (tmp_path / "out" / "conv.onnx").read_bytes() == byom_files["conv_onnx"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "SHA256SUMS",
        "conv.onnx",
        "model_info.json",
    ]
    assert read_model_info(tmp_path / "out") == result.models


def test_onnx_matching_input_shape_and_sha(byom_files, write_models_yaml, tmp_path) -> None:
    sha = hashlib.sha256(byom_files["conv_onnx"].read_bytes()).hexdigest()
    models = write_models_yaml(
        {
            "models": [
                {
                    "name": "conv",
                    "path": str(byom_files["conv_onnx"]),
                    "format": "onnx",
                    "input_shape": [1, 3, 8, 8],
                    "input_dtype": "float32",
                    "sha256": sha.upper(),
                    "version": "2.3.1",
                    "class_names": ["cat", "dog"],
                }
            ]
        }
    )
    entry = build_models(tmp_path / "out", SNAPSHOT, models_file=models).models["conv"]
    assert entry["version"] == "2.3.1"
    assert entry["class_names"] == ["cat", "dog"]


def test_torchscript_with_reference(byom_files, write_models_yaml, tmp_path) -> None:
    folder = byom_files["mlp_pt"].parent
    shutil.copy(byom_files["mlp_pt"], tmp_path / "mlp.pt")
    shutil.copy(byom_files["mlp_ref_in"], tmp_path / "in.npy")
    shutil.copy(byom_files["mlp_ref_out"], tmp_path / "out.npy")
    assert folder != tmp_path
    models = write_models_yaml(
        "models:\n"
        "  - name: mlp\n"
        "    path: mlp.pt          # relative to this file\n"
        "    input_shape: [null, 5]\n"
        "    reference: {inputs: in.npy, outputs: out.npy, atol: 1e-6}\n"
    )
    result = build_models(tmp_path / "models", SNAPSHOT, models_file=models)
    entry = result.models["mlp"]
    assert entry["input_shape"] == [None, 5] and entry["output_shape"] == [None, 3]
    assert list(entry["files"]) == ["torchscript"]
    assert entry["files"]["torchscript"]["path"] == "mlp.pt"
    reference = entry["parity"]["reference"]
    assert reference["passed"] is True and reference["count"] == 6
    assert reference["max_abs_diff"] <= 1e-6 and reference["atol"] == 1e-6


def test_wrong_reference_fails(byom_files, write_models_yaml, tmp_path) -> None:
    models = write_models_yaml(
        {
            "models": [
                {
                    "name": "mlp",
                    "path": str(byom_files["mlp_pt"]),
                    "input_shape": [None, 5],
                    "reference": {
                        "inputs": str(byom_files["mlp_ref_in"]),
                        "outputs": str(byom_files["mlp_ref_out_wrong"]),
                        "atol": 1e-5,
                    },
                }
            ]
        }
    )
    with pytest.raises(BuildError) as info:
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    message = str(info.value)
    assert "'mlp'" in message and str(byom_files["mlp_pt"]) in message
    assert "reference outputs" in message and "exceeds atol" in message
    assert not (tmp_path / "out").exists()
    assert _hidden(tmp_path) == []


BAD_CASES = {
    "truncated_onnx": ("truncated_onnx", {}, "not a valid ONNX model"),
    "garbage_pt": ("garbage_pt", {"input_shape": [None, 5]}, "not a valid TorchScript"),
    "sha256_mismatch": ("conv_onnx", {"sha256": "0" * 64}, "sha256 mismatch"),
    "shape_contradicts_graph": (
        "conv_onnx",
        {"input_shape": [1, 3, 16, 16]},
        "contradicts the graph input 'image'",
    ),
    "rank_contradicts_graph": ("conv_onnx", {"input_shape": [None, 192]}, "[1, 3, 8, 8]"),
    "dtype_contradicts_graph": ("conv_onnx", {"input_dtype": "int64"}, "input_dtype"),
    "nan_output": ("nan_pt", {"input_shape": [None, 4]}, "NaN/Inf"),
    "torchscript_wrong_input": ("mlp_pt", {"input_shape": [None, 7]}, "failed to run"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_model_files(case, byom_files, write_models_yaml, tmp_path) -> None:
    key, extra, expected = BAD_CASES[case]
    path = byom_files[key]
    models = write_models_yaml({"models": [{"name": "bad_model", "path": str(path), **extra}]})
    with pytest.raises(BuildError) as info:
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    message = str(info.value)
    assert "'bad_model'" in message, message
    assert str(path) in message, message
    assert expected in message, message
    assert not (tmp_path / "out").exists()
    assert _hidden(tmp_path) == []


def test_unknown_suffix(byom_files, write_models_yaml) -> None:
    models = write_models_yaml({"models": [{"name": "keras", "path": str(byom_files["h5"])}]})
    with pytest.raises(BuildError) as info:
        load_models_config(models)
    message = str(info.value)
    assert "'keras'" in message and str(byom_files["h5"]) in message
    assert "unknown format" in message


def test_unknown_explicit_format(byom_files, write_models_yaml) -> None:
    entry = {"name": "keras", "path": str(byom_files["h5"]), "format": "h5"}
    with pytest.raises(BuildError, match="unknown format 'h5'"):
        load_models_config(write_models_yaml({"models": [entry]}))


def test_missing_file(write_models_yaml, tmp_path) -> None:
    models = write_models_yaml({"models": [{"name": "ghost", "path": "nowhere/ghost.onnx"}]})
    with pytest.raises(BuildError) as info:
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    assert "'ghost'" in str(info.value)
    assert str(tmp_path / "nowhere" / "ghost.onnx") in str(info.value)
    assert "not found" in str(info.value)


def test_torchscript_needs_input_shape(byom_files, write_models_yaml) -> None:
    models = write_models_yaml({"models": [{"name": "mlp", "path": str(byom_files["mlp_pt"])}]})
    with pytest.raises(BuildError, match=r"input_shape is required for a TorchScript model"):
        load_models_config(models)


def test_failed_build_keeps_previous_content(byom_files, write_models_yaml, tmp_path) -> None:
    """A build that fails half-way leaves out_dir exactly as it was and no temp folders."""
    out = tmp_path / "models"
    good = {"name": "conv", "path": str(byom_files["conv_onnx"])}
    build_models(out, SNAPSHOT, models_file=write_models_yaml({"models": [good]}))
    before = _tree(out)
    assert "conv.onnx" in before
    bad = {"name": "nan_model", "path": str(byom_files["nan_pt"]), "input_shape": [None, 4]}
    second = {"name": "mlp", "path": str(byom_files["mlp_pt"]), "input_shape": [None, 5]}
    models = write_models_yaml({"models": [second, bad]}, name="models2.yaml")
    with pytest.raises(BuildError, match="'nan_model'"):
        build_models(out, SNAPSHOT, models_file=models)
    assert _tree(out) == before
    assert _hidden(tmp_path) == []


def test_env_models_file(byom_files, write_models_yaml, tmp_path, monkeypatch) -> None:
    models = write_models_yaml({"models": [{"name": "conv", "path": str(byom_files["conv_onnx"])}]})
    monkeypatch.setenv("RELCERT_MODELS_FILE", str(models))
    result = build_models(tmp_path / "out", SNAPSHOT)
    assert list(result.models) == ["conv"]


def test_import_is_deterministic(byom_files, write_models_yaml, tmp_path) -> None:
    models = write_models_yaml(
        {
            "models": [
                {"name": "conv", "path": str(byom_files["conv_onnx"])},
                {"name": "mlp", "path": str(byom_files["mlp_pt"]), "input_shape": [None, 5]},
            ]
        }
    )
    build_models(tmp_path / "a", SNAPSHOT, models_file=models)
    build_models(tmp_path / "b", SNAPSHOT, models_file=models)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_reference_inputs_must_fit(byom_files, write_models_yaml, tmp_path) -> None:
    bad_in = tmp_path / "bad_in.npy"
    np.save(bad_in, np.zeros((2, 3, 8, 8), dtype=np.float32))  # batch 2, graph fixes batch 1
    shutil.copy(byom_files["mlp_ref_out"], tmp_path / "ref_out.npy")
    entry = {
        "name": "conv",
        "path": str(byom_files["conv_onnx"]),
        "reference": {"inputs": "bad_in.npy", "outputs": "ref_out.npy"},
    }
    # Two rows of a fixed batch-1 model run one at a time: fine; the outputs then mismatch.
    with pytest.raises(BuildError, match=r"reference outputs .* have shape \[6, 3\]"):
        build_models(tmp_path / "out", SNAPSHOT, models_file=write_models_yaml({"models": [entry]}))
    np.save(bad_in, np.zeros((2, 3, 8, 9), dtype=np.float32))
    with pytest.raises(BuildError, match=r"does not fit the input shape \[1, 3, 8, 8\]"):
        build_models(tmp_path / "out", SNAPSHOT, models_file=write_models_yaml({"models": [entry]}))


CUSTOM_BUILDERS = """
import numpy as np
import torch
from torch import nn

from pipeline.build import BuiltModel


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.factor


def _sample(rng, n):
    return rng.random((n, 3), dtype=np.float32)


def _built(module, seed):
    rng = np.random.default_rng(seed)
    x = _sample(rng, 40)
    return BuiltModel(
        module=module,
        model_type="regression",
        input_name="x",
        output_name="y",
        feature_names=("a", "b", "c"),
        x_train=x[:30],
        y_train=x[:30, :2],
        x_holdout=x[30:],
        y_holdout=x[30:, :2],
        metrics=lambda out, y: {"mae": float(np.mean(np.abs(out - y)))},
        sample_inputs=_sample,
    )


def tiny(snapshot_date, seed):
    torch.manual_seed(seed)
    return _built(Scale(1.0), seed)


def nan(snapshot_date, seed):
    return _built(Scale(float("nan")), seed)


def not_a_model(snapshot_date, seed):
    return {"module": None}
"""


@pytest.fixture
def custom_builders(tmp_path, monkeypatch) -> str:
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "relcert_test_builders.py").write_text(CUSTOM_BUILDERS)
    monkeypatch.syspath_prepend(str(folder))
    return "relcert_test_builders"


def test_custom_builder(custom_builders, write_models_yaml, tmp_path) -> None:
    builder = f"{custom_builders}:tiny"
    models = write_models_yaml({"models": [{"name": "tiny", "builder": builder, "version": "2.0"}]})
    result = build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    entry = result.models["tiny"]
    assert entry["version"] == "2.0.20261126"
    assert entry["input_shape"] == [None, 3] and entry["output_shape"] == [None, 2]
    assert entry["input_name"] == "x" and entry["output_name"] == "y"
    assert entry["parity"]["passed"] is True and entry["parity"]["probe_count"] == 1024
    assert set(entry["files"]) == {"torchscript", "onnx"}
    assert entry["training_data"]["generator"] == "custom"


@pytest.mark.parametrize(
    ("builder", "expected"),
    [("nan", "NaN/Inf"), ("not_a_model", "the builder returned dict, expected BuiltModel")],
)
def test_custom_builder_failures(
    builder, expected, custom_builders, write_models_yaml, tmp_path
) -> None:
    models = write_models_yaml(
        {"models": [{"name": "bad_model", "builder": f"{custom_builders}:{builder}"}]}
    )
    with pytest.raises(BuildError) as info:
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    assert "'bad_model'" in str(info.value) and expected in str(info.value)
    if builder == "nan":
        assert "relcert_test_builders:nan" in str(info.value)
    assert not (tmp_path / "out").exists()
    assert _hidden(tmp_path) == []


def test_build_out_keeps_a_folder_that_is_not_a_previous_build(
    byom_files, write_models_yaml, tmp_path, capsys
) -> None:
    """`relcert build --out DIR` replaces DIR whole: a folder with other files is refused
    (and left as it was) unless --force; a previous build is replaced as before."""
    from pipeline.cli import main

    models = write_models_yaml({"models": [{"name": "conv", "path": str(byom_files["conv_onnx"])}]})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "important.txt").write_text("do not lose me")
    build = ["build", "--out", str(out), "--models", str(models), "--date", SNAPSHOT]
    assert main(build) == 1
    error = capsys.readouterr().err
    assert f"out_dir {out} is not empty and is not a previous build" in error
    assert "important.txt" in error and "--force" in error
    assert _tree(out) == {"important.txt": b"do not lose me"}
    assert _hidden(tmp_path) == []

    fresh = tmp_path / "fresh"
    assert main(["build", "--out", str(fresh), "--models", str(models), "--date", SNAPSHOT]) == 0
    previous = _tree(fresh)
    assert main(["build", "--out", str(fresh), "--models", str(models), "--date", SNAPSHOT]) == 0
    assert _tree(fresh) == previous  # a previous build is rebuilt in place
    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    (nested / "sub" / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match=r"not a previous build .*: it holds sub/notes\.txt\."):
        build_models(nested, SNAPSHOT, models_file=models)
    assert (nested / "sub" / "notes.txt").read_text() == "mine"
    build_models(tmp_path / "empty", SNAPSHOT, models_file=models)  # an empty folder is fine

    assert main([*build, "--force"]) == 0
    assert sorted(_tree(out)) == ["SHA256SUMS", "conv.onnx", "model_info.json"]


def test_the_trigger_form_refuses_a_models_file_the_cli_builds(
    byom_files, write_models_yaml, tmp_path, monkeypatch
) -> None:
    """The CLI is the operator's own shell: any models file; the DAG's form is not trusted:
    only models files (and model files) in the models folders."""
    from pipeline.cli import main
    from pipeline.orchestrate import ConfError, validate_conf

    monkeypatch.delenv("RELCERT_MODELS_DIRS", raising=False)
    models = write_models_yaml({"models": [{"name": "conv", "path": str(byom_files["conv_onnx"])}]})
    with pytest.raises(ConfError, match="outside the models folders"):
        validate_conf({"models_file": str(models)})
    assert main(["build", "--out", str(tmp_path / "out"), "--models", str(models)]) == 0
    assert list(read_model_info(tmp_path / "out")) == ["conv"]


def test_an_oversized_model_file_is_refused_before_it_is_read(
    write_models_yaml, tmp_path, monkeypatch
) -> None:
    """Larger than the memory budget (RELCERT_MAX_MODEL_MB, default the engine's
    max_memory_mb): refused by its size, before its checksum or contents are read."""
    big = tmp_path / "big.onnx"
    with open(big, "wb") as handle:
        handle.truncate(8 * 2**20)  # sparse: 8 MB of zeros to whoever reads it
    entry = {"name": "big", "path": str(big), "sha256": "0" * 64}
    models = write_models_yaml({"models": [entry]})
    monkeypatch.setenv("RELCERT_MAX_MODEL_MB", "1")
    with pytest.raises(BuildError) as caught:
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    message = str(caught.value)
    assert f"model 'big': file {big} is 8.0 MB, more than the 1 MB" in message
    assert "RELCERT_MAX_MODEL_MB" in message and "sha256" not in message
    assert not (tmp_path / "out").exists() and _hidden(tmp_path) == []

    monkeypatch.delenv("RELCERT_MAX_MODEL_MB")  # the engine's default budget, 500 MB
    with open(big, "wb") as handle:
        handle.truncate(501 * 2**20)
    with pytest.raises(BuildError, match=r"501\.0 MB, more than the 500 MB .*max_memory_mb"):
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
    monkeypatch.setenv("RELCERT_MAX_MODEL_MB", "lots")
    with pytest.raises(BuildError, match="RELCERT_MAX_MODEL_MB='lots': expected a positive"):
        build_models(tmp_path / "out", SNAPSHOT, models_file=models)
