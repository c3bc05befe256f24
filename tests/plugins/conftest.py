"""Fixtures for the relcert Airflow plugin: a fake artifacts tree of certification runs.

The tree is written by hand (minimal report.json / report.html / Data Docs / package), so
the plugin is tested without running the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PLUGINS = PROJECT / "plugins"
if str(PLUGINS) not in sys.path:  # Airflow puts the plugins folder on sys.path; do the same
    sys.path.append(str(PLUGINS))

DAG_ID = "model_release_certification"
SECRET = "TOP-SECRET-OUTSIDE-THE-ARTIFACTS-ROOT"


def report_marker(run_id: str) -> str:
    return f"REPORT-CONTENT-OF<{run_id}>"


def criteria(p99: float | None, rps: float | None, mem: float | None) -> list[dict]:
    rows = []
    for name, value, unit, threshold, direction in (
        ("p99_latency_ms", p99, "ms", 360.0, "max"),
        ("sustained_throughput_rps", rps, "req/s", 45.0, "min"),
        ("memory_usage_mb", mem, "MB", 525.0, "max"),
    ):
        met = (
            None
            if value is None
            else (value <= threshold if direction == "max" else value >= threshold)
        )
        rows.append(
            {
                "name": name,
                "category": name.split("_")[0],
                "target": threshold,
                "threshold": threshold,
                "measured": value,
                "met": bool(met),
                "valid": value is not None,
                "evidence": {"table": "stages/load/scenarios.csv", "gate": "gates/load.json"},
                "unit": unit,
            }
        )
    return rows


@dataclass
class FakeRun:
    run_id: str
    run_key: str
    folder: Path
    decision: str | None
    snapshot_date: str
    package: Path | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class FakeTree:
    root: Path
    outside: Path
    runs: dict[str, FakeRun]

    def __getitem__(self, name: str) -> FakeRun:
        return self.runs[name]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_run(
    root: Path,
    run_id: str,
    *,
    snapshot_date: str,
    decision: str | None,
    metrics: tuple[float | None, float | None, float | None] = (120.0, 80.0, 300.0),
    reason: str = "nightly certification",
    package: bool = False,
    data_docs: bool = True,
    mtime: float | None = None,
) -> FakeRun:
    from pipeline.orchestrate import run_key

    key = run_key(run_id)
    folder = root / DAG_ID / key
    folder.mkdir(parents=True)
    models = ["quality_model", "routing_model"]
    conf = {
        "dag_id": DAG_ID,
        "run_id": run_id,
        "run_dir": str(folder),
        "snapshot_date": snapshot_date,
        "profile": "smoke",
        "reason": reason,
        "models": models,
    }
    _write(folder / "conf.json", json.dumps(conf))
    run = FakeRun(run_id, key, folder, decision, snapshot_date)
    if decision is None:  # still running: no report yet
        if mtime is not None:
            os.utime(folder / "conf.json", (mtime, mtime))
        return run
    version = snapshot_date.replace("-", ".")
    package_rel = None
    if package:
        zip_path = folder / "package" / f"relcert-models-{version}.zip"
        zip_path.parent.mkdir(parents=True)
        with zipfile.ZipFile(zip_path, "w") as zf:
            zf.writestr("MANIFEST.txt", f"package of {run_id}\n")
        package_rel = zip_path.relative_to(folder).as_posix()
        run.package = zip_path
    report = {
        "decision": decision,
        "readiness_score": 0.93 if decision == "APPROVED" else 0.61,
        "criteria": criteria(*metrics),
        "gates": {
            "build": {"success": True, "failed": [], "path": "gates/build.json"},
            "load": {
                "success": decision != "NOT_APPROVED",
                "failed": [],
                "path": "gates/load.json",
            },
        },
        "models": [
            {"name": m, "format": fmt, "version": version, "sha256": "0" * 64}
            for m in models
            for fmt in ("torchscript", "onnx")
        ],
        "package": package_rel,
        "conf": {"reason": reason, "snapshot_date": snapshot_date},
        "run_id": run_id,
        "profile": "smoke",
    }
    _write(folder / "report.json", json.dumps(report))
    _write(
        folder / "report.html",
        f"<!DOCTYPE html><html><body><h1>{decision}</h1><p>{report_marker(run_id)}</p>"
        '<a href="data_docs/index.html">Data Docs</a></body></html>',
    )
    _write(folder / "gates" / "load.json", json.dumps({"success": True}))
    if data_docs:
        _write(folder / "data_docs" / "index.html", f"<html>DATA-DOCS-INDEX {run_id}</html>")
        _write(
            folder / "data_docs" / "validations" / "load" / "result.html",
            f"<html>DATA-DOCS-LOAD {run_id}</html>",
        )
        _write(folder / "data_docs" / "static" / "style.css", "body{color:black}")
    if mtime is not None:
        os.utime(folder / "conf.json", (mtime, mtime))
    return run


def build_tree(base: Path) -> FakeTree:
    """Five runs plus a secret outside the root and symlinks that try to reach it."""
    root = base / "artifacts"
    outside = base / "outside"
    _write(outside / "secret.txt", SECRET)
    _write(outside / "report.html", f"<html>{SECRET}</html>")
    _write(outside / "index.html", f"<html>{SECRET}</html>")
    runs = {
        "approved": make_run(
            root,
            "scheduled__2026-01-16T00:00:00+00:00",
            snapshot_date="2026-01-16",
            decision="APPROVED",
            metrics=(140.5, 88.25, 310.0),
            reason="nightly schedule",
            package=True,
            mtime=1_700_000_300,
        ),
        "conditional": make_run(
            root,
            "backfill__2026-01-15T00:00:00+00:00",
            snapshot_date="2026-01-15",
            decision="CONDITIONAL_APPROVAL",
            metrics=(355.0, 47.0, 520.0),
            reason="backfill of January",
            package=True,
            mtime=1_700_000_200,
        ),
        "rejected": make_run(
            root,
            "manual__2026-01-14T09:30:00+00:00",
            snapshot_date="2026-01-14",
            decision="NOT_APPROVED",
            metrics=(912.0, 12.5, 640.0),
            reason="hotfix <b>check</b>",
            mtime=1_700_000_100,
        ),
        "running": make_run(
            root,
            "manual__2026-01-17T08:00:00+00:00",
            snapshot_date="2026-01-17",
            decision=None,
            reason="release candidate",
            mtime=1_700_000_400,
        ),
    }
    # a stale zip in a NOT_APPROVED run is never offered
    _write(runs["rejected"].folder / "package" / "stale-0.zip", "not a package")
    # symlinks that point outside the artifacts root
    approved = runs["approved"].folder
    (approved / "data_docs" / "leak.html").symlink_to(outside / "secret.txt")
    (approved / "data_docs" / "leakdir").symlink_to(outside, target_is_directory=True)
    (root / DAG_ID / "escaped_run").symlink_to(outside, target_is_directory=True)
    return FakeTree(root=root, outside=outside, runs=runs)


@pytest.fixture
def fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTree:
    tree = build_tree(tmp_path)
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tree.root))
    return tree
