"""The deployment package: refused unless approved, complete, valid, verifiable, reproducible."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.package import (
    ManifestValidationError,
    PackageError,
    PackageRefused,
    build_package,
    validate_manifests,
)
from pipeline.targets import load_targets
from tests.package.conftest import extract, make_run, smoke_against_the_service

pytestmark = pytest.mark.unit

KUBERNETES_VERSION = "1.31.0"
VERSION = "1.0.20260115"
TOP = f"relcert-service-{VERSION}"

COMPONENTS = [
    "kubernetes/deployment.yaml",
    "kubernetes/service.yaml",
    "kubernetes/hpa.yaml",
    "kubernetes/pvc.yaml",
    "kubernetes/pdb.yaml",
    "kubernetes/configmap.yaml",
    "kubernetes/kustomization.yaml",
    "monitoring/prometheus-rule.yaml",
    "monitoring/servicemonitor.yaml",
    "monitoring/grafana-dashboard.json",
    "config/service.env",
    "config/service.json",
    "Dockerfile",
    "requirements.txt",
    "docs/deployment_guide.md",
    "docs/runbook.md",
    "validation/smoke_test.py",
    "validation/golden.json",
    "models/model_info.json",
    "models/quality_predictor.onnx",
    "models/routing_classifier.onnx",
    "models/SHA256SUMS",
    "performance_certification_report.json",
    "deployment_checklist.md",
    "SHA256SUMS",
    "src/pipeline/__init__.py",
]


@pytest.fixture(scope="module")
def package(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """One package built from an approved run, and its unzipped copy (read-only)."""
    root = tmp_path_factory.mktemp("package")
    run = make_run(root / "run", built_models)
    result = build_package(run, kubernetes_version=KUBERNETES_VERSION)
    return run, result, extract(result.path, root / "unzipped")


def _yaml(top: Path, name: str) -> dict:
    return yaml.safe_load((top / name).read_text())


def _thresholds(rule: dict) -> dict[str, tuple[float, float]]:
    """target name -> (threshold annotation, number compared in the expression)."""
    out = {}
    for alert in rule["spec"]["groups"][0]["rules"]:
        name = alert["annotations"]["target"]
        literal = re.search(r"(?:[<>]|==)\s*([0-9.e+-]+)", alert["expr"]).group(1)
        out[name] = (float(alert["annotations"]["threshold"]), float(literal))
    return out


# ----------------------------------------------------------------------------- decision
@pytest.mark.parametrize("decision", ["NOT_APPROVED", "PENDING", None])
def test_no_package_unless_approved(run_dir: Path, decision) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    report["decision"] = decision
    (run_dir / "report.json").write_text(json.dumps(report))
    with pytest.raises(PackageRefused) as caught:
        build_package(run_dir)
    assert caught.value.decision == decision
    assert not (run_dir / "package").exists()


def test_conditional_approval_builds_and_says_so(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    report["decision"] = "CONDITIONAL_APPROVAL"
    result = build_package(run_dir, report=report)
    with zipfile.ZipFile(result.path) as archive:
        guide = archive.read(f"{TOP}/docs/deployment_guide.md").decode()
        cert = json.loads(archive.read(f"{TOP}/performance_certification_report.json"))
    assert "Conditional approval" in guide
    assert cert["decision"] == "CONDITIONAL_APPROVAL"


def test_missing_report_is_an_error_naming_it(built_models: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", built_models)
    (run / "report.json").unlink()
    with pytest.raises(PackageError, match=r"report\.json is missing"):
        build_package(run)


# ----------------------------------------------------------------------------- contents
def test_package_holds_every_component(package) -> None:
    run, result, _ = package
    assert result.path == run.resolve() / "package" / f"{TOP}.zip"
    assert result.version == VERSION
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    with zipfile.ZipFile(result.path) as archive:
        names = archive.namelist()
    assert tuple(names) == result.files
    for component in COMPONENTS:
        assert f"{TOP}/{component}" in names, component
    assert all(name.startswith(f"{TOP}/") for name in names)
    # only the run's zip is left behind: no unzipped tree, no temporary files
    assert sorted(p.name for p in (run / "package").iterdir()) == [f"{TOP}.zip"]


def test_deployment_is_the_certified_shape(package) -> None:
    _, _, top = package
    deployment = _yaml(top, "kubernetes/deployment.yaml")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["metadata"]["name"] == "relcert-service"
    assert spec["replicas"] == 3
    assert container["image"] == f"relcert-service:{VERSION}"
    assert container["ports"][0]["containerPort"] == 8000
    assert container["envFrom"] == [{"configMapRef": {"name": "relcert-service-config"}}]
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert (ready["httpGet"]["path"], ready["initialDelaySeconds"], ready["periodSeconds"]) == (
        "/health/ready",
        30,
        10,
    )
    assert (live["httpGet"]["path"], live["initialDelaySeconds"], live["periodSeconds"]) == (
        "/health/live",
        60,
        30,
    )
    assert container["resources"] == {
        "requests": {"memory": "1Gi", "cpu": "500m"},
        "limits": {"memory": "2Gi", "cpu": "1500m"},
    }
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and "/tmp" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "relcert-models-pvc"
    assert "emptyDir" in volumes["tmp"]

    service = _yaml(top, "kubernetes/service.yaml")
    assert service["spec"]["type"] == "ClusterIP"
    assert (service["spec"]["ports"][0]["port"], service["spec"]["ports"][0]["targetPort"]) == (
        80,
        8000,
    )
    hpa = _yaml(top, "kubernetes/hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    utilisation = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert utilisation == {"cpu": 70, "memory": 80}
    assert _yaml(top, "kubernetes/pdb.yaml")["spec"]["minAvailable"] == 2
    assert _yaml(top, "kubernetes/pvc.yaml")["metadata"]["name"] == "relcert-models-pvc"
    kustomization = _yaml(top, "kubernetes/kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in (top / "kubernetes").iterdir() if p.name != "kustomization.yaml"
    )


def test_service_config_is_the_default_engine_settings(package) -> None:
    _, _, top = package
    data = _yaml(top, "kubernetes/configmap.yaml")["data"]
    assert data["MODEL_DIR"] == "/models"
    assert data["MODEL_FORMAT"] == "onnx"
    assert (data["MAX_BATCH_SIZE"], data["BATCH_TIMEOUT_MS"], data["MAX_QUEUE"]) == (
        "32",
        "0",
        "1024",
    )
    assert (data["POOL_MB"], data["CACHE_ENTRIES"]) == ("400", "10000")
    env = dict(
        line.split("=", 1)
        for line in (top / "config/service.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env == data
    assert json.loads((top / "config/service.json").read_text())["env"] == data


def _pins(requirements: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a hashed requirements file."""
    logical = requirements.replace("\\\n", " ").splitlines()
    out = {}
    for line in logical:
        if not line.strip() or line.startswith("#"):
            continue
        pin, *hashes = line.split()
        name, version = pin.split("==")
        out[name.lower().replace("_", "-")] = (version, [h.removeprefix("--hash=") for h in hashes])
    return out


