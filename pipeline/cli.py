"""`relcert`: the command line.

relcert build --out DIR [--date YYYY-MM-DD] [--models include/models.yaml] [--force]
relcert stage NAME --run-dir DIR        one stage and its gate
relcert report --run-dir DIR            the final report and decision
relcert package --run-dir DIR [--image] the deployment package (and its OCI image)
relcert demo --model-dir DIR
relcert baseline pin RUN_KEY | unpin | show [--for RUN_KEY]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.names import (
    DAG_ID,
    DEFAULT_PROFILE,
    EXIT_CODES,
    EXIT_ERROR,
    NOT_APPROVED,
    PROFILE_NAMES,
)
from pipeline.stages.registry import STAGES

__all__ = ["main"]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relcert", description="Model release certification pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser(
        "build",
        help="build (train + export) or import the models of a models file",
        description="Build the snapshot of every model in the models file for a date: train, "
        "export TorchScript and ONNX, check parity, write model_info.json and SHA256SUMS.",
    )
    build.add_argument("--out", required=True, help="output folder (replaced only on success)")
    build.add_argument(
        "--date", type=_date, default=None, help="snapshot date YYYY-MM-DD (default: today, UTC)"
    )
    build.add_argument("--models", default=None, help="models file (default: include/models.yaml)")
    build.add_argument(
        "--force",
        action="store_true",
        help="replace --out even if it holds files that are not a previous build",
    )

    stage = sub.add_parser(
        "stage",
        help="run one certification stage and its gate on a run folder (no Airflow)",
        description="Run one stage on a run folder, then its Great Expectations gate. The "
        "build stage starts a new attempt of the run (earlier evidence moves to attempts/). "
        "Exit 0 when the gate passed, 3 when it failed, 1 on error. Stages:\n"
        + "\n".join(f"  {s.name:12s} {s.title}" for s in STAGES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stage.add_argument("name", choices=[s.name for s in STAGES])
    stage.add_argument("--run-dir", required=True, help="the run's artifact folder")
    stage.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_NAMES)
    stage.add_argument("--date", type=_date, default=None, help="build: snapshot date")
    stage.add_argument("--models", default=None, help="build: models file")
    stage.add_argument(
        "--targets", default=None, help="targets file (default include/targets.yaml)"
    )

    report = sub.add_parser(
        "report",
        help="write the final report and decision of a run folder (no Airflow)",
        description="Write <run>/report.json and report.html from what the stages wrote, as "
        "the DAG's final_report task does. Exit 0 APPROVED, 10 CONDITIONAL_APPROVAL, "
        "20 NOT_APPROVED, 1 error.",
    )
    report.add_argument("--run-dir", required=True, help="the run's artifact folder")
    report.add_argument(
        "--targets",
        default=None,
        help="targets file (default: the run's targets.yaml, else include/targets.yaml)",
    )

    package = sub.add_parser(
        "package",
        help="write the deployment package of a run folder (no Airflow)",
        description="Write <run>/package/relcert-service-<version>.zip, as the DAG's "
        "deployment_package task does, and record it in report.json. Refused (exit 20) unless "
        "report.json's decision is APPROVED or CONDITIONAL_APPROVAL; exit 0 when written, "
        "1 on error.",
    )
    package.add_argument("--run-dir", required=True, help="the run's artifact folder")
    package.add_argument(
        "--targets",
        default=None,
        help="targets file (default: the run's targets.yaml, else include/targets.yaml)",
    )
    image = package.add_argument_group(
        "image",
        "--image also ships the wheelhouse (wheels/) in the package, builds the package's "
        "image from it with podman or docker (no network, no index) and saves it as "
        "package/relcert-service-<version>.oci.tar; report.json records its digest.",
    )
    image.add_argument("--image", action="store_true", help="build the package's OCI image")
    image.add_argument(
        "--base-image",
        default=None,
        help="BASE_IMAGE build argument, pinned by digest: NAME@sha256:... (default "
        "$RELCERT_BASE_IMAGE, else python:3.11-slim-bookworm pinned by digest)",
    )
    image.add_argument(
        "--allow-unpinned-base",
        action="store_true",
        default=None,
        help="build from a base named by a tag alone (e.g. one imported on this machine); "
        "the image is then recorded as not reproducible (also $RELCERT_ALLOW_UNPINNED_BASE=1)",
    )
    image.add_argument(
        "--engine",
        choices=["podman", "docker"],
        default=None,
        help="container engine (default $RELCERT_CONTAINER_ENGINE, else the first that works)",
    )
    image.add_argument(
        "--image-tag", default=None, help="image name (default relcert-service:<version>)"
    )
    image.add_argument(
        "--wheelhouse",
        default=None,
        help="wheel cache folder; missing wheels are downloaded there with pip "
        "(default $RELCERT_WHEELHOUSE, else ~/.cache/relcert/wheelhouse)",
    )
    image.add_argument(
        "--requirements",
        default=None,
        help="the image's hashed requirements file (default: relcert's service lock for the "
        "model format, include/service-locks/<format>.txt)",
    )

    run = sub.add_parser(
        "run",
        help="run the certification DAG once on the embedded Airflow (dag.test)",
        description="Run model_release_certification once through Airflow (dag.test) on an "
        "embedded SQLite metadata DB in the project (.relcert/airflow, created on first use; "
        "RELCERT_AIRFLOW_HOME moves it). Prints each task of the run as its state changes and "
        "then where each task's log is; Airflow's and the libraries' output goes to the logs. "
        "One run at a time per metadata DB: a second is refused at once. "
        "Exit 0 APPROVED, 10 CONDITIONAL_APPROVAL, 20 NOT_APPROVED, 1 pipeline error.",
    )
    run.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILE_NAMES)
    run.add_argument("--conf", default=None, help='run conf as JSON, e.g. \'{"reason": "..."}\'')
    run.add_argument("--date", type=_date, default=None, help="snapshot date (default today)")

    ui = sub.add_parser(
        "ui",
        help="start Airflow (standalone) with relcert's DAGs and plugins",
        description="Start Airflow standalone on the embedded metadata DB with the project's "
        "DAGs and the Certifications plugin; prints the URL and how to log in. It listens on "
        "127.0.0.1 only unless --host says otherwise.",
    )
    ui.add_argument("--port", type=int, default=8080)
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); e.g. 0.0.0.0 makes "
        "the UI and its admin login reachable from other machines (a warning says so)",
    )

    from pipeline.serve import cli as serve_cli  # light: no Starlette until it runs

    serve_cli.add_parser(sub)

    _baseline_parser(sub)

    demo = sub.add_parser("demo", help="a short demo of the inference engine on built models")
    demo.add_argument("--model-dir", required=True, help="a folder written by `relcert build`")
    demo.add_argument("--rate", type=float, default=1000.0, help="open-loop rate, req/s")
    demo.add_argument("--duration", type=float, default=3.0, help="open-loop seconds per model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        from pipeline.build import BuildError, build_models

        try:
            result = build_models(
                args.out,
                snapshot_date=args.date,
                models_file=args.models,
                progress=print,
                force=args.force,
            )
        except BuildError as exc:
            print(f"relcert build: error: {exc}", file=sys.stderr)
            return 1
        print(
            f"==> built {len(result.models)} models for {result.snapshot_date} in "
            f"{result.seconds:.1f} s -> {result.out_dir}"
        )
        for name, entry in result.models.items():
            metrics = ", ".join(
                f"{k}={v:.4f}"
                for k, v in (entry.get("holdout_metrics") or {}).items()
                if isinstance(v, float)
            )
            print(f"    {name:22s} v{entry['version']}  {metrics}")
        return 0
    if args.command == "stage":
        return _stage(args)
    if args.command == "report":
        return _report(args)
    if args.command == "package":
        return _package(args)
    if args.command == "run":
        return _run(args)
    if args.command == "serve":
        from pipeline.serve import cli as serve_cli

        return serve_cli.run(args)
    if args.command == "ui":
        from pipeline.airflow.local import run_ui

        return run_ui(args.port, args.host)
    if args.command == "baseline":
        return _baseline(args)
    if args.command == "demo":
        from pipeline.demo import run_demo

        try:
            run_demo(args.model_dir, rate_rps=args.rate, duration_s=args.duration)
        except FileNotFoundError as exc:
            print(f"relcert demo: error: {exc}", file=sys.stderr)
            return 1
        return 0
    return 2


def _baseline_parser(sub) -> None:
    baseline = sub.add_parser(
        "baseline",
        help="pin, unpin or show the baseline that regression criteria compare with",
        description="The baseline of a run is the last APPROVED run of the DAG with the same "
        "models and profile and an earlier snapshot date, unless a run is pinned. The pin is "
        "stored in the artifact store (<artifacts>/<dag>/baseline.json), so every worker and "
        "the UI see it. Exit 0 on success, 1 on error or refusal.",
    )
    actions = baseline.add_subparsers(dest="action", required=True)
    pin = actions.add_parser("pin", help="pin an APPROVED run as the baseline")
    pin.add_argument("run_key", help="the run's folder name under <artifacts>/<dag>/")
    pin.add_argument("--reason", default="", help="why (recorded with the pin)")
    unpin = actions.add_parser("unpin", help="remove the pin: the automatic choice applies again")
    show = actions.add_parser("show", help="show the pin, or the baseline of a run")
    show.add_argument(
        "--for",
        dest="for_run",
        default=None,
        metavar="RUN_KEY",
        help="also show the baseline this run gets",
    )
    for action in (pin, unpin, show):
        action.add_argument(
            "--artifacts", default=None, help="artifacts root (default $RELCERT_ARTIFACTS)"
        )
        action.add_argument("--dag-id", default=DAG_ID, help=f"the DAG (default {DAG_ID})")


def _baseline(args: argparse.Namespace) -> int:
    from pipeline.regression.baseline import (
        BaselineError,
        find_baseline,
        pin_baseline,
        read_pin,
        unpin_baseline,
    )
    from pipeline.storage import ArtifactStore, StoreError

    try:
        store = ArtifactStore.from_location(args.artifacts)
        if args.action == "pin":
            pin = pin_baseline(store, args.run_key, dag_id=args.dag_id, reason=args.reason)
            print(f"==> pinned {pin.run_key} as the baseline of {args.dag_id}")
        elif args.action == "unpin":
            removed = unpin_baseline(store, dag_id=args.dag_id)
            print(f"==> unpinned {removed.run_key}" if removed else "==> no pinned baseline")
        else:
            pin = read_pin(store, dag_id=args.dag_id)
            if pin:
                by = f" by {pin.pinned_by}" if pin.pinned_by else ""
                why = f": {pin.reason}" if pin.reason else ""
                print(f"pinned: {pin.run_key} (since {pin.pinned_at}{by}{why})")
            else:
                print("pinned: none (automatic: the last APPROVED run before each run's date)")
            if args.for_run:
                found = find_baseline(store, args.for_run, dag_id=args.dag_id)
                print(f"baseline of {args.for_run}: {found.reason}")
                if found.run is not None:
                    run, host = found.run, found.run.host
                    versions = ", ".join(f"{k} v{v}" for k, v in sorted(run.models.items()))
                    print(f"  run id: {run.run_id}; profile: {run.profile}; models: {versions}")
                    print(f"  host: {host.hostname}, {host.cpu_count} CPUs, {host.cpu_model}")
                for note in found.notes:
                    print(f"  note: {note}")
    except (BaselineError, StoreError) as exc:
        print(f"relcert baseline {args.action}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    import json

    from pipeline.airflow.local import RunRefused, run_dag

    try:
        conf = json.loads(args.conf) if args.conf else {}
    except json.JSONDecodeError as exc:
        print(f"relcert run: error: --conf is not valid JSON: {exc}", file=sys.stderr)
        return 1
    if not isinstance(conf, dict):
        print("relcert run: error: --conf must be a JSON object", file=sys.stderr)
        return 1
    try:
        code, result = run_dag(args.profile, conf, args.date)
    except RunRefused as exc:
        print(f"relcert run: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a pipeline error, not a decision
        print(f"relcert run: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if "decision" in result:
        print(f"==> decision: {result['decision']} (readiness {result['readiness_score']})")
        print(f"==> report: {result['report_html']}")
        if result.get("package"):
            print(f"==> package: {result['package']}")
        print(f"==> airflow run {result['run_id']}: {result['state']}")
    return code


def _report(args: argparse.Namespace) -> int:
    from pipeline.release import report_run, run_targets
    from pipeline.targets import TargetsError

    try:
        _run_folder(args.run_dir)
        result = report_run(args.run_dir, targets=run_targets(args.run_dir, args.targets))
    except (TargetsError, NotADirectoryError) as exc:
        print(f"relcert report: error: {exc}", file=sys.stderr)
        return 1
    print(f"==> decision: {result.decision} (readiness {result.readiness_score})")
    print(f"==> report: {result.path_html}")
    return EXIT_CODES[result.decision]


def _package(args: argparse.Namespace) -> int:
    from pipeline.package import PackageError, PackageRefused
    from pipeline.package.image import ImageOptions
    from pipeline.release import package_run, run_targets
    from pipeline.targets import TargetsError

    image_flags = (
        args.base_image,
        args.engine,
        args.image_tag,
        args.wheelhouse,
        args.requirements,
        args.allow_unpinned_base,
    )
    if not args.image and any(flag is not None for flag in image_flags):
        print("relcert package: error: the image options need --image", file=sys.stderr)
        return 1
    try:
        _run_folder(args.run_dir)
        options = None
        if args.image:
            options = ImageOptions.from_env(
                base_image=args.base_image,
                engine=args.engine,
                tag=args.image_tag,
                wheelhouse=args.wheelhouse,
                requirements=args.requirements,
                allow_unpinned_base=args.allow_unpinned_base,
            )
        result = package_run(
            args.run_dir,
            targets=run_targets(args.run_dir, args.targets),
            image=options,
            progress=lambda line: print(line, flush=True),
        )
    except PackageRefused as exc:
        print(f"relcert package: refused: {exc}", file=sys.stderr)
        return EXIT_CODES[NOT_APPROVED]
    except (PackageError, TargetsError, NotADirectoryError) as exc:
        print(f"relcert package: error: {exc}", file=sys.stderr)
        return 1
    print(f"==> package: {result.package.path}")
    if result.image is not None:
        print(f"==> image: {result.image.archive} ({result.image.reference} {result.image.digest})")
    return 0


def _run_folder(path: str) -> None:
    if not Path(path).is_dir():
        raise NotADirectoryError(f"--run-dir {path}: no such run folder")


def _stage(args: argparse.Namespace) -> int:
    from pipeline.build import BuildError
    from pipeline.gates import GateError
    from pipeline.profiles import ProfileError
    from pipeline.stages import run_stage
    from pipeline.stages.common import RunDir, StageError
    from pipeline.stages.context import run_targets
    from pipeline.targets import TargetsError

    try:
        run = RunDir.of(args.run_dir)
        if args.name == STAGES[0].name:  # a new build: a new attempt of the run
            run.root.mkdir(parents=True, exist_ok=True)
            run.start_attempt()
        targets = run_targets(run, args.targets)
        result = run_stage(
            args.name,
            args.run_dir,
            args.profile,
            targets=targets,
            snapshot_date=args.date,
            models_file=args.models,
            progress=lambda line: print(line, flush=True),
        )
    except (TargetsError, ProfileError, BuildError, GateError, StageError) as exc:
        print(f"relcert stage {args.name}: error: {exc}", file=sys.stderr)
        return 1
    gate = result["gate"]
    print(
        f"==> {args.name}: {result['seconds']:.1f} s; gate {gate['stage']} "
        f"{'passed' if gate['success'] else 'FAILED'}; Data Docs: {gate['data_docs']}"
    )
    return 0 if gate["success"] else 3


if __name__ == "__main__":
    raise SystemExit(main())
