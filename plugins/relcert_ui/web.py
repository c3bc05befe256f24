"""The FastAPI app of the relcert plugin, mounted by the Airflow api-server under `/relcert`.

Routes (relative to the mount prefix):

    GET /certifications                        HTML list of runs, newest first, trend plot
                                               (?page=N&page_size=M, M <= 200, default 50)
    GET /api/certifications                    the same list as JSON (same paging)
    GET /runs/{run_key}/report                 the run's report.html
    GET /runs/{run_key}/report.json            the run's report.json
    GET /runs/{run_key}/data_docs/{path}       files of the run's GX Data Docs
    GET /runs/{run_key}/package                the deployment package zip (404 when none)
    GET /runs/{run_key}/package/{file}         the same zip by name (the report links to it)
    GET /runs/{run_key}/gates/{path}           gate results the report cites as evidence
    GET /runs/{run_key}/stages/{path}          stage tables the report cites as evidence
    GET /dags/{dag_id}/runs/{run_id}/report    Airflow run id -> redirect to its report

Authentication: Airflow does not authenticate plugin apps, so every route depends on
`require_reader`, which calls Airflow's own `get_user` (JWT from `Authorization: Bearer`, or
the `_token` cookie the Airflow UI sets) and then Airflow's `requires_access_dag("GET",
DagAccessEntity.RUN)` for the certification DAG. No token: 401 (an HTML page with a link to
the auth manager's login page when the client asks for HTML, JSON `{"detail": ...}`
otherwise); an invalid token: 403 (Airflow's behaviour); a user without read access to the
DAG's runs: 403. Authentication runs before any path is looked at, so an anonymous request
learns nothing about which runs exist.

Every file served from a run carries `Content-Security-Policy: sandbox allow-downloads`
(and `nosniff`): Data Docs load scripts from CDNs, and none of that may run with Airflow's
origin. Parsed report.json / conf.json files are cached by (path, mtime, size), so a page
load re-reads only runs that changed.

Paths: run keys must be folder names `pipeline.orchestrate.run_key` produces; file paths
must be relative, without `..` or hidden parts; everything is resolved (symlinks included)
and must stay inside the run's sub-folder within the artifacts root. Malformed: 400;
missing or escaping: 404. The artifacts root is the pipeline's store (`RELCERT_ARTIFACTS`):
files of a local store are served from disk, files of an object store (`s3://...`) are
streamed from it.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from relcert_ui import artifacts, render
from relcert_ui.artifacts import DAG_ID, BadPath, NotFound

URL_PREFIX = "/relcert"

#: query parameters of the runs list (bounded: one page load stays cheap)
Page = Annotated[int, Query(ge=1, description="page number, from 1 (newest first)")]
PageSize = Annotated[int, Query(ge=1, le=artifacts.MAX_PAGE_SIZE, description="runs per page")]

_bearer = HTTPBearer(auto_error=False, description="Airflow JWT (POST /auth/token)")

#: every file served from a run (Data Docs load scripts from CDNs; a report is HTML written
#: by the pipeline): sandboxed, so no script runs with Airflow's origin and cookies.
#: Downloads stay allowed (the report links to the package zip).
ARTIFACT_CSP = "sandbox allow-downloads; frame-ancestors 'self'"
_ARTIFACT_HEADERS = {"content-security-policy": ARTIFACT_CSP, "x-content-type-options": "nosniff"}

_SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"referrer-policy", b"same-origin"),
]


# ------------------------------------------------------------------------------ auth


async def authenticated_user(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Any:
    """The Airflow user of the request, via Airflow's `get_user` (401/403 otherwise)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=bearer)


