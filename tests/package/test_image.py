"""`relcert package --image`: the package's image, built offline from the package as shipped,
saved as an OCI archive, loaded from it, run with the certified models mounted read-only,
and checked with the package's own smoke test. Needs a container engine (podman or docker)
and a way to make a base image without a registry (see tests/package/container.py);
skips, saying why, where there is none. `.ci/run` installs podman, runc and debootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.package.image import ContainerEngine, ImageError, find_engine, oci_archive_digest
from pipeline.package.requirements import read_service_lock, service_lock_path
from tests.package import container
from tests.package.conftest import extract

pytestmark = pytest.mark.system

VERSION = "1.0.20260115"
TOP = f"relcert-service-{VERSION}"
READY_WAIT_S = 120.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerEngine]:
    """The container engine, configured for this kind of machine for the whole module."""
    conf = container.engine_config(tmp_path_factory.mktemp("engine"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_CONF", str(conf))
        try:
            found = find_engine()
        except ImageError as exc:
            pytest.skip(f"no container engine on this machine: {exc}")
        yield found


@pytest.fixture(scope="module")
def base_image(engine: ContainerEngine) -> str:
    try:
        return container.base_image(engine)
    except container.Unavailable as exc:
        pytest.skip(f"cannot make a base image here: {exc}")


def _engine(engine: ContainerEngine, *args: str, check: bool = True, timeout: float = 300):
    done = subprocess.run(
        [engine.path, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{engine.name} {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, engine: ContainerEngine, name: str) -> dict:
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        state = _engine(engine, "inspect", "--format", "{{.State.Status}}", name, check=False)
        if state.stdout.strip() not in ("running", "created"):
            break
        time.sleep(0.5)
    logs = _engine(engine, "logs", name, check=False)
    raise AssertionError(f"the container never became ready:\n{logs.stdout}{logs.stderr}")


def _sums(top: Path) -> dict[str, str]:
    lines = (top / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def test_the_image_builds_offline_and_serves_as_shipped(
    certified_run: Path, engine: ContainerEngine, base_image: str, tmp_path: Path
) -> None:
    assert main(["report", "--run-dir", str(certified_run)]) == 0
    tag = f"localhost/relcert-service-test-{uuid.uuid4().hex[:8]}:{VERSION}"
    name = f"relcert-image-test-{uuid.uuid4().hex[:8]}"
    try:
        args = ["package", "--run-dir", str(certified_run), "--image"]
        # the base made here from Debian packages has a local tag, no registry digest
        pinned = "@sha256:" in base_image
        args += [] if pinned else ["--allow-unpinned-base"]
        assert main([*args, "--base-image", base_image, "--image-tag", tag]) == 0

        package = certified_run / "package" / f"{TOP}.zip"
        archive = certified_run / "package" / f"{TOP}.oci.tar"
        report = json.loads((certified_run / "report.json").read_text())
        image = report["image"]
        top = extract(package, tmp_path / "unzipped")

        # the wheelhouse ships in the package: one wheel per hashed requirement, checksummed
        wanted = {r.name.lower().replace("_", "-"): r for r in read_service_lock("onnx")}
        wheels = sorted((top / "wheels").glob("*.whl"))
        assert len(wheels) == len(wanted) == len(image["wheels"])
        sums = _sums(top)
        for wheel, recorded in zip(wheels, image["wheels"], strict=True):
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            assert sums[f"wheels/{wheel.name}"] == digest == recorded["sha256"]
            assert digest in wanted[wheel.name.split("-")[0].lower().replace("_", "-")].hashes

        # the report records the image's supply chain, and it matches the files
        assert report["package"] == f"package/{TOP}.zip"
        assert image["archive"] == f"package/{TOP}.oci.tar"
        assert (image["digest"], image["image_id"]) == oci_archive_digest(archive)
        assert image["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert image["package_sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
        assert image["base_image"]["reference"] == base_image
        assert image["base_image"]["image_id"].startswith("sha256:")
        assert image["base_image"]["pinned"] is pinned
        if not pinned:  # allowed, and said loudly where a reader of the report looks
            assert "not reproducible" in image["base_image"]["warning"]
            assert "Not reproducible:" in (certified_run / "report.html").read_text()
        assert image["reference"] == tag and image["engine"].startswith(engine.name)
        requirements = (top / "requirements.txt").read_bytes()
        assert image["requirements_sha256"] == hashlib.sha256(requirements).hexdigest()
        assert "Container image" in (certified_run / "report.html").read_text()

        # the built image: non-root, with the HEALTHCHECK (the OCI archive format has none)
        built = json.loads(_engine(engine, "image", "inspect", tag).stdout)[0]
        config = built.get("Config") or {}
        assert config.get("User") == "10001:10001"
        healthcheck = built.get("Healthcheck") or config.get("Healthcheck") or {}
        assert "/health/live" in " ".join(healthcheck.get("Test") or [])

        # as shipped: the image loaded from the OCI archive, models mounted read-only
        _engine(engine, "rmi", tag)
        _engine(engine, "load", "--input", str(archive))
        loaded = json.loads(_engine(engine, "image", "inspect", tag).stdout)[0]
        if engine.name == "podman":
            assert loaded["Digest"] == image["digest"]
        port = _free_port()
        run = ["run", "--detach", "--name", name, "--network", "host"]
        run += ["--ulimit", "host"] if engine.name == "podman" else []
        run += ["--volume", f"{top / 'models'}:/models:ro"]
        run += ["--env-file", str(top / "config/service.env")]
        _engine(engine, *run, tag, "--host", "127.0.0.1", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        ready = _wait_ready(url, engine, name)
        assert ready["models"] == {"quality_predictor": VERSION, "routing_classifier": VERSION}
        uid = _engine(engine, "exec", name, "python", "-c", "import os; print(os.getuid())")
        assert uid.stdout.strip() == "10001"

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        smoke = subprocess.run(
            [sys.executable, "-I", str(top / "validation/smoke_test.py"), "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=top,
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "smoke test PASSED" in smoke.stdout
    finally:
        _engine(engine, "rm", "--force", name, check=False)
        _engine(engine, "rmi", "--force", tag, check=False)


def test_a_requirement_without_a_wheel_fails_before_any_build(
    certified_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--run-dir", str(certified_run)]) == 0
    lock = service_lock_path("onnx").read_text()
    broken = tmp_path / "requirements.txt"
    broken.write_text(lock.replace("numpy==2.4.6", "numpy==0.0.1"))
    assert "numpy==0.0.1" in broken.read_text()
    capsys.readouterr()

    args = ["package", "--run-dir", str(certified_run), "--image", "--requirements", str(broken)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "relcert package: error:" in err and str(broken) in err
    assert "no wheel for numpy==0.0.1 with its pinned sha256" in err
    assert "idna==" not in err  # the other requirements have their wheels
    assert not (certified_run / "package").exists()  # nothing written, nothing built
    assert json.loads((certified_run / "report.json").read_text())["package"] is None
