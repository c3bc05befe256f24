"""build_package: the deployment package of a certified run, as one reproducible zip.

The zip is assembled in memory (no unzipped tree is left anywhere), validated (every
Kubernetes manifest against the bundled schemas, strict), and written atomically to
`<run>/package/<name>-<version>.zip`. Nothing is written outside the run's folder, and the
same run gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_bytes
from pipeline.names import ALLOWS_PACKAGE
from pipeline.package.alerts import build_alerts, envelope_factor
from pipeline.package.archive import EPOCH, sha256sums_text, zip_bytes
from pipeline.package.docs import render
from pipeline.package.errors import PackageError, PackageRefused
from pipeline.package.golden import golden_requests
from pipeline.package.image import DEFAULT_BASE_IMAGE, OCI_SUFFIX
from pipeline.package.manifests import (
    CONTAINER_PORT,
    SERVICE_NAME,
    ManifestContext,
    kubernetes_manifests,
    monitoring_files,
    service_env,
)
from pipeline.package.requirements import read_service_lock, repo_root, service_requirements
from pipeline.package.settings import (
    DeploymentSettings,
    certified_capacity_for_run,
    engine_settings_for_run,
)
from pipeline.package.validate import (
    check_kubernetes_version,
    is_manifest_path,
    validate_documents,
)
from pipeline.targets import Target, Targets, format_number, format_unit, load_targets

__all__ = [
    "ALLOWED_DECISIONS",
    "PACKAGE_NAME",
    "PackageResult",
    "build_package",
    "check_decision",
    "label_safe",
]

PACKAGE_NAME = SERVICE_NAME
ALLOWED_DECISIONS = ALLOWS_PACKAGE
_FORMAT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SCRIPTS = ("validation/smoke_test.py",)


@dataclass(frozen=True)
class PackageResult:
    """The written package: its path, version, sha256, zip entries and validated manifests."""

    path: Path
    version: str
    sha256: str
    files: tuple[str, ...]
    manifests_validated: tuple[str, ...]


# ----------------------------------------------------------------------------- inputs
def label_safe(version: str) -> str:
    """A Kubernetes label value / image tag for `version`: [A-Za-z0-9._-], <= 63 chars,
    alphanumeric at both ends ("1.0.0+build.5" -> "1.0.0-build.5")."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", version)
    text = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", text)[:63]
    text = re.sub(r"[^A-Za-z0-9]+$", "", text)
    return text or "unknown"


def _load_report(run: Path) -> dict[str, Any]:
    path = run / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(
            f"{path} is missing: the report stage writes it (or pass report=...)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not a readable JSON file: {exc}") from None
    if not isinstance(report, dict):
        raise PackageError(f"{path}: expected a JSON object, got {type(report).__name__}")
    _check_attempt(run, report)
    return report


def _check_attempt(run: Path, report: Mapping[str, Any]) -> None:
    """A report of another attempt of the run never releases this attempt's files."""
    from pipeline.stages.common import RunDir

    current = RunDir(run).attempt_id(create=False)
    recorded = report.get("attempt_id")
    if current is not None and recorded != current:
        raise PackageError(
            f"{run / 'report.json'} is from attempt {recorded}, but the run's current attempt "
            f"is {current}: write this attempt's report first (relcert report)"
        )


def _check_decision(report: Mapping[str, Any]) -> str:
    decision = report.get("decision")
    if isinstance(decision, Mapping):  # {"decision": {"decision": ..., "confidence": ...}}
        decision = decision.get("decision") or decision.get("status")
    normalised = str(decision).strip().upper() if isinstance(decision, str) else decision
    if normalised not in ALLOWED_DECISIONS:
        raise PackageRefused(decision)
    return str(normalised)


def check_decision(run_dir: str | os.PathLike[str]) -> str:
    """The decision of the run's report.json if it allows a package; PackageRefused (or
    PackageError for a missing or unreadable report) otherwise."""
    return _check_decision(_load_report(Path(run_dir).resolve()))


