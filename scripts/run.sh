#!/usr/bin/env bash
# Quickstart, step 1: set up .venv from the lock and run the main job once: the
# model_release_certification DAG, end to end, through Airflow (dag.test) on an embedded
# SQLite metadata DB in .relcert/airflow (created on first use). Prints the decision and
# where the report is. Exit status: 0 APPROVED, 10 CONDITIONAL_APPROVAL, 20 NOT_APPROVED,
# 1 pipeline error. Extra arguments go to `relcert run` (e.g. --profile nightly).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/relcert run --profile "${RELCERT_PROFILE:-smoke}" "$@"
