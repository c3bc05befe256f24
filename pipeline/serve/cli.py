"""`relcert serve` and `python -m pipeline.serve`: run the service on uvicorn.

    relcert serve --model-dir DIR [--host 127.0.0.1] [--port 8000] [--workers 1] [--format onnx]
                  [--validate-token-stdin]

Every other setting comes from the environment (see `pipeline.serve`); the validation token
may instead come on stdin (`--validate-token-stdin`), so that it is held in memory only.
Models load in the background after the server starts listening: poll `GET /health/ready`
for 200.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_parser", "configure_parser", "run", "uvicorn_limits"]

DESCRIPTION = (
    "Serve the certified models over HTTP (Starlette on uvicorn, one engine per worker "
    "process). Settings other than the flags come from environment variables (see "
    "pipeline/serve/__init__.py): MODEL_FORMAT, MAX_BATCH_SIZE, BATCH_TIMEOUT_MS, MAX_QUEUE, "
    "DEFAULT_DEADLINE_MS, MAX_MEMORY_MB, POOL_MB, CACHE_ENTRIES, MAX_BODY_BYTES, "
    "LIMIT_CONCURRENCY, TIMEOUT_KEEP_ALIVE_S, MAX_HEADER_BYTES, BODY_READ_TIMEOUT_S, "
    "VALIDATE_TOKEN (unset: /api/v1/validate/performance is off), LATENCY_BUCKETS_MS, ... "
    "Models load after the server starts listening; GET /health/ready answers 200 once they "
    "are warm."
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `serve` options to `parser`."""
    parser.add_argument(
        "--model-dir",
        default=None,
        help="a models folder written by `relcert build` (default: $MODEL_DIR)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (default 1)"
    )
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript"],
        default=None,
        help="model format to serve (default: $MODEL_FORMAT or onnx)",
    )
    parser.add_argument(
        "--validate-token-stdin",
        action="store_true",
        help="read VALIDATE_TOKEN from the first line of stdin (held in memory only, never in "
        "the environment or on a command line; needs --workers 1)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (access log is always off)",
    )
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `serve` on an argparse subparsers object (from `add_subparsers()`)."""
    parser = subparsers.add_parser(
        "serve", help="serve the models over HTTP (the deployed service)", description=DESCRIPTION
    )
    return configure_parser(parser)


def uvicorn_limits(settings: Any) -> dict[str, Any]:
    """uvicorn's own connection bounds from ServeSettings (the header bound and the read
    timeout are BoundedHttpToolsProtocol's; h11's equivalent is set for an h11 server)."""
    return {
        "limit_concurrency": settings.limit_concurrency,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the parsed arguments; returns the exit status."""
    from pipeline.serve.settings import ServeSettings, SettingsError

    if not 0 <= args.port <= 65535:
        print(f"relcert serve: error: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"relcert serve: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    token = None
    if getattr(args, "validate_token_stdin", False):
        if args.workers != 1:
            print(
                "relcert serve: error: --validate-token-stdin needs --workers 1 (worker "
                "processes would receive the token through their environment)",
                file=sys.stderr,
            )
            return 2
        token = sys.stdin.readline().strip()
        if not token:
            print(
                "relcert serve: error: --validate-token-stdin: expected the token on the first "
                "line of stdin, got an empty line",
                file=sys.stderr,
            )
            return 2
    try:
        settings = ServeSettings.from_env(
            os.environ, model_dir=args.model_dir, model_format=args.format, validate_token=token
        )
        app: Any = None
        if args.workers == 1:
            from pipeline.serve.app import create_app

            app = create_app(settings)  # fails here, before binding, on a bad MODEL_DIR
    except SettingsError as exc:
        print(f"relcert serve: error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from pipeline.serve.http import BoundedHttpToolsProtocol

    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": BoundedHttpToolsProtocol,  # httptools + header bound + read timeout
        "access_log": False,
        "log_level": args.log_level,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
        **uvicorn_limits(settings),
    }
    print(
        f"relcert serve: http://{args.host}:{args.port} serving {settings.model_format} models "
        f"from {settings.model_dir} ({args.workers} worker(s)); models load in the background, "
        "poll /health/ready",
        file=sys.stderr,
        flush=True,
    )
    if app is not None:
        uvicorn.run(app, **options)
    else:
        # Worker processes import the app by name and rebuild the same settings from env.
        os.environ.update(settings.to_env())
        uvicorn.run(
            "pipeline.serve.app:app_from_env", factory=True, workers=args.workers, **options
        )
    return 0
