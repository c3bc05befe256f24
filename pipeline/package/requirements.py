"""requirements.txt of the service image: every package `python -m pipeline.serve` needs
(what it imports and their dependencies), pinned exactly as in the project's lock
(constraints.txt), each with the sha256 of its wheel(s).

The hashed lists live in include/service-locks/<format>.txt, one per model format (onnx never
needs torch). They are derived, not written by hand:

    .venv/bin/python scripts/service_locks.py      # rewrite both from constraints.txt

takes the service's direct packages (SERVICE_PACKAGES, plus torch for TorchScript), follows
their installed metadata (Requires-Dist, markers evaluated for CPython 3.11 on Linux) to the
full closure, pins every package of it from constraints.txt, downloads its wheels for the
image's platforms with pip and records their hashes. tests/package checks that the files
still agree with constraints.txt.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.package.errors import PackageError
from pipeline.package.wheelhouse import (
    ARCHITECTURES,
    Requirement,
    download_wheels,
    parse_requirements,
)

__all__ = [
    "LOCKS_DIR",
    "MODEL_FORMATS",
    "SERVICE_PACKAGES",
    "Pin",
    "read_service_lock",
    "repo_root",
    "service_closure",
    "service_lock_path",
    "service_requirements",
    "write_service_lock",
]

#: what `python -m pipeline.serve` imports (torch only for TorchScript models)
SERVICE_PACKAGES = (
    "numpy",
    "onnxruntime",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "prometheus-client",
    "psutil",
    "pyyaml",
)
#: imported when installed (a faster JSON encoder); in the image only if the lock pins it
OPTIONAL_PACKAGES = ("orjson",)
MODEL_FORMATS = ("onnx", "torchscript")
#: `pip freeze` (which wrote constraints.txt) leaves these out; torch requires setuptools,
#: so the closure pins them at the version the project's venv has
UNFROZEN_PACKAGES = ("pip", "setuptools", "wheel")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def repo_root() -> Path:
    import pipeline

    return Path(pipeline.__file__).resolve().parent.parent


LOCKS_DIR = repo_root() / "include" / "service-locks"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def service_lock_path(model_format: str) -> Path:
    if model_format not in MODEL_FORMATS:
        raise PackageError(f"model format {model_format!r}: expected one of {MODEL_FORMATS}")
    return LOCKS_DIR / f"{model_format}.txt"


@dataclass(frozen=True)
class Pin:
    """A package of the service's closure with its exact pin from constraints.txt."""

    name: str
    version: str
    required_by: str | None


def _pins(constraints: Path) -> dict[str, tuple[str, str]]:
    try:
        text = constraints.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"{constraints}: cannot read the pinned constraints: {exc}") from None
    pins = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            pins[_normalise(match.group(1))] = (match.group(1), match.group(2))
    return pins


def _roots(model_format: str, pins: dict[str, tuple[str, str]]) -> list[str]:
    roots = list(SERVICE_PACKAGES) + (["torch"] if model_format == "torchscript" else [])
    return roots + [name for name in OPTIONAL_PACKAGES if _normalise(name) in pins]


