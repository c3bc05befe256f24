"""`python -m pipeline.serve --model-dir DIR [--port N]`: the service without the `relcert` CLI."""

from __future__ import annotations

import argparse

from pipeline.serve.cli import DESCRIPTION, configure_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description=DESCRIPTION)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
