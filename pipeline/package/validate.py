"""Validate the package's Kubernetes manifests offline with kubernetes-validate (strict).

Core kinds are validated against the bundled Kubernetes JSON schemas in strict mode (unknown
fields are errors). The Prometheus-operator CRDs (PrometheusRule, ServiceMonitor) have no
bundled schema: they must parse and hold apiVersion, kind, metadata.name and spec. A
kustomization must list only files that exist beside it. Every message names its file.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pipeline.package.errors import ManifestValidationError

__all__ = [
    "CRD_KINDS",
    "check_kubernetes_version",
    "is_manifest_path",
    "validate_documents",
    "validate_manifests",
]

CRD_KINDS = frozenset({"PrometheusRule", "ServiceMonitor"})
_MANIFEST_DIRS = ("kubernetes", "monitoring")
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?$")


def check_kubernetes_version(kubernetes_version: str) -> str:
    """The version as major.minor.patch ("1.31" -> "1.31.0"), or ManifestValidationError
    when the bundled kubernetes-validate schemas do not cover it."""
    from kubernetes_validate.utils import all_versions

    match = _VERSION.match(kubernetes_version.strip())
    bundled = all_versions()
    wanted = (int(match.group(1)), int(match.group(2))) if match else None
    have = {tuple(int(p) for p in v.split(".")[:2]) for v in bundled}
    if wanted is None or wanted not in have:
        raise ManifestValidationError(
            [
                f"kubernetes version {kubernetes_version!r} is not supported by the bundled "
                f"kubernetes-validate schemas ({bundled[0]} ... {bundled[-1]})"
            ]
        )
    return f"{wanted[0]}.{wanted[1]}.{match.group(3) or 0}"


def _check_crd(doc: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    if not str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
        problems.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        problems.append(f"{where}: metadata.name is missing")
    if not isinstance(doc.get("spec"), dict) or not doc["spec"]:
        problems.append(f"{where}: spec is missing or empty")
    return problems


def _check_kustomization(doc: Mapping[str, Any], where: str, siblings: set[str]) -> list[str]:
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources:
        return [f"{where}: resources must be a non-empty list of manifest files"]
    return [
        f"{where}: lists {entry!r}, which is not a file beside it"
        for entry in resources
        if entry not in siblings
    ]


def validate_documents(
    files: Mapping[str, bytes | str],
    kubernetes_version: str = "1.31.0",
    *,
    listing: Mapping[str, set[str]] | None = None,
) -> tuple[str, ...]:
    """Validate manifests given as {path: YAML text}; returns the paths that passed.

    `listing` (folder -> file names) is what a kustomization may list; by default the
    files given. Raises ManifestValidationError listing every problem (each naming its
    file) if any fail.
    """
    from kubernetes_validate import utils as kv

    version = check_kubernetes_version(kubernetes_version)
    problems: list[str] = []
    passed: list[str] = []
    by_folder: dict[str, set[str]] = {k: set(v) for k, v in (listing or {}).items()}
    for path in files:
        pure = PurePosixPath(path)
        by_folder.setdefault(str(pure.parent), set()).add(pure.name)
    for path in sorted(files):
        text = files[path]
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        try:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        if not documents:
            problems.append(f"{path}: holds no manifest")
            continue
        before = len(problems)
        for i, doc in enumerate(documents):
            where = path if len(documents) == 1 else f"{path} (document {i + 1})"
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                problems.append(f"{where}: not a Kubernetes object (apiVersion and kind needed)")
                continue
            kind = doc["kind"]
            if kind in CRD_KINDS:
                problems.extend(_check_crd(doc, f"{where} ({kind})"))
                continue
            if kind == "Kustomization":
                siblings = by_folder.get(str(PurePosixPath(path).parent), set())
                problems.extend(_check_kustomization(doc, where, siblings))
                continue
            name = (doc.get("metadata") or {}).get("name", "?")
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                field = ".".join(str(p) for p in exc.path) or "(top level)"
                problems.append(
                    f"{where}: {kind}/{name} fails strict validation against Kubernetes "
                    f"{exc.version}: {field}: {exc.message}"
                )
            except kv.SchemaNotFoundError as exc:
                problems.append(f"{where}: {kind}/{name}: {exc.message}")
            except (kv.InvalidSchemaError, kv.VersionNotSupportedError) as exc:
                problems.append(f"{where}: {kind}/{name}: {getattr(exc, 'message', exc)}")
        if len(problems) == before:
            passed.append(path)
    if problems:
        raise ManifestValidationError(problems)
    return tuple(passed)


def is_manifest_path(path: str) -> bool:
    """A package file kubernetes-validate checks: YAML in kubernetes/ or monitoring/, except
    the plain Prometheus rules file (promtool checks it; its tests live in monitoring/tests/)."""
    pure = PurePosixPath(path)
    if pure.parts[-2:] == ("monitoring", "rules.yaml"):
        return False
    return pure.suffix in (".yaml", ".yml") and pure.parent.name in _MANIFEST_DIRS


def validate_manifests(
    paths_or_zip: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    kubernetes_version: str = "1.31.0",
) -> tuple[str, ...]:
    """Run kubernetes-validate (strict) over every manifest of a package.

    `paths_or_zip` is a package zip (its kubernetes/ and monitoring/ YAML files are
    checked), a folder (the same, searched recursively; it may be such a folder itself),
    a single YAML file, or a list of YAML files. Returns the files that passed; raises
    ManifestValidationError naming each failing file.
    """
    check_kubernetes_version(kubernetes_version)
    files: dict[str, bytes] = {}
    on_disk: list[Path] = []
    if isinstance(paths_or_zip, str | os.PathLike):
        root = Path(paths_or_zip)
        if root.is_file() and zipfile.is_zipfile(root):
            with zipfile.ZipFile(root) as archive:
                for name in archive.namelist():
                    if is_manifest_path(name):
                        files[name] = archive.read(name)
        elif root.is_dir():
            for file in sorted(root.rglob("*")):
                relative = file.relative_to(root.parent).as_posix()  # keeps "kubernetes/"
                if file.is_file() and is_manifest_path(relative):
                    files[relative] = file.read_bytes()
        elif root.is_file():
            on_disk.append(root)
        else:
            raise ManifestValidationError([f"{root}: no such file or folder"])
    else:
        for item in paths_or_zip:
            path = Path(item)
            if not path.is_file():
                raise ManifestValidationError([f"{path}: no such file"])
            on_disk.append(path)
    listing: dict[str, set[str]] = {}
    for path in on_disk:
        files[path.as_posix()] = path.read_bytes()
        folder = path.parent.as_posix()
        if folder not in listing:  # a kustomization may list files that were not given
            listing[folder] = {p.name for p in path.parent.iterdir() if p.is_file()}
    if not files:
        raise ManifestValidationError([f"{paths_or_zip}: no Kubernetes manifests found"])
    return validate_documents(files, kubernetes_version, listing=listing)
