"""How long Airflow takes to parse the certification DAG file, against a minimal DAG file
parsed the same way in the same process (the ratio is the cost of our wiring).

    .venv/bin/python bench/dag_parse.py [--repeat 5]

The DAG processor re-parses every file every 30 s by default and gives up on one after
`dagbag_import_timeout` (30 s); a DAG file should stay well under a second. Prints the
median over `--repeat` parses of each file (each in a fresh subprocess: no warm imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
MINIMAL = """
import datetime as dt
from airflow.sdk import dag, task

@dag(schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False)
def minimal():
    @task
    def one() -> None:
        pass

    one()

minimal()
"""
PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "errors": len(bag.import_errors),
                  "dags": len(bag.dags)}))
"""


def _parse(folder: Path, home: Path) -> dict:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run(
        [sys.executable, "-c", PARSE, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relcert-parse-") as tmp:
        home, minimal = Path(tmp) / "home", Path(tmp) / "minimal"
        minimal.mkdir()
        (minimal / "minimal.py").write_text(MINIMAL)
        ours, base = [], []
        for _ in range(args.repeat):
            ours.append(_parse(PROJECT / "dags", home))
            base.append(_parse(minimal, home))
    errors = sum(r["errors"] for r in ours)
    ours_s = statistics.median(r["seconds"] for r in ours)
    base_s = statistics.median(r["seconds"] for r in base)
    print(f"dags/ ({ours[0]['dags']} DAGs): median parse {ours_s:.3f} s, import errors {errors}")
    print(f"minimal DAG file: median parse {base_s:.3f} s")
    print(f"ratio ours / minimal: {ours_s / base_s:.2f}x (goal: under 1 s absolute)")


if __name__ == "__main__":
    main()
