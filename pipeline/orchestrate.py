"""What the DAG's tasks call: one function per task, paths and params in, small JSON out.

The DAG file stays declarative; everything here is plain Python (no Airflow imports), so
the same steps run under `dag.test()`, a scheduler, Celery workers, or a test.

Each task may run on a different host: every function works in a private local copy of the
run (`pipeline.storage.workspace`: pulled from the artifacts store, pushed back on exit), and
the run context's `run_dir` is the run's location in the store (a plain path for a local
artifacts folder, else a URL); paths returned are store locations too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline._io import atomic_write_text
from pipeline.names import (
    CONF_KEYS,
    DEFAULT_PROFILE,
    MAX_REASON_CHARS,
    PROFILE_NAMES,
    SCHEDULED_PROFILE,
)
from pipeline.storage import ArtifactStore, StoreConflict, artifacts_location, is_url, workspace

__all__ = [
    "ConfError",
    "artifacts_root",
    "assemble",
    "build_part",
    "gate",
    "outcome",
    "package",
    "prepare_run",
    "report",
    "run_key",
    "stage",
    "validate_conf",
    "validate_reason",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_LOG = logging.getLogger(__name__)
#: how many of the report's reasons the run's outcome carries (the rest are in the report)
OUTCOME_REASONS = 5


class ConfError(ValueError):
    """A run's conf (the trigger form's params) is invalid; the message says which key."""


def artifacts_root() -> Path:
    """`RELCERT_ARTIFACTS` (default `<project>/artifacts`): a Path for a plain path, a UPath
    (pathlib-like, through fsspec) for a URL such as `s3://bucket/prefix`."""
    location = artifacts_location()
    if is_url(location):
        from upath import UPath

        return UPath(location)
    return Path(location)


def run_key(run_id: str) -> str:
    """A path-safe, unique folder name for a DAG run id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    if safe != run_id or len(safe) > 200:  # keep distinct run ids in distinct folders
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:10]
        safe = f"{safe[:188]}-{digest}"
    return safe


def _check_trusted_models(models_file: str) -> None:
    """The trigger form is not trusted (`pipeline.trust`): the models file, every file it
    names and every builder must lie in the configured folders and modules; checked before
    anything else reads the file."""
    from pipeline.build import BuildError, load_models_config
    from pipeline.trust import UntrustedInput, check_models_file, check_specs

    try:
        check_specs(load_models_config(check_models_file(models_file)))
    except (UntrustedInput, BuildError) as exc:
        raise ConfError(f"conf.models_file: {exc}") from None


def _check_trusted_build(models_file: str, name: str) -> None:
    """`prepare`'s check again where the code runs (the models file may have changed since),
    and model `name`'s builder must be defined under a builder prefix (this imports it)."""
    from pipeline.build import load_models_config
    from pipeline.trust import check_builder_callables, check_models_file, check_specs

    specs = load_models_config(check_models_file(models_file))
    check_specs(specs)
    check_builder_callables([spec for spec in specs if spec.name == name])


#: the shortest justification a regression waiver accepts (a sentence, not "ok")
MIN_WAIVER_JUSTIFICATION = 20


def validate_waiver(value: Any) -> dict[str, str] | None:
    """conf.waive_regression: null, or {criterion, justification}: the criterion names
    regression comparisons (`compute_time_ms[model]`; a bare metric waives it for the mix and
    every model; or a list of them) and the justification is a written sentence. A waived
    regression passes the regression gate and caps the decision at CONDITIONAL_APPROVAL."""
    from pipeline.regression.config import default_regression_config

    if value in (None, {}):
        return None
    if not isinstance(value, dict):
        raise ConfError(
            "conf.waive_regression must be an object {criterion, justification} or null, "
            f"got {type(value).__name__}"
        )
    extra = sorted(set(value) - {"criterion", "justification"})
    if extra:
        raise ConfError(
            f"conf.waive_regression: unknown keys {extra}; expected criterion and justification"
        )
    criterion = value.get("criterion")
    metrics = sorted(default_regression_config())
    names = [criterion] if isinstance(criterion, str) else criterion
    if not isinstance(names, list) or not names:
        names = [None]
    for name in names:
        metric = name.split("[", 1)[0] if isinstance(name, str) else None
        if metric not in metrics or (
            "[" in name and (not name.endswith("]") or len(name) <= len(metric) + 2)
        ):
            raise ConfError(
                "conf.waive_regression.criterion must name regression comparisons: METRIC "
                f"(every model) or METRIC[model], or a list of them, with METRIC one of "
                f"{metrics}; got {criterion!r}"
            )
    justification = value.get("justification")
    if not isinstance(justification, str) or len(justification.strip()) < MIN_WAIVER_JUSTIFICATION:
        raise ConfError(
            "conf.waive_regression.justification must say why the regression is accepted "
            f"(at least {MIN_WAIVER_JUSTIFICATION} characters), got {justification!r}"
        )
    return {
        "criterion": names if len(names) > 1 else names[0],
        "justification": justification.strip(),
    }


