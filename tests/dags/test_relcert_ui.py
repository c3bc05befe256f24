"""`relcert ui`: Airflow standalone with the project's DAGs and plugins, reachable from this
machine only (unless told otherwise, with a warning) and telling the user how to log in; the
Certifications view refuses anonymous requests; the metadata DB and the generated admin
password are readable by their owner only."""

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
from pipeline.airflow.local import ui_announcement

pytestmark = pytest.mark.airflow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        with contextlib.suppress(FileNotFoundError), open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    packed = bytes.fromhex(address)
                    if size == 8:
                        found.add(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                    else:
                        words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


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
        assert f"http://127.0.0.1:{port}" in output
        assert "simple_auth_manager_passwords.json.generated" in output
        assert "WARNING" not in output.split("==> the DAG starts paused")[0]
        anonymous = httpx.get(f"{base}/relcert/certifications", timeout=30)
        assert anonymous.status_code == 401
        # this machine only: the API server listens on the loopback address, not on every
        # interface (Airflow's own default, 0.0.0.0)
        assert _listening_addresses(port) == {"127.0.0.1"}
        # the DB, the generated admin password and the folder holding them: owner-only
        home = tmp_path / "airflow"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not passwords.read_text().strip():
            time.sleep(1)  # written by the API server when it starts
        assert "admin" in passwords.read_text()
        for path, mode in ((home, 0o700), (home / "airflow.db", 0o600), (passwords, 0o600)):
            assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    finally:
        stop_process_group(process, 30)
        log.close()


def test_a_ui_reachable_from_other_machines_is_announced_with_a_warning(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    for host in ("127.0.0.1", "localhost", "::1"):
        assert not [line for line in ui_announcement(host, 8080, passwords) if "WARNING" in line]
    lines = ui_announcement("0.0.0.0", 8080, passwords)
    [warning] = [line for line in lines if "WARNING" in line]
    assert "--host 0.0.0.0" in warning and "other machines" in warning and "8080" in warning
    assert "listening on 0.0.0.0" in lines[0]
