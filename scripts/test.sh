#!/usr/bin/env bash
# Quickstart, step 2: set up .venv from the lock (if needed) and run the test suite: lint,
# format check, then pytest on every core (pytest-xdist; the tests that measure speed run
# one at a time in one group, see tests/conftest.py). Prints its wall time.
# Extra arguments go to pytest (e.g. -m unit, or -n 0 to run in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
status=0
.venv/bin/python -m pytest -q --durations=15 -n "${RELCERT_TEST_WORKERS:-auto}" --dist loadgroup "$@" || status=$?
echo "==> tests: $(( $(date +%s) - started )) s wall (exit $status)"
exit $status
