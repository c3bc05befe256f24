"""`relcert`: the command line.

relcert build --out DIR [--date YYYY-MM-DD] [--models include/models.yaml]
relcert demo --model-dir DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

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
                args.out, snapshot_date=args.date, models_file=args.models, progress=print
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
    if args.command == "demo":
        from pipeline.demo import run_demo

        try:
            run_demo(args.model_dir, rate_rps=args.rate, duration_s=args.duration)
        except FileNotFoundError as exc:
            print(f"relcert demo: error: {exc}", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
