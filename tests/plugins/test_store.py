"""The plugin on a non-local artifacts store: the fake tree copied into fsspec's `memory://`
(standing in for `s3://`: no symlinks, no rename, files read through fsspec)."""

from __future__ import annotations

import contextlib
import io
import os
import uuid
import warnings
import zipfile
from pathlib import Path

import pytest

from tests.plugins.conftest import SECRET, FakeTree, build_tree, report_marker
from tests.plugins.test_web import TRAVERSALS, USER

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from relcert_ui import artifacts, web

pytestmark = pytest.mark.unit


@pytest.fixture
def memory_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The fake tree's files (symlinks left out: object stores have none) under
    `memory://<bucket>/artifacts`, and a secret beside the root at `<bucket>/outside`."""
    import fsspec

    tree = build_tree(tmp_path)
    bucket = f"relcert-plugin-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("memory")
    for base, prefix in ((tree.root, "artifacts"), (tree.outside, "outside")):
        for dirpath, _dirs, names in os.walk(base):  # symlinked folders are not entered
            for path in (Path(dirpath) / name for name in names):
                if not path.is_symlink():
                    rel = path.relative_to(base).as_posix()
                    fs.pipe_file(f"/{bucket}/{prefix}/{rel}", path.read_bytes())
    monkeypatch.setenv("RELCERT_ARTIFACTS", f"memory://{bucket}/artifacts")
    yield tree
    with contextlib.suppress(FileNotFoundError):
        fs.rm(f"/{bucket}", recursive=True)


@pytest.fixture
def client(memory_tree: FakeTree) -> TestClient:
    app = web.create_app()
    app.dependency_overrides[web.require_reader] = lambda: USER
    return TestClient(app)


def test_root_is_read_through_fsspec(memory_tree: FakeTree):
    root = artifacts.artifacts_root()
    assert not isinstance(root, Path) and str(root).startswith("memory://")


def test_the_list_is_the_same_as_on_disk(client: TestClient, memory_tree: FakeTree):
    data = client.get("/api/certifications").json()
    assert data["total"] == 4
    keys = [r["run_key"] for r in data["runs"]]
    assert keys == [
        memory_tree[n].run_key for n in ("running", "approved", "conditional", "rejected")
    ]
    runs = {r["run_key"]: r for r in data["runs"]}
    approved = runs[memory_tree["approved"].run_key]
    assert approved["decision"] == "APPROVED" and approved["status"] == "certified"
    assert approved["package"] == memory_tree["approved"].package.name
    assert approved["links"]["data_docs"].endswith("/data_docs/index.html")
    assert runs[memory_tree["rejected"].run_key]["package"] is None  # the stale zip is not offered
    assert runs[memory_tree["running"].run_key]["status"] == "running"
    page = client.get("/certifications").text
    assert "hotfix &lt;b&gt;check&lt;/b&gt;" in page and "<b>check</b>" not in page


def test_files_are_served_from_the_store(client: TestClient, memory_tree: FakeTree):
    run = memory_tree["approved"]
    report = client.get(f"/runs/{run.run_key}/report")
    assert report.status_code == 200 and report_marker(run.run_id) in report.text
    assert report.headers["content-type"] == "text/html; charset=utf-8"
    assert report.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/runs/{run.run_key}/report.json").json()["decision"] == "APPROVED"
    base = f"/runs/{run.run_key}/data_docs"
    assert "DATA-DOCS-INDEX" in client.get(f"{base}/").text
    assert "DATA-DOCS-LOAD" in client.get(f"{base}/validations/load/result.html").text
    assert client.get(f"{base}/validations/load/").status_code == 404
    assert client.get(f"{base}/static/style.css").headers["content-type"].startswith("text/css")
    assert client.get(f"/runs/{run.run_key}/gates/load.json").json() == {"success": True}
    package = client.get(f"/runs/{run.run_key}/package")
    assert package.status_code == 200 and package.headers["content-type"] == "application/zip"
    assert f'filename="{run.package.name}"' in package.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(package.content)) as zf:
        assert zf.read("MANIFEST.txt").decode().strip() == f"package of {run.run_id}"
    assert client.get(f"/runs/{run.run_key}/package/{run.package.name}").content == (
        package.content
    )
    assert client.get(f"/runs/{run.run_key}/package/other.zip").status_code == 404
    assert client.get(f"/runs/{memory_tree['rejected'].run_key}/package").status_code == 404
    running = client.get(f"/runs/{memory_tree['running'].run_key}/report")
    assert running.status_code == 404 and "running / no report" in running.text


@pytest.mark.parametrize("template", TRAVERSALS)
def test_traversal_is_refused(client: TestClient, memory_tree: FakeTree, template: str):
    url = template.format(key=memory_tree["approved"].run_key, outside=memory_tree.outside)
    response = client.get(url)
    assert response.status_code in (400, 404), url
    assert SECRET not in response.text
    assert "REPORT-CONTENT" not in response.text


@pytest.mark.parametrize(
    ("rel", "error"),
    [
        ("../report.html", artifacts.BadPath),
        ("a/../../report.html", artifacts.BadPath),
        ("/etc/passwd", artifacts.BadPath),
        (".secret", artifacts.BadPath),
        ("..\\report.html", artifacts.BadPath),
        ("nothing.html", artifacts.NotFound),
        ("validations", artifacts.NotFound),  # a folder without an index.html
    ],
)
def test_resolve_in_run_refuses(memory_tree: FakeTree, rel: str, error: type):
    with pytest.raises(error):
        artifacts.resolve_in_run(memory_tree["approved"].run_key, "data_docs", rel)


@pytest.mark.parametrize(
    ("key", "error"),
    [("..", artifacts.BadPath), ("../outside", artifacts.BadPath), ("unknown", artifacts.NotFound)],
)
def test_run_dir_refuses(memory_tree: FakeTree, key: str, error: type):
    with pytest.raises(error):
        artifacts.run_dir(key)


def test_a_recorded_package_outside_the_run_is_not_served(memory_tree: FakeTree):
    folder = artifacts.run_dir(memory_tree["approved"].run_key)
    for recorded in ("../../../outside/secret.txt", "/outside/secret.txt", "report.html"):
        report = {"decision": "APPROVED", "package": recorded}
        assert artifacts.package_file(folder, report) is None


def test_an_unknown_protocol_is_an_error(monkeypatch: pytest.MonkeyPatch):
    from pipeline.storage import StoreError

    monkeypatch.setenv("RELCERT_ARTIFACTS", "nosuchprotocol://bucket/artifacts")
    with pytest.raises(StoreError):
        artifacts.list_runs()


def test_anonymous_requests_are_still_refused(memory_tree: FakeTree):
    anon = TestClient(web.create_app())
    response = anon.get(f"/runs/{memory_tree['approved'].run_key}/report")
    assert response.status_code == 401 and "REPORT-CONTENT" not in response.text
