"""Fixtures for the gate tests: the default targets, a run folder, passing tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from pipeline.targets import Targets, load_targets
from tests.gates.helpers import good_table, stamp


@pytest.fixture(scope="session")
def targets() -> Targets:
    return load_targets()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model_release_certification" / "manual__2026-01-15"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def stage_table(targets: Targets, run_dir: Path) -> Callable[[str], pd.DataFrame]:
    """Passing tables of the run folder's current attempt."""
    return lambda stage: stamp(good_table(stage, targets), run_dir)