def test_dockerfile_and_requirements(package) -> None:
    _, _, top = package
    dockerfile = (top / "Dockerfile").read_text()
    assert dockerfile.startswith("#")
    # the base is a build argument whose default is pinned by digest, never a floating tag
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, flags=re.M).group(1)
    assert re.fullmatch(r"docker\.io/library/python:3\.11-slim\S*@sha256:[0-9a-f]{64}", base)
    assert [line for line in dockerfile.splitlines() if line.startswith("FROM")] == [
        "FROM ${BASE_IMAGE}"
    ]
    install = re.search(
        r"^RUN --mount=type=bind,source=wheels.*?-r (\S+)$", dockerfile, re.M | re.S
    )
    assert install and install.group(1) == "/app/requirements.txt"
    assert "--require-hashes" in install.group(0) and "--no-index" in install.group(0)
    assert "USER 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health/live" in dockerfile
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", dockerfile, flags=re.M).group(1))
    assert entrypoint[:5] == ["python", "-m", "pipeline.serve", "--model-dir", "/models"]
    assert entrypoint[entrypoint.index("--port") + 1] == "8000"
    assert entrypoint[entrypoint.index("--host") + 1] == "0.0.0.0"  # reachable by probes
    constraints = (Path(__file__).parents[2] / "constraints.txt").read_text()
    locked = {
        name.lower().replace("_", "-"): version
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", constraints, re.M)
    }
    pins = _pins((top / "requirements.txt").read_text())
    for name, (version, hashes) in pins.items():
        assert locked[name] == version, name  # the version of constraints.txt
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    # the service's packages and what they need, down to the leaves; no torch for ONNX
    assert {"numpy", "onnxruntime", "starlette", "uvicorn", "prometheus-client"} <= set(pins)
    assert {"uvloop", "httptools", "psutil", "pyyaml"} <= set(pins)
    assert {"anyio", "h11", "click", "protobuf", "flatbuffers", "idna"} <= set(pins)
    assert "torch" not in pins
    assert not (top / "wheels").exists()  # the wheelhouse ships with --image only


