"""Scale-out: run relcert's Airflow on many machines, and its Kubernetes manifests.

Distributed mode (ARCHITECTURE.md section 7) on Airflow 3.3:

1. Metadata DB: Postgres. Every component gets the same
   ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://USER:PW@HOST:5432/airflow``;
   run ``airflow db migrate`` once.
2. Executor and broker: ``AIRFLOW__CORE__EXECUTOR=CeleryExecutor`` with
   ``AIRFLOW__CELERY__BROKER_URL`` = ``redis://HOST:6379/0`` (Redis) or
   ``amqp://USER:PW@HOST:5672//`` (RabbitMQ), and ``AIRFLOW__CELERY__RESULT_BACKEND`` =
   ``db+postgresql://USER:PW@HOST:5432/airflow``. The scheduler and the API server share
   ``[api_auth] jwt_secret`` and ``[core] fernet_key``; workers reach the API server's Task
   Execution API through ``AIRFLOW__CORE__EXECUTION_API_SERVER_URL`` (``http://API:8080/execution/``).
3. Every machine (``airflow api-server``, ``airflow scheduler``, ``airflow dag-processor``
   and each worker) has Python 3.11 and the project installed the same way:
   ``pip install -c constraints.txt -e .``, with ``dags/`` as the DAGs folder.
4. N workers: ``airflow celery worker --celery-hostname NAME --concurrency C`` with a
   unique NAME per worker (Celery node ``celery@NAME``). Celery's warm shutdown (SIGTERM)
   lets running tasks finish.
5. Artifacts: ``RELCERT_ARTIFACTS`` is a path on storage every worker and the API server
   reach (NFS, a ReadWriteMany volume) or an fsspec URL (``s3://bucket/prefix``; needs
   ``s3fs``). Every task copies the run into a private work folder (``RELCERT_WORKDIR``)
   and uploads what it changed when it ends (``pipeline.storage``), so a task may run on
   any worker and never sees half of another task's file.
6. Perf pool: ``airflow pools import pools.json`` (or ``airflow pools set relcert_perf N
   "..."``) creates the pool (``RELCERT_PERF_POOL``, default ``relcert_perf``) with one
   slot per machine that runs performance tests. Load, stress and infra tasks take that
   pool and, when ``RELCERT_PERF_QUEUE`` is set where the DAG is parsed (the DAG processor),
   that Celery queue; on each dedicated machine one worker runs ``airflow celery worker
   --queues <perf queue> --concurrency 1``. The pool caps perf tasks at one per machine and
   the queue keeps them on those machines, so two never share a machine's CPUs.
7. Hostnames: ``AIRFLOW__CORE__HOSTNAME_CALLABLE=pipeline.scaleout.worker_hostname`` on the
   workers makes Airflow's task instances and relcert's stage results name the same host
   (``RELCERT_HOSTNAME`` if set, else the FQDN).

On Kubernetes, ``render_k8s(out_dir, **params)`` writes the general and perf worker
Deployments, the artifacts PVC (ReadWriteMany), a KubernetesExecutor pod template and
``pools.json`` from the jinja2 templates in ``include/k8s/``. ``validate_k8s(out_dir)``
checks the YAML strictly with kubernetes-validate. The Secrets the manifests refer to are
created beforehand, e.g.::

    kubectl -n relcert create secret generic relcert-airflow-metadata \\
        --from-literal=connection=postgresql+psycopg2://...
    kubectl -n relcert create secret generic relcert-airflow-broker \\
        --from-literal=broker-url=redis://... --from-literal=result-backend=db+postgresql://...

Task logs: worker pods are not reachable by hostname, so configure remote logging (or put
the logs on shared storage) to read them in the UI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline._io import atomic_write_text

__all__ = [
    "DEFAULTS",
    "K8S_TEMPLATES_DIR",
    "OUTPUTS",
    "PERF_POOL",
    "PERF_POOL_DESCRIPTION",
    "perf_task_args",
    "render_k8s",
    "retry_delay",
    "validate_k8s",
    "worker_hostname",
]

K8S_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "include" / "k8s"

# The Airflow pool of the performance-sensitive tasks (load, stress, infra). Every
# deployment needs it: `relcert run` and `relcert ui` create it
# (`pipeline.airflow.pools.ensure_perf_pool`); a distributed deployment imports the rendered
# pools.json (`airflow pools import`) or runs `airflow pools set`.
PERF_POOL = "relcert_perf"
PERF_POOL_DESCRIPTION = (
    "relcert load/stress/infra tasks: one slot per machine that runs them, "
    "so two never share a machine's CPUs"
)


def perf_task_args() -> dict[str, str]:
    """Pool (and queue) of the load, stress and infra tasks, read when the DAG is parsed.

    `RELCERT_PERF_POOL` (default ``relcert_perf``) names the pool; `RELCERT_PERF_QUEUE`, if
    set, routes the tasks to the Celery queue that only the dedicated perf workers serve
    (unset: Airflow's default queue, for one machine or workers that all serve it).
    """
    args = {"pool": os.environ.get("RELCERT_PERF_POOL") or PERF_POOL}
    queue = os.environ.get("RELCERT_PERF_QUEUE")
    if queue:
        args["queue"] = queue
    return args


def retry_delay() -> dt.timedelta:
    """How long a failed task waits before it retries (possibly on another worker):
    `RELCERT_RETRY_DELAY_S` seconds, default 30; read when the DAG is parsed."""
    raw = os.environ.get("RELCERT_RETRY_DELAY_S", "30")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ValueError(f"RELCERT_RETRY_DELAY_S must be seconds in [0, 3600], got {raw!r}")
    return dt.timedelta(seconds=seconds)


def worker_hostname() -> str:
    """The name a worker reports for the tasks it runs: `RELCERT_HOSTNAME`, else the FQDN.

    Set ``AIRFLOW__CORE__HOSTNAME_CALLABLE=pipeline.scaleout.worker_hostname`` on workers so
    Airflow's task instances (``TaskInstance.hostname``) and relcert's stage results name
    the same host; `RELCERT_HOSTNAME` tells apart workers that share a machine.
    """
    import socket

    return os.environ.get("RELCERT_HOSTNAME") or socket.getfqdn()


DEFAULTS: dict[str, Any] = {
    "image": "relcert-airflow:0.1.0",
    "image_pull_policy": "IfNotPresent",
    "namespace": "relcert",
    "name_prefix": "relcert-airflow",
    "replicas": 2,
    "worker_concurrency": 4,
    "broker_secret": "relcert-airflow-broker",
    "broker_secret_key": "broker-url",
    "result_backend_secret_key": "result-backend",
    "metadata_db_secret": "relcert-airflow-metadata",
    "metadata_db_secret_key": "connection",
    "artifacts_pvc": "relcert-artifacts",
    "artifacts_storage": "50Gi",
    "storage_class_name": None,
    "artifacts_mount_path": "/relcert/artifacts",
    "airflow_home": "/opt/airflow",
    "dags_folder": "/opt/relcert/dags",
    "execution_api_server_url": "http://relcert-airflow-api-server:8080/execution/",
    "cpu_request": "2",
    "cpu_limit": "4",
    "memory_request": "4Gi",
    "memory_limit": "8Gi",
    "pool_name": PERF_POOL,
    "perf_nodes": 1,
    "perf_queue": "perf",
    "perf_node_selector": {"relcert.io/perf-node": "true"},
    "termination_grace_period_seconds": 3600,
    "run_as_user": 50000,
    "run_as_group": 0,
}

# output file -> (template, role); role None: rendered once with the shared parameters
OUTPUTS: dict[str, tuple[str, str | None]] = {
    "artifacts-pvc.yaml": ("artifacts-pvc.yaml.j2", None),
    "celery-worker-deployment.yaml": ("celery-worker-deployment.yaml.j2", "worker"),
    "celery-perf-worker-deployment.yaml": ("celery-worker-deployment.yaml.j2", "perf-worker"),
    "kubernetes-executor-pod-template.yaml": ("kubernetes-executor-pod-template.yaml.j2", None),
    "pools.json": ("pools.json.j2", None),
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def _str(name: str, value: Any, pattern: re.Pattern[str], what: str, max_len: int) -> str:
    if not isinstance(value, str) or not pattern.match(value) or len(value) > max_len:
        raise ValueError(f"{name} must be {what} (at most {max_len} characters), got {value!r}")
    return value


def _abs_path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{name} must be an absolute path without spaces, got {value!r}")
    return str(PurePosixPath(value))


def _quantity(name: str, value: Any, cpu: bool) -> tuple[str, Decimal]:
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if match is None or (cpu and match.group(2) not in (None, "m")):
        example = '"500m" or "2"' if cpu else '"512Mi" or "4Gi"'
        raise ValueError(f"{name} must be a Kubernetes quantity such as {example}, got {value!r}")
    try:
        amount = Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{name}: {value!r} is not a number") from exc
    if amount <= 0:
        raise ValueError(f"{name} must be greater than zero, got {value!r}")
    return text, amount


def _validated(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters merged over DEFAULTS, each checked; ValueError names the bad one."""
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}"
        )
    p = {**DEFAULTS, **params}
    out: dict[str, Any] = {}
    image = p["image"]
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        raise ValueError(f"image must be a non-empty image reference, got {image!r}")
    out["image"] = image
    if p["image_pull_policy"] not in ("Always", "IfNotPresent", "Never"):
        raise ValueError(
            "image_pull_policy must be Always, IfNotPresent or Never, "
            f"got {p['image_pull_policy']!r}"
        )
    out["image_pull_policy"] = p["image_pull_policy"]
    out["namespace"] = _str("namespace", p["namespace"], _DNS_LABEL, "a DNS-1123 label", 63)
    out["name_prefix"] = _str("name_prefix", p["name_prefix"], _DNS_LABEL, "a DNS-1123 label", 40)
    for key in ("broker_secret", "metadata_db_secret", "artifacts_pvc"):
        out[key] = _str(key, p[key], _DNS_SUBDOMAIN, "a DNS-1123 subdomain name", 253)
    for key in ("broker_secret_key", "result_backend_secret_key", "metadata_db_secret_key"):
        out[key] = _str(key, p[key], _SECRET_KEY, "a Secret key ([-._a-zA-Z0-9]+)", 253)
    if p["storage_class_name"] is not None:
        _str("storage_class_name", p["storage_class_name"], _DNS_SUBDOMAIN, "a DNS name", 253)
    out["storage_class_name"] = p["storage_class_name"]
    out["artifacts_storage"], _ = _quantity("artifacts_storage", p["artifacts_storage"], False)
    for key in ("replicas", "worker_concurrency", "perf_nodes"):
        out[key] = _int(key, p[key], 1)
    out["termination_grace_period_seconds"] = _int(
        "termination_grace_period_seconds", p["termination_grace_period_seconds"], 1
    )
    out["run_as_user"] = _int("run_as_user", p["run_as_user"], 1)  # runAsNonRoot: never uid 0
    out["run_as_group"] = _int("run_as_group", p["run_as_group"], 0)
    for kind in ("cpu", "memory"):
        request, low = _quantity(f"{kind}_request", p[f"{kind}_request"], kind == "cpu")
        limit, high = _quantity(f"{kind}_limit", p[f"{kind}_limit"], kind == "cpu")
        if low > high:
            raise ValueError(f"{kind}_request ({request}) must not exceed {kind}_limit ({limit})")
        out[f"{kind}_request"], out[f"{kind}_limit"] = request, limit
    for key in ("artifacts_mount_path", "airflow_home", "dags_folder"):
        out[key] = _abs_path(key, p[key])
    home = PurePosixPath(out["airflow_home"])
    for key in ("artifacts_mount_path", "dags_folder"):
        path = PurePosixPath(out[key])
        if path == home or home in path.parents or path.is_relative_to("/tmp"):
            raise ValueError(
                f"{key} ({path}) must not be inside airflow_home ({home}) or /tmp: "
                "those are emptyDir volumes"
            )
    url = p["execution_api_server_url"]
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
        raise ValueError(f"execution_api_server_url must be an http(s) URL, got {url!r}")
    out["execution_api_server_url"] = url
    out["pool_name"] = _str("pool_name", p["pool_name"], _PLAIN_NAME, "[A-Za-z0-9_.-]+", 256)
    out["perf_queue"] = _str("perf_queue", p["perf_queue"], _PLAIN_NAME, "[A-Za-z0-9_.-]+", 200)
    if out["perf_queue"] == "default":
        raise ValueError("perf_queue must not be 'default': the general workers serve that queue")
    selector = p["perf_node_selector"]
    if not isinstance(selector, Mapping) or not selector:
        raise ValueError(f"perf_node_selector must be a non-empty mapping, got {selector!r}")
    for key, value in selector.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key) or len(key) > 316:
            raise ValueError(f"perf_node_selector: {key!r} is not a valid label key")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError(f"perf_node_selector[{key!r}]: {value!r} is not a valid label value")
    out["perf_node_selector"] = dict(selector)
    return out