def require_reader(request: Request, user: Annotated[Any, Depends(authenticated_user)]) -> Any:
    """An authenticated user allowed to read the certification DAG's runs (else 403)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)(request, user)
    return user


def _user_name(user: Any) -> str | None:
    try:
        return str(user.get_name())
    except Exception:
        return None


def _login_url(request: Request) -> str | None:
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager().get_url_login(next_url=str(request.url))
    except Exception:
        return None


# ---------------------------------------------------------------------------- helpers


def _base(request: Request) -> str:
    """The path this app is mounted at (`/relcert` under the api-server, `` in tests)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def run_links(request: Request, run: artifacts.RunSummary) -> dict[str, str | None]:
    base = f"{_base(request)}/runs/{quote(run.run_key, safe='')}"
    return {
        "report": f"{base}/report" if run.has_report_html else None,
        "report_json": f"{base}/report.json" if run.status != "running" else None,
        "data_docs": f"{base}/data_docs/index.html" if run.has_data_docs else None,
        "package": f"{base}/package" if run.package else None,
    }


def _file(path, *, download: bool = False) -> Response:
    """A file of the artifacts store: from disk on a local store, else streamed from the
    object store (`path` is then a UPath)."""
    media_type, _ = mimetypes.guess_type(path.name)
    if media_type is None:
        media_type = "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/json", "image/svg+xml"):
        media_type += "; charset=utf-8"
    if not isinstance(path, Path):
        return _stream(path, media_type, download)
    if download:
        return FileResponse(
            path, media_type=media_type, filename=path.name, headers=_ARTIFACT_HEADERS
        )
    return FileResponse(path, media_type=media_type, headers=_ARTIFACT_HEADERS)


def _stream(path, media_type: str, download: bool) -> StreamingResponse:
    try:
        handle = path.open("rb")
    except OSError:
        raise NotFound("not found") from None

    def chunks():
        with handle:
            while chunk := handle.read(1 << 20):
                yield chunk

    headers = dict(_ARTIFACT_HEADERS)
    if download:  # as FileResponse names a download
        name = quote(path.name)
        headers["content-disposition"] = (
            f'attachment; filename="{path.name}"'
            if name == path.name
            else f"attachment; filename*=utf-8''{name}"
        )
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)


def _wants_html(request: Request) -> bool:
    path = str(request.scope.get("path", ""))
    if path.startswith(f"{_base(request)}/api/"):
        return False
    return "text/html" in request.headers.get("accept", "")


def _report_of(folder) -> dict[str, Any] | None:
    data, _ = artifacts.read_json(folder / "report.json")
    return data


# ------------------------------------------------------------------------------- app


