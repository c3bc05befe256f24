"""The package's container image, built from the package exactly as shipped and saved as an
OCI archive beside the zip (`relcert package --image`, the DAG's `build_image` param).

The build needs no network: the base image is a build argument (BASE_IMAGE, pinned by digest:
pass your registry's mirror of it, or a locally imported one, by digest too), and the
requirements are installed from the package's own wheelhouse (`wheels/`) with
`pip install --require-hashes --no-index`, so RUN steps run with `--network none`. The engine
is podman (`--format docker`, which keeps HEALTHCHECK) or docker, whichever works here.

A base named by a tag alone (`python:3.11-slim`) is refused before anything is built: a tag
can move, so the same package would give another image. `RELCERT_ALLOW_UNPINNED_BASE=1` (or
`relcert package --allow-unpinned-base`) builds from it anyway, for a base made on this
machine; the build then warns, and the image record in report.json says it is not pinned and
not reproducible (`base_image.pinned`, `base_image.warning`), as report.html does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline._io import atomic_path, sha256_file
from pipeline.package.errors import PackageError
from pipeline.package.wheelhouse import ARCHITECTURES, image_architecture

__all__ = [
    "ALLOW_UNPINNED_ENV",
    "BASE_IMAGE_ENV",
    "DEFAULT_BASE_IMAGE",
    "ENGINE_ENV",
    "ContainerEngine",
    "ImageError",
    "ImageOptions",
    "ImageResult",
    "base_record",
    "build_image",
    "check_base_image",
    "find_engine",
    "oci_archive_digest",
]

#: python:3.11-slim on Debian bookworm (the platform the wheelhouse is chosen for), pinned
#: by the digest of its multi-platform index. The `python:3.11-slim` tag itself has moved
#: to Debian trixie; check a newer digest with `skopeo inspect --raw
#: docker://docker.io/library/python:3.11-slim-bookworm | sha256sum`.
DEFAULT_BASE_IMAGE = (
    "docker.io/library/python:3.11-slim-bookworm"
    "@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91"
)
BASE_IMAGE_ENV = "RELCERT_BASE_IMAGE"
#: set to 1 (true, yes) to build from a base named by a tag alone: not reproducible, recorded
ALLOW_UNPINNED_ENV = "RELCERT_ALLOW_UNPINNED_BASE"
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_LOG = logging.getLogger(__name__)
ENGINE_ENV = "RELCERT_CONTAINER_ENGINE"
ENGINES = ("podman", "docker")
OCI_SUFFIX = ".oci.tar"
_TIMEOUT_S = 1800


class ImageError(PackageError):
    """The image could not be built or saved (no engine, a failed build step, ...)."""


def check_base_image(reference: str, *, allow_unpinned: bool = False) -> str | None:
    """None when `reference` is pinned by digest (`name@sha256:<64 hex>`); else, when
    `allow_unpinned`, the warning the build records; else ImageError saying how to pin it."""
    if not isinstance(reference, str) or not reference.strip():
        raise ImageError(f"base image: expected an image reference, got {reference!r}")
    if _DIGEST.search(reference):
        return None
    if not allow_unpinned:
        raise ImageError(
            f"base image {reference!r} is not pinned by digest (expected NAME@sha256:<64 hex>, "
            f"e.g. the default {DEFAULT_BASE_IMAGE}): a tag can move, so the build would not "
            "be reproducible. Pin it (its digest: `skopeo inspect docker://NAME:TAG`, or "
            "`podman image inspect --format '{{.Digest}}' NAME:TAG` for a local image), or set "
            f"{ALLOW_UNPINNED_ENV}=1 (relcert package --allow-unpinned-base) to build from it "
            "anyway, recorded as not reproducible"
        )
    return (
        f"the base image {reference} is not pinned by digest ({ALLOW_UNPINNED_ENV}): its tag "
        "can move, so this image is not reproducible from the package"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class ImageOptions:
    """How to build the package's image; each None means "the default" (see from_env). A base
    image not pinned by digest is refused here unless `allow_unpinned_base`."""

    base_image: str = DEFAULT_BASE_IMAGE
    engine: str | None = None
    tag: str | None = None
    wheelhouse: Path | None = None
    requirements: Path | None = None
    allow_unpinned_base: bool = False

    def __post_init__(self) -> None:
        check_base_image(self.base_image, allow_unpinned=self.allow_unpinned_base)

    @classmethod
    def from_env(cls, **overrides: Any) -> ImageOptions:
        """$RELCERT_BASE_IMAGE, $RELCERT_ALLOW_UNPINNED_BASE, $RELCERT_CONTAINER_ENGINE and
        $RELCERT_WHEELHOUSE, then `overrides` (None values are ignored)."""
        values: dict[str, Any] = {
            "base_image": os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE,
            "engine": os.environ.get(ENGINE_ENV) or None,
            "allow_unpinned_base": _env_flag(ALLOW_UNPINNED_ENV),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("wheelhouse", "requirements"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


@dataclass(frozen=True)
class ContainerEngine:
    """A container engine that answers here: its name, executable and version."""

    name: str
    path: str
    version: str

    def run(self, args: Sequence[str], *, timeout: float = _TIMEOUT_S) -> str:
        """Run `engine args...`; its output, or ImageError with the last lines of it."""
        cmd = [self.path, *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ImageError(f"{self.name} {args[0]}: no answer after {timeout:.0f} s") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise ImageError(f"{self.name} {args[0]} failed (exit {done.returncode}):\n{tail}")
        return done.stdout


def _probe(name: str) -> tuple[ContainerEngine | None, str]:
    path = shutil.which(name)
    if path is None:
        return None, f"{name}: not installed"
    try:
        done = subprocess.run(
            [path, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        info = subprocess.run(
            [path, "info", "--format", "{{json .}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{name}: {exc}"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return None, f"{name}: `{name} info` failed: {lines[-1] if lines else 'no output'}"
    return ContainerEngine(name, path, done.stdout.strip() or "unknown"), ""


def find_engine(name: str | None = None) -> ContainerEngine:
    """The container engine to build with: `name` (podman or docker), else the first of
    podman, docker that answers `info` (a docker client without a daemon does not)."""
    if name is not None and name not in ENGINES:
        raise ImageError(f"container engine {name!r}: expected one of {', '.join(ENGINES)}")
    problems = []
    for candidate in (name,) if name else ENGINES:
        engine, problem = _probe(candidate)
        if engine is not None:
            return engine
        problems.append(problem)
    raise ImageError(
        "no working container engine (" + "; ".join(problems) + "): install podman "
        "(Debian: apt-get install podman) or start the Docker daemon"
    )


@dataclass(frozen=True)
class ImageResult:
    """The built image: its OCI archive and what it is made of (recorded in report.json).

    `digest` is the OCI manifest's (the image's digest in a registry after `skopeo copy`),
    `image_id` its config's (the ID `podman load` gives it)."""

    reference: str
    digest: str
    image_id: str
    archive: Path
    archive_sha256: str
    platform: str
    engine: str
    base_image: dict[str, Any]
    wheels: list[dict[str, str]] = field(default_factory=list)
    requirements_sha256: str = ""
    package_sha256: str = ""

    def record(self, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """report.json's `image` entry (the archive relative to the run folder)."""
        try:
            archive = self.archive.resolve().relative_to(Path(run_dir).resolve()).as_posix()
        except ValueError:
            archive = str(self.archive)
        return {
            "reference": self.reference,
            "digest": self.digest,
            "image_id": self.image_id,
            "archive": archive,
            "archive_sha256": self.archive_sha256,
            "platform": self.platform,
            "engine": self.engine,
            "base_image": self.base_image,
            "requirements_sha256": self.requirements_sha256,
            "wheels": self.wheels,
            "package_sha256": self.package_sha256,
        }


def oci_archive_digest(archive: str | os.PathLike[str]) -> tuple[str, str]:
    """(manifest digest, config digest) of the one image an OCI archive holds: the digest
    the image has in a registry after `skopeo copy oci-archive:... docker://...`, and the
    image ID `podman load` gives it."""
    try:
        with tarfile.open(archive) as tar:
            index = _tar_json(tar, "index.json")
            manifests = index.get("manifests") or []
            if len(manifests) != 1 or "digest" not in manifests[0]:
                raise ImageError(
                    f"{archive}: expected one image in index.json, got {len(manifests)}"
                )
            digest = str(manifests[0]["digest"])
            manifest = _tar_json(tar, "blobs/" + digest.replace(":", "/", 1))
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise ImageError(f"{archive}: not a readable OCI archive: {exc}") from None
    return digest, str((manifest.get("config") or {}).get("digest", ""))


def _tar_json(tar: tarfile.TarFile, name: str) -> dict[str, Any]:
    member = tar.extractfile(name)
    if member is None:
        raise KeyError(name)
    data = json.load(member)
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a JSON object")
    return data


def _inspect(engine: ContainerEngine, reference: str) -> dict[str, Any]:
    data = json.loads(engine.run(["image", "inspect", reference], timeout=120))
    return data[0] if isinstance(data, list) and data else {}


def base_record(reference: str, facts: dict[str, Any]) -> dict[str, Any]:
    """report.json's `image.base_image`: the reference, its digest (the pinned one, else what
    the engine's `image inspect` (`facts`) reports), the image ID, whether it was pinned, and
    the not-reproducible warning when it was not."""
    digests = [str(d) for d in facts.get("RepoDigests") or []]
    pinned = _DIGEST.search(reference)
    return {
        "reference": reference,
        "digest": (pinned.group(1) if pinned else None)
        or facts.get("Digest")
        or (digests[0].split("@")[-1] if digests else None),
        "image_id": _sha(facts.get("Id")),
        "repo_digests": digests,
        "pinned": pinned is not None,
        "warning": check_base_image(reference, allow_unpinned=True),
    }


def _sha(value: Any) -> str:
    text = str(value or "")
    return text if not text or text.startswith("sha256:") else f"sha256:{text}"


def _unpack(package_zip: Path, into: Path) -> Path:
    """The package's files (its top folder), as a user unzipping it gets them."""
    with zipfile.ZipFile(package_zip) as archive:
        names = archive.namelist()
        top = names[0].split("/")[0]
        for info in archive.infolist():
            if info.filename.startswith("/") or ".." in info.filename.split("/"):
                raise ImageError(f"{package_zip}: unsafe entry {info.filename!r}")
        archive.extractall(into)
    context = into / top
    if not (context / "Dockerfile").is_file() or not (context / "wheels").is_dir():
        raise ImageError(
            f"{package_zip}: no Dockerfile and wheels/ to build from (build the package with "
            "its wheelhouse: relcert package --image)"
        )
    return context


def _build_args(engine: ContainerEngine, context: Path, tag: str, base_image: str) -> list[str]:
    args = ["build", "--network", "none", "--build-arg", f"BASE_IMAGE={base_image}"]
    if engine.name == "podman":
        args += ["--format", "docker"]  # the OCI format has no HEALTHCHECK
    return [*args, "--tag", tag, "--file", str(context / "Dockerfile"), str(context)]


def _save_args(engine: ContainerEngine, tag: str, out: Path) -> list[str]:
    if engine.name == "podman":
        return ["save", "--format", "oci-archive", "--output", str(out), tag]
    return ["save", "--output", str(out), tag]  # Docker >= 25 writes an OCI layout


def build_image(
    package_zip: str | os.PathLike[str],
    *,
    tag: str,
    base_image: str = DEFAULT_BASE_IMAGE,
    engine: ContainerEngine | None = None,
    progress: Callable[[str], None] | None = None,
    allow_unpinned_base: bool = False,
) -> ImageResult:
    """Build the image of a package zip (with its wheelhouse) and save it as
    `<zip without .zip>.oci.tar` beside the zip (atomically). A base image not pinned by
    digest is refused (ImageError) unless `allow_unpinned_base`: then the build warns and
    the record says it is not reproducible."""
    package = Path(package_zip).resolve()
    say = progress or (lambda _line: None)
    warning = check_base_image(base_image, allow_unpinned=allow_unpinned_base)
    if warning:
        _LOG.warning("image: %s", warning)
        say(f"image: WARNING: {warning}")
    engine = engine or find_engine()
    arch = image_architecture()
    archive = package.with_name(package.name.removesuffix(".zip") + OCI_SUFFIX)
    with tempfile.TemporaryDirectory(prefix=".image-build-", dir=package.parent) as tmp:
        context = _unpack(package, Path(tmp))
        say(f"image: {engine.name} build {tag} from {package.name} (base {base_image})")
        engine.run(_build_args(engine, context, tag, base_image))
        wheels = [
            {"file": path.name, "sha256": sha256_file(path)}
            for path in sorted((context / "wheels").glob("*.whl"))
        ]
        requirements_sha256 = sha256_file(context / "requirements.txt")
    with atomic_path(archive) as tmp_archive:
        tmp_archive.unlink()  # the engine writes the file itself
        engine.run(_save_args(engine, tag, tmp_archive))
    say(f"image: saved {archive.name}")
    digest, config = oci_archive_digest(archive)
    return ImageResult(
        reference=tag,
        digest=digest,
        image_id=config,
        archive=archive,
        archive_sha256=sha256_file(archive),
        platform=ARCHITECTURES[arch],
        engine=f"{engine.name} {engine.version}",
        base_image=base_record(base_image, _inspect(engine, base_image)),
        wheels=wheels,
        requirements_sha256=requirements_sha256,
        package_sha256=sha256_file(package),
    )
