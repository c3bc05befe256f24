"""The Certifications view reads a run the way the tasks do (pipeline.storage): after a task
was killed while its upload was being moved into the store, the view shows the whole upload
(finished first), never half of it."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.storage import ArtifactStore
from tests.plugins.conftest import DAG_ID, FakeTree
from tests.test_storage import _push_killed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about httpx
    from fastapi.testclient import TestClient

from relcert_ui import artifacts, web

pytestmark = pytest.mark.unit


@pytest.fixture
def client(fake_tree: FakeTree) -> TestClient:
    app = web.create_app()
    app.dependency_overrides[web.require_reader] = lambda: SimpleNamespace(get_name=lambda: "t")
    return TestClient(app)


def _final_report_killed_mid_move(tree: FakeTree, tmp_path: Path) -> tuple[str, str]:
    """The still-running run's final report and package, pushed by a task killed after its
    commit record and two of its three moves (package zip, report.html; not report.json)."""
    running = tree["running"]
    store = ArtifactStore.from_location()
    location = store.run_location(DAG_ID, running.run_key)
    local = tmp_path / "task"
    manifest = store.pull(location, local)
    zip_name = "relcert-service-2026.01.17.zip"
    (local / "package").mkdir()
    with zipfile.ZipFile(local / "package" / zip_name, "w") as archive:
        archive.writestr("MANIFEST.txt", "the package\n")
    report = {
        "decision": "APPROVED",
        "readiness_score": 0.97,
        "run_id": running.run_id,
        "package": f"package/{zip_name}",
        "conf": {"reason": "release candidate", "snapshot_date": running.snapshot_date},
    }
    (local / "report.json").write_text(json.dumps(report))
    (local / "report.html").write_text("<html><h1>APPROVED</h1>NEW-REPORT</html>")
    # os.replace calls: the commit record, then package/..., report.html, report.json
    _push_killed(store, local, location, manifest, "move", after=3)
    assert (running.folder / "package" / zip_name).is_file()
    assert not (running.folder / "report.json").exists()  # the store is half-way
    return running.run_key, zip_name


def test_the_list_shows_a_killed_upload_whole(
    client: TestClient, fake_tree: FakeTree, tmp_path: Path
) -> None:
    run_key, zip_name = _final_report_killed_mid_move(fake_tree, tmp_path)
    runs = {r["run_key"]: r for r in client.get("/api/certifications").json()["runs"]}
    shown = runs[run_key]
    assert (shown["status"], shown["decision"], shown["package"]) == (
        "certified",
        "APPROVED",
        zip_name,
    )
    # finished in the store, as a task's next pull would have: nothing is left pending
    folder = fake_tree["running"].folder
    assert json.loads((folder / "report.json").read_text())["decision"] == "APPROVED"
    assert not (folder / ".relcert-pending").exists()


def test_a_run_file_is_served_after_a_killed_upload_is_finished(
    client: TestClient, fake_tree: FakeTree, tmp_path: Path
) -> None:
    run_key, zip_name = _final_report_killed_mid_move(fake_tree, tmp_path)
    response = client.get(f"/runs/{run_key}/report.json")
    assert response.status_code == 200 and response.json()["decision"] == "APPROVED"
    package = client.get(f"/runs/{run_key}/package")
    assert package.status_code == 200 and zip_name in package.headers["content-disposition"]


def test_a_run_whose_upload_cannot_be_finished_here_is_shown_as_such(
    client: TestClient, fake_tree: FakeTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that may not write the store (a read-only mount) cannot finish the upload:
    the run is listed as unreadable, not shown half-applied, and its files are not served."""
    run_key, _ = _final_report_killed_mid_move(fake_tree, tmp_path)

    def read_only(self, base: str, *, locked: bool) -> None:
        raise PermissionError(13, "Read-only file system", base)

    monkeypatch.setattr(ArtifactStore, "_recover", read_only)
    runs = {r["run_key"]: r for r in client.get("/api/certifications").json()["runs"]}
    assert runs[run_key]["status"] == "unreadable" and runs[run_key]["decision"] is None
    assert client.get(f"/runs/{run_key}/report.html").status_code == 404


def test_a_long_reason_from_before_the_cap_is_shown_cut(fake_tree: FakeTree) -> None:
    folder = fake_tree["running"].folder
    conf = json.loads((folder / "conf.json").read_text())
    conf["reason"] = "x" * 100_000
    (folder / "conf.json").write_text(json.dumps(conf))
    [shown] = [r for r in artifacts.list_runs() if r.run_key == fake_tree["running"].run_key]
    assert len(shown.reason) == 500 and shown.reason.endswith("\u2026")
