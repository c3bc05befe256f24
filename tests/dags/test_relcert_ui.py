"""`relcert ui`: Airflow standalone with the project's DAGs and plugins, reachable and
telling the user how to log in; the Certifications view refuses anonymous requests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline._proc import stop_process_group

pytestmark = pytest.mark.airflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_relcert_ui_starts_airflow_with_the_certifications_view(
    tmp_path: Path, airflow_home: Path
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RELCERT_AIRFLOW_HOME": str(airflow_home),
        "RELCERT_ARTIFACTS": str(tmp_path / "artifacts"),
    }
    log = open(tmp_path / "ui.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        healthy = False
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                    healthy = True
                    break
            time.sleep(2)
        output = (tmp_path / "ui.log").read_text(errors="replace")
        assert healthy, output[-3000:]
        assert f"http://localhost:{port}" in output
        assert "simple_auth_manager_passwords.json.generated" in output
        anonymous = httpx.get(f"{base}/relcert/certifications", timeout=30)
        assert anonymous.status_code == 401
    finally:
        stop_process_group(process, 30)
        log.close()
