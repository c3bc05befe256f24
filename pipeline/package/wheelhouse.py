"""The service image's wheelhouse: one wheel per pinned, hashed requirement, for the image's
platform (CPython 3.11 on glibc Linux, the architecture of this machine), so the image
build installs with `pip install --require-hashes --no-index --find-links /wheels` and
needs no package index at all.

Wheels are kept in a cache folder ($RELCERT_WHEELHOUSE, default ~/.cache/relcert/wheelhouse)
and downloaded there with pip only when missing; a wheel is used only when its sha256 is one
of its requirement's hashes, so a cache, a mirror or an index cannot swap one in.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline._io import sha256_file
from pipeline.package.errors import PackageError

__all__ = [
    "ARCHITECTURES",
    "Requirement",
    "Wheel",
    "WheelhouseError",
    "default_wheelhouse",
    "download_wheels",
    "fetch_wheels",
    "image_architecture",
    "parse_requirements",
    "supported_tags",
    "wheel_candidates",
]

#: the image's Python and C library: python:3.11 on Debian bookworm (glibc 2.36)
PYTHON_VERSION = (3, 11)
GLIBC = (2, 36)
#: machine -> (wheel platform suffix, OCI platform)
ARCHITECTURES = {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
WHEELHOUSE_ENV = "RELCERT_WHEELHOUSE"
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=]+)$")


class WheelhouseError(PackageError):
    """A requirement has no wheel (with one of its hashes) for the image; names it."""


@dataclass(frozen=True)
class Requirement:
    """One line of a hashed requirements file: `name==version --hash=sha256:...`."""

    name: str
    version: str
    hashes: tuple[str, ...]

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    def line(self) -> str:
        return " \\\n    ".join([self.pin, *(f"--hash=sha256:{h}" for h in self.hashes)])


@dataclass(frozen=True)
class Wheel:
    """A wheel of the wheelhouse: the requirement it satisfies, its file and sha256."""

    requirement: Requirement
    path: Path
    sha256: str


def default_wheelhouse() -> Path:
    """$RELCERT_WHEELHOUSE, else $XDG_CACHE_HOME/relcert/wheelhouse (~/.cache/...)."""
    if os.environ.get(WHEELHOUSE_ENV):
        return Path(os.environ[WHEELHOUSE_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "relcert" / "wheelhouse"


def image_architecture(machine: str | None = None) -> str:
    """The image's architecture: this machine's (the engine builds natively)."""
    name = (machine or platform.machine()).lower()
    name = _MACHINE_ALIASES.get(name, name)
    if name not in ARCHITECTURES:
        raise PackageError(
            f"no service image for machine {name!r}: expected one of {sorted(ARCHITECTURES)}"
        )
    return name


def _platform_tags(arch: str) -> list[str]:
    """glibc platforms the image can run, newest first (manylinux_2_36 .. 2_5, linux)."""
    tags = [f"manylinux_{GLIBC[0]}_{minor}_{arch}" for minor in range(GLIBC[1], 4, -1)]
    legacy = {"manylinux_2_17": "manylinux2014", "manylinux_2_12": "manylinux2010"}
    if arch == "x86_64":
        legacy["manylinux_2_5"] = "manylinux1"
    for new, old in legacy.items():
        tags.insert(tags.index(f"{new}_{arch}") + 1, f"{old}_{arch}")
    return [*tags, f"linux_{arch}"]


def supported_tags(arch: str) -> list:
    """The wheel tags the image's pip accepts, best first."""
    from packaging import tags

    platforms = _platform_tags(arch)
    return [
        *tags.cpython_tags(PYTHON_VERSION, abis=["cp311", "abi3", "none"], platforms=platforms),
        *tags.compatible_tags(PYTHON_VERSION, "cp311", platforms),
    ]


