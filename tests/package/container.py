"""What the image test needs from this machine: a container engine, an engine configuration
that works here, and a python:3.11 base image made without a registry.

No registry is reachable on the development and CI machines, so the base image is made
from Debian packages: `debootstrap --variant=minbase bookworm` with python3 (3.11, as
python:3.11-slim-bookworm) and a venv at /opt/python on PATH (so `python` and `pip` are
there), imported with `<engine> import`. The root filesystem is cached as a tarball under
$XDG_CACHE_HOME/relcert/base-images/ keyed by the Debian suite, so later runs on one
machine skip the ~30 s debootstrap; it is rebuilt whenever it is missing.
$RELCERT_TEST_BASE_IMAGE names an existing base image instead (e.g. python:3.11-slim where
a registry is reachable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline._io import atomic_path
from pipeline.package.image import ContainerEngine

SUITE = "bookworm"
MIRROR = os.environ.get("RELCERT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_TAG = f"localhost/relcert-test-base:{SUITE}"
BASE_ENV = "RELCERT_TEST_BASE_IMAGE"
PATH_IN_BASE = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(RuntimeError):
    """This machine cannot provide what the image test needs (the message says why)."""


def engine_config(folder: Path) -> Path:
    """A containers.conf for this kind of machine (podman reads $CONTAINERS_CONF): no default
    ulimits (raising them is refused here) and the runc runtime (crun refuses the hybrid
    cgroups)."""
    lines = ["[containers]", "default_ulimits = []"]
    if shutil.which("runc"):
        lines += ["", "[engine]", 'runtime = "runc"']
    path = folder / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "relcert" / "base-images"


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done


def base_rootfs() -> Path:
    """The cached root filesystem tarball of the base image (made on first use)."""
    tarball = _cache() / f"{SUITE}-minbase-python3.11.tar"
    if tarball.is_file():
        return tarball
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (Debian: apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise Unavailable("debootstrap needs root to make the base image")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rootfs-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "root"
        debootstrap = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv"]
        _run([*debootstrap, SUITE, str(root), MIRROR], "debootstrap")
        _run(["chroot", str(root), "/usr/bin/python3", "-m", "venv", "/opt/python"], "venv")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        with atomic_path(tarball) as partial:
            _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], "tar")
    return tarball


def base_image(engine: ContainerEngine) -> str:
    """A python:3.11 base image in the engine's storage: $RELCERT_TEST_BASE_IMAGE, else the
    debootstrapped one (imported from the cached tarball when the engine lacks it)."""
    if os.environ.get(BASE_ENV):
        return os.environ[BASE_ENV]
    exists = subprocess.run(
        [engine.path, "image", "inspect", BASE_TAG], capture_output=True, check=False
    )
    if exists.returncode == 0:
        return BASE_TAG
    tarball = base_rootfs()
    _run(
        [engine.path, "import", "--change", f"ENV PATH={PATH_IN_BASE}", str(tarball), BASE_TAG],
        f"{engine.name} import",
    )
    return BASE_TAG