def test_service_locks_are_the_closure_of_constraints(tmp_path: Path) -> None:
    from pipeline.package.requirements import MODEL_FORMATS, service_closure, service_lock_path

    for fmt in MODEL_FORMATS:
        closure = {p.name.lower().replace("_", "-"): p.version for p in service_closure(fmt)}
        lock = _pins(service_lock_path(fmt).read_text())
        assert {name: version for name, (version, _) in lock.items()} == closure, (
            f"{service_lock_path(fmt)} disagrees with constraints.txt: "
            "run .venv/bin/python scripts/service_locks.py"
        )
    assert "torch" in _pins(service_lock_path("torchscript").read_text())


def test_docs_are_generated_from_the_run(package) -> None:
    run, _, top = package
    info = json.loads((run / "models/model_info.json").read_text())
    guide = (top / "docs/deployment_guide.md").read_text()
    for entry in info.values():
        assert entry["files"]["onnx"]["sha256"] in guide
        assert entry["version"] in guide
    assert "APPROVED" in guide and "115 ms" in guide and "MAX_BATCH_SIZE=32" in guide
    runbook = (top / "docs/runbook.md").read_text().lower()
    for topic in (
        "health checks",
        "horizontal scaling",
        "vertical scaling",
        "high latency",
        "warm-up",
        "batch sizes",
        "pool utilisation",
        "cleanup",
        "model loading",
        "model reload",
        "pod restart",
        "cache clearing",
    ):
        assert topic in runbook, topic
    checklist = (top / "deployment_checklist.md").read_text()
    steps = ("build --format docker", "sha256sum -c", "kubectl apply -k", "smoke_test.py")
    steps += ("rollout undo",)
    assert "pip download --no-deps --only-binary=:all: --require-hashes" in guide
    for step in steps:
        assert step in checklist, step
    cert = json.loads((top / "performance_certification_report.json").read_text())
    assert cert["decision"] == "APPROVED" and cert["readiness_score"] == 1.0
    assert cert["certified_figures"]["latency"][1]["threshold"] == 115.0
    assert cert["recommendations"][1] == "Scale out before the queue grows (HPA on CPU 70%)."
    assert "{{" not in guide and "{{" not in runbook  # every template value was filled in


# ----------------------------------------------------------------------------- validation
def test_every_manifest_passes_kubernetes_validate_strict(package) -> None:
    _, result, top = package
    core = sorted((top / "kubernetes").glob("*.yaml"))
    # monitoring/rules.yaml is a plain Prometheus rules file: promtool checks it (test_alerts)
    crds = sorted(p for p in (top / "monitoring").glob("*.yaml") if p.name != "rules.yaml")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            *map(str, core + crds),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "ERROR" not in completed.stdout
    for file in core:
        if file.name != "kustomization.yaml":
            assert re.search(rf"INFO \S*{file.name} passed", completed.stdout), file.name
    assert len(result.manifests_validated) == len(core) + len(crds)
    assert set(validate_manifests(result.path, KUBERNETES_VERSION)) == set(
        result.manifests_validated
    )


def test_validate_manifests_names_the_failing_file(tmp_path: Path, package) -> None:
    _, _, top = package
    deployment = _yaml(top, "kubernetes/deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolic"] = "Always"
    bad = tmp_path / "bad-deployment.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    rule = _yaml(top, "monitoring/prometheus-rule.yaml")
    del rule["spec"]
    bad_rule = tmp_path / "bad-rule.yaml"
    bad_rule.write_text(yaml.safe_dump(rule))
    with pytest.raises(ManifestValidationError) as caught:
        validate_manifests([bad, bad_rule, top / "kubernetes/service.yaml"], KUBERNETES_VERSION)
    messages = caught.value.messages
    assert any("bad-deployment.yaml" in m and "imagePullPolic" in m for m in messages)
    assert any("bad-rule.yaml" in m and "spec" in m for m in messages)
    assert not any("service.yaml" in m for m in messages)
    with pytest.raises(ManifestValidationError, match="not supported"):
        validate_manifests(top / "kubernetes", "1.10")
    assert len(validate_manifests(top / "kubernetes", KUBERNETES_VERSION)) == 7
    assert len(validate_manifests(top, "1.37.0")) == 9  # the newest bundled schemas too


