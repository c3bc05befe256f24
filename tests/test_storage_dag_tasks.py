"""The DAG's tasks on a non-local artifacts store (fsspec's `memory://`, standing in for
`s3://`): a whole certification through the functions the tasks call, each in its own
workspace (see tests/test_storage.py for the store's own behaviour)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from pipeline.storage import ArtifactStore
from tests.test_storage import DAG, PROJECT, _changed, _forget, _shas, _stored

pytestmark = pytest.mark.e2e


def test_the_dags_tasks_on_a_non_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """prepare -> build per model -> assemble -> stages and gates -> report -> package, each
    task in its own workspace, artifacts only in `memory://`; nothing names a workspace."""
    import threading

    from pipeline import orchestrate
    from tests.quick_profile import QUICK_PROFILES

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(QUICK_PROFILES)
    monkeypatch.setenv("RELCERT_PROFILES_FILE", str(profiles))
    root = f"memory://relcert-e2e-{uuid.uuid4().hex[:12]}/artifacts"
    monkeypatch.setenv("RELCERT_ARTIFACTS", root)
    workdir = tmp_path / "WORKSPACE-MARKER"
    monkeypatch.setenv("RELCERT_WORKDIR", str(workdir))
    store = ArtifactStore.from_location()
    quiet = lambda _line: None  # noqa: E731
    started = time.perf_counter()
    try:
        ctx = orchestrate.prepare_run(
            DAG, "manual__2026-01-15T00:00:00+00:00", None, {"reason": "storage test"}
        )
        location = ctx["run_dir"]
        assert location.startswith(f"{root}/{DAG}/manual__2026-01-15")
        json.dumps(ctx)  # the context is XCom material
        parts = [orchestrate.build_part(ctx, name, progress=quiet) for name in ctx["models"]]
        assert [p["part"] for p in parts] == [f"{location}/parts/{n}" for n in ctx["models"]]
        orchestrate.assemble(ctx, parts)
        assert orchestrate.gate(ctx, "build")["success"]
        orchestrate.stage(ctx, "integration", progress=quiet)
        assert orchestrate.gate(ctx, "integration")["success"]

        # load and stress are parallel branches: they change disjoint files
        before = _shas(store, location)
        orchestrate.stage(ctx, "load", progress=quiet)
        middle = _shas(store, location)
        orchestrate.stage(ctx, "stress", progress=quiet)
        after = _shas(store, location)
        by_load, by_stress = _changed(before, middle), _changed(middle, after)
        assert by_load and by_stress and not by_load & by_stress
        assert all(rel.startswith("stages/load/") for rel in by_load)
        assert all(rel.startswith("stages/stress/") for rel in by_stress)

        # their gates really run at the same time: both rebuild data_docs/index.html, the
        # one that pushes second finds the store changed and runs again on a fresh copy
        results: dict[str, dict] = {}
        threads = [
            threading.Thread(target=lambda g=g: results.update({g: orchestrate.gate(ctx, g)}))
            for g in ("load", "stress")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results["load"]["success"] and results["stress"]["success"]
        reruns = [r.getMessage() for r in caplog.records if "running it again" in r.getMessage()]
        print(f"gates run again after a conflict: {reruns}")
        index = store.read_bytes(store.join(location, "data_docs/index.html")).decode()
        assert "relcert_load" in index and "relcert_stress" in index

        orchestrate.stage(ctx, "infra", progress=quiet)
        orchestrate.gate(ctx, "infra")
        orchestrate.stage(ctx, "certify", progress=quiet)
        orchestrate.gate(ctx, "certify")
        decision = orchestrate.report(ctx)
        assert decision["report_json"] == f"{location}/report.json"
        report = json.loads(store.read_bytes(decision["report_json"]))
        assert report["decision"] == decision["decision"]
        assert decision["decision"] in ("APPROVED", "CONDITIONAL_APPROVAL"), report["criteria"]
        package = orchestrate.package(ctx)
        assert package["package"].startswith(f"{location}/package/") and package["sha256"]
        assert store.read_bytes(package["package"])[:2] == b"PK"
        assert (
            json.loads(store.read_bytes(decision["report_json"]))["package"]
            == (package["package"][len(location) + 1 :])
        )
        elapsed = time.perf_counter() - started

        # the same run content gives the same zip bytes in another workspace (another path)
        again = orchestrate.package(ctx)
        monkeypatch.setenv("RELCERT_WORKDIR", str(tmp_path / "elsewhere" / "deeper"))
        third = orchestrate.package(ctx)
        assert third["sha256"] == again["sha256"]

        # what `relcert run` reads back, and the Certifications view, go through the store
        report_path = orchestrate.artifacts_root() / DAG / Path(location).name / "report.json"
        assert json.loads(report_path.read_text())["decision"] == decision["decision"]
        monkeypatch.syspath_prepend(str(PROJECT / "plugins"))
        from relcert_ui import artifacts as ui

        [listed] = ui.list_runs()
        assert (listed.run_id, listed.decision) == (ctx["run_id"], decision["decision"])
        assert listed.package == package["package"].rsplit("/", 1)[1]
        assert ui.resolve_in_run(listed.run_key, "data_docs", "").name == "index.html"

        # no artifact names a workspace; every workspace is gone
        files = _stored(store, location)
        leaks = [rel for rel, data in files.items() if str(workdir).encode() in data]
        assert leaks == []
        assert not any(workdir.iterdir())
        assert not any(rel.endswith(".tmp") or rel.endswith(".lock") for rel in files)
        assert {"conf.json", "targets.yaml", "report.html", "data_docs/index.html"} <= set(files)
        print(f"task sequence: {elapsed:.1f} s, {len(files)} files in the store")
    finally:
        _forget(store)