def parse_requirements(text: str, source: str) -> list[Requirement]:
    """The requirements of a hashed requirements file; every entry must be `name==version`
    with at least one `--hash=sha256:<hex>` (what `pip install --require-hashes` needs)."""
    logical = re.sub(r"\\\n", " ", text)
    out: list[Requirement] = []
    for number, raw in enumerate(logical.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        match = _NAME.match(words[0])
        if not match:
            raise PackageError(
                f"{source}: entry {number} {words[0]!r}: expected name==version (an exact pin)"
            )
        hashes = []
        for word in words[1:]:
            value = word.removeprefix("--hash=")
            found = _HASH.match(value) if word.startswith("--hash=") else None
            if not found:
                raise PackageError(
                    f"{source}: {words[0]}: expected --hash=sha256:<64 hex digits>, got {word!r}"
                )
            hashes.append(found.group(1))
        if not hashes:
            raise PackageError(f"{source}: {words[0]} has no --hash=sha256:... entry")
        out.append(Requirement(match.group(1), match.group(2), tuple(hashes)))
    if not out:
        raise PackageError(f"{source}: no requirements")
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_candidates(requirement: Requirement, folder: Path, supported: Sequence) -> list[Path]:
    """Wheels in `folder` for the requirement's name and version that the image can install,
    best platform first."""
    from packaging.specifiers import SpecifierSet
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    rank = {tag: i for i, tag in enumerate(supported)}
    wanted = SpecifierSet(f"=={requirement.version}")
    found = []
    for path in folder.glob("*.whl") if folder.is_dir() else ():
        try:
            name, version, _build, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        if _canonical(name) != _canonical(requirement.name) or not wanted.contains(
            version, prereleases=True
        ):
            continue
        best = min((rank[t] for t in tags if t in rank), default=None)
        if best is not None:
            found.append((best, path.name, path))
    return [path for _rank, _name, path in sorted(found)]


def _match(requirement: Requirement, folder: Path, supported: Sequence) -> Wheel | None:
    for path in wheel_candidates(requirement, folder, supported):
        digest = sha256_file(path)
        if digest in requirement.hashes:
            return Wheel(requirement, path, digest)
    return None


def _pip_platform_args(arch: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", "".join(map(str, PYTHON_VERSION))]
    args += ["--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for tag in _platform_tags(arch):
        args += ["--platform", tag]
    return args


def download_wheels(
    pins: Iterable[str], dest: Path, arch: str, *, hashed_file: Path | None = None
) -> subprocess.CompletedProcess:
    """`pip download` the wheels of `pins` (or of `hashed_file`, checking its hashes) for
    the image's platform into `dest`, without dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(dest)]
    cmd += ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    cmd += _pip_platform_args(arch)
    cmd += ["--require-hashes", "-r", str(hashed_file)] if hashed_file else list(pins)
    dest.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _pip_problem(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines
    shown = [e if len(e) <= 240 else e[:237] + "..." for e in errors[-2:]]
    return " / ".join(shown) or "no output"


def _download_missing(missing: Sequence[Requirement], folder: Path, arch: str) -> str:
    """pip download the missing wheels (hash-checked); pip's complaint, or "" when done."""
    with tempfile.TemporaryDirectory(prefix="relcert-wheels-") as tmp:
        wanted = Path(tmp) / "requirements.txt"
        wanted.write_text("\n".join(r.line() for r in missing) + "\n")
        done = download_wheels((), folder, arch, hashed_file=wanted)
    return "" if done.returncode == 0 else done.stderr or done.stdout or "no output"


def fetch_wheels(
    requirements: Sequence[Requirement],
    wheelhouse: str | os.PathLike[str] | None = None,
    *,
    arch: str | None = None,
    download: bool = True,
    source: str = "requirements.txt",
) -> list[Wheel]:
    """One wheel per requirement, from the wheelhouse folder; the missing ones are
    downloaded there with pip (unless `download` is False) and checked against their hashes.

    Raises WheelhouseError naming every requirement left without a wheel."""
    arch = image_architecture(arch)
    folder = Path(wheelhouse) if wheelhouse is not None else default_wheelhouse()
    supported = supported_tags(arch)
    found = {r: _match(r, folder, supported) for r in requirements}
    missing = [r for r, wheel in found.items() if wheel is None]
    problem = ""
    if missing and download:
        complaint = _download_missing(missing, folder, arch)
        if complaint:
            problem = f"; pip download: {_pip_problem(complaint)}"
            # pip stops at the first bad requirement: fetch the others, so the error names
            # only the requirements that have no wheel
            named = {r for r in missing if r.pin in complaint}
            if named and len(named) < len(missing):
                _download_missing([r for r in missing if r not in named], folder, arch)
        found.update({r: _match(r, folder, supported) for r in missing})
        missing = [r for r, wheel in found.items() if wheel is None]
    if missing:
        where = "nor from the package index" if download else "(downloads off)"
        raise WheelhouseError(
            f"{source}: no wheel for {', '.join(r.pin for r in missing)} with its pinned "
            f"sha256 for CPython 3.11 on {ARCHITECTURES[arch]}, in the wheelhouse {folder} "
            f"{where}{problem}"
        )
    return [wheel for wheel in found.values() if wheel is not None]
