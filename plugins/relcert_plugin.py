"""relcert Airflow plugin: model release certifications in the Airflow UI.

Mounted by the api-server at ``/relcert`` (see ``relcert_ui/web.py`` for the routes):

- ``/relcert/certifications``: every run of ``model_release_certification`` (newest first)
  with its decision, p99 latency, sustained throughput, memory, trend plot and links to
  the run's report, Data Docs and deployment package; ``/relcert/api/certifications`` is
  the same list as JSON;
- ``/relcert/runs/<run_key>/report|data_docs/...|package``: one run's artifacts.

UI: a "Certifications" entry in the navigation and a "Certification report" tab on each DAG
run (the UI fills ``{DAG_ID}``/``{RUN_ID}`` in the href, URL-encoded; the plugin maps the
run id to its folder with ``pipeline.orchestrate.run_key``).

Every route requires an Airflow user (Airflow's auth manager: ``Authorization: Bearer
<JWT>`` or the UI's ``_token`` cookie) who may read the DAG's runs; anonymous requests get
401. Importing this module imports FastAPI and ``pipeline.airflow.outcomes`` (light) only:
Airflow's security module, the rest of ``pipeline`` and matplotlib are imported inside the
request handlers.

Listener: ``RunNoteListener`` (``pipeline.airflow.outcomes``) sets a finished certification
run's note (its decision and first reasons) from its ``decision`` task, in the process that
decides the run's state (the scheduler, or ``dag.test()``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # Airflow adds the plugins folder; tests and tools may not
    sys.path.append(_HERE)

from relcert_ui.web import URL_PREFIX, create_app  # noqa: E402

from pipeline.airflow.outcomes import RunNoteListener  # noqa: E402

NAV_VIEW = {
    "name": "Certifications",
    "href": f"{URL_PREFIX}/certifications",
    "destination": "nav",
    "category": "browse",
    "url_route": "relcert-certifications",
}

DAG_RUN_VIEW = {
    "name": "Certification report",
    "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/report",
    "destination": "dag_run",
    "url_route": "relcert-certification-report",
}


class RelcertPlugin(AirflowPlugin):
    """Certification views (a FastAPI app, a navigation entry and a DAG-run tab) and the
    listener that writes each certification run's decision into its note."""

    name = "relcert"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {
            "app": create_app(),
            "url_prefix": URL_PREFIX,
            "name": "relcert certifications",
        }
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [NAV_VIEW, DAG_RUN_VIEW]
    listeners: ClassVar[list[Any]] = [RunNoteListener()]