def validate_reason(value: Any) -> str:
    """conf.reason: null or a string of at most MAX_REASON_CHARS characters (it is shown in
    every row of the Certifications view): refused whole, never cut."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfError(f"conf.reason must be a string or null, got {type(value).__name__}")
    if len(value) > MAX_REASON_CHARS:
        raise ConfError(
            f"conf.reason is {len(value)} characters long; at most {MAX_REASON_CHARS} are "
            "allowed (say why the run was triggered in a sentence or two)"
        )
    return value


def validate_conf(params: dict[str, Any]) -> dict[str, Any]:
    """Check a run's params beyond what the trigger form's JSON schema can say."""
    from pipeline.targets import TargetsError, load_targets

    unknown = sorted(set(params) - set(CONF_KEYS))
    if unknown:
        raise ConfError(f"unknown conf keys {unknown}; expected some of {sorted(CONF_KEYS)}")
    profile = params.get("profile", DEFAULT_PROFILE)
    if profile not in PROFILE_NAMES:
        raise ConfError(f"conf.profile must be one of {list(PROFILE_NAMES)}, got {profile!r}")
    overrides = params.get("target_overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfError(f"conf.target_overrides must be an object, got {type(overrides).__name__}")
    for key in ("allow_relaxed_targets", "build_package", "build_image"):
        if key in params and not isinstance(params[key], bool):
            raise ConfError(f"conf.{key} must be true or false, got {params[key]!r}")
    _check_trusted_models(params.get("models_file") or "include/models.yaml")

    models_file = params.get("models_file") or "include/models.yaml"
    path = Path(models_file)
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        raise ConfError(f"conf.models_file: {models_file} does not exist")
    allow_relaxed = bool(params.get("allow_relaxed_targets", False))
    try:
        targets = load_targets().with_overrides(overrides, allow_relaxed=allow_relaxed)
    except TargetsError as exc:
        raise ConfError(f"conf.target_overrides: {exc}") from None
    targets = _with_models_targets(targets, path, allow_relaxed)
    return {
        "profile": profile,
        "models_file": str(path),
        "targets": targets,
        "target_overrides": overrides,
        "build_package": bool(params.get("build_package", True)),
        "build_image": bool(params.get("build_image", False)),
        "reason": validate_reason(params.get("reason")),
        "waive_regression": validate_waiver(params.get("waive_regression")),
    }


def _with_models_targets(targets, models_file: Path, allow_relaxed: bool):
    """The run's targets with each model's own values from the models file (the same
    tightening rule as the form's overrides)."""
    from pipeline.build import BuildError, load_models_config
    from pipeline.targets import TargetsError

    try:
        specs = load_models_config(models_file)
    except BuildError as exc:
        raise ConfError(f"conf.models_file: {exc}") from None
    for spec in specs:
        if spec.targets:
            try:
                targets = targets.with_model_overrides(
                    spec.name, dict(spec.targets), allow_relaxed=allow_relaxed
                )
            except TargetsError as exc:
                raise ConfError(f"conf.models_file: {models_file}: {exc}") from None
    return targets


def _store() -> ArtifactStore:
    return ArtifactStore.from_location()


def run_profile(params: dict[str, Any], run_type: str | None, conf: dict[str, Any]) -> str:
    """The profile a run certifies with: the one its conf names explicitly, else `nightly`
    for scheduled and backfilled runs (a 02:00 run never approves on the CI profile), else
    the form's choice (manual runs; default `smoke`)."""
    if "profile" in (conf or {}):
        return str(conf["profile"])
    if run_type in ("scheduled", "backfill"):
        return SCHEDULED_PROFILE
    return str(params.get("profile") or DEFAULT_PROFILE)


def prepare_run(
    dag_id: str,
    run_id: str,
    snapshot: dt.date | dt.datetime | None,
    params: dict[str, Any],
    *,
    run_type: str | None = None,
    dag_run_conf: dict[str, Any] | None = None,
    triggered_by: str | None = None,
) -> dict[str, Any]:
    """Validate the conf, create the run folder, record the effective targets and conf.

    `run_type` (scheduled, backfill, manual, ...) and the conf given explicitly choose the
    profile (`run_profile`); `triggered_by` (the triggering user) is recorded, and signs a
    regression waiver. Returns the run context every later task receives (small JSON).
    """
    from pipeline.build import load_models_config
    from pipeline.profiles import ProfileError, load_profile
    from pipeline.stages.common import RunDir

    params = {**params, "profile": run_profile(params, run_type, dag_run_conf or {})}
    if triggered_by in (None, "", "dag_test"):  # a local `relcert run`: the OS user
        from pipeline.regression.baseline import whoami

        triggered_by = whoami() or triggered_by
    conf = validate_conf(params)
    try:
        definition = load_profile(conf["profile"]).to_dict()
    except ProfileError as exc:
        raise ConfError(f"conf.profile: {exc}") from None
    if snapshot is None:
        day = dt.datetime.now(dt.UTC).date()
    elif isinstance(snapshot, dt.datetime):
        day = snapshot.astimezone(dt.UTC).date() if snapshot.tzinfo else snapshot.date()
    else:
        day = snapshot
    store = _store()
    location = store.run_location(dag_id, run_key(run_id))
    models = [spec.name for spec in load_models_config(conf["models_file"])]
    context = {
        "dag_id": dag_id,
        "run_id": run_id,
        "run_dir": location,
        "snapshot_date": day.isoformat(),
        "profile": conf["profile"],
        "profile_definition": definition,
        "run_type": run_type,
        "models_file": conf["models_file"],
        "models": models,
        "build_package": conf["build_package"],
        "build_image": conf["build_image"],
        "reason": conf["reason"],
        "target_overrides": conf["target_overrides"],
        "relaxed_targets": [r.to_dict() for r in conf["targets"].relaxed],
        "triggered_by": triggered_by,
        "waive_regression": (
            {**conf["waive_regression"], "by": triggered_by} if conf["waive_regression"] else None
        ),
    }
    with workspace(location, store=store) as run_dir:
        # a cleared or repeated run starts a new attempt: the earlier attempt's evidence
        # moves to attempts/<id>/ and is never read as this attempt's
        context["attempt_id"] = RunDir.of(run_dir).start_attempt()
        atomic_write_text(run_dir / "targets.yaml", conf["targets"].to_yaml())
        atomic_write_text(
            run_dir / "conf.json", json.dumps(context, indent=2, sort_keys=True) + "\n"
        )
    return context


def _targets(run_dir: Path):
    """The run's targets (its own targets.yaml: a missing or broken one is an error)."""
    from pipeline.stages.common import RunDir
    from pipeline.stages.context import run_targets

    if not (run_dir / "targets.yaml").exists():
        from pipeline.targets import TargetsError

        raise TargetsError(f"{run_dir.name}/targets.yaml is missing: the run was not prepared")
    return run_targets(RunDir.of(run_dir))


def build_part(ctx: dict[str, Any], name: str, progress: Callable[[str], None] = print) -> dict:
    """Build one model of the run into `<run>/parts/<name>` (a mapped task). A build
    refusal is recorded for the report (stages/build/error-<name>.json) and raised as a
    ModelDefect: the model is at fault, a retry cannot help."""
    from pipeline.build import BuildError, build_models
    from pipeline.stages.common import ModelDefect, RunDir
    from pipeline.trust import UntrustedInput

    started = time.perf_counter()
    try:
        _check_trusted_build(ctx["models_file"], name)
    except (UntrustedInput, BuildError) as exc:
        raise ModelDefect(f"model {name!r}: {exc}") from None  # final, never retried
    store = _store()
    with workspace(ctx, store=store, say=progress) as run_dir:
        out = run_dir / "parts" / name
        run = RunDir.of(run_dir)
        run.clear_stage_error("build", part=name)
        try:
            result = build_models(
                out,
                snapshot_date=ctx["snapshot_date"],
                models_file=ctx["models_file"],
                progress=progress,
                only=[name],
            )
        except BuildError as exc:
            message = str(exc).replace(str(run.root), "<run>")
            run.record_stage_error("build", message, ctx.get("attempt_id"), part=name)
            raise ModelDefect(message) from None
    entry = result.models[name]
    return {
        "name": name,
        "part": store.join(ctx["run_dir"], "parts", name),
        "version": entry["version"],
        "seconds": round(time.perf_counter() - started, 3),
    }


def assemble(ctx: dict[str, Any], parts: list[dict]) -> dict[str, Any]:
    """Merge the build parts into `<run>/models` and record the build table."""
    from pipeline.build.assemble import assemble_models
    from pipeline.stages.build import record_build
    from pipeline.stages.context import StageContext

    with workspace(ctx) as run_dir:
        stage_ctx = StageContext.open(
            run_dir,
            "build",
            ctx["profile"],
            targets=_targets(run_dir),
            attempt_id=ctx.get("attempt_id"),
            snapshot_date=ctx["snapshot_date"],
        )
        # each part is `<run>/parts/<name>` in the store, so here in the workspace
        merged = assemble_models(
            [stage_ctx.run.root / "parts" / p["name"] for p in parts], stage_ctx.run.models
        )
        record_build(stage_ctx, parts=parts)
    return {"models": {n: e["version"] for n, e in merged.items()}}


def stage(ctx: dict[str, Any], name: str, progress: Callable[[str], None] = print) -> dict:
    """Run one stage (no gate); returns a small summary for XCom."""
    from pipeline.stages import execute_stage

    started = time.perf_counter()
    with workspace(ctx, say=progress) as run_dir:
        execute_stage(
            name,
            run_dir,
            ctx["profile"],
            targets=_targets(run_dir),
            attempt_id=ctx.get("attempt_id"),
            snapshot_date=ctx["snapshot_date"],
            models_file=ctx["models_file"],
            progress=progress,
        )
    from pipeline.scaleout import worker_hostname

    return {
        "stage": name,
        "seconds": round(time.perf_counter() - started, 3),
        "host": worker_hostname(),
    }


#: gates of parallel branches (load, stress) both rebuild data_docs/index.html: a gate that
#: finds the store changed under it runs again on a fresh copy (gates are idempotent)
GATE_ATTEMPTS = 4


def gate(ctx: dict[str, Any], gate_name: str) -> dict[str, Any]:
    """Run a gate; returns {stage, success, failed}. The caller fails the task on failure."""
    from pipeline.gates import run_gate

    store = _store()
    for attempt in range(1, GATE_ATTEMPTS + 1):
        try:
            with workspace(ctx, store=store) as run_dir:
                result = run_gate(gate_name, run_dir, _targets(run_dir))
                path = store.location_of(ctx["run_dir"], run_dir, result.path)
            break
        except StoreConflict as exc:
            if attempt == GATE_ATTEMPTS:
                raise
            _LOG.warning("gate %s: %s; running it again on a fresh copy", gate_name, exc)
            time.sleep(0.2 * attempt)
    return {
        "stage": result.stage,
        "success": result.success,
        "failed": list(result.failed),
        "path": path,
    }


def report(ctx: dict[str, Any]) -> dict[str, Any]:
    """Write the final report (always runs); returns the decision and the report's paths."""
    from pipeline.release import report_run

    store = _store()
    with workspace(ctx, store=store) as run_dir:
        result = report_run(run_dir, ctx=ctx)
        paths = [
            store.location_of(ctx["run_dir"], run_dir, p)
            for p in (result.path_json, result.path_html)
        ]
    return {
        "decision": result.decision,
        "readiness_score": result.readiness_score,
        "report_json": paths[0],
        "report_html": paths[1],
    }


def package(ctx: dict[str, Any], progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the deployment package (the DAG calls this only when the decision allows), and
    with `build_image` its OCI image (options from the environment: ImageOptions.from_env)."""
    from pipeline.package.image import ImageOptions
    from pipeline.release import package_run

    image = ImageOptions.from_env() if ctx.get("build_image") else None
    store = _store()
    with workspace(ctx, store=store) as run_dir:
        done = package_run(run_dir, image=image, progress=progress)
        result = done.package
        path = store.location_of(ctx["run_dir"], run_dir, result.path)
        archive = done.image and store.location_of(ctx["run_dir"], run_dir, done.image.archive)
    out = {"package": path, "version": result.version, "sha256": result.sha256}
    if done.image is not None:
        out.update(image=done.image.reference, image_digest=done.image.digest, archive=archive)
    return out


def outcome(ctx: dict[str, Any], package: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's decision as the DAG's last task reports it, read from report.json in the
    store: decision, readiness, the first reasons, model versions, the report's locations,
    and the package (`package`: what `package()` returned, None when none was written).

    Raises FileNotFoundError when the run has no report."""
    store = _store()
    report_json = store.join(ctx["run_dir"], "report.json")
    data = json.loads(store.read_bytes(report_json))
    reasons = [str(r) for r in data.get("reasons") or []]
    return {
        "dag_id": ctx["dag_id"],
        "run_id": ctx["run_id"],
        "snapshot_date": ctx["snapshot_date"],
        "decision": data["decision"],
        "readiness_score": data.get("readiness_score"),
        "reasons": reasons[:OUTCOME_REASONS],
        "more_reasons": max(0, len(reasons) - OUTCOME_REASONS),
        "models": {str(m["name"]): m.get("version") for m in data.get("models") or []},
        "report_json": report_json,
        "report_html": store.join(ctx["run_dir"], "report.html"),
        "package": package["package"] if package else None,
        "package_sha256": package["sha256"] if package else None,
        "package_version": package["version"] if package else None,
    }
