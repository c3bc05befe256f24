"""Shared fixtures and the suite's rules.

Fixtures that cost seconds to minutes (a build of the example models, a migrated Airflow
metadata DB, a run certified stage by stage) are made once per test session, whichever
pytest-xdist worker asks first (`shared`): the others wait for it and read the same folder.
They are read-only; a test that changes one copies it first.

Every test carries one category marker (checked at collection, see CATEGORIES; a marker
on the test overrides its module's),
and the tests that measure speed run one at a time in one xdist group (`measure`), so two
measurements never share the machine's cores with each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

SNAPSHOT_DATE = "2026-01-15"
OTHER_DATE = "2026-02-20"

#: one of these per test (module `pytestmark`, or on the test)
CATEGORIES = {
    "unit": "in-process library behaviour (a service on loopback at most); seconds",
    "stage": "runs certification stages or the engine host, measuring on this machine",
    "e2e": "certifies whole runs (every stage and the report), through the CLI or the DAG",
    "airflow": "needs Airflow itself (DAG parsing, a metadata DB, its API server or UI)",
    "system": "needs a service or tool outside the venv (PostgreSQL, Redis, podman, Chromium)",
}
#: categories whose tests measure speed: one at a time (one xdist group); a test of another
#: category that measures (a whole run on a Celery cluster, say) joins the group explicitly
#: (`pytest.mark.xdist_group(MEASURE_GROUP)`)
MEASURING = ("stage", "e2e")
MEASURE_GROUP = "measure"
#: the nice value of the other tests while a measuring test may run beside them (on another
#: xdist worker): they take the CPU the measurement leaves idle
NICE_OTHERS = 10


def measuring(item: pytest.Item) -> bool:
    group = item.get_closest_marker("xdist_group")
    return (
        category(item) in MEASURING
        or "staged_run" in getattr(item, "fixturenames", ())  # made by measuring
        or (group is not None and group.args[:1] == (MEASURE_GROUP,))
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under xdist, a measuring test runs at normal priority and any other at NICE_OTHERS,
    so the other worker's unit tests do not take cores from a measurement (lowering the
    nice value again needs CAP_SYS_NICE: without it the worker keeps its first value)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    want = 0 if measuring(item) else NICE_OTHERS
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != want:
            os.setpriority(os.PRIO_PROCESS, 0, want)
    except PermissionError:
        pass


def pytest_configure(config: pytest.Config) -> None:
    for name, what in CATEGORIES.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def category(item: pytest.Item) -> str | None:
    """The test's category: the closest one declared (on the test, its class or module)."""
    return next((m.name for m in item.iter_markers() if m.name in CATEGORIES), None)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without a category, or with two at one level (say, a module's
    `pytestmark` naming two); put the measuring ones, and every test that uses the shared
    certified run (made by measuring), in one xdist group, and every other module's tests in
    a group of their own."""
    wrong = []
    for item in items:
        levels: dict[int, set[str]] = {}
        for node, mark in item.iter_markers_with_node():
            if mark.name in CATEGORIES:
                levels.setdefault(id(node), set()).add(mark.name)
        if not levels or any(len(names) > 1 for names in levels.values()):
            found = sorted(set().union(*levels.values())) if levels else "no category"
            wrong.append(f"{item.nodeid}: {found}")
        elif measuring(item):
            item.add_marker(pytest.mark.xdist_group(MEASURE_GROUP))
        elif item.get_closest_marker("xdist_group") is None:
            # a module's tests stay on one worker: its module fixtures are made once
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    if wrong:
        raise pytest.UsageError(
            f"each test needs one category marker of {sorted(CATEGORIES)} "
            "(tests/conftest.py CATEGORIES):\n  " + "\n  ".join(wrong)
        )


def shared(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]):
    """The folder `name`, made by `make(folder)` once per test session: across xdist
    workers, under a file lock (the first worker makes it, the others wait and reuse it)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above every worker's own
    folder = root / "shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    done = folder.with_name(name + ".done")
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def _build(tmp_path_factory: pytest.TempPathFactory, date: str) -> Path:
    from pipeline.build import build_models

    def make(folder: Path) -> None:
        build_models(folder / "models", snapshot_date=date)

    return shared(tmp_path_factory, f"models-{date}", make) / "models"


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
    quick profile), with no report yet (read-only: copy before changing). The one whole
    certification that the report, certify, release, package and image tests share."""

    def make(folder: Path) -> None:
        from pipeline.cli import main
        from pipeline.stages.registry import STAGE_NAMES
        from tests.quick_profile import quick_profiles

        run = folder / "run"
        with quick_profiles(folder):
            for stage in STAGE_NAMES:  # every stage the DAG runs, the regression stage last
                args = ["stage", stage, "--run-dir", str(run)]
                args += ["--date", SNAPSHOT_DATE] if stage == "build" else []
                if main(args) != 0 and stage in ("load", "stress", "infra"):
                    # a measurement disturbed by a busy shared machine (the load generator
                    # fell behind, say) is invalid, not wrong: measure once more
                    assert main(args) == 0, f"relcert stage {stage}: its gate failed twice"

    return shared(tmp_path_factory, "staged-run", make) / "run"


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

    return shared(tmp_path_factory, "mixed", build_mixed_models) / "models"


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow metadata DB (SQLite) migrated once per session (read-only: tests take a
    copy through `airflow_home`)."""

    def make(home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        airflow = Path(sys.executable).with_name("airflow")
        done = subprocess.run(
            [str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    return shared(tmp_path_factory, "airflow-db", make) / "airflow.db"


def copy_airflow_home(migrated_db: Path, home: Path) -> Path:
    """`home` as an AIRFLOW_HOME (or RELCERT_AIRFLOW_HOME) holding a copy of the migrated DB
    (`relcert run` and `relcert ui` skip their own migration: the DB is stamped)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, home / "airflow.db")
    (home / ".relcert-migrated").write_text("ok\n")
    return home


@pytest.fixture
def airflow_home(migrated_airflow_db: Path, tmp_path: Path) -> Path:
    """A private AIRFLOW_HOME with a migrated metadata DB."""
    return copy_airflow_home(migrated_airflow_db, tmp_path / "airflow")


@pytest.fixture(scope="session")
def text_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models of named tensors, built by `relcert build` from a models file in the tensor
    form (read-only: copy before changing): the two-input transformer `sentiment` (ONNX)
    and the token model as `bag_script` (TorchScript) and `bag_graph` (ONNX); see
    tests/text_models.py. The user's files are in the folder's sibling `user/`."""
    from tests.text_models import build_text_models

    return shared(tmp_path_factory, "text", build_text_models) / "models"
