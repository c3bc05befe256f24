"""Real services on loopback: `python -m pipeline.serve` in a subprocess on a free port.

Each server is started once per module (start-up imports and model loading take a second or
two), polled for readiness with a bound, and always stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0

QUALITY_PATH = "/api/v1/predict/quality"
ROUTING_PATH = "/api/v1/predict/routing"
VALIDATE_PATH = "/api/v1/validate/performance"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self.client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} before it was ready:\n"
                        + self.log()
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health/ready").status_code == 200:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"server not ready within {timeout_s:g} s:\n{self.log()}")

    def wait_listening(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(f"server not listening within {timeout_s:g} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(
    model_dir: Path, log_dir: Path, env: dict[str, str] | None = None, fmt: str = "onnx"
) -> Server:
    """Start `python -m pipeline.serve` (not waiting for readiness)."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    environment = {k: v for k, v in os.environ.items() if k not in {"MODEL_DIR", "MODEL_FORMAT"}}
    environment.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "pipeline.serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--format",
        fmt,
        "--log-level",
        "warning",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    return Server(proc, port, log_path)


@contextlib.contextmanager
def running_server(
    model_dir: Path, log_dir: Path, env: dict[str, str] | None = None, fmt: str = "onnx"
) -> Iterator[Server]:
    server = start_server(model_dir, log_dir, env, fmt)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


#: the bearer token that turns /api/v1/validate/performance on in the test servers
VALIDATE_TOKEN = "relcert-test-validate-token-0123456789"
VALIDATE_AUTH = {"authorization": f"Bearer {VALIDATE_TOKEN}"}

#: settings of the shared server: small limits so caps and 413 are cheap to reach
SHARED_ENV = {
    "MAX_BODY_BYTES": "4096",
    "VALIDATE_MAX_REQUESTS": "300",
    "VALIDATE_MAX_SECONDS": "1.0",
    "VALIDATE_TOKEN": VALIDATE_TOKEN,
    "CACHE_ENTRIES": "0",
}


@pytest.fixture(scope="session")
def server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An ONNX service with small limits, shared by the serve tests (read-only use)."""
    with running_server(built_models, tmp_path_factory.mktemp("serve"), SHARED_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def model_info(model_dir: Path) -> dict:
    import json

    return json.loads((model_dir / "model_info.json").read_text())


def engine_outputs(model_dir: Path, fmt: str, model: str, inputs) -> list:
    """What the in-process engine answers for `inputs` (the reference for the service)."""
    import asyncio

    from pipeline.inference import ProductionInferenceEngine, ProductionModelManager

    manager = ProductionModelManager(model_dir)
    key = f"{model}_{fmt}"
    assert manager.load_model(key), manager.load_errors

    async def run() -> list:
        engine = ProductionInferenceEngine(manager)
        results = [await engine.predict(key, x) for x in inputs]
        assert all(r.success for r in results), [r.error for r in results]
        return [r.output for r in results]

    return asyncio.run(run())


#: how a metric name in a PromQL expression maps to the exposition's family and its type
_SUFFIX_TYPES = (("_bucket", "histogram"), ("_sum", "histogram"), ("_count", "histogram"))


def rule_metrics(rules: dict) -> set[str]:
    """Every relcert_* metric name the expressions of a rules file (`groups:`) use."""
    import re

    return {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(relcert_[a-z_]+)\b", rule["expr"])
    }


def missing_for_rules(families: dict, rules: dict) -> list[str]:
    """What a scraped exposition ({family name: Metric}) lacks for the rules: each metric a
    rule uses must be exported with the type the rule assumes (rate() of a counter,
    histogram_quantile of a histogram's buckets, a gauge compared as it is)."""
    problems = []
    for name in sorted(rule_metrics(rules)):
        family, expected = name, "gauge"
        for suffix, kind in _SUFFIX_TYPES:
            if name.endswith(suffix) and name[: -len(suffix)] in families:
                family, expected = name[: -len(suffix)], kind
        if name.endswith("_total"):
            family, expected = name[: -len("_total")], "counter"
        found = families.get(family)
        if found is None:
            problems.append(f"{name}: not exported")
        elif found.type != expected:
            problems.append(f"{name}: exported as {found.type}, the rules need a {expected}")
    return problems