def _role_context(params: dict[str, Any], role: str | None) -> dict[str, Any]:
    if role == "worker":
        extra = {
            "component": "worker",
            "deployment_name": f"{params['name_prefix']}-worker",
            "worker_replicas": params["replicas"],
            "concurrency": params["worker_concurrency"],
            "queues": None,  # the default queue
            "perf": False,
        }
    elif role == "perf-worker":
        extra = {
            "component": "perf-worker",
            "deployment_name": f"{params['name_prefix']}-perf-worker",
            "worker_replicas": params["perf_nodes"],  # one per dedicated node
            "concurrency": 1,  # one perf task per node
            "queues": params["perf_queue"],
            "perf": True,
        }
    else:
        extra = {}
    return {**params, **extra}


def render_k8s(out_dir: str | os.PathLike[str], **params: Any) -> list[Path]:
    """Render every template of include/k8s/ into `out_dir`; returns the files written.

    Parameters (see DEFAULTS) include image, namespace, replicas, broker_secret,
    metadata_db_secret, artifacts_pvc, worker_concurrency, cpu/memory requests and limits,
    pool_name and perf_nodes (the perf pool's slots). All are checked before anything is
    written: a bad one raises ValueError naming it. Files are written atomically.
    """
    from pipeline.package.docs import render

    checked = _validated(params)
    rendered: dict[str, str] = {}
    for name, (template, role) in OUTPUTS.items():
        text = render(template, _role_context(checked, role), templates_dir=K8S_TEMPLATES_DIR)
        if name.endswith(".json"):
            text = json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
        rendered[name] = text
    root = Path(out_dir)
    return [atomic_write_text(root / name, text) for name, text in rendered.items()]


def validate_k8s(
    out_dir: str | os.PathLike[str], kubernetes_version: str = "1.31.0"
) -> tuple[str, ...]:
    """Validate the manifests render_k8s wrote in `out_dir` with the package's strict
    kubernetes-validate check; returns the files that passed, raises
    pipeline.package.ManifestValidationError naming each failing (or missing) file."""
    from pipeline.package.validate import validate_manifests

    root = Path(out_dir)
    return validate_manifests(
        [root / name for name in OUTPUTS if name.endswith(".yaml")], kubernetes_version
    )
