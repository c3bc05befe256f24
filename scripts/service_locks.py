"""Rewrite include/service-locks/<format>.txt, the service image's hashed requirements,
from constraints.txt (see pipeline/package/requirements.py). Run it after changing the lock:

    .venv/bin/python scripts/service_locks.py [--format onnx|torchscript|all]
"""

from __future__ import annotations

import argparse

from pipeline.package.requirements import MODEL_FORMATS, write_service_lock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=[*MODEL_FORMATS, "all"], default="all")
    args = parser.parse_args()
    for fmt in MODEL_FORMATS if args.format == "all" else (args.format,):
        print(f"==> {write_service_lock(fmt)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
