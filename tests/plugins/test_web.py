"""The plugin's FastAPI app, built directly (no api-server) over a fake artifacts tree."""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from tests.plugins.conftest import DAG_ID, SECRET, FakeTree, report_marker

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about httpx
    from fastapi.testclient import TestClient

# plugins/ is put on sys.path by conftest, as Airflow does for the plugins folder
from relcert_ui import artifacts, web

pytestmark = pytest.mark.unit

USER = SimpleNamespace(get_name=lambda: "tester")


@pytest.fixture
def client(fake_tree: FakeTree) -> TestClient:
    """The app with Airflow's auth replaced by an authenticated, authorized user."""
    app = web.create_app()
    app.dependency_overrides[web.require_reader] = lambda: USER
    return TestClient(app)


@pytest.fixture
def anon_client(fake_tree: FakeTree) -> TestClient:
    """The app with Airflow's real auth dependencies (nothing overridden)."""
    return TestClient(web.create_app())


def _row_order(text: str, tree: FakeTree) -> list[str]:
    positions = {
        name: text.index(f'data-run-key="{run.run_key}"') for name, run in tree.runs.items()
    }
    return sorted(positions, key=positions.get)


# ------------------------------------------------------------------------------ list


def test_certifications_page_lists_runs_newest_first(client: TestClient, fake_tree: FakeTree):
    response = client.get("/certifications")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert _row_order(text, fake_tree) == ["running", "approved", "conditional", "rejected"]
    for run in fake_tree.runs.values():
        assert run.run_id in text
        assert run.snapshot_date in text
    # decisions, colour-coded, and the run without a report
    assert "decision-approved" in text and "#1e7e34" in text
    assert "decision-conditional_approval" in text
    assert "decision-not_approved" in text and "#b00020" in text
    assert "running / no report" in text
    # measured p99, throughput, memory (met / unmet)
    assert "140.5 ms" in text and "88.25 req/s" in text and "310.0 MB" in text
    assert re.search(r'class="num unmet"[^>]*>912\.0 ms', text)
    # models and versions, reason (escaped)
    assert "quality_model" in text and "2026.01.16" in text and "onnx" in text
    assert "hotfix &lt;b&gt;check&lt;/b&gt;" in text and "<b>check</b>" not in text
    assert "Signed in as tester" in text
    # inline SVG trend plot, no external resources
    assert "<svg" in text and 'id="trend"' in text
    assert "<?xml" not in text


def test_certifications_page_links(client: TestClient, fake_tree: FakeTree):
    text = client.get("/certifications").text
    approved, rejected, running = fake_tree["approved"], fake_tree["rejected"], fake_tree["running"]
    assert f'href="/runs/{approved.run_key}/report"' in text
    assert f'href="/runs/{approved.run_key}/data_docs/index.html"' in text
    assert f'href="/runs/{approved.run_key}/package"' in text
    assert f'href="/runs/{rejected.run_key}/report"' in text
    assert f'href="/runs/{rejected.run_key}/package"' not in text  # NOT_APPROVED: no package
    assert f"/runs/{running.run_key}/report" not in text  # no report yet


def test_links_follow_the_mount_prefix(fake_tree: FakeTree):
    app = web.create_app()
    app.dependency_overrides[web.require_reader] = lambda: USER
    client = TestClient(app, root_path="/relcert")
    text = client.get("/relcert/certifications").text
    assert f'href="/relcert/runs/{fake_tree["approved"].run_key}/report"' in text
    data = client.get("/relcert/api/certifications").json()
    assert data["runs"][1]["links"]["package"].startswith("/relcert/runs/")


def test_empty_artifacts_root(client: TestClient, tmp_path, monkeypatch):
    monkeypatch.setenv("RELCERT_ARTIFACTS", str(tmp_path / "nothing-here"))
    response = client.get("/certifications")
    assert response.status_code == 200
    assert "No certification runs yet" in response.text
    data = client.get("/api/certifications").json()
    assert (data["dag_id"], data["total"], data["runs"], data["pages"]) == (DAG_ID, 0, [], 1)