# ----------------------------------------------------------------------------- checksums
def test_sha256sums_verify_every_file(package) -> None:
    run, _, top = package
    files = {p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    listed = {}
    for line in (top / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((top / name).read_bytes()).hexdigest() == digest, name
    info = json.loads((run / "models/model_info.json").read_text())
    for line in (top / "models/SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((top / "models" / name).read_bytes()).hexdigest() == digest
        model = name.rsplit(".", 1)[0]
        if model in info:
            assert info[model]["files"]["onnx"]["sha256"] == digest
    assert (top / "models/model_info.json").read_bytes() == (
        run / "models/model_info.json"
    ).read_bytes()


def test_tampered_model_is_refused(run_dir: Path) -> None:
    model = run_dir / "models" / "routing_classifier.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(PackageError, match=r"routing_classifier\.onnx: sha256"):
        build_package(run_dir)


# ----------------------------------------------------------------------------- reproducible
def test_building_twice_gives_identical_bytes(built_models: Path, tmp_path: Path, package):
    _, first, _ = package
    run = make_run(tmp_path / "other-run", built_models)
    again = build_package(run, kubernetes_version=KUBERNETES_VERSION)
    assert again.path.read_bytes() == first.path.read_bytes()
    assert again.sha256 == first.sha256
    mtime = again.path.stat().st_mtime_ns
    third = build_package(run, kubernetes_version=KUBERNETES_VERSION)
    assert third.path.read_bytes() == again.path.read_bytes()
    assert third.path.stat().st_mtime_ns == mtime  # identical bytes: left as it was
    # once the report names its package (report.set_package, as the DAG's
    # deployment_package task does), a retried task builds the same bytes again
    report = json.loads((run / "report.json").read_text())
    report["package"] = third.path.relative_to(run).as_posix()
    (run / "report.json").write_text(json.dumps(report, indent=2))
    assert build_package(run, kubernetes_version=KUBERNETES_VERSION).sha256 == third.sha256
    with zipfile.ZipFile(third.path) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(2026, 1, 15, 0, 0, 0)}
    assert {i.extra for i in infos} == {b""}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_DEFLATED}
    modes = {i.filename.split("/", 1)[1]: (i.external_attr >> 16) & 0o777 for i in infos}
    assert modes.pop("validation/smoke_test.py") == 0o755
    assert set(modes.values()) == {0o644}


def test_a_second_run_does_not_touch_the_first(
    built_models: Path, built_models_other_date: Path, tmp_path: Path
) -> None:
    first_run = make_run(tmp_path / "run-a", built_models)
    first = build_package(first_run)
    before = (first.path.read_bytes(), first.path.stat().st_mtime_ns)
    second_run = make_run(tmp_path / "run-b", built_models_other_date)
    second = build_package(second_run)
    assert second.path.parent == second_run.resolve() / "package"
    assert second.version != first.version and second.sha256 != first.sha256
    assert (first.path.read_bytes(), first.path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (first_run / "package").iterdir()) == [first.path.name]
    with pytest.raises(PackageError, match="outside the run folder"):
        build_package(second_run, out_dir=first_run / "package")
    with pytest.raises(PackageError, match="outside the run folder"):
        build_package(second_run, out_dir=second_run / ".." / "elsewhere")
    assert (first.path.read_bytes(), first.path.stat().st_mtime_ns) == before
    assert not (tmp_path / "elsewhere").exists()


def test_version_is_sanitised_for_labels_only(run_dir: Path) -> None:
    result = build_package(run_dir, version="2.0.0+Build_7")
    assert result.path.name == "relcert-service-2.0.0+Build_7.zip"
    with zipfile.ZipFile(result.path) as archive:
        deployment = yaml.safe_load(
            archive.read("relcert-service-2.0.0+Build_7/kubernetes/deployment.yaml")
        )
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == "2.0.0-Build_7"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "relcert-service:2.0.0-Build_7"
    )
    with pytest.raises(PackageError, match="cannot name a package file"):
        build_package(run_dir, version="../../escape")


