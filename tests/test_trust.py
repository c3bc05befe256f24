"""pipeline.trust: what the trigger form may name, checked at `prepare` (validate_conf)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.orchestrate import ConfError, validate_conf

pytestmark = pytest.mark.unit

PROJECT = Path(__file__).resolve().parent.parent
INCLUDE = PROJECT / "include"
BUILT = {"name": "quality", "builder": "pipeline.build.examples:build_quality_predictor"}


@pytest.fixture(autouse=True)
def _default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELCERT_MODELS_DIRS", raising=False)
    monkeypatch.delenv("RELCERT_BUILDER_PREFIXES", raising=False)


def _models_file(folder: Path, *entries: dict, name: str = "models.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump({"models": list(entries)}, sort_keys=False))
    return path


def _refused(params: dict) -> str:
    with pytest.raises(ConfError) as caught:
        validate_conf(params)
    return str(caught.value)


def test_the_form_refuses_models_files_outside_the_models_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for given in ("/etc/hostname", "../../../../etc/passwd", "/etc/passwd"):
        message = _refused({"models_file": given})
        assert message.startswith("conf.models_file: ")
        assert repr(given) in message and "outside the models folders" in message
        assert f"RELCERT_MODELS_DIRS={INCLUDE}" in message
        assert "root:" not in message  # nothing of the file was read into the message
    mine = _models_file(tmp_path / "mine", BUILT)
    assert "outside the models folders" in _refused({"models_file": str(mine)})
    # the project's own models file is in include/, the default models folder
    assert validate_conf({})["models_file"] == str(INCLUDE / "models.yaml")
    # an operator configures more folders
    monkeypatch.setenv("RELCERT_MODELS_DIRS", os.pathsep.join([str(INCLUDE), str(mine.parent)]))
    assert validate_conf({"models_file": str(mine)})["models_file"] == str(mine)
    assert validate_conf({})["models_file"] == str(INCLUDE / "models.yaml")
    missing = _refused({"models_file": str(mine.parent / "nope.yaml")})
    assert "does not exist" in missing and "nope.yaml" in missing


def test_symlinks_out_of_a_models_folder_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    target = _models_file(outside, BUILT)
    allowed.mkdir()
    (allowed / "models.yaml").symlink_to(target)
    (allowed / "sub").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("RELCERT_MODELS_DIRS", str(allowed))
    for given in (allowed / "models.yaml", allowed / "sub" / "models.yaml"):
        message = _refused({"models_file": str(given)})
        assert f"resolves to {target}" in message and "outside the models folders" in message


def test_files_a_models_file_names_must_be_in_the_models_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An imported model's path and reference arrays: absolute, `..` or a symlink out."""
    allowed = tmp_path / "allowed"
    monkeypatch.setenv("RELCERT_MODELS_DIRS", str(allowed))
    allowed.mkdir()
    (allowed / "sneaky.onnx").symlink_to("/etc/passwd")
    reference = {"inputs": "/etc/x.npy", "outputs": "out.npy"}
    cases = {
        "path /etc/passwd": {"name": "m", "path": "/etc/passwd", "format": "onnx"},
        f"path {tmp_path}/outside/m.onnx outside": {"name": "m", "path": "../outside/m.onnx"},
        "path /etc/passwd outside": {"name": "m", "path": "sneaky.onnx", "format": "onnx"},
        "reference.inputs /etc/x.npy": {"name": "m", "path": "m.onnx", "reference": reference},
    }
    for expected, entry in cases.items():
        models = _models_file(allowed, entry)
        message = _refused({"models_file": str(models)})
        assert f"model 'm': {expected}" in message, message
        assert "outside the models folders" in message
    # a second models folder holds the model files: both configured, all is well
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("RELCERT_MODELS_DIRS", os.pathsep.join([str(allowed), str(store)]))
    entry = {"name": "m", "path": str(store / "m.onnx"), "reference": {}}
    entry["reference"] = {"inputs": str(store / "in.npy"), "outputs": str(store / "out.npy")}
    validate_conf({"models_file": str(_models_file(allowed, entry))})


def test_builders_must_come_from_the_builder_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    allowed = tmp_path / "allowed"
    monkeypatch.setenv("RELCERT_MODELS_DIRS", str(allowed))
    for builder in ("os:system", "pipeline.build.examples_extra:build", "subprocess:run"):
        models = _models_file(allowed, {"name": "m", "builder": builder})
        message = _refused({"models_file": str(models)})
        assert f"builder {builder!r} is not under the builder prefixes" in message
        assert "RELCERT_BUILDER_PREFIXES=pipeline.build.examples" in message
    private = "pipeline.build.examples:build_quality_predictor.__globals__"
    models = _models_file(allowed, {"name": "m", "builder": private})
    assert "private attribute '__globals__'" in _refused({"models_file": str(models)})
    validate_conf({"models_file": str(_models_file(allowed, BUILT))})
    # an operator's own builders, by prefix
    monkeypatch.setenv("RELCERT_BUILDER_PREFIXES", "pipeline.build.examples, acme.models")
    validate_conf(
        {"models_file": str(_models_file(allowed, {"name": "m", "builder": "acme.models.x:f"}))}
    )


def test_a_build_task_checks_again_and_refuses_imported_callables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Where the code would run: a models file changed after `prepare` is refused, and a
    builder must be defined under a prefix, not merely imported into an allowed module."""
    from pipeline import orchestrate
    from pipeline.stages.common import ModelDefect

    allowed = tmp_path / "allowed"
    monkeypatch.setenv("RELCERT_MODELS_DIRS", str(allowed))
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "artifacts"))
    ctx = {"models_file": "/etc/passwd", "run_dir": str(tmp_path / "artifacts" / "r")}
    # refused for good: a ModelDefect is never retried by the DAG
    with pytest.raises(ModelDefect, match="outside the models folders"):
        orchestrate.build_part(ctx, "m")
    # `init_module` is imported into pipeline.build.examples from pipeline.build.train
    models = _models_file(allowed, {"name": "m", "builder": "pipeline.build.examples:init_module"})
    validate_conf({"models_file": str(models)})  # by name it is under the prefix
    with pytest.raises(ModelDefect, match=r"defined in 'pipeline\.build\.train'"):
        orchestrate.build_part({**ctx, "models_file": str(models)}, "m")
    assert not (tmp_path / "artifacts").exists()  # refused before the run was touched