class SecurityHeaders:
    """Pure ASGI middleware: no caching of private reports, no sniffing, framing by self."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app() -> FastAPI:
    """The plugin's FastAPI app; every route requires an Airflow user who may read the DAG."""
    app = FastAPI(
        title="relcert certifications",
        description="Model release certification runs (relcert Airflow plugin).",
        dependencies=[Depends(require_reader)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        detail = exc.detail if isinstance(exc.detail, str) else "Error"
        if not _wants_html(request):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=headers
            )
        if exc.status_code == 401:
            login = _login_url(request)
            page = render.message_page(
                "Sign in required",
                "The certification reports are only shown to signed-in Airflow users.",
                link=(login, "Sign in to Airflow") if login else None,
            )
        elif exc.status_code == 403:
            page = render.message_page("Forbidden", f"{detail}: no access to these reports.")
        else:
            page = render.message_page(f"{exc.status_code}", detail)
        return HTMLResponse(page, status_code=exc.status_code, headers=headers)

    @app.exception_handler(BadPath)
    async def bad_path(request: Request, exc: BadPath) -> Response:
        return await http_error(request, HTTPException(400, str(exc)))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return await http_error(request, HTTPException(404, "Not found"))

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{_base(request)}/certifications", status_code=307)

    @app.get("/certifications", response_class=HTMLResponse)
    def certifications(
        request: Request,
        user: Annotated[Any, Depends(require_reader)],
        page: Page = 1,
        page_size: PageSize = artifacts.DEFAULT_PAGE_SIZE,
    ) -> HTMLResponse:
        runs = artifacts.list_runs()
        shown = artifacts.page_of_runs(runs, page, page_size)
        html = render.certifications_page(
            shown.runs,
            {run.run_key: run_links(request, run) for run in shown.runs},
            dag_id=DAG_ID,
            json_url=f"{_base(request)}/api/certifications",
            user=_user_name(user),
            all_runs=runs,
            page=shown.page,
            pages=shown.pages,
            page_url=f"{_base(request)}/certifications?page_size={shown.page_size}&page=",
        )
        return HTMLResponse(html)

    @app.get("/api/certifications")
    def certifications_json(
        request: Request,
        page: Page = 1,
        page_size: PageSize = artifacts.DEFAULT_PAGE_SIZE,
    ) -> JSONResponse:
        shown = artifacts.page_of_runs(artifacts.list_runs(), page, page_size)
        return JSONResponse(
            {
                "dag_id": DAG_ID,
                "total": shown.total,
                "page": shown.page,
                "page_size": shown.page_size,
                "pages": shown.pages,
                "runs": [run.to_json() | {"links": run_links(request, run)} for run in shown.runs],
            }
        )

    @app.get("/runs/{run_key}/report", response_class=HTMLResponse)
    def run_report(run_key: str) -> Response:
        folder = artifacts.run_dir(run_key)
        try:
            return _file(artifacts.run_file(run_key, "report.html"))
        except NotFound:
            summary = artifacts.summarize(folder)
            message = (
                "running / no report: this run has no final report yet."
                if summary.status == "running"
                else "This run has no HTML report."
            )
            return HTMLResponse(render.message_page(f"Run {run_key}", message), status_code=404)

    @app.get("/runs/{run_key}/report.json")
    def run_report_json(run_key: str) -> Response:
        return _file(artifacts.run_file(run_key, "report.json"))

    @app.get("/runs/{run_key}/data_docs", include_in_schema=False)
    def run_data_docs_root(request: Request, run_key: str) -> RedirectResponse:
        artifacts.run_dir(run_key)
        base = f"{_base(request)}/runs/{quote(run_key, safe='')}"
        return RedirectResponse(f"{base}/data_docs/index.html", status_code=307)

    @app.get("/runs/{run_key}/data_docs/{path:path}")
    def run_data_docs(run_key: str, path: str) -> Response:
        return _file(artifacts.resolve_in_run(run_key, "data_docs", path or "index.html"))

    @app.get("/runs/{run_key}/package")
    def run_package(run_key: str) -> Response:
        folder = artifacts.run_dir(run_key)
        package = artifacts.package_file(folder, _report_of(folder))
        if package is None:
            raise NotFound("no deployment package for this run")
        return _file(package, download=True)

    @app.get("/runs/{run_key}/package/{path:path}")
    def run_package_file(run_key: str, path: str) -> Response:
        target = artifacts.resolve_in_run(run_key, "package", path)
        folder = artifacts.run_dir(run_key)
        if target != artifacts.package_file(folder, _report_of(folder)):
            raise NotFound("not the run's deployment package")
        return _file(target, download=True)

    @app.get("/runs/{run_key}/gates/{path:path}")
    def run_gate_file(run_key: str, path: str) -> Response:
        return _file(artifacts.resolve_in_run(run_key, "gates", path))

    @app.get("/runs/{run_key}/stages/{path:path}")
    def run_stage_file(run_key: str, path: str) -> Response:
        return _file(artifacts.resolve_in_run(run_key, "stages", path))

    @app.get("/dags/{dag_id}/runs/{run_id:path}/report", include_in_schema=False)
    def dag_run_report(request: Request, dag_id: str, run_id: str) -> Response:
        """The target of the "Certification report" tab of an Airflow DAG run."""
        if dag_id != DAG_ID:
            page = render.message_page(
                "No certification report",
                f"Only runs of {DAG_ID} have certification reports.",
            )
            return HTMLResponse(page, status_code=404)
        run_key = artifacts.run_key_for(run_id)
        try:
            artifacts.run_dir(run_key)
        except (NotFound, BadPath):
            page = render.message_page(
                "No certification report",
                f"running / no report: no artifacts for run {run_id} yet.",
            )
            return HTMLResponse(page, status_code=404)
        target = f"{_base(request)}/runs/{quote(run_key, safe='')}/report"
        return RedirectResponse(target, status_code=307)

    return app