def test_api_certifications_json(client: TestClient, fake_tree: FakeTree):
    response = client.get("/api/certifications")
    assert response.status_code == 200
    data = response.json()
    assert data["dag_id"] == DAG_ID
    assert data["total"] == 4
    runs = {r["run_key"]: r for r in data["runs"]}
    assert [r["run_key"] for r in data["runs"]] == [
        fake_tree[n].run_key for n in ("running", "approved", "conditional", "rejected")
    ]
    approved = runs[fake_tree["approved"].run_key]
    assert approved["decision"] == "APPROVED"
    assert approved["status"] == "certified"
    assert approved["run_id"] == fake_tree["approved"].run_id
    assert approved["snapshot_date"] == "2026-01-16"
    assert approved["reason"] == "nightly schedule"
    assert approved["metrics"]["p99_latency_ms"]["measured"] == 140.5
    assert approved["metrics"]["sustained_throughput_rps"]["measured"] == 88.25
    assert approved["metrics"]["memory_usage_mb"]["measured"] == 310.0
    assert approved["metrics"]["memory_usage_mb"]["met"] is True
    assert {m["name"] for m in approved["models"]} == {"quality_model", "routing_model"}
    assert approved["models"][0]["formats"] == ["torchscript", "onnx"]
    assert approved["gates"] == {"build": True, "load": True}
    assert approved["package"] == fake_tree["approved"].package.name
    assert approved["links"]["report"] == f"/runs/{fake_tree['approved'].run_key}/report"
    running = runs[fake_tree["running"].run_key]
    assert running["status"] == "running"
    assert running["decision"] is None
    assert running["links"]["report"] is None
    assert runs[fake_tree["rejected"].run_key]["links"]["package"] is None


def test_unreadable_report_is_shown_not_hidden(client: TestClient, fake_tree: FakeTree):
    (fake_tree["conditional"].folder / "report.json").write_text("{not json", encoding="utf-8")
    data = client.get("/api/certifications").json()
    run = next(r for r in data["runs"] if r["run_key"] == fake_tree["conditional"].run_key)
    assert run["status"] == "unreadable"
    assert "report unreadable" in client.get("/certifications").text


# ------------------------------------------------------------------------- run files


def test_report_route_serves_report_html(client: TestClient, fake_tree: FakeTree):
    run = fake_tree["approved"]
    response = client.get(f"/runs/{run.run_key}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert report_marker(run.run_id) in response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/runs/{run.run_key}/report.json").json()["decision"] == "APPROVED"


def test_report_of_a_running_run_is_404_with_a_message(client: TestClient, fake_tree: FakeTree):
    response = client.get(f"/runs/{fake_tree['running'].run_key}/report")
    assert response.status_code == 404
    assert "running / no report" in response.text