def service_closure(model_format: str, constraints: Path | None = None) -> list[Pin]:
    """The service's packages and everything they require, each pinned from constraints.txt.

    Follows the installed distributions' metadata (the project's venv is installed from the
    same lock, and each installed version must match its pin)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement as Spec
    from packaging.specifiers import SpecifierSet

    path = constraints or repo_root() / "constraints.txt"
    pins = _pins(path)
    seen: dict[str, Pin] = {}
    todo: list[tuple[str, str | None]] = [(name, None) for name in _roots(model_format, pins)]
    while todo:
        name, parent = todo.pop(0)
        key = _normalise(name)
        if key in seen:
            continue
        if key not in pins and key not in UNFROZEN_PACKAGES:
            needed = f" (required by {parent})" if parent else ""
            raise PackageError(
                f"{path}: no exact pin (name==version) for {name}{needed}, which the service needs"
            )
        pinned_name, version = pins.get(key, (name, ""))
        try:
            dist = metadata.distribution(pinned_name)
        except metadata.PackageNotFoundError:
            raise PackageError(
                f"{pinned_name}=={version or '?'} is not installed here: install the project "
                f"from {path.name} first (scripts/setup.sh)"
            ) from None
        version = version or dist.version
        if not SpecifierSet(f"=={version}").contains(dist.version, prereleases=True):
            raise PackageError(
                f"{pinned_name}: installed {dist.version}, but {path.name} pins {version}: "
                "install the project from the lock first (scripts/setup.sh)"
            )
        seen[key] = Pin(pinned_name, version, parent)
        for line in dist.requires or ():
            spec = Spec(line)
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append((spec.name, pinned_name))
    return sorted(seen.values(), key=lambda pin: _normalise(pin.name))


def read_service_lock(model_format: str, path: Path | None = None) -> list[Requirement]:
    """The hashed requirements of the service for `model_format` (or of the file `path`)."""
    lock = Path(path) if path is not None else service_lock_path(model_format)
    try:
        text = lock.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackageError(f"{lock}: cannot read the service's requirements: {exc}") from None
    return parse_requirements(text, str(lock))


def service_requirements(model_format: str, path: Path | None = None) -> str:
    """requirements.txt of the package: every requirement of the service lock, with its
    hashes, for `pip install --require-hashes --no-index --find-links wheels/`."""
    lock = Path(path) if path is not None else service_lock_path(model_format)
    requirements = read_service_lock(model_format, lock)
    header = (
        "# Runtime requirements of relcert-service (python -m pipeline.serve), model format\n"
        f"# {model_format}: the service's packages and all their dependencies, pinned as in the\n"
        "# project's constraints.txt, with the sha256 of each wheel. The Dockerfile installs\n"
        "# them from wheels/ with pip install --require-hashes --no-index.\n"
    )
    return header + "\n".join(r.line() for r in requirements) + "\n"


def _lock_text(model_format: str, requirements: Sequence[Requirement]) -> str:
    header = (
        f"# relcert-service, model format {model_format}: what python -m pipeline.serve\n"
        "# imports and everything it requires, pinned from constraints.txt, with the sha256 of\n"
        f"# the wheel for CPython 3.11 on {', '.join(ARCHITECTURES.values())}.\n"
        "# Generated by `python scripts/service_locks.py`; do not edit by hand.\n"
    )
    return header + "\n".join(r.line() for r in requirements) + "\n"


def write_service_lock(
    model_format: str,
    architectures: Iterable[str] = tuple(ARCHITECTURES),
    constraints: Path | None = None,
) -> Path:
    """Derive include/service-locks/<format>.txt from constraints.txt (downloads wheels)."""
    from pipeline._io import atomic_write_text
    from pipeline.package.wheelhouse import supported_tags, wheel_candidates

    closure = service_closure(model_format, constraints)
    hashes: dict[str, set[str]] = {pin.name: set() for pin in closure}
    with tempfile.TemporaryDirectory(prefix="relcert-lock-") as tmp:
        for arch in architectures:
            folder = Path(tmp) / arch
            done = download_wheels([f"{p.name}=={p.version}" for p in closure], folder, arch)
            if done.returncode != 0:
                raise PackageError(f"pip download for {arch} failed:\n{done.stderr[-2000:]}")
            supported = supported_tags(arch)
            for pin in closure:
                probe = Requirement(pin.name, pin.version, ())
                wheels = wheel_candidates(probe, folder, supported)
                if not wheels:
                    raise PackageError(f"no {arch} wheel of {pin.name}=={pin.version}")
                hashes[pin.name].add(hashlib.sha256(wheels[0].read_bytes()).hexdigest())
    requirements = [Requirement(p.name, p.version, tuple(sorted(hashes[p.name]))) for p in closure]
    return atomic_write_text(
        service_lock_path(model_format), _lock_text(model_format, requirements)
    )
