"""What the DAG's tasks call: one function per task, paths and params in, small JSON out.

The DAG file stays declarative; everything here is plain Python (no Airflow imports), so
the same steps run under `dag.test()`, a scheduler, Celery workers, or a test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_text

__all__ = [
    "ConfError",
    "artifacts_root",
    "assemble",
    "build_part",
    "gate",
    "prepare_run",
    "run_key",
    "stage",
    "validate_conf",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("smoke", "nightly", "release")
CONF_KEYS = {
    "profile",
    "models_file",
    "target_overrides",
    "allow_relaxed_targets",
    "build_package",
    "reason",
}


class ConfError(ValueError):
    """A run's conf (the trigger form's params) is invalid; the message says which key."""


def artifacts_root() -> Path:
    """`RELCERT_ARTIFACTS` (default `<project>/artifacts`)."""
    return Path(os.environ.get("RELCERT_ARTIFACTS") or PROJECT_ROOT / "artifacts").absolute()


def run_key(run_id: str) -> str:
    """A path-safe, unique folder name for a DAG run id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    if safe != run_id or len(safe) > 200:  # keep distinct run ids in distinct folders
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
        safe = f"{safe[:188]}-{digest}"
    return safe


def validate_conf(params: dict[str, Any]) -> dict[str, Any]:
    """Check a run's params beyond what the trigger form's JSON schema can say."""
    from pipeline.targets import TargetsError, load_targets

    unknown = sorted(set(params) - CONF_KEYS)
    if unknown:
        raise ConfError(f"unknown conf keys {unknown}; expected some of {sorted(CONF_KEYS)}")
    profile = params.get("profile", "smoke")
    if profile not in PROFILES:
        raise ConfError(f"conf.profile must be one of {list(PROFILES)}, got {profile!r}")
    overrides = params.get("target_overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfError(f"conf.target_overrides must be an object, got {type(overrides).__name__}")
    for key in ("allow_relaxed_targets", "build_package"):
        if key in params and not isinstance(params[key], bool):
            raise ConfError(f"conf.{key} must be true or false, got {params[key]!r}")
    models_file = params.get("models_file") or "include/models.yaml"
    path = Path(models_file)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise ConfError(f"conf.models_file: {models_file} does not exist")
    try:
        targets = load_targets().with_overrides(
            overrides, allow_relaxed=bool(params.get("allow_relaxed_targets", False))
        )
    except TargetsError as exc:
        raise ConfError(f"conf.target_overrides: {exc}") from None
    return {
        "profile": profile,
        "models_file": str(path),
        "targets": targets,
        "target_overrides": overrides,
        "build_package": bool(params.get("build_package", True)),
        "reason": str(params.get("reason") or ""),
    }


def _targets_yaml(targets) -> str:
    import yaml

    entries = [{k: v for k, v in t.to_dict().items() if k != "threshold"} for t in targets.values()]
    return yaml.safe_dump({"version": 1, "targets": entries}, sort_keys=False)


def prepare_run(
    dag_id: str, run_id: str, snapshot: dt.date | dt.datetime | None, params: dict[str, Any]
) -> dict[str, Any]:
    """Validate the conf, create the run folder, record the effective targets and conf.

    Returns the run context every later task receives (small JSON).
    """
    from pipeline.build import load_models_config

    conf = validate_conf(params)
    if snapshot is None:
        day = dt.datetime.now(dt.UTC).date()
    elif isinstance(snapshot, dt.datetime):
        day = snapshot.astimezone(dt.UTC).date() if snapshot.tzinfo else snapshot.date()
    else:
        day = snapshot
    run_dir = artifacts_root() / dag_id / run_key(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "targets.yaml", _targets_yaml(conf["targets"]))
    models = [spec.name for spec in load_models_config(conf["models_file"])]
    context = {
        "dag_id": dag_id,
        "run_id": run_id,
        "run_dir": str(run_dir),
        "snapshot_date": day.isoformat(),
        "profile": conf["profile"],
        "models_file": conf["models_file"],
        "models": models,
        "build_package": conf["build_package"],
        "reason": conf["reason"],
        "target_overrides": conf["target_overrides"],
    }
    atomic_write_text(run_dir / "conf.json", json.dumps(context, indent=2, sort_keys=True) + "\n")
    return context


def _targets(ctx: dict[str, Any]):
    from pipeline.targets import load_targets

    return load_targets(Path(ctx["run_dir"]) / "targets.yaml")


def build_part(ctx: dict[str, Any], name: str, progress: Callable[[str], None] = print) -> dict:
    """Build one model of the run into `<run>/parts/<name>` (a mapped task)."""
    from pipeline.build import build_models

    started = time.perf_counter()
    out = Path(ctx["run_dir"]) / "parts" / name
    result = build_models(
        out,
        snapshot_date=ctx["snapshot_date"],
        models_file=ctx["models_file"],
        progress=progress,
        only=[name],
    )
    entry = result.models[name]
    return {
        "name": name,
        "part": str(out),
        "version": entry["version"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def assemble(ctx: dict[str, Any], parts: list[dict]) -> dict[str, Any]:
    """Merge the build parts into `<run>/models` and record the build table."""
    from pipeline.build.assemble import assemble_models
    from pipeline.stages.build import record_build
    from pipeline.stages.common import RunDir

    run = RunDir.of(ctx["run_dir"])
    merged = assemble_models([p["part"] for p in parts], run.models)
    summary = record_build(run)
    summary["snapshot_date"] = ctx["snapshot_date"]
    summary["parts"] = parts
    run.write_summary("build", summary)
    return {"models": {n: e["version"] for n, e in merged.items()}}


def stage(ctx: dict[str, Any], name: str, progress: Callable[[str], None] = print) -> dict:
    """Run one stage (no gate); returns a small summary for XCom."""
    from pipeline.stages import execute_stage

    started = time.perf_counter()
    execute_stage(
        name,
        ctx["run_dir"],
        ctx["profile"],
        targets=_targets(ctx),
        snapshot_date=ctx["snapshot_date"],
        models_file=ctx["models_file"],
        progress=progress,
    )
    return {"stage": name, "seconds": round(time.perf_counter() - started, 3)}


def gate(ctx: dict[str, Any], gate_name: str) -> dict[str, Any]:
    """Run a gate; returns {stage, success, failed}. The caller fails the task on failure."""
    from pipeline.gates import run_gate

    result = run_gate(gate_name, ctx["run_dir"], _targets(ctx))
    return {
        "stage": result.stage,
        "success": result.success,
        "failed": list(result.failed),
        "path": str(result.path),
    }


def report(ctx: dict[str, Any]) -> dict[str, Any]:
    """Write the final report (always runs); returns the decision and the report's paths."""
    from pipeline.report import write_report

    result = write_report(
        ctx["run_dir"],
        run_id=ctx["run_id"],
        targets=_targets(ctx),
        profile=ctx["profile"],
        conf={
            "reason": ctx.get("reason", ""),
            "snapshot_date": ctx["snapshot_date"],
            "target_overrides": ctx.get("target_overrides", {}),
            "models_file": ctx["models_file"],
        },
    )
    return {
        "decision": result.decision,
        "readiness_score": result.readiness_score,
        "report_json": str(result.path_json),
        "report_html": str(result.path_html),
    }


def package(ctx: dict[str, Any]) -> dict[str, Any]:
    """Write the deployment package (the DAG calls this only when the decision allows)."""
    from pipeline.package import build_package
    from pipeline.report import set_package

    result = build_package(ctx["run_dir"], targets=_targets(ctx))
    set_package(ctx["run_dir"], result.path)
    return {"package": str(result.path), "version": result.version, "sha256": result.sha256}
