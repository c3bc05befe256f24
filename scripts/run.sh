#!/usr/bin/env bash
# Quickstart, step 1: set up .venv from the lock and run the main job once.
# Until the Airflow DAG lands (issue 5), the main job is: build the example models for
# today's snapshot, then a short demo of the inference engine on them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
date="${RELCERT_DATE:-$(date -u +%F)}"
out="${RELCERT_ARTIFACTS:-artifacts}/quickstart/$date/models"
.venv/bin/relcert build --out "$out" --date "$date"
.venv/bin/relcert demo --model-dir "$out"
