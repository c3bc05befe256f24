"""The suite's own rules (tests/conftest.py): every test has one category, and the tests
that measure run one at a time on one xdist worker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
pytest_plugins = ["pytester"]
PROJECT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests.conftest import (  # noqa: F401  (the suite's hooks, as the real suite loads them)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_setup,
)
"""


def test_a_test_without_a_category_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_mixed="""
        import pytest

        @pytest.mark.unit
        def test_ok(): pass

        def test_forgotten(): pass

        @pytest.mark.unit
        @pytest.mark.stage
        def test_two(): pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert "each test needs one category marker" in errors
    assert "test_mixed.py::test_forgotten: no category" in errors
    assert "test_mixed.py::test_two: ['stage', 'unit']" in errors
    assert "test_ok" not in errors


def test_measuring_tests_run_on_one_worker_one_at_a_time(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(PROJECT))  # the subprocess imports tests.conftest
    pytester.makeconftest(CONFTEST)
    body = """
        import os, pytest
        pytestmark = pytest.mark.{category}

        @pytest.mark.parametrize("i", range(6))
        def test_where(i, request):
            with open(request.config.rootpath / "where.txt", "a") as out:
                out.write(f"{{os.environ['PYTEST_XDIST_WORKER']}} {name}\\n")
        """
    pytester.makepyfile(
        test_load=body.format(category="stage", name="test_load"),
        test_runs=body.format(category="e2e", name="test_runs"),
        test_fast=body.format(category="unit", name="test_fast"),
        test_other=body.format(category="unit", name="test_other"),
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup")
    assert result.ret == 0, result.stdout.str()
    workers: dict[str, set[str]] = {}
    for line in (pytester.path / "where.txt").read_text().splitlines():
        worker, module = line.split()
        workers.setdefault(module, set()).add(worker)
    assert len(workers["test_load"] | workers["test_runs"]) == 1, workers  # one worker
    assert len(workers["test_fast"]) == len(workers["test_other"]) == 1  # a module stays