def test_data_docs(client: TestClient, fake_tree: FakeTree):
    run = fake_tree["approved"]
    base = f"/runs/{run.run_key}/data_docs"
    index = client.get(f"{base}/index.html")
    assert index.status_code == 200 and "DATA-DOCS-INDEX" in index.text
    assert "DATA-DOCS-INDEX" in client.get(f"{base}/").text
    nested = client.get(f"{base}/validations/load/result.html")
    assert nested.status_code == 200 and "DATA-DOCS-LOAD" in nested.text
    assert client.get(f"{base}/validations/load/").status_code == 404  # no index.html there
    css = client.get(f"{base}/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    redirect = client.get(base, follow_redirects=False)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == f"{base}/index.html"
    assert client.get(f"{base}/missing.html").status_code == 404


def test_package_download(client: TestClient, fake_tree: FakeTree):
    run = fake_tree["approved"]
    response = client.get(f"/runs/{run.run_key}/package")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{run.package.name}"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        assert zf.read("MANIFEST.txt").decode().strip() == f"package of {run.run_id}"
    by_name = client.get(f"/runs/{run.run_key}/package/{run.package.name}")
    assert by_name.status_code == 200 and by_name.content == response.content
    assert client.get(f"/runs/{run.run_key}/package/other.zip").status_code == 404


@pytest.mark.parametrize("name", ["rejected", "running"])
def test_no_package_is_404(client: TestClient, fake_tree: FakeTree, name: str):
    run = fake_tree[name]
    assert client.get(f"/runs/{run.run_key}/package").status_code == 404
    assert client.get(f"/runs/{run.run_key}/package/stale-0.zip").status_code == 404


def test_evidence_files_the_report_links(client: TestClient, fake_tree: FakeTree):
    run = fake_tree["approved"]
    response = client.get(f"/runs/{run.run_key}/gates/load.json")
    assert response.status_code == 200 and response.json() == {"success": True}


def test_dag_run_tab_redirects_to_the_report(client: TestClient, fake_tree: FakeTree):
    run = fake_tree["approved"]
    url = f"/dags/{DAG_ID}/runs/{quote(run.run_id, safe='')}/report"
    response = client.get(url, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"/runs/{run.run_key}/report"
    assert report_marker(run.run_id) in client.get(url).text
    # an unknown run or another DAG: a 404 page, never another run's report
    missing = client.get(f"/dags/{DAG_ID}/runs/manual__1999-01-01/report")
    assert missing.status_code == 404 and "running / no report" in missing.text
    other = client.get(f"/dags/other_dag/runs/{quote(run.run_id, safe='')}/report")
    assert other.status_code == 404 and report_marker(run.run_id) not in other.text


# ------------------------------------------------------------------- path traversal

TRAVERSALS = [
    "/runs/{key}/data_docs/%2e%2e/report.html",
    "/runs/{key}/data_docs/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
    "/runs/{key}/data_docs/%2E%2E%2F%2E%2E%2F%2E%2E%2Foutside%2Fsecret.txt",
    "/runs/{key}/data_docs/..%2f..%2f..%2foutside%2fsecret.txt",
    "/runs/{key}/data_docs/validations/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/index.html",
    "/runs/{key}/data_docs//etc/passwd",
    "/runs/{key}/data_docs/%2Fetc%2Fpasswd",
    "/runs/{key}/data_docs/{outside}/secret.txt",
    "/runs/{key}/data_docs/..%5C..%5Coutside%5Csecret.txt",
    "/runs/{key}/data_docs/leak.html",
    "/runs/{key}/data_docs/leakdir/secret.txt",
    "/runs/{key}/data_docs/leakdir/",
    "/runs/{key}/gates/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
    "/runs/{key}/stages/%2e%2e/report.html",
    "/runs/{key}/package/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
    "/runs/%2e%2e/report",
    "/runs/%2e%2e%2f%2e%2e%2foutside/report",
    "/runs/escaped_run/report",
    "/runs/escaped_run/data_docs/secret.txt",
    "/runs/unknown_run/report",
    "/runs/unknown_run/data_docs/index.html",
    "/runs/unknown_run/package",
    "/runs/.hidden/report",
    "/runs/a%00b/report",
    "/dags/" + DAG_ID + "/runs/%2e%2e%2f%2e%2e%2foutside/report",
]


@pytest.mark.parametrize("template", TRAVERSALS)
def test_traversal_is_refused(client: TestClient, fake_tree: FakeTree, template: str):
    url = template.format(key=fake_tree["approved"].run_key, outside=fake_tree.outside)
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
        ("C:/Windows/win.ini", artifacts.BadPath),
        ("..\\report.html", artifacts.BadPath),
        (".secret", artifacts.BadPath),
        ("leak.html", artifacts.NotFound),
        ("leakdir/secret.txt", artifacts.NotFound),
        ("nothing.html", artifacts.NotFound),
    ],
)
def test_resolve_in_run_refuses(fake_tree: FakeTree, rel: str, error: type):
    with pytest.raises(error):
        artifacts.resolve_in_run(fake_tree["approved"].run_key, "data_docs", rel)


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("..", artifacts.BadPath),
        ("../outside", artifacts.BadPath),
        ("/tmp", artifacts.BadPath),
        ("a b", artifacts.BadPath),
        ("_leading", artifacts.BadPath),
        ("escaped_run", artifacts.NotFound),
        ("unknown", artifacts.NotFound),
    ],
)
def test_run_dir_refuses(fake_tree: FakeTree, key: str, error: type):
    with pytest.raises(error):
        artifacts.run_dir(key)


