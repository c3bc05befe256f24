"""The plugin as Airflow's plugin manager sees it (no api-server)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.plugins.conftest import PLUGINS, PROJECT

pytestmark = pytest.mark.airflow


def test_plugin_declaration():
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from fastapi import FastAPI
    from relcert_plugin import RelcertPlugin

    assert RelcertPlugin.name == "relcert"
    [app] = RelcertPlugin.fastapi_apps
    assert isinstance(app["app"], FastAPI)
    assert app["url_prefix"] == "/relcert"
    assert not any(app["url_prefix"].startswith(p) for p in RESERVED_URL_PREFIXES)
    views = {v["destination"]: v for v in RelcertPlugin.external_views}
    assert views["nav"]["name"] == "Certifications"
    assert views["nav"]["href"] == "/relcert/certifications"
    assert views["dag_run"]["name"] == "Certification report"
    assert views["dag_run"]["href"] == "/relcert/dags/{DAG_ID}/runs/{RUN_ID}/report"
    # a url_route makes the UI render the view in an iframe (tab / page) instead of a link
    assert all(v["url_route"] and not v["url_route"].startswith("/") for v in views.values())


def test_external_views_validate_against_airflows_response_model():
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
    from relcert_plugin import RelcertPlugin

    for view in RelcertPlugin.external_views:
        ExternalViewResponse.model_validate(view)


def test_airflow_loader_finds_exactly_the_plugin():
    """Airflow imports every .py under plugins/ as a top-level module: .airflowignore keeps
    the helper package out, so only relcert_plugin.py is loaded, without errors."""
    code = f"""
import json, sys
from airflow._shared.plugins_manager import _load_plugins_from_plugin_directory
plugins, errors = _load_plugins_from_plugin_directory(plugins_folder={str(PLUGINS)!r})
print(json.dumps({{
    "plugins": [p.name for p in plugins],
    "errors": errors,
    "top_level_helpers": [
        m for m in ("web", "render", "artifacts", "__init__") if m in sys.modules
    ],
}}))
"""
    out = _run(code)
    assert out["plugins"] == ["relcert"]
    assert out["errors"] == {}
    assert out["top_level_helpers"] == []


def test_import_is_light():
    """Importing the plugin pulls in neither matplotlib, pandas, Airflow's security module
    nor any of pipeline but its run-note listener (the rest loads inside the request
    handlers)."""
    code = f"""
import json, sys
sys.path.append({str(PLUGINS)!r})
import relcert_plugin
heavy = ["matplotlib", "pandas", "numpy", "airflow.api_fastapi.core_api.security"]
listener = {{"pipeline", "pipeline.names", "pipeline.airflow", "pipeline.airflow.outcomes"}}
print(json.dumps(
    [m for m in heavy if m in sys.modules]
    + sorted(m for m in sys.modules if m.split(".")[0] == "pipeline" and m not in listener)
))
"""
    assert _run(code) == []


def test_the_plugin_registers_the_run_note_listener():
    from relcert_plugin import RelcertPlugin

    from pipeline.airflow.outcomes import RunNoteListener

    assert [type(x) for x in RelcertPlugin.listeners] == [RunNoteListener]


def _run(code: str):
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
