"""The last two steps of a certification on a local run folder: the final report and the
deployment package. The DAG's tasks (`pipeline.orchestrate.report` / `.package`, inside
their workspace copy of the run) and the command line (`relcert report` / `relcert
package`) both call these, so a run folder gets the same report and the same package bytes
whichever way it was finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.package import PackageResult
    from pipeline.package.image import ImageOptions, ImageResult

__all__ = ["PackageRun", "package_run", "report_conf", "report_run", "run_targets"]

#: the run's effective targets, written by `prepare_run` (a DAG run) beside conf.json
RUN_TARGETS = "targets.yaml"
RUN_CONF = "conf.json"


def run_targets(run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None):
    """The targets a run is judged by (`pipeline.stages.context.run_targets`): `path` when
    given, else the run's own targets.yaml, else the default targets file."""
    from pipeline.stages.common import RunDir
    from pipeline.stages.context import run_targets as targets_of_run

    return targets_of_run(RunDir.of(run_dir), path)


def report_conf(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """What the report records of a run's conf (a run context, or a DAG run's conf.json)."""
    return {
        "reason": ctx.get("reason", ""),
        "snapshot_date": ctx.get("snapshot_date"),
        "target_overrides": ctx.get("target_overrides", {}),
        "models_file": ctx.get("models_file"),
        "relaxed_targets": ctx.get("relaxed_targets", []),
        "profile_definition": ctx.get("profile_definition"),
        "run_type": ctx.get("run_type"),
        "triggered_by": ctx.get("triggered_by"),
        "waive_regression": ctx.get("waive_regression"),
    }


def _recorded_context(run: Path) -> dict[str, Any]:
    """The run context a DAG run recorded in conf.json; {} for a folder made by `relcert
    stage` (or an unreadable one: the report then says less, it does not fail)."""
    try:
        data = json.loads((run / RUN_CONF).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def report_run(
    run_dir: str | os.PathLike[str],
    *,
    ctx: Mapping[str, Any] | None = None,
    targets: Any = None,
):
    """Write the run's report.json and report.html (`pipeline.report.write_report`).

    `ctx` is the run context (run id, profile, conf); default: the conf.json a DAG run
    recorded, else nothing (the run id is the folder's name, the profile the stages')."""
    from pipeline.report import write_report

    run = Path(run_dir)
    context = dict(ctx) if ctx is not None else _recorded_context(run)
    return write_report(
        run,
        run_id=context.get("run_id"),
        targets=targets if targets is not None else run_targets(run),
        profile=context.get("profile"),
        conf=report_conf(context) if context else None,
    )


@dataclasses.dataclass(frozen=True)
class PackageRun:
    """What `package_run` wrote: the package zip and, with an image, the image's record."""

    package: PackageResult
    image: ImageResult | None = None


def package_run(
    run_dir: str | os.PathLike[str],
    *,
    targets: Any = None,
    image: ImageOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> PackageRun:
    """Build the run's deployment package and record it in the report
    (`pipeline.package.build_package` + `pipeline.report.set_package`).

    With `image` (a `pipeline.package.image.ImageOptions`) the package also ships its
    wheelhouse, and its image is built from the zip and saved as an OCI archive beside it;
    report.json then records the image (digest, base image, wheels). A requirement without a
    wheel fails before anything is written; without a container engine the package (with its
    wheelhouse, buildable elsewhere) is written and recorded, and then ImageError is raised.
    Raises PackageRefused unless report.json's decision is APPROVED or CONDITIONAL_APPROVAL.
    """
    from pipeline.package import PACKAGE_NAME, build_package, check_decision, label_safe
    from pipeline.package.image import build_image, find_engine
    from pipeline.package.wheelhouse import default_wheelhouse
    from pipeline.report import set_package

    run = Path(run_dir)
    say = progress or (lambda _line: None)
    check_decision(run)
    result = build_package(
        run,
        targets=targets if targets is not None else run_targets(run),
        requirements=image.requirements if image is not None else None,
        wheelhouse=(image.wheelhouse or default_wheelhouse()) if image is not None else None,
    )
    say(f"package: {result.path} (sha256 {result.sha256})")
    set_package(run, result.path)
    if image is None:
        return PackageRun(package=result)
    built = build_image(
        result.path,
        tag=image.tag or f"{PACKAGE_NAME}:{label_safe(result.version)}",
        base_image=image.base_image,
        engine=find_engine(image.engine),
        progress=say,
        allow_unpinned_base=image.allow_unpinned_base,
    )
    say(f"image: {built.reference} {built.digest} -> {built.archive}")
    set_package(run, result.path, image=built.record(run))
    return PackageRun(package=result, image=built)