def test_resolved_paths_stay_inside_the_root(fake_tree: FakeTree):
    root = fake_tree.root.resolve()
    for run in fake_tree.runs.values():
        assert artifacts.run_dir(run.run_key).is_relative_to(root)
    key = fake_tree["approved"].run_key
    path = artifacts.resolve_in_run(key, "data_docs", "validations/load/result.html")
    assert path.is_relative_to(root / DAG_ID / key / "data_docs")
    assert artifacts.resolve_in_run(key, "data_docs", "").name == "index.html"


# ----------------------------------------------------------------------------- auth


def test_anonymous_requests_get_401_and_no_content(anon_client: TestClient, fake_tree: FakeTree):
    key = fake_tree["approved"].run_key
    urls = [
        "/certifications",
        "/api/certifications",
        f"/runs/{key}/report",
        f"/runs/{key}/report.json",
        f"/runs/{key}/data_docs/index.html",
        f"/runs/{key}/package",
        f"/runs/{key}/gates/load.json",
        f"/dags/{DAG_ID}/runs/{quote(fake_tree['approved'].run_id, safe='')}/report",
        "/runs/unknown_run/report",  # 401 before any path is looked at
        "/runs/%2e%2e/report",
    ]
    for url in urls:
        response = anon_client.get(url, follow_redirects=False)
        assert response.status_code == 401, url
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "Not authenticated"}
        html = anon_client.get(url, headers={"Accept": "text/html"}, follow_redirects=False)
        assert html.status_code == 401, url
        if not url.startswith("/api/"):  # the JSON API answers JSON whatever the Accept
            assert "Sign in required" in html.text
        for text in (response.text, html.text):
            assert "REPORT-CONTENT" not in text
            assert "DATA-DOCS" not in text
            assert fake_tree["approved"].run_id not in text
    assert anon_client.get("/openapi.json").status_code == 404
    assert anon_client.get("/docs").status_code == 404


