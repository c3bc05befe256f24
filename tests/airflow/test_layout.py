"""The library's layout: Airflow is imported in `pipeline/airflow/` and nowhere else in
`pipeline/`, so the rest reads (and runs) as the Airflow-free library it is."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
ROOM = PIPELINE / "airflow"


def _airflow_imports(path: Path) -> list[str]:
    """`file:line module` of every import of airflow (at any depth: inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            if module == "airflow" or module.startswith("airflow."):
                found.append(f"{path.relative_to(PIPELINE.parent)}:{node.lineno} {module}")
    return found


def test_only_pipeline_airflow_imports_airflow() -> None:
    outside = [
        hit
        for path in sorted(PIPELINE.rglob("*.py"))
        if ROOM not in path.parents
        for hit in _airflow_imports(path)
    ]
    assert outside == [], "Airflow imported outside pipeline/airflow/: " + ", ".join(outside)


def test_the_airflow_room_is_where_airflow_is_used() -> None:
    inside = {p.name for p in ROOM.glob("*.py") if _airflow_imports(p)}
    assert {"local.py", "pools.py", "outcomes.py", "notifiers.py"} <= inside, inside
