"""Run folders for the package tests: the built example models plus a report.json."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.targets import Targets, load_targets

#: plausible measurements of a healthy run, one per target of include/targets.yaml
MEASURED = {
    "average_inference_latency_ms": 4.2,
    "p95_latency_ms": 12.5,
    "p99_latency_ms": 31.0,
    "sustained_throughput_rps": 420.0,
    "peak_throughput_rps": 610.0,
    "memory_usage_mb": 182.5,
    "memory_efficiency": 0.94,
    "success_rate": 0.998,
    "error_rate": 0.002,
    "concurrent_users_supported": 46,
    "cache_hit_rate": 0.81,
    "soak_p99_drift_ratio": 1.05,
    "soak_rss_growth_mb": 3.0,
    "soak_error_rate": 0.0,
    "model_initialization_s": 0.42,
    "parity_max_abs_diff": 1.8e-7,
    "routing_endpoint_p99_ms": 6.1,
    "quality_endpoint_p99_ms": 6.4,
    "endpoint_p99_latency_ms": 7.2,
    "validation_endpoint_s": 1.3,
    "availability": 1.0,
}


def make_report(
    models_dir: Path, decision: str = "APPROVED", targets: Targets | None = None
) -> dict[str, Any]:
    """A report.json as pipeline.report writes it, with criteria from the targets."""
    targets = targets or load_targets()
    info = json.loads((models_dir / "model_info.json").read_text())
    criteria = [
        {
            "name": t.name,
            "category": t.category,
            "target": t.target,
            "measured": MEASURED[t.name],
            "met": t.passes(MEASURED[t.name]),
            "evidence": f"stages/certify/criteria.csv#{t.name}",
        }
        for t in targets.values()
    ]
    models = [
        {"name": name, "format": fmt, "version": entry["version"], "sha256": f["sha256"]}
        for name, entry in sorted(info.items())
        for fmt, f in sorted(entry["files"].items())
    ]
    return {
        "decision": decision,
        "readiness_score": 1.0 if decision == "APPROVED" else 0.85,
        "criteria": criteria,
        "gates": {"build": True, "integration": True, "load": True, "certify": True},
        "models": models,
        "risks": [],
        "recommendations": [
            "Keep the result cache sized for the production input mix.",
            {"text": "Scale out before the queue grows (HPA on CPU 70%)."},
        ],
        "package": None,
    }


def make_run(root: Path, models: Path, decision: str = "APPROVED") -> Path:
    """A run folder: models/ copied from `models`, report.json with `decision`."""
    shutil.copytree(models, root / "models")
    report = make_report(root / "models", decision)
    (root / "report.json").write_text(json.dumps(report, indent=2))
    return root


@pytest.fixture
def run_dir(built_models: Path, tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", built_models)


def extract(zip_path: Path, into: Path) -> Path:
    """Unzip a package; returns its top folder."""
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(into)
        top = archive.namelist()[0].split("/")[0]
    return into / top


def smoke_against_the_service(top: Path, wait_s: float = 30.0) -> tuple[Any, str]:
    """Run the unzipped package's validation/smoke_test.py against the real service started
    from its models with its ConfigMap's settings; (the smoke test's process, server log)."""
    config = yaml.safe_load((top / "kubernetes/configmap.yaml").read_text())["data"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "pipeline.serve", "--model-dir", str(top / "models")]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=dict(os.environ, **config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        script = [sys.executable, "-I", str(top / "validation/smoke_test.py")]
        completed = subprocess.run(
            [*script, "--url", f"http://127.0.0.1:{port}", "--wait-s", str(wait_s)],
            capture_output=True,
            text=True,
            timeout=wait_s + 60,
        )
    finally:
        server.terminate()
        try:
            _, errors = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            _, errors = server.communicate()
    return completed, errors
