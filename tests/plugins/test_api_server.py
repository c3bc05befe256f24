"""The plugin inside a real `airflow api-server` (SimpleAuthManager, SQLite, loopback).

One server per module: AIRFLOW_HOME, the SQLite DB, an empty DAGs folder and a fake
artifacts tree live in a tmp dir; the plugins folder is the project's `plugins/`. The server
runs in its own process group, which is always killed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from pipeline._proc import stop_process_group
from tests.plugins.conftest import DAG_ID, PLUGINS, SECRET, FakeTree, build_tree, report_marker

pytestmark = pytest.mark.airflow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
STARTUP_TIMEOUT = 90.0
PASSWORDS = {"admin": "admin-pw-4f1c", "viewer": "viewer-pw-9b2e"}


@dataclass
class Server:
    url: str
    port: int
    tree: FakeTree
    log: Path

    def token(self, user: str = "admin") -> str:
        response = httpx.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": PASSWORDS[user]},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        return response.json()["access_token"]

    def get(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path, artifacts: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": "relcert-test-secret-" + "0" * 32,
            "AIRFLOW__API__EXPOSE_CONFIG": "False",
            "RELCERT_ARTIFACTS": str(artifacts),
        }
    )
    return env


def _stop(proc: subprocess.Popen) -> None:
    stop_process_group(proc, 20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, migrated_airflow_db: Path) -> Iterator[Server]:
    from tests.conftest import copy_airflow_home

    home = copy_airflow_home(migrated_airflow_db, tmp_path_factory.mktemp("airflow-home"))
    (home / "dags").mkdir()
    tree = build_tree(home / "relcert")
    env = _env(home, tree.root)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps(PASSWORDS))

    port = _free_port()
    log = home / "api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as a whole below
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"api-server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"api-server not up in {STARTUP_TIMEOUT}s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Server(url=url, port=port, tree=tree, log=log)
    finally:
        _stop(proc)


def _no_report_content(response: httpx.Response, tree: FakeTree) -> None:
    assert "REPORT-CONTENT" not in response.text
    assert "DATA-DOCS" not in response.text
    for run in tree.runs.values():
        assert run.run_id not in response.text
    assert not response.content.startswith(b"PK")


def test_anonymous_requests_are_refused(server: Server):
    approved = server.tree["approved"]
    paths = [
        "/relcert/certifications",
        "/relcert/api/certifications",
        f"/relcert/runs/{approved.run_key}/report",
        f"/relcert/runs/{approved.run_key}/data_docs/index.html",
        f"/relcert/runs/{approved.run_key}/package",
        f"/relcert/dags/{DAG_ID}/runs/{quote(approved.run_id, safe='')}/report",
    ]
    for path in paths:
        response = server.get(path, follow_redirects=False)
        assert response.status_code == 401, path
        assert response.json() == {"detail": "Not authenticated"}
        _no_report_content(response, server.tree)
        # a browser (Accept: text/html) gets a 401 page linking to Airflow's login page
        page = server.get(path, headers={"Accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 401, path
        _no_report_content(page, server.tree)
        if "/api/" not in path:
            assert "Sign in required" in page.text
            assert 'href="/auth/login?next=' in page.text
    assert server.get("/api/v2/plugins").status_code == 401


def test_forged_token_is_refused(server: Server):
    path = f"/relcert/runs/{server.tree['approved'].run_key}/report"
    response = server.get(path, token="not-a-jwt")
    assert response.status_code in (401, 403)
    _no_report_content(response, server.tree)
    response = server.get(path, cookies={"_token": "not-a-jwt"})
    assert response.status_code in (401, 403)
    _no_report_content(response, server.tree)


def test_authenticated_user_sees_the_certifications(server: Server):
    token = server.token("admin")
    page = server.get("/relcert/certifications", token=token)
    assert page.status_code == 200
    for decision in ("APPROVED", "CONDITIONAL_APPROVAL", "NOT_APPROVED", "running / no report"):
        assert decision in page.text
    approved = server.tree["approved"]
    assert f'href="/relcert/runs/{approved.run_key}/report"' in page.text
    assert "<svg" in page.text

    report = server.get(f"/relcert/runs/{approved.run_key}/report", token=token)
    assert report.status_code == 200
    assert report_marker(approved.run_id) in report.text and "APPROVED" in report.text

    data = server.get("/relcert/api/certifications", token=token).json()
    assert data["total"] == 4
    assert data["runs"][1]["decision"] == "APPROVED"

    package = server.get(f"/relcert/runs/{approved.run_key}/package", token=token)
    assert package.status_code == 200 and package.content.startswith(b"PK")
    rejected = server.tree["rejected"].run_key
    assert server.get(f"/relcert/runs/{rejected}/package", token=token).status_code == 404
    assert server.get("/relcert/runs/unknown_run/report", token=token).status_code == 404


def test_ui_cookie_and_viewer_role(server: Server):
    """The Airflow UI sends the JWT as the `_token` cookie; a Viewer may read runs."""
    approved = server.tree["approved"]
    response = server.get(
        f"/relcert/runs/{approved.run_key}/report", cookies={"_token": server.token("viewer")}
    )
    assert response.status_code == 200
    assert report_marker(approved.run_id) in response.text


def test_dag_run_tab_href(server: Server):
    """The UI fills {DAG_ID}/{RUN_ID} with encodeURIComponent values."""
    token = server.token()
    approved = server.tree["approved"]
    path = f"/relcert/dags/{quote(DAG_ID, safe='')}/runs/{quote(approved.run_id, safe='')}/report"
    response = server.get(path, token=token, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == f"/relcert/runs/{approved.run_key}/report"
    followed = server.get(path, token=token, follow_redirects=True)
    assert report_marker(approved.run_id) in followed.text


def test_traversal_is_refused_over_http(server: Server):
    """Raw requests (no client-side normalisation of `..`)."""
    token = server.token()
    key = server.tree["approved"].run_key
    paths = [
        f"/relcert/runs/{key}/data_docs/../../../../outside/secret.txt",
        f"/relcert/runs/{key}/data_docs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt",
        f"/relcert/runs/{key}/data_docs/..%2f..%2f..%2f..%2foutside%2fsecret.txt",
        f"/relcert/runs/{key}/data_docs/{server.tree.outside}/secret.txt",
        f"/relcert/runs/{key}/data_docs/leak.html",
        "/relcert/runs/../../outside/report",
        "/relcert/runs/%2e%2e/report",
        "/relcert/runs/escaped_run/report",
    ]
    for path in paths:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        assert response.status in (400, 404), (path, response.status)
        assert SECRET not in body


def test_plugin_is_listed_by_the_plugins_api(server: Server):
    response = server.get("/api/v2/plugins", token=server.token())
    assert response.status_code == 200
    plugins = {p["name"]: p for p in response.json()["plugins"]}
    relcert = plugins["relcert"]
    assert relcert["fastapi_apps"][0]["url_prefix"] == "/relcert"
    views = {v["destination"]: v for v in relcert["external_views"]}
    assert views["nav"]["href"] == "/relcert/certifications"
    assert views["dag_run"]["href"] == "/relcert/dags/{DAG_ID}/runs/{RUN_ID}/report"
    errors = server.get("/api/v2/plugins/importErrors", token=server.token()).json()
    assert errors["total_entries"] == 0, errors
