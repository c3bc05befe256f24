#!/usr/bin/env bash
# Create .venv and install relcert from the pinned lock (constraints.txt). Idempotent:
# re-installs only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "relcert needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.relcert-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing relcert and its pinned dependencies (constraints.txt); log: .venv/install.log"
    if ! { .venv/bin/python -m pip install --upgrade "pip>=24" &&
           .venv/bin/python -m pip install -c constraints.txt -e ".[dev]"; } > .venv/install.log 2>&1; then
        tail -30 .venv/install.log >&2
        echo "setup failed; the full log is .venv/install.log" >&2
        exit 1
    fi
    .venv/bin/python -m pip check
    echo "$want" > "$stamp"
fi
