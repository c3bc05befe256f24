"""Shared fixtures: real models built once per test session by `pipeline.build`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SNAPSHOT_DATE = "2026-01-15"
OTHER_DATE = "2026-02-20"


def _build(tmp_path_factory: pytest.TempPathFactory, date: str) -> Path:
    from pipeline.build import build_models

    out = tmp_path_factory.mktemp(f"models-{date}") / "models"
    build_models(out, snapshot_date=date)
    return out


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two example models for SNAPSHOT_DATE (read-only: copy before changing)."""
    return _build(tmp_path_factory, SNAPSHOT_DATE)


@pytest.fixture(scope="session")
def built_models_other_date(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same models built for OTHER_DATE: a different snapshot and version."""
    return _build(tmp_path_factory, OTHER_DATE)


@pytest.fixture
def models_dir(built_models: Path, tmp_path: Path) -> Path:
    """A private copy of the built models that a test may modify."""
    target = tmp_path / "models"
    shutil.copytree(built_models, target)
    return target


@pytest.fixture(scope="session")
def staged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder certified stage by stage with the CLI (`relcert stage build ... regression`,
    quick profile), with no report yet (read-only: copy before changing)."""
    from pipeline.cli import main
    from pipeline.stages.registry import STAGE_NAMES
    from tests.quick_profile import quick_profiles

    folder = tmp_path_factory.mktemp("staged")
    run = folder / "run"
    with quick_profiles(folder):
        for stage in STAGE_NAMES:  # every stage the DAG runs, the regression stage last
            args = ["stage", stage, "--run-dir", str(run)]
            args += ["--date", SNAPSHOT_DATE] if stage == "build" else []
            assert main(args) == 0, f"relcert stage {stage}: its gate failed"
    return run


@pytest.fixture
def certified_run(staged_run: Path, tmp_path: Path) -> Path:
    """A private copy of `staged_run` that a test may finish (report, package)."""
    run = tmp_path / "artifacts" / "model_release_certification" / "staged"
    shutil.copytree(staged_run, run)
    return run


@pytest.fixture(scope="session")
def mixed_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example models plus an imported ONNX image model ([1, 3, 8, 8]) and a
    TorchScript-only float64 model, built by `relcert build` (read-only: copy before
    changing); see tests/imported_models.py."""
    from tests.imported_models import build_mixed_models

    return build_mixed_models(tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="session")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models of named tensors, built by `relcert build` from a models file in the tensor
    form (read-only: copy before changing): the two-input transformer `sentiment` (ONNX)
    and the token model as `bag_script` (TorchScript) and `bag_graph` (ONNX); see
    tests/text_models.py. The user's files are in the folder's sibling `user/`."""
    from tests.text_models import build_text_models

    return build_text_models(tmp_path_factory.mktemp("text"))