# ----------------------------------------------------------------------------- monitoring
def test_alert_thresholds_are_the_targets_thresholds(package, run_dir: Path) -> None:
    _, _, top = package
    targets = load_targets()
    found = _thresholds(_yaml(top, "monitoring/prometheus-rule.yaml"))
    monitored = (
        "average_inference_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "error_rate",
        "memory_usage_mb",
        "sustained_throughput_rps",
        "cache_hit_rate",
    )
    for name in monitored:
        threshold = targets[name].threshold
        assert found[name] == (threshold, threshold), name  # memory compared in MB
    assert found["p95_latency_ms"][0] == 115 and found["error_rate"][0] == 0.015
    rule = _yaml(top, "monitoring/prometheus-rule.yaml")
    for alert in rule["spec"]["groups"][0]["rules"]:
        if alert["annotations"]["target"] in monitored:
            assert alert["annotations"]["target"] in alert["annotations"]["description"]
    p95 = next(r for r in rule["spec"]["groups"][0]["rules"] if r["alert"].startswith("RelcertP95"))
    assert "histogram_quantile(0.95," in p95["expr"]
    assert "relcert_request_latency_ms_bucket[5m]" in p95["expr"]

    stricter = targets.with_overrides(
        {"p95_latency_ms": 80, "error_rate": 0.005, "memory_usage_mb": 400, "cache_hit_rate": 0.8}
    )
    result = build_package(run_dir, targets=stricter)
    with zipfile.ZipFile(result.path) as archive:
        rule = yaml.safe_load(archive.read(f"{TOP}/monitoring/prometheus-rule.yaml"))
        dashboard = json.loads(archive.read(f"{TOP}/monitoring/grafana-dashboard.json"))
    found = _thresholds(rule)
    assert found["p95_latency_ms"] == (92.0, 92.0)
    assert found["error_rate"] == (0.0075, 0.0075)
    assert found["memory_usage_mb"] == (420.0, 420.0)
    assert found["cache_hit_rate"] == (0.68, 0.68)
    assert found["p99_latency_ms"] == (360.0, 360.0)  # not overridden
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "relcert_request_latency_ms_bucket",
        "relcert_requests_total",
        "relcert_engine_cache_hits_total",
        "relcert_memory_rss_bytes",
        "relcert_queue_depth",
    ):
        assert metric in exprs, metric
    latency = next(p for p in dashboard["panels"] if "latency" in p["title"].lower())
    assert latency["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 92.0


def test_service_monitor_scrapes_the_service(package) -> None:
    _, _, top = package
    monitor = _yaml(top, "monitoring/servicemonitor.yaml")
    service = _yaml(top, "kubernetes/service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


# ----------------------------------------------------------------------------- settings
def test_engine_settings_come_from_the_load_stage(run_dir: Path) -> None:
    load = run_dir / "stages" / "load"
    load.mkdir(parents=True)
    engine_config = {
        "models": ["quality_predictor_torchscript", "routing_classifier_torchscript"],
        "max_batch_size": 16,
        "batch_timeout_ms": 2.5,
        "max_queue_size": 512,
        "pool_mb": 300.0,
        "cache_entries": 5000,
        "max_memory_mb": 500.0,
    }
    (load / "summary.json").write_text(json.dumps({"engine_config": engine_config}))
    result = build_package(run_dir)
    with zipfile.ZipFile(result.path) as archive:
        data = yaml.safe_load(archive.read(f"{TOP}/kubernetes/configmap.yaml"))["data"]
        requirements = archive.read(f"{TOP}/requirements.txt").decode()
        names = archive.namelist()
        golden = json.loads(archive.read(f"{TOP}/validation/golden.json"))
    assert data["MODEL_FORMAT"] == "torchscript"
    assert (data["MAX_BATCH_SIZE"], data["BATCH_TIMEOUT_MS"], data["MAX_QUEUE"]) == (
        "16",
        "2.5",
        "512",
    )
    assert (data["POOL_MB"], data["CACHE_ENTRIES"]) == ("300", "5000")
    assert _pins(requirements)["torch"][0] == "2.13.0"
    assert f"{TOP}/models/quality_predictor.pt" in names
    assert f"{TOP}/models/quality_predictor.onnx" not in names
    assert golden["model_format"] == "torchscript"

    with pytest.raises(PackageError, match="unknown engine setting"):
        build_package(run_dir, engine_settings={"max_batch": 8})
    with pytest.raises(PackageError, match="max_batch_size must be an integer >= 1"):
        build_package(run_dir, engine_settings={"max_batch_size": 0})


# ----------------------------------------------------------------------------- golden + smoke
def test_golden_answers_match_the_in_process_engine(package) -> None:
    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager
    from tests.inference.helpers import run

    _, _, top = package
    golden = json.loads((top / "validation/golden.json").read_text())
    assert golden["tolerance"] == 1e-4
    assert {c["model"] for c in golden["cases"]} == {"quality_predictor", "routing_classifier"}
    named = [c for c in golden["cases"] if c.get("protocol") != "v2"]
    protocol = [c for c in golden["cases"] if c.get("protocol") == "v2"]
    assert len(named) == len(protocol) == 10  # every model through /v2, the examples named too
    manager = ProductionModelManager(top / "models", warmup_enabled=False, strict=True)
    engine = ProductionInferenceEngine(manager)

    async def answer(model, row):
        result = await engine.predict(f"{model}_onnx", row)
        assert result.success, result.error
        return result

    info = json.loads((top / "models/model_info.json").read_text())
    for case in protocol:
        tensor = case["request"]["inputs"][0]
        assert case["endpoint"] == f"/v2/models/{case['model']}/infer"
        assert tensor["name"] == "features" and tensor["datatype"] == "FP32"
        assert tensor["shape"] == [1, len(info[case["model"]]["feature_names"])]
        result = run(answer(case["model"], tensor["data"]))
        output = case["expected"]["outputs"][0]
        assert case["expected"]["model_version"] == info[case["model"]]["version"]
        assert output["shape"] == [1, *result.output.shape] and output["datatype"] == "FP32"
        np.testing.assert_allclose(output["data"], result.output.ravel(), atol=1e-6)
    for case in named:
        result = run(answer(case["model"], case["request"]["features"]))
        expected = case["expected"]
        assert expected["model_version"] == result.model_version == info[case["model"]]["version"]
        if case["model"] == "quality_predictor":
            assert case["endpoint"] == "/api/v1/predict/quality"
            assert expected["quality"] == pytest.approx(float(result.output[0]), abs=1e-6)
        else:
            assert case["endpoint"] == "/api/v1/predict/routing"
            probabilities = np.asarray(expected["probabilities"])
            np.testing.assert_allclose(probabilities, result.output, atol=1e-6)
            assert expected["confidence"] == pytest.approx(probabilities.max())
            classes = info["routing_classifier"]["class_names"]
            assert expected["method"] == classes[int(np.argmax(probabilities))]


class _GoldenServer:
    """A tiny stand-in service that answers from golden.json (optionally with a wrong
    model_version)."""

    def __init__(self, golden: dict, model_version: str | None = None) -> None:
        answers = {}
        for case in golden["cases"]:
            answer = dict(case["expected"], latency_ms=0.1)
            if model_version is not None:
                answer["model_version"] = model_version
            answers[(case["endpoint"], json.dumps(case["request"]))] = answer
        for name, model in golden.get("models", {}).items():
            versions = [model_version or model["version"]]
            metadata = {"name": name, "versions": versions, "inputs": [model["input"]]}
            answers[(f"/v2/models/{name}", None)] = metadata

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path in ("/health/ready", "/health/live", "/v2/health/ready"):
                    self._send(200, {"status": "ok"})
                elif (self.path, None) in answers:
                    self._send(200, answers[(self.path, None)])
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                answer = answers.get((self.path, json.dumps(request)))
                if answer is None:
                    self._send(422, {"error": "unknown input"})
                else:
                    self._send(200, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _GoldenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _smoke(top: Path, url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-I", str(top / "validation/smoke_test.py"), "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=top,
    )


def test_smoke_script_passes_against_the_right_answers(package) -> None:
    _, _, top = package
    golden = json.loads((top / "validation/golden.json").read_text())
    with _GoldenServer(golden) as server:
        completed = _smoke(top, server.url)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    # 3 health + 2 model metadata + 10 golden through /v2 + 10 on the named endpoints
    assert sum(line.startswith("PASS  ") for line in lines) == 25
    assert "smoke test PASSED: 25 of 25 checks passed" in lines


def test_smoke_script_fails_on_another_model_version(package) -> None:
    _, _, top = package
    golden = json.loads((top / "validation/golden.json").read_text())
    with _GoldenServer(golden, model_version="0.9.20251201") as server:
        completed = _smoke(top, server.url)
    assert completed.returncode == 1
    assert "model_version is '0.9.20251201'" in completed.stdout
    # the model metadata names the wrong version too
    assert "FAIL  GET /v2/models/quality_predictor: versions are ['0.9.20251201']" in (
        completed.stdout
    )
    assert "smoke test FAILED" in completed.stdout


def test_smoke_script_fails_when_nothing_answers(package) -> None:
    _, _, top = package
    with _GoldenServer({"cases": []}) as server:
        url = server.url
    completed = _smoke(top, url)  # the server is closed: connection refused
    assert completed.returncode == 1
    assert "FAIL  GET /health/ready" in completed.stdout


def test_smoke_script_is_standard_library_only(package) -> None:
    _, _, top = package
    source = (top / "validation/smoke_test.py").read_text()
    imported = set(re.findall(r"^(?:import|from) (\w+)", source, flags=re.M))
    stdlib = {"__future__", "argparse", "json", "math", "pathlib", "sys", "time", "urllib"}
    assert imported <= stdlib


def test_the_service_accepts_the_packaged_configuration(package) -> None:
    import pipeline.serve.settings as settings_module

    _, _, top = package
    env = _yaml(top, "kubernetes/configmap.yaml")["data"]
    settings = settings_module.ServeSettings.from_env(env, model_dir=str(top / "models"))
    assert settings.model_format == env["MODEL_FORMAT"]
    assert settings.engine.max_batch_size == int(env["MAX_BATCH_SIZE"])
    assert settings.engine.max_queue_size == int(env["MAX_QUEUE"])
    assert settings.engine.cache_entries == int(env["CACHE_ENTRIES"])


def test_smoke_script_passes_against_the_real_service(package) -> None:
    _, _, top = package
    completed, errors = smoke_against_the_service(top)
    assert completed.returncode == 0, completed.stdout + errors
    assert "smoke test PASSED: 25 of 25 checks passed" in completed.stdout


_SERVE_AND_LIST_MODULES = """
import json, os, sys, threading, time, urllib.request

def probe(url, out):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    body = json.dumps({"features": [0.5] * 10}).encode()
    request = urllib.request.Request(url + "/api/v1/predict/quality", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=5).read()
    urllib.request.urlopen(url + "/metrics", timeout=5).read()
    with open(out, "w") as handle:
        json.dump(sorted(sys.modules), handle)
    os._exit(0)

model_dir, port, out = sys.argv[1:]
threading.Thread(target=probe, args=(f"http://127.0.0.1:{port}", out), daemon=True).start()
from pipeline.serve.__main__ import main
main(["--model-dir", model_dir, "--port", port, "--format", "onnx"])
"""


def _top_level_modules(*args: str, tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    code = "import json, sys; json.dump(sorted(sys.modules), open(sys.argv[1], 'w'))"
    script = _SERVE_AND_LIST_MODULES if args else code
    command = [sys.executable, "-c", script, *args, str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    return {name.split(".")[0] for name in json.loads(out.read_text())}


#: imported only when installed (uvicorn's optional websockets, reload and WSGI support;
#: starlette's form parsing; anyio's sniffio): the image has none of them, and the image test
#: shows the service runs without them
_USED_WHEN_INSTALLED = {"a2wsgi", "python_multipart", "sniffio", "watchfiles", "websockets"}


def test_the_onnx_lock_holds_everything_the_service_imports(
    built_models: Path, tmp_path: Path
) -> None:
    """The image installs only the lock: every package the running service imports (ONNX
    models loaded, a prediction served, metrics exported) must come from it."""
    import importlib.metadata as metadata

    from pipeline.package.requirements import read_service_lock

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serving = _top_level_modules(str(built_models), str(port), tmp_path=tmp_path)
    imported = serving - _top_level_modules(tmp_path=tmp_path) - set(sys.stdlib_module_names)
    providers = metadata.packages_distributions()
    locked = {r.name.lower().replace("_", "-") for r in read_service_lock("onnx")}
    outside = {
        module: providers[module]
        for module in imported - {"pipeline"} - _USED_WHEN_INSTALLED
        if module in providers  # not e.g. cython_runtime, which no distribution provides
        and not {d.lower().replace("_", "-") for d in providers[module]} & locked
    }
    assert not outside, f"imported by the service but not in the ONNX lock: {outside}"
    assert {"onnxruntime", "uvicorn", "starlette", "numpy"} <= imported
    assert "torch" not in imported