def _targets(targets: Any) -> Targets:
    if targets is None:
        return load_targets()
    if isinstance(targets, Targets):
        return targets
    if isinstance(targets, str | os.PathLike):
        return load_targets(targets)
    raise PackageError(f"targets must be a Targets, a targets file path or None, got {targets!r}")


def _inside(run: Path, path: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(run):
        raise PackageError(
            f"{what} {path} is outside the run folder {run}: a run writes only its own folder"
        )
    return resolved


def _default_version(info: Mapping[str, Mapping[str, Any]]) -> str:
    versions = sorted({str(entry.get("version", "unknown")) for entry in info.values()})
    return versions[0] if len(versions) == 1 else "-".join(versions)


def _snapshot_date(info: Mapping[str, Mapping[str, Any]]) -> dt.date:
    dates = {entry.get("snapshot_date") for entry in info.values()}
    if len(dates) == 1:
        try:
            date = dt.date.fromisoformat(str(dates.pop()))
            return max(date, EPOCH)
        except ValueError:
            pass
    return EPOCH


def _read_model_info(models_dir: Path) -> dict[str, dict[str, Any]]:
    from pipeline.build.errors import BuildError
    from pipeline.build.model_info import read_model_info

    try:
        info = read_model_info(models_dir)
    except BuildError as exc:
        raise PackageError(str(exc)) from None
    if not info:
        raise PackageError(f"{models_dir}/model_info.json lists no models")
    return info


def served_formats(info: Mapping[str, Mapping[str, Any]], fmt: str) -> dict[str, str]:
    """model name -> the format the service serves it in (as `pipeline.serve` chooses):
    `fmt` (MODEL_FORMAT) when the model has that file, else the one it has."""
    formats = {}
    for name in sorted(info):
        files = info[name].get("files") or {}
        chosen = (
            fmt if fmt in files else next((f for f in sorted(files) if f in _FORMAT_SUFFIX), None)
        )
        if chosen is None:
            raise PackageError(f"model_info.json: model {name!r} has no model file to package")
        formats[name] = chosen
    return formats


def lock_format(formats: Mapping[str, str]) -> str:
    """The service lock a package needs: torchscript (with torch) when it serves any model
    from TorchScript, else onnx (no torch)."""
    return "torchscript" if "torchscript" in formats.values() else "onnx"


def _packaged_models(
    models_dir: Path, info: Mapping[str, Mapping[str, Any]], fmt: str, report: Mapping
) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """models/ of the package (each model's served file, see `served_formats`, and
    model_info.json), verified against model_info.json and against the checksums
    report.json certified."""
    certified = {
        (str(m.get("name")), str(m.get("format"))): m.get("sha256")
        for m in report.get("models") or ()
        if isinstance(m, Mapping)
    }
    files: dict[str, bytes] = {}
    facts = []
    for name, served in served_formats(info, fmt).items():
        entry = info[name]
        file_entry = (entry.get("files") or {})[served]
        relative = str(file_entry.get("path") or f"{name}{_FORMAT_SUFFIX[served]}")
        path = models_dir / relative
        if Path(relative).name != relative or not path.is_file():
            raise PackageError(f"{path}: model file of {name!r} is missing (or not in models/)")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if file_entry.get("sha256") and file_entry["sha256"] != digest:
            raise PackageError(
                f"{path}: sha256 {digest} differs from model_info.json's {file_entry['sha256']}"
            )
        recorded = certified.get((name, served))
        if recorded and recorded != digest:
            raise PackageError(
                f"{path}: sha256 {digest} differs from the {recorded} that report.json "
                "certified; the run's models changed after certification"
            )
        files[relative] = data
        facts.append(
            {
                "name": name,
                "format": served,
                "file": relative,
                "version": str(entry.get("version", "unknown")),
                "sha256": digest,
                "bytes": len(data),
                "source": entry.get("source", "unknown"),
                "snapshot_date": entry.get("snapshot_date"),
                "model_type": entry.get("model_type", "unknown"),
                "description": entry.get("description", ""),
            }
        )
    files["model_info.json"] = (models_dir / "model_info.json").read_bytes()
    return files, facts


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _recommendations(report: Mapping[str, Any]) -> list[str]:
    out = []
    for item in report.get("recommendations") or ():
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            text = next(
                (item[k] for k in ("text", "recommendation", "action", "title") if item.get(k)),
                None,
            )
            out.append(str(text) if text else json.dumps(_finite(item), sort_keys=True))
        else:
            out.append(str(item))
    return out


def _show(value: Any, unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{format_number(value)}{format_unit(unit)}"


def _readiness(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:.2f}"


def _criteria(report: Mapping[str, Any], targets: Targets) -> list[dict[str, Any]]:
    rows = []
    for item in report.get("criteria") or ():
        if not isinstance(item, Mapping) or "name" not in item:
            continue
        name = str(item["name"])
        target: Target | None = targets.get(name)
        unit = target.unit if target else str(item.get("unit", ""))
        threshold = target.threshold if target else item.get("threshold")
        rule = target.describe() if target else f"target {_show(item.get('target'), unit)}"
        rows.append(
            {
                "name": name,
                "category": str(item.get("category") or (target.category if target else "")),
                "measured": _finite(item.get("measured")),
                "measured_text": _show(item.get("measured"), unit),
                "target": _finite(item.get("target", target.target if target else None)),
                "threshold": _finite(threshold),
                "threshold_text": _show(threshold, unit),
                "direction": target.direction if target else item.get("direction"),
                "unit": unit,
                "met": bool(item.get("met")),
                "rule": rule,
                "evidence": item.get("evidence"),
            }
        )
    return rows


def _certification_report(
    report: Mapping[str, Any],
    decision: str,
    criteria: list[dict[str, Any]],
    models: list[dict[str, Any]],
    settings: DeploymentSettings,
    settings_source: str,
    version: str,
    kubernetes_version: str,
) -> dict[str, Any]:
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in criteria:
        figure = {k: row[k] for k in row if not k.endswith("_text")}
        by_category.setdefault(row["category"] or "other", []).append(figure)
    from pipeline.report import without_release

    # the report names its package once it exists: leave that out, so building the package
    # again for the same run gives the same bytes
    source = without_release(report)
    canonical = json.dumps(_finite(source), sort_keys=True, default=str).encode("utf-8")
    confidence = report.get("confidence")
    if confidence is None and isinstance(report.get("decision"), Mapping):
        confidence = report["decision"].get("confidence")
    return _finite(
        {
            "service": PACKAGE_NAME,
            "version": version,
            "decision": decision,
            "confidence": confidence,
            "readiness_score": report.get("readiness_score"),
            "certification_summary": {
                "criteria": len(criteria),
                "met": sum(row["met"] for row in criteria),
                "not_met": [row["name"] for row in criteria if not row["met"]],
                "certification_passed": bool(criteria) and all(row["met"] for row in criteria),
                "gates": report.get("gates"),
                "deployment_approved": decision in ALLOWED_DECISIONS,
            },
            "certified_figures": by_category,
            "models": models,
            "engine_settings": settings.to_dict(),
            "engine_settings_source": settings_source,
            "risks": report.get("risks") or [],
            "recommendations": _recommendations(report),
            "manifests_validated_against_kubernetes": kubernetes_version,
            "source_report_sha256": hashlib.sha256(canonical).hexdigest(),
        }
    )


def _source_files() -> dict[str, bytes]:
    """src/pipeline/**.py: the project source the image runs (python -m pipeline.serve)."""
    root = repo_root()
    package = root / "pipeline"
    files = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(root)
        if "__pycache__" in relative.parts or any(p.startswith(".") for p in relative.parts):
            continue
        files[f"src/{relative.as_posix()}"] = path.read_bytes()
    if "src/pipeline/__init__.py" not in files:
        raise PackageError(f"{package}: the project source is missing")
    return files


def _wheel_files(
    model_format: str, requirements: Path | None, wheelhouse: str | os.PathLike[str]
) -> dict[str, bytes]:
    """wheels/ of the package: one wheel per hashed requirement, for the image's platform."""
    from pipeline.package.wheelhouse import fetch_wheels

    wanted = read_service_lock(model_format, requirements)
    source = str(requirements) if requirements else f"the {model_format} service lock"
    wheels = fetch_wheels(wanted, wheelhouse, source=source)
    return {f"wheels/{w.path.name}": w.path.read_bytes() for w in wheels}


def _json(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


# ----------------------------------------------------------------------------- build
def build_package(
    run_dir: str | os.PathLike[str],
    *,
    report: Mapping[str, Any] | None = None,
    targets: Targets | str | os.PathLike[str] | None = None,
    version: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    engine_settings: Mapping[str, Any] | None = None,
    kubernetes_version: str = "1.31.0",
    certified_capacity_rps: float | None = None,
    requirements: str | os.PathLike[str] | None = None,
    wheelhouse: str | os.PathLike[str] | None = None,
) -> PackageResult:
    """Build `<run>/package/relcert-service-<version>.zip` for an approved run.

    `certified_capacity_rps` (default: the load stage's capacity.max_sustained_rps, if it
    recorded one: the knee) sets the HPA's per-pod request-rate target and adds an alert on
    traffic per replica, both at the knee x the targets' regression.envelope_safety_factor.
    `requirements` is the service's hashed requirements file (default: the service lock the
    packaged models need, include/service-locks/<format>.txt: torchscript when any model is
    served from its TorchScript file, else onnx). With `wheelhouse` (a wheel cache
    folder) the package also ships `wheels/`, one wheel per requirement, so its image builds
    without an index; missing wheels are downloaded there with pip.

    Raises PackageRefused unless report["decision"] is APPROVED or CONDITIONAL_APPROVAL,
    PackageError for anything else unusable (missing models, checksum mismatches, an
    output folder outside the run, a requirement without a wheel), and
    ManifestValidationError if a manifest fails kubernetes-validate (strict) for
    `kubernetes_version`.
    """
    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise PackageError(f"run folder {run} does not exist")
    report = dict(report) if report is not None else _load_report(run)
    decision = _check_decision(report)
    check_kubernetes_version(kubernetes_version)  # before any work
    if certified_capacity_rps is not None and (
        isinstance(certified_capacity_rps, bool)
        or not isinstance(certified_capacity_rps, int | float)
        or not math.isfinite(certified_capacity_rps)
        or certified_capacity_rps <= 0
    ):
        raise PackageError(
            "certified_capacity_rps must be a finite rate > 0 req/s, got "
            f"{certified_capacity_rps!r}"
        )
    targets = _targets(targets)
    out = _inside(run, Path(out_dir) if out_dir is not None else run / "package", "out_dir")

    models_dir = run / "models"
    info = _read_model_info(models_dir)
    settings, settings_source = engine_settings_for_run(run, engine_settings, report)
    if certified_capacity_rps is None:
        certified_capacity_rps = certified_capacity_for_run(run)
    version = str(version).strip() if version is not None else _default_version(info)
    if not _VERSION.match(version):
        raise PackageError(
            f"version {version!r} cannot name a package file: use letters, digits and . _ + - "
            "(starting with a letter or digit, at most 128 characters)"
        )
    label_version = label_safe(version)
    top = f"{PACKAGE_NAME}-{version}"
    date = _snapshot_date(info)

    model_files, models = _packaged_models(models_dir, info, settings.model_format, report)
    formats = {m["name"]: m["format"] for m in models}
    service_lock = lock_format(formats)  # a TorchScript-served model needs torch
    golden = golden_requests(models_dir, model_files, info, settings, formats)
    models_sums = sha256sums_text(model_files)

    env = service_env(settings, targets)
    env_text = (
        "# relcert-service configuration: the engine settings the run certified.\n"
        f"# Source: {settings_source}.\n" + "".join(f"{k}={v}\n" for k, v in env.items())
    )
    ctx = ManifestContext(
        version=version,
        label_version=label_version,
        image=f"{PACKAGE_NAME}:{label_version}",
        settings=settings,
        targets=targets,
        config_sha256=hashlib.sha256(env_text.encode()).hexdigest(),
        models_sha256=hashlib.sha256(models_sums.encode()).hexdigest(),
        certified_capacity_rps=certified_capacity_rps,
    )
    kube = kubernetes_manifests(ctx)
    monitoring = monitoring_files(ctx)
    criteria = _criteria(report, targets)
    certification = _certification_report(
        report, decision, criteria, models, settings, settings_source, version, kubernetes_version
    )

    files: dict[str, bytes] = {}
    files.update({f"kubernetes/{n}": t.encode() for n, t in kube.items()})
    files.update({f"monitoring/{n}": t.encode() for n, t in monitoring.items()})
    files["config/service.env"] = env_text.encode()
    files["config/service.json"] = _json(
        {
            "service": PACKAGE_NAME,
            "version": version,
            "engine_settings": settings.to_dict(),
            "engine_settings_source": settings_source,
            "env": env,
            "port": CONTAINER_PORT,
            "model_formats": formats,
            "service_lock": service_lock,
        }
    )
    files.update({f"models/{n}": data for n, data in model_files.items()})
    files["models/SHA256SUMS"] = models_sums.encode()
    files["validation/golden.json"] = _json(golden)
    files["validation/smoke_test.py"] = (Path(__file__).parent / "smoke_test.py").read_bytes()
    files["performance_certification_report.json"] = _json(certification)
    lock = Path(requirements) if requirements is not None else None
    files["requirements.txt"] = service_requirements(service_lock, lock).encode()
    if wheelhouse is not None:
        files.update(_wheel_files(service_lock, lock, wheelhouse))
    files.update(_source_files())

    context = {
        "name": PACKAGE_NAME,
        "version": version,
        "top": top,
        "image": ctx.image,
        "kubernetes_version": kubernetes_version,
        "decision": decision,
        "confidence": certification["confidence"],
        "readiness_score": _readiness(report.get("readiness_score")),
        "snapshot_date": date.isoformat() if date != EPOCH else "unknown",
        "models": models,
        "criteria": criteria,
        "criteria_met": certification["certification_summary"]["met"],
        "recommendations": certification["recommendations"],
        "settings": settings.to_dict(),
        "settings_source": settings_source,
        "env": env,
        "alerts": [
            {
                "alert": a.name,
                "severity": a.severity,
                "target": a.target,
                "threshold": a.threshold_text,
                "expr": a.expr,
            }
            for a in build_alerts(targets, settings, PACKAGE_NAME, certified_capacity_rps)
        ],
        "thresholds": {t.name: _show(t.threshold, t.unit) for t in targets.values()},
        "capacity": (
            {
                "certified": _show(certified_capacity_rps, "req/s"),
                "threshold": _show(certified_capacity_rps * envelope_factor(targets), "req/s"),
                "factor": envelope_factor(targets),
            }
            if certified_capacity_rps
            else None
        ),
        "golden_cases": len(golden["cases"]),
        "port": CONTAINER_PORT,
        "base_image": DEFAULT_BASE_IMAGE,
        "wheels": sorted(n.removeprefix("wheels/") for n in files if n.startswith("wheels/")),
        "archive": f"{top}{OCI_SUFFIX}",
    }
    files["docs/deployment_guide.md"] = render("deployment_guide.md.j2", context).encode()
    files["docs/runbook.md"] = render("runbook.md.j2", context).encode()
    files["deployment_checklist.md"] = render("deployment_checklist.md.j2", context).encode()
    files["Dockerfile"] = render("Dockerfile.j2", context).encode()

    manifests = {f"{top}/{name}": data for name, data in files.items() if is_manifest_path(name)}
    validated = validate_documents(manifests, kubernetes_version)
    files["SHA256SUMS"] = sha256sums_text(files).encode()

    entries = {f"{top}/{name}": data for name, data in files.items()}
    payload = zip_bytes(entries, date=date, executable=[f"{top}/{s}" for s in _SCRIPTS])
    target = _inside(run, out / f"{top}.zip", "package file")
    if not (target.is_file() and target.read_bytes() == payload):
        atomic_write_bytes(target, payload)
    return PackageResult(
        path=target,
        version=version,
        sha256=hashlib.sha256(payload).hexdigest(),
        files=tuple(sorted(entries)),
        manifests_validated=validated,
    )