class FakeAuthManager:
    """What Airflow's `get_user` and `requires_access_dag` ask of the auth manager."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.calls: list[dict] = []

    async def get_user_from_token(self, token: str):
        from jwt import InvalidTokenError

        if token != "good-token":
            raise InvalidTokenError("bad")
        return USER

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        self.calls.append({"method": method, "entity": access_entity, "dag_id": details.id})
        return self.allowed

    def get_url_login(self, **kwargs) -> str:
        return "/auth/login?next=x"


@pytest.fixture
def fake_auth(monkeypatch: pytest.MonkeyPatch):
    import airflow.api_fastapi.core_api.security as security
    from airflow.models.dag import DagModel

    def install(allowed: bool) -> FakeAuthManager:
        manager = FakeAuthManager(allowed)
        monkeypatch.setattr(security, "get_auth_manager", lambda: manager)
        monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **kw: None))
        return manager

    return install


def test_real_dependencies_with_a_bearer_token(
    anon_client: TestClient, fake_tree: FakeTree, fake_auth
):
    manager = fake_auth(True)
    key = fake_tree["approved"].run_key
    ok = anon_client.get(f"/runs/{key}/report", headers={"Authorization": "Bearer good-token"})
    assert ok.status_code == 200 and report_marker(fake_tree["approved"].run_id) in ok.text
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    assert manager.calls[-1] == {"method": "GET", "entity": DagAccessEntity.RUN, "dag_id": DAG_ID}
    # the UI's `_token` cookie works too
    anon_client.cookies.set("_token", "good-token")
    assert anon_client.get("/certifications").status_code == 200
    anon_client.cookies.clear()
    bad = anon_client.get(f"/runs/{key}/report", headers={"Authorization": "Bearer forged"})
    assert bad.status_code == 403 and "REPORT-CONTENT" not in bad.text


def test_user_without_dag_access_gets_403(anon_client: TestClient, fake_tree: FakeTree, fake_auth):
    fake_auth(False)
    key = fake_tree["approved"].run_key
    for url in ("/certifications", f"/runs/{key}/report", f"/runs/{key}/package"):
        response = anon_client.get(url, headers={"Authorization": "Bearer good-token"})
        assert response.status_code == 403, url
        assert "REPORT-CONTENT" not in response.text and "PK" not in response.text[:2]


# ------------------------------------------------------------------- artifact sandboxing


def test_run_artifacts_are_served_sandboxed(client: TestClient, fake_tree: FakeTree):
    key = fake_tree["approved"].run_key
    package = fake_tree["approved"].package.name
    for url in (
        f"/runs/{key}/data_docs/index.html",
        f"/runs/{key}/data_docs/validations/load/result.html",
        f"/runs/{key}/report",
        f"/runs/{key}/report.json",
        f"/runs/{key}/gates/load.json",
        f"/runs/{key}/package",
        f"/runs/{key}/package/{package}",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        policy = response.headers["content-security-policy"]
        assert policy.split(";")[0].split()[0] == "sandbox", (url, policy)
        assert "allow-scripts" not in policy and "allow-same-origin" not in policy
        assert response.headers["x-content-type-options"] == "nosniff", url
    # the view's own pages are not sandboxed (they are ours, not run output)
    page = client.get("/certifications")
    assert "sandbox" not in page.headers["content-security-policy"]


# --------------------------------------------------------------------------- paging


def test_the_list_is_paginated_with_a_bounded_page_size(client: TestClient, fake_tree: FakeTree):
    order = [fake_tree[n].run_key for n in ("running", "approved", "conditional", "rejected")]
    first = client.get("/api/certifications", params={"page_size": 2}).json()
    second = client.get("/api/certifications", params={"page_size": 2, "page": 2}).json()
    beyond = client.get("/api/certifications", params={"page_size": 2, "page": 3}).json()
    assert [r["run_key"] for r in first["runs"]] == order[:2]
    assert [r["run_key"] for r in second["runs"]] == order[2:]
    assert beyond["runs"] == []
    assert (first["total"], first["pages"], first["page_size"]) == (4, 2, 2)
    html = client.get("/certifications", params={"page_size": 2}).text
    assert _row_order_present(html, order) == order[:2]
    assert "Page 1 of 2" in html and 'href="/certifications?page_size=2&amp;page=2"' in html
    assert "4 run(s)" in html  # the summary counts every run, not just the page
    for bad in ({"page_size": 0}, {"page_size": 201}, {"page": 0}, {"page_size": "many"}):
        assert client.get("/api/certifications", params=bad).status_code == 422, bad
        assert client.get("/certifications", params=bad).status_code == 422, bad


def _row_order_present(text: str, keys: list[str]) -> list[str]:
    present = [k for k in keys if f'data-run-key="{k}"' in text]
    return sorted(present, key=lambda k: text.index(f'data-run-key="{k}"'))


def test_an_unchanged_report_is_not_parsed_again(
    client: TestClient, fake_tree: FakeTree, monkeypatch: pytest.MonkeyPatch
):
    import json

    parsed: list[str] = []
    real_loads = json.loads

    def counting_loads(text, *args, **kwargs):
        if isinstance(text, str) and '"decision"' in text:  # a report.json
            parsed.append(text)
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(artifacts.json, "loads", counting_loads)
    client.get("/certifications")  # the first load parses the three reports
    first = len(parsed)
    assert first == 3
    client.get("/certifications")
    client.get("/api/certifications")
    assert len(parsed) == first  # unchanged files: nothing parsed again
    path = fake_tree["approved"].folder / "report.json"
    doc = real_loads(path.read_text())
    doc["readiness_score"] = 0.5
    path.write_text(json.dumps(doc))
    data = client.get("/api/certifications").json()
    assert len(parsed) == first + 1  # only the changed report
    approved = next(r for r in data["runs"] if r["run_key"] == fake_tree["approved"].run_key)
    assert approved["readiness_score"] == 0.5


def test_the_regression_column_names_the_baseline_and_links_it(
    client: TestClient, fake_tree: FakeTree
):
    """A run compared with its baseline shows its regressions and links the baseline's
    report; a run without a baseline says why."""
    approved, baseline = fake_tree["approved"], fake_tree["conditional"]
    path = approved.folder / "report.json"
    report = json.loads(path.read_text())
    report["regression"] = {
        "ran": True,
        "baseline_run": baseline.run_key,
        "comparable": True,
        "counts": {"comparisons": 12, "measured": 9, "regressions": 2},
        "waived": [],
        "reason": "the last APPROVED run before 2026-01-16",
    }
    path.write_text(json.dumps(report))
    rejected = fake_tree["rejected"].folder / "report.json"
    report = json.loads(rejected.read_text())
    report["regression"] = {
        "ran": True,
        "baseline_run": None,
        "comparable": False,
        "counts": {"comparisons": 12, "measured": 0, "regressions": 0},
        "reason": "no APPROVED run of the DAG before 2026-01-14",
    }
    rejected.write_text(json.dumps(report))

    text = client.get("/certifications").text
    assert "Against baseline" in text
    assert "2 regression(s)" in text
    assert f'href="/runs/{baseline.run_key}/report">{baseline.run_key}</a>' in text
    assert "no baseline" in text and "no APPROVED run of the DAG before 2026-01-14" in text
    runs = {r["run_key"]: r for r in client.get("/api/certifications").json()["runs"]}
    assert runs[approved.run_key]["baseline"] == baseline.run_key
    assert runs[approved.run_key]["regressions"] == 2
    assert runs[fake_tree["rejected"].run_key]["regressions"] is None


def test_the_interface_column_lists_each_sla_and_the_availability_with_its_verdict(
    client: TestClient, fake_tree: FakeTree
):
    """The interface SLAs and the availability of a run's report, each measured against its
    threshold (met or not), invalid, or not applicable with why."""
    approved = fake_tree["approved"]
    path = approved.folder / "report.json"
    report = json.loads(path.read_text())

    def row(name: str, measured, threshold, unit, direction, status, met, detail, **extra):
        category = "reliability" if name == "availability" else "interface"
        return {
            "name": name,
            "category": category,
            "measured": measured,
            "threshold": threshold,
            "unit": unit,
            "direction": direction,
            "status": status,
            "met": met,
            "detail": detail,
            **extra,
        }

    report["criteria"] += [
        row("routing_endpoint_p99_ms", 41.5, 25.0, "ms", "max", "measured", False, "POST r"),
        row("quality_endpoint_p99_ms", 4.25, 30.0, "ms", "max", "measured", True, "POST q"),
        row(
            "endpoint_p99_latency_ms[image]",
            None,
            30.0,
            "ms",
            "max",
            "not_applicable",
            False,
            "not applicable: the run's targets declare no endpoint_p99_latency_ms",
            metric="endpoint_p99_latency_ms",
        ),
        row("availability", 0.9991, 0.99, "ratio", "min", "invalid", False, "42 probes"),
    ]
    path.write_text(json.dumps(report))
    text = client.get("/certifications").text
    assert "Interface SLAs and availability" in text
    routing = '<li class="unmet" title="POST r">routing_endpoint_p99_ms: 41.50 ms (&lt;= 25 ms)'
    assert routing in text
    assert '<li class="met" title="POST q">quality_endpoint_p99_ms: 4.25 ms (&lt;= 30 ms)' in text
    assert "endpoint_p99_latency_ms[image]: not applicable</li>" in text
    assert "availability: 0.9991 (invalid) (&gt;= 0.99)</li>" in text
    runs = {r["run_key"]: r for r in client.get("/api/certifications").json()["runs"]}
    interface = {c["name"]: c for c in runs[approved.run_key]["interface"]}
    assert interface["routing_endpoint_p99_ms"]["met"] is False
    assert interface["availability"]["status"] == "invalid"
    assert "p99_latency_ms" not in interface  # a latency criterion, not the interface's
    assert runs[fake_tree["rejected"].run_key]["interface"] == []
