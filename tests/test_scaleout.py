"""pipeline.scaleout: the Kubernetes manifests for relcert's Airflow workers, validated with
the real kubernetes-validate (strict), and pools.json for the perf pool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.package import ManifestValidationError
from pipeline.scaleout import DEFAULTS, OUTPUTS, render_k8s, validate_k8s

pytestmark = pytest.mark.unit

CUSTOM = {
    "image": "registry.example.com/relcert/airflow:3.3.2-r7",
    "namespace": "certify",
    "replicas": 5,
    "broker_secret": "celery-broker",
    "metadata_db_secret": "airflow-pg",
    "artifacts_pvc": "shared-artifacts",
    "worker_concurrency": 8,
    "cpu_request": "500m",
    "cpu_limit": 3,
    "memory_request": "1536Mi",
    "memory_limit": "6Gi",
    "pool_name": "perf_isolated",
    "perf_nodes": 3,
    "storage_class_name": "nfs-client",
    "termination_grace_period_seconds": 7200,
}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _worker(out: Path, name: str = "celery-worker-deployment.yaml") -> tuple[dict, dict, dict]:
    deployment = _load(out / name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


@pytest.fixture(scope="module")
def defaults_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s-defaults")
    written = render_k8s(out)
    assert sorted(p.name for p in written) == sorted(OUTPUTS)
    return out


@pytest.fixture(scope="module")
def custom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s-custom")
    render_k8s(out, **CUSTOM)
    return out


@pytest.mark.parametrize("which", ["defaults_dir", "custom_dir"])
def test_every_manifest_passes_strict_validation(which: str, request: pytest.FixtureRequest):
    out = request.getfixturevalue(which)
    passed = validate_k8s(out)
    assert sorted(Path(p).name for p in passed) == sorted(n for n in OUTPUTS if n.endswith("yaml"))
    assert validate_k8s(out, kubernetes_version="1.33")  # another bundled version


def test_validation_is_strict_and_names_the_file(tmp_path: Path):
    render_k8s(tmp_path)
    target = tmp_path / "celery-worker-deployment.yaml"
    doc = _load(target)
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["noSuchField"] = True
    target.write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestValidationError) as info:
        validate_k8s(tmp_path)
    assert "celery-worker-deployment.yaml" in str(info.value)
    assert "noSuchField" in str(info.value)


def test_worker_deployment_defaults(defaults_dir: Path):
    deployment, pod, container = _worker(defaults_dir)
    assert deployment["metadata"]["namespace"] == DEFAULTS["namespace"]
    assert deployment["spec"]["replicas"] == DEFAULTS["replicas"]
    assert container["image"] == DEFAULTS["image"]
    # airflow celery worker, Celery node name from the pod name (downward API)
    assert container["command"] == ["airflow"]
    args = container["args"]
    assert args[:2] == ["celery", "worker"]
    assert args[args.index("--celery-hostname") + 1] == "$(POD_NAME)"
    assert args[args.index("--concurrency") + 1] == str(DEFAULTS["worker_concurrency"])
    assert "--queues" not in args  # the general workers serve the default queue
    env = _env(container)
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["AIRFLOW__CORE__EXECUTOR"]["value"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]["value"] == "4"
    # secrets only through secretKeyRef, never inline
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"] == {
        "name": DEFAULTS["metadata_db_secret"],
        "key": DEFAULTS["metadata_db_secret_key"],
    }
    for var, key in (
        ("AIRFLOW__CELERY__BROKER_URL", "broker_secret_key"),
        ("AIRFLOW__CELERY__RESULT_BACKEND", "result_backend_secret_key"),
    ):
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"] == {
            "name": DEFAULTS["broker_secret"],
            "key": DEFAULTS[key],
        }
    # the shared artifacts PVC, mounted where RELCERT_ARTIFACTS points
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == DEFAULTS["artifacts_pvc"]
    assert mounts["artifacts"] == env["RELCERT_ARTIFACTS"]["value"]
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert mounts["airflow-home"] == env["AIRFLOW_HOME"]["value"]
    assert "emptyDir" in volumes["airflow-home"]
    # restricted security context
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # resources, liveness, graceful shutdown
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "4", "memory": "8Gi"},
    }
    probe = " ".join(container["livenessProbe"]["exec"]["command"])
    assert "celery_executor.app" in probe and "inspect ping" in probe
    assert "celery@${POD_NAME}" in probe
    assert pod["terminationGracePeriodSeconds"] == DEFAULTS["termination_grace_period_seconds"]


def test_custom_params_reach_the_manifests(custom_dir: Path):
    deployment, pod, container = _worker(custom_dir)
    assert deployment["metadata"]["namespace"] == "certify"
    assert deployment["spec"]["replicas"] == 5
    assert container["image"] == CUSTOM["image"]
    assert container["args"][container["args"].index("--concurrency") + 1] == "8"
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1536Mi"},
        "limits": {"cpu": "3", "memory": "6Gi"},
    }
    env = _env(container)
    assert env["AIRFLOW__CELERY__BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
        "celery-broker"
    )
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"]["name"] == (
        "airflow-pg"
    )
    assert env["RELCERT_PERF_POOL"]["value"] == "perf_isolated"
    # the DAG routes load/stress/infra to the queue the perf workers serve
    assert env["RELCERT_PERF_QUEUE"]["value"] == CUSTOM.get("perf_queue", DEFAULTS["perf_queue"])
    claim = {v["name"]: v for v in pod["volumes"]}["artifacts"]["persistentVolumeClaim"]
    assert claim["claimName"] == "shared-artifacts"
    assert pod["terminationGracePeriodSeconds"] == 7200

    pvc = _load(custom_dir / "artifacts-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["name"] == "shared-artifacts"
    assert pvc["metadata"]["namespace"] == "certify"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "nfs-client"


def test_pvc_defaults_to_the_cluster_storage_class(defaults_dir: Path):
    pvc = _load(defaults_dir / "artifacts-pvc.yaml")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == DEFAULTS["artifacts_storage"]
    assert "storageClassName" not in pvc["spec"]


def test_perf_workers_one_per_dedicated_node(custom_dir: Path):
    deployment, pod, container = _worker(custom_dir, "celery-perf-worker-deployment.yaml")
    assert deployment["spec"]["replicas"] == 3  # perf_nodes
    args = container["args"]
    assert args[args.index("--concurrency") + 1] == "1"
    assert args[args.index("--queues") + 1] == DEFAULTS["perf_queue"]
    assert args[args.index("--celery-hostname") + 1] == "$(POD_NAME)"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["nodeSelector"] == DEFAULTS["perf_node_selector"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_pod_template_for_kubernetes_executor(custom_dir: Path):
    pod = _load(custom_dir / "kubernetes-executor-pod-template.yaml")
    assert pod["kind"] == "Pod"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "base"
    assert container["image"] == CUSTOM["image"]
    env = _env(container)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]["valueFrom"]["secretKeyRef"]["name"] == (
        "airflow-pg"
    )
    assert (
        env["RELCERT_ARTIFACTS"]["value"]
        == {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["artifacts"]
    )
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("which", "pool", "slots"),
    [
        ("defaults_dir", "relcert_perf", 1),
        ("custom_dir", "perf_isolated", 3),
    ],
)
def test_pools_json(which: str, pool: str, slots: int, request: pytest.FixtureRequest):
    pools = json.loads((request.getfixturevalue(which) / "pools.json").read_text())
    assert list(pools) == [pool]
    assert pools[pool]["slots"] == slots
    assert pools[pool]["include_deferred"] is False
    assert isinstance(pools[pool]["description"], str)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": "3"}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"worker_concurrency": -1}, "worker_concurrency"),
        ({"perf_nodes": 0}, "perf_nodes"),
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"broker_secret": "no spaces"}, "broker_secret"),
        ({"metadata_db_secret": ""}, "metadata_db_secret"),
        ({"artifacts_pvc": "UPPER"}, "artifacts_pvc"),
        ({"image": ""}, "image"),
        ({"cpu_request": "two"}, "cpu_request"),
        ({"cpu_limit": "2Gi"}, "cpu_limit"),
        ({"memory_limit": "8 GB"}, "memory_limit"),
        ({"memory_request": "16Gi", "memory_limit": "8Gi"}, "memory_request"),
        ({"cpu_request": "4", "cpu_limit": "1500m"}, "cpu_request"),
        ({"pool_name": "perf pool"}, "pool_name"),
        ({"termination_grace_period_seconds": 0}, "termination_grace_period_seconds"),
        ({"artifacts_mount_path": "/opt/airflow/artifacts"}, "artifacts_mount_path"),
        ({"execution_api_server_url": "api:8080"}, "execution_api_server_url"),
        ({"replica": 2}, "replica"),
    ],
)
def test_bad_params_raise_value_error_naming_them(tmp_path: Path, params: dict, named: str):
    with pytest.raises(ValueError, match=named):
        render_k8s(tmp_path, **params)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_rerender_replaces_files_atomically(tmp_path: Path):
    render_k8s(tmp_path, replicas=1)
    render_k8s(tmp_path, replicas=7)
    deployment = _load(tmp_path / "celery-worker-deployment.yaml")
    assert deployment["spec"]["replicas"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)  # no temp files left


def test_pipeline_scaleout_never_imports_airflow():
    code = (
        "import sys, tempfile, pipeline.scaleout as s; d = tempfile.mkdtemp(); "
        "s.render_k8s(d); s.validate_k8s(d); "
        "print(any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
